"""The viewer's attention panel: every head group's real attention weights at one clicked pixel, for the
image on screen (its ws: truncation, class and mixing included), built from ``stylenat.attention_maps``'
pieces (the qkv hooks, NATTEN's window rule, the softmax over q.k + RPB, the mean attention distance)."""

from __future__ import annotations

import torch

from stylenat.attention_maps import (
    head_groups,
    mean_distance,
    module_forwards,
    na_layers,
    split_qkv,
    stage_positions,
    window_weights,
)


def attention_at(G, ws: torch.Tensor, y: int, x: int) -> dict:
    """ws [1, n_latent, w_dim]; query pixel (y, x) of the output image -> JSON-able dict: per NA layer
    (stage by stage) the query on the stage grid and per head group its kernel, dilation, heads, the k x k
    weights (mean over the group's heads), the keys' (row, column) on the stage grid, the mean distance of
    this query's attention and the mean over every query of the map (stage-grid units and image pixels)."""
    R = G.resolution
    layers = na_layers(G)
    out = {layer.name: None for layer in layers}

    def hook_for(layer):
        ys, xs = stage_positions([[y, x]], R, layer.stage_resolution)
        scale = R / layer.stage_resolution

        def record(module, inputs, qkv):
            q, k = split_qkv(layer.attn, qkv.detach())
            groups = []
            for g, heads, kernel, dilation, rpb in head_groups(layer.attn):
                weights, rows, cols = window_weights(q[:, heads], k[:, heads], rpb, kernel, dilation, ys, xs)
                w = weights[0].mean(0)[0]  # [k, k]: batch 0, the heads' mean, query 0
                dy = (rows[0] - ys[0]).float()[:, None]
                dx = (cols[0] - xs[0]).float()[None, :]
                at_query = float((w * (dy.square() + dx.square()).sqrt()).sum())
                over_map = float(mean_distance(q[:, heads], k[:, heads], rpb, kernel, dilation)[0].mean())
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
