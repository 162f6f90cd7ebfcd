"""The viewer's attention panel: every head group's real attention weights at one clicked pixel, for the
image on screen (its ws: truncation, class and mixing included), built from ``stylenat.attention_maps``'
pieces (the qkv hooks, NATTEN's window rule, the softmax over q.k + RPB, the mean attention distance)."""

from __future__ import annotations

import torch

from stylenat.attention_maps import (
    head_groups,
    module_forwards,
    na_layers,
    split_qkv,
    stage_positions,
    window_weights,
)

MAP_QUERIES = 32  # the map's mean distance is taken over at most this many queries per side (a strided grid)


def query_grid(resolution: int, per_side: int = MAP_QUERIES):
    """Rows and columns [N] of every query of a stage up to ``per_side`` per side, else of a centred strided
    grid of per_side x per_side queries (the mean distance of the map, estimated at a click's cost)."""
    step = max(1, resolution // per_side)
    axis = torch.arange(step // 2, resolution, step)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    return ys.flatten(), xs.flatten()


def distance_at(weights, rows, cols, ys, xs) -> torch.Tensor:
    """Mean attention distance per query [N] (weights [N, k, k] summing to 1 over the window; key rows /
    columns [N, k]; queries ys, xs [N]), in stage-grid units."""
    dy = (rows - ys[:, None]).float()[:, :, None]
    dx = (cols - xs[:, None]).float()[:, None, :]
    return (weights * (dy.square() + dx.square()).sqrt().to(weights.device)).sum((1, 2))


def attention_at(G, ws: torch.Tensor, y: int, x: int) -> dict:
    """ws [1, n_latent, w_dim]; query pixel (y, x) of the output image -> JSON-able dict: per NA layer
    (stage by stage) the query on the stage grid and per head group its kernel, dilation, heads, the k x k
    weights (mean over the group's heads), the keys' (row, column) on the stage grid, the mean distance of
    this query's attention and the mean over the map's queries (every one up to 32x32, else a strided 32x32
    grid; stage-grid units and image pixels; per head, then averaged over the group's heads)."""
    R = G.resolution
    layers = na_layers(G)
    out = {layer.name: None for layer in layers}

    def hook_for(layer):
        ys, xs = stage_positions([[y, x]], R, layer.stage_resolution)
        grid_ys, grid_xs = query_grid(layer.stage_resolution)
        scale = R / layer.stage_resolution

        def record(module, inputs, qkv):
            q, k = split_qkv(layer.attn, qkv.detach())
            groups = []
            for g, heads, kernel, dilation, rpb in head_groups(layer.attn):
                weights, rows, cols = window_weights(q[:, heads], k[:, heads], rpb, kernel, dilation, ys, xs)
                w = weights[0].mean(0)[0]  # [k, k]: batch 0, the heads' mean, query 0
                at_query = float(distance_at(w[None], rows, cols, ys, xs)[0])
                every, r, c = window_weights(q[:, heads], k[:, heads], rpb, kernel, dilation, grid_ys, grid_xs)
                over_map = float(distance_at(every[0].flatten(0, 1), r.repeat(every.shape[1], 1),
                                             c.repeat(every.shape[1], 1), grid_ys.repeat(every.shape[1]),
                                             grid_xs.repeat(every.shape[1])).mean())
                groups.append({
                    "group": g,
                    "kernel": kernel,
                    "dilation": dilation,
                    "heads": list(range(heads.start, heads.stop)),
                    "weights": [[round(float(v), 6) for v in row] for row in w],
                    "rows": rows[0].tolist(),
                    "cols": cols[0].tolist(),
                    "distance": round(at_query, 4),
                    "distance_image_px": round(at_query * scale, 3),
                    "map_distance": round(over_map, 4),
                    "map_distance_image_px": round(over_map * scale, 3),
                })
            out[layer.name] = {
                "name": layer.name,
                "stage_resolution": layer.stage_resolution,
                "block": layer.block,
                "query": [int(ys[0]), int(xs[0])],
                "groups": groups,
            }

        return record

    handles = [layer.attn.qkv.register_forward_hook(hook_for(layer)) for layer in layers]
    try:
        with module_forwards(G):
            G.synthesis(ws.detach())
    finally:
        for handle in handles:
            handle.remove()
    missed = [name for name, value in out.items() if value is None]
    if missed:
        raise RuntimeError(f"the qkv hooks of {', '.join(missed)} did not fire")
    return {"resolution": R, "x": x, "y": y, "layers": list(out.values())}
