"""What each head group of a generator actually attends to: the true neighborhood attention weights.

For chosen seeds and query pixels, every Hydra-NA layer's weights are recomputed from its own q, k and RPB
(softmax over the k x k window of q.k * scale + rpb, NATTEN's window rule from ``ops.na.windows``), so the
maps are the ones the layer used, whatever NA backend ran it. The q, k come from forward hooks on each
layer's ``qkv`` projection: the models are not touched and sampling pays nothing for this module.

Beside the maps: the mean attention distance of every head over every query of its stage, and as an option
the reference code's proxy map (the spatially averaged query dotted with every key; it ignores the window,
the RPB and the softmax, so it is no attention weight, shown only for comparison with published figures).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from stylenat.files import atomic_write, atomic_write_bytes, atomic_write_text
from stylenat.models.attention import HydraNeighborhoodAttention
from stylenat.ops.checks import is_int
from stylenat.ops.na.windows import axis_windows
from stylenat.sampling import parse_seeds, seed_latents, to_uint8

DISTANCE_CHUNK_ELEMS = 1 << 24  # gathered key elements per chunk of queries in the distance pass


@dataclass
class NALayer:
    """One Hydra-NA layer of a generator: stage resolution, block index and the module."""

    stage_resolution: int
    block: int
    attn: HydraNeighborhoodAttention

    @property
    def name(self) -> str:
        return f"stage{self.stage_resolution}_block{self.block}"


@dataclass
class GroupMap:
    """The maps of one head group of one layer, for every seed and query."""

    name: str  # <layer>_group<g>
    layer: str
    stage_resolution: int
    block: int
    group: int
    kernel: int
    dilation: int
    heads: list[int]  # head indices in the layer
    weights: np.ndarray | list  # [n_seeds, n_queries, k, k], the mean over the group's heads
    keys: np.ndarray | None  # [n_queries, k, k, 2]: (row, column) of each key on the stage grid
    distance: np.ndarray | list  # [n_seeds, heads]: mean attention distance over every query (grid units)

    def describe(self) -> dict:
        """The group as meta.json lists it."""
        keys = ("name", "stage_resolution", "block", "group", "kernel", "dilation", "heads")
        return {key: getattr(self, key) for key in keys}


@dataclass
class AttentionMaps:
    """Everything ``attention_maps`` measured; ``write_attention_maps`` turns it into files."""

    seeds: list[int]
    image_resolution: int
    queries: list[list[int]]  # [y, x] in pixels of the output image
    images: np.ndarray  # [n_seeds, R, R, 3] uint8
    groups: list[GroupMap]
    proxies: dict[str, np.ndarray] = field(default_factory=dict)  # layer -> [n_seeds, heads, r, r]


def na_layers(G) -> list[NALayer]:
    """Every Hydra-NA layer of generator G, stage by stage (the 4x4 full-attention stage has none)."""
    return [
        NALayer(stage.size, b, block.attn)
        for stage in G.stages
        for b, block in enumerate(stage.blocks)
        if isinstance(block.attn, HydraNeighborhoodAttention)
    ]


def select_layers(G, layers=None) -> list[NALayer]:
    """The layers named in ``layers`` (None: all); an entry is a layer (``stage16_block0``), a stage
    (``stage16``) or a stage resolution (16). An unknown entry is one ValueError listing the choices."""
    available = na_layers(G)
    if layers is None:
        return available
    chosen = []
    for entry in [layers] if isinstance(layers, (str, int)) else layers:
        key = f"stage{entry}" if is_int(entry) else str(entry)
        matches = [layer for layer in available if key in (layer.name, f"stage{layer.stage_resolution}")]
        if not matches:
            names = ", ".join(layer.name for layer in available)
            raise ValueError(
                f"layers: {entry!r} is not a neighborhood attention layer of this generator "
                f"(layers: {names}; or a whole stage: stage<resolution>)"
            )
        chosen += [layer for layer in matches if layer not in chosen]
    return sorted(chosen, key=lambda layer: (layer.stage_resolution, layer.block))


def check_queries(queries, resolution: int) -> list[list[int]]:
    """Query pixels as [[y, x], ...] inside a ``resolution`` x ``resolution`` image, else one ValueError."""
    if isinstance(queries, (str, bytes)) or not hasattr(queries, "__len__") or len(queries) == 0:
        raise ValueError(f"queries={queries!r}: expected a non-empty list of [y, x] pixel positions")
    checked = []
    for i, q in enumerate(queries):
        pair = list(q) if hasattr(q, "__len__") and not isinstance(q, (str, bytes)) else None
        if pair is None or len(pair) != 2 or not all(is_int(v) for v in pair):
            raise ValueError(f"queries[{i}]={q!r}: expected [y, x], two integer pixel positions")
        if not all(0 <= v < resolution for v in pair):
            raise ValueError(
                f"queries[{i}]={pair}: outside the {resolution}x{resolution} image (0 <= y, x < {resolution})"
            )
        checked.append(pair)
    return checked


def stage_positions(queries, image_resolution: int, stage_resolution: int):
    """Rows and columns [N] of the query pixels on a stage grid: floor(p * r / R)."""
    grid = torch.tensor(queries, dtype=torch.long) * stage_resolution // image_resolution
    return grid[:, 0], grid[:, 1]


def window_keys(ys, xs, height: int, width: int, kernel: int, dilation: int):
    """Per query (rows ys, columns xs [N]): key rows [N, k], key columns [N, k] and their RPB indices
    (key - query in group units + k - 1), per axis; the window itself is the product of the two."""
    m = torch.arange(kernel)

    def axis(pos, length):
        group, j, start = (t[pos] for t in axis_windows(length, kernel, dilation))
        member = start[:, None] + m  # window members, in group units
        return group[:, None] + dilation * member, member - j[:, None] + kernel - 1

    rows, rel_rows = axis(ys.cpu(), height)
    cols, rel_cols = axis(xs.cpu(), width)
    return rows, cols, rel_rows, rel_cols


def window_weights(q, k, rpb, kernel: int, dilation: int, ys, xs):
    """Attention weights of the queries at (ys, xs): q (already scaled), k [B, heads, H, W, D], rpb
    [heads, 2k-1, 2k-1] or None -> (weights [B, heads, N, k, k] in float32, key rows [N, k], key columns
    [N, k]). The softmax runs over the k x k window of q.k + rpb."""
    height, width = q.shape[2], q.shape[3]
    rows, cols, rel_rows, rel_cols = window_keys(ys, xs, height, width, kernel, dilation)
    device = q.device
    r, c = rows.to(device), cols.to(device)
    keys = k[:, :, r[:, :, None], c[:, None, :]].float()  # [B, heads, N, k, k, D]
    query = q[:, :, ys.to(device), xs.to(device)].float()  # [B, heads, N, D]
    logits = torch.einsum("bhnd,bhnijd->bhnij", query, keys)
    if rpb is not None:
        logits = logits + rpb.float()[:, rel_rows.to(device)[:, :, None], rel_cols.to(device)[:, None, :]]
    weights = logits.flatten(-2).softmax(-1).view_as(logits)
    return weights, rows, cols


def mean_distance(q, k, rpb, kernel: int, dilation: int) -> torch.Tensor:
    """Mean attention distance per sample and head [B, heads]: sum over keys of weight x Euclidean distance
    (stage-grid units) between query and key, averaged over every query of the map (in chunks)."""
    batch, heads, height, width, dim = q.shape
    chunk = max(1, DISTANCE_CHUNK_ELEMS // (batch * heads * kernel * kernel * dim))
    positions = torch.arange(height * width)
    total = torch.zeros(batch, heads, device=q.device)
    for part in positions.split(chunk):
        ys, xs = part // width, part % width
        weights, rows, cols = window_weights(q, k, rpb, kernel, dilation, ys, xs)
        dy = (rows - ys[:, None]).float()[:, :, None]
        dx = (cols - xs[:, None]).float()[:, None, :]
        distance = (dy.square() + dx.square()).sqrt().to(q.device)  # [N, k, k]
        total += (weights * distance).sum((2, 3, 4))
    return total / (height * width)


def split_qkv(attn: HydraNeighborhoodAttention, qkv):
    """A layer's qkv projection output [B, H, W, 3C] -> q (scaled by head_dim^-0.5, as na2d does), k, each
    [B, heads, H, W, D] in head order: the layout ``HydraNeighborhoodAttention.attend`` reads."""
    B, H, W, _ = qkv.shape
    q, k, _ = qkv.view(B, H, W, 3, attn.num_heads, attn.head_dim).permute(3, 0, 4, 1, 2, 5).unbind(0)
    return q * attn.head_dim**-0.5, k


def head_groups(attn: HydraNeighborhoodAttention):
    """(group index, head slice, kernel, dilation, rpb table or None) per head group, in head order."""
    start = 0
    for g, (heads, kernel, dilation) in enumerate(zip(attn.group_heads, attn.kernels, attn.dilations)):
        yield g, slice(start, start + heads), kernel, dilation, None if attn.rpb is None else attn.rpb[g]
        start += heads


def proxy_map(attn: HydraNeighborhoodAttention, qkv) -> torch.Tensor:
    """The reference code's map [B, heads, H, W]: the mean (scaled) query of the whole map dotted with every
    key. Not an attention weight: no window, no RPB, no softmax."""
    q, k = split_qkv(attn, qkv)
    return torch.einsum("bhd,bhyxd->bhyx", q.float().mean((2, 3)), k.float())


@contextlib.contextmanager
def module_forwards(G):
    """Run G through its modules' own forwards, so hooks on them fire: its "modules" inference path (the
    fused CPU path uses the projections' weights directly), without autograd."""
    with torch.no_grad(), G.using_inference_path("modules"):
        yield


def attention_maps(G, seeds, queries, layers=None, truncation_psi: float = 1.0, proxy: bool = False):
    """The attention maps of generator G for ``seeds`` (generate.py's seeds) at the ``queries`` [[y, x], ...]
    (pixels of the output image; a stage of resolution r sees floor(p * r / R)), for the chosen layers
    (see select_layers) -> AttentionMaps. One seed at a time; the hooks keep only the results."""
    seeds = parse_seeds(seeds)
    if not seeds:
        raise ValueError("seeds: expected at least one seed")
    R = G.resolution
    queries = check_queries(queries, R)
    chosen = select_layers(G, layers)
    groups = {layer.name: [] for layer in chosen}
    for layer in chosen:
        for g, heads, kernel, dilation, _ in head_groups(layer.attn):
            head_list = list(range(heads.start, heads.stop))
            spec = (
                f"{layer.name}_group{g}",
                layer.name,
                layer.stage_resolution,
                layer.block,
                g,
                kernel,
                dilation,
            )
            groups[layer.name].append(GroupMap(*spec, head_list, weights=[], keys=None, distance=[]))
    proxies = {layer.name: [] for layer in chosen} if proxy else {}

    def hook_for(layer):
        ys, xs = stage_positions(queries, R, layer.stage_resolution)

        def record(module, inputs, qkv):
            q, k = split_qkv(layer.attn, qkv.detach())
            for out, (_, heads, kernel, dilation, rpb) in zip(groups[layer.name], head_groups(layer.attn)):
                weights, rows, cols = window_weights(q[:, heads], k[:, heads], rpb, kernel, dilation, ys, xs)
                out.weights.append(weights.mean(1).cpu())
                out.distance.append(mean_distance(q[:, heads], k[:, heads], rpb, kernel, dilation).cpu())
                size = (-1, kernel, kernel)
                out.keys = torch.stack([rows[:, :, None].expand(size), cols[:, None, :].expand(size)], -1)
            if proxy:
                proxies[layer.name].append(proxy_map(layer.attn, qkv.detach()).cpu())

        return record

    device = next(G.parameters()).device
    images = []
    handles = [layer.attn.qkv.register_forward_hook(hook_for(layer)) for layer in chosen]
    try:
        with module_forwards(G):
            for seed in seeds:
                z = seed_latents([seed], G.z_dim, device)
                images.append(to_uint8(G(z, truncation_psi=truncation_psi).detach().float())[0])
    finally:
        for handle in handles:
            handle.remove()
    flat = [g for layer in chosen for g in groups[layer.name]]
    missed = sorted({g.layer for g in flat if len(g.weights) != len(seeds)})
    if missed:
        raise RuntimeError(f"the qkv hooks of {', '.join(missed)} did not fire once per seed")
    for g in flat:
        g.weights, g.keys, g.distance = (
            torch.cat(g.weights).numpy(),
            g.keys.numpy(),
            torch.cat(g.distance).numpy(),
        )
    proxy_arrays = {name: torch.cat(maps).numpy() for name, maps in proxies.items()}
    return AttentionMaps(seeds, R, queries, np.stack(images), flat, proxy_arrays)


# ---------------------------------------------------------------------------------------------- outputs
def distance_summary(maps: AttentionMaps) -> dict:
    """attention_distance.json: per layer and head group, and per stage and group (mean of the blocks), the
    mean attention distance over every query and seed, in stage-grid units and in output-image pixels."""
    R = maps.image_resolution

    def entry(group, per_head):
        scale = R / group.stage_resolution
        return {
            **{k: v for k, v in group.describe().items() if k not in ("name", "block")},
            "distance": float(per_head.mean()),
            "distance_image_px": float(per_head.mean() * scale),
            "per_head": [float(v) for v in per_head],
        }

    layers = [{"name": g.name, "block": g.block, **entry(g, g.distance.mean(0))} for g in maps.groups]
    stages = {}
    for g in maps.groups:
        stages.setdefault((g.stage_resolution, g.group), []).append(g)
    per_stage = [
        entry(blocks[0], np.mean([b.distance.mean(0) for b in blocks], axis=0)) for blocks in stages.values()
    ]
    return {
        "image_resolution": R,
        "seeds": maps.seeds,
        "averaged_over": "every query of the stage grid, the seeds, and (per stage) its blocks",
        "stages": per_stage,
        "layers": layers,
    }


def distance_table(summary: dict) -> str:
    """The per-stage summary as a text table."""
    lines = ["stage  group  kernel  dilation  heads  distance (stage px)  distance (image px)"]
    for s in summary["stages"]:
        r = s["stage_resolution"]
        lines.append(
            f"{f'{r}x{r}':>5}  {s['group']:>5}  {s['kernel']:>6}  {s['dilation']:>8}  {len(s['heads']):>5}  "
            f"{s['distance']:>19.3f}  {s['distance_image_px']:>19.2f}"
        )
    return "\n".join(lines)


def write_attention_maps(maps: AttentionMaps, outdir, figures: bool = True) -> Path:
    """attention.npz, meta.json, attention_distance.json (+ proxy.npz) and, with ``figures``, the overlay
    PNGs into ``outdir``; every file written atomically. Returns outdir."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for g in maps.groups:
        arrays[f"{g.name}_weights"] = g.weights.astype(np.float32)
        arrays[f"{g.name}_keys"] = g.keys.astype(np.int64)
    atomic_write(outdir / "attention.npz", lambda f: np.savez(f, **arrays))
    groups = [g.describe() for g in maps.groups]
    meta = {"image_resolution": maps.image_resolution, "queries": maps.queries, "arrays": groups}
    atomic_write_text(outdir / "meta.json", json.dumps(meta, indent=2) + "\n")
    atomic_write_text(outdir / "attention_distance.json", json.dumps(distance_summary(maps), indent=2) + "\n")
    if maps.proxies:
        atomic_write(outdir / "proxy.npz", lambda f: np.savez(f, **maps.proxies))
    if figures:
        for i, seed in enumerate(maps.seeds):
            atomic_write(
                outdir / f"seed{seed:04d}.png", lambda f, i=i: Image.fromarray(maps.images[i]).save(f, "png")
            )
            for layer, groups in itertools.groupby(maps.groups, key=lambda g: g.layer):
                groups = list(groups)
                atomic_write_bytes(outdir / f"seed{seed:04d}_{layer}.png", overlay_figure(maps, i, groups))
                if layer in maps.proxies:
                    png = proxy_figure(maps.proxies[layer][i], f"seed {seed}, {layer}: proxy (mean q . k)")
                    atomic_write_bytes(outdir / f"proxy_seed{seed:04d}_{layer}.png", png)
    return outdir


def stage_image(image: np.ndarray, resolution: int) -> np.ndarray:
    """An output image [R, R, 3] uint8 box-averaged to a stage grid -> [r, r, 3] floats in [0, 1]."""
    t = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(t, size=(resolution, resolution), mode="area")[0].permute(1, 2, 0).numpy()


def overlay(base: np.ndarray, weights: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The stage image dimmed, its window keys coloured by weight (inferno, scaled to the largest)."""
    from matplotlib import colormaps

    heat = np.zeros(base.shape[:2])
    mask = np.zeros(base.shape[:2], dtype=bool)
    heat[keys[..., 0], keys[..., 1]] = weights / max(float(weights.max()), 1e-12)
    mask[keys[..., 0], keys[..., 1]] = True
    out = base * 0.35
    out[mask] = 0.2 * base[mask] + 0.8 * colormaps["inferno"](heat[mask])[:, :3]
    return out


def _png(rows: int, cols: int, draw) -> bytes:
    """A figure of rows x cols panels drawn by ``draw(axes)`` on matplotlib's Agg canvas, as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.8 * cols, 2.8 * rows + 0.3), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    draw(fig, axes)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def overlay_figure(maps: AttentionMaps, i: int, groups: list[GroupMap]) -> bytes:
    """One layer for seed i: a row per query, the head groups side by side on the stage-resolution image
    (the local group's small window next to the dilated group's sparse grid)."""
    r = groups[0].stage_resolution
    base = stage_image(maps.images[i], r)
    ys, xs = stage_positions(maps.queries, maps.image_resolution, r)

    def draw(fig, axes):
        fig.suptitle(f"seed {maps.seeds[i]}, {groups[0].layer} ({r}x{r})")
        for n, (y, x) in enumerate(maps.queries):
            for ax, g in zip(axes[n], groups):
                ax.imshow(overlay(base, g.weights[i, n], g.keys[n]), interpolation="nearest")
                ax.plot(xs[n], ys[n], marker="s", markersize=5, mfc="none", mec="cyan")
                heads = f"{g.heads[0]}-{g.heads[-1]}" if len(g.heads) > 1 else f"{g.heads[0]}"
                ax.set_title(
                    f"({y},{x}): group {g.group}, k={g.kernel} d={g.dilation}, heads {heads}", fontsize=7
                )

    return _png(len(maps.queries), len(groups), draw)


def proxy_figure(proxy: np.ndarray, title: str) -> bytes:
    """The reference code's proxy maps of one layer [heads, r, r], one panel per head."""

    def draw(fig, axes):
        fig.suptitle(title, fontsize=9)
        for h, ax in enumerate(axes[0]):
            ax.imshow(proxy[h], cmap="viridis", interpolation="nearest")
            ax.set_title(f"head {h}", fontsize=7)

    return _png(1, proxy.shape[0], draw)


def run_attention_maps(
    checkpoint,
    queries,
    seeds=(0,),
    outdir="attention_maps",
    layers=None,
    truncation_psi: float = 1.0,
    proxy: bool = False,
    figures: bool = True,
    device: str = "auto",
) -> AttentionMaps:
    """scripts/attention_maps.py's body: load a snapshot (ours, converted or official), measure, write."""
    from stylenat.distributed import resolve_device
    from stylenat.reference import load_generator

    G = load_generator(checkpoint, device=resolve_device(device))
    maps = attention_maps(G, seeds, queries, layers, truncation_psi, proxy)
    write_attention_maps(maps, outdir, figures)
    return maps
