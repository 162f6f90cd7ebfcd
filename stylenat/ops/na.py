"""2-D neighborhood attention with NATTEN's exact semantics.

Three backends, picked per call (``na2d(..., backend=)``; "auto" picks natten, then flex, then torch on
CUDA, and torch on every other device):

* ``torch``: pure PyTorch, every device, relative position bias (RPB) supported. Queries are cut into
  tiles (per dilation group); a tile attends to the halo of keys covering all its windows (tile + k - 1
  keys per axis, clamped inward) through an additive mask: -inf outside a query's window, RPB inside.
  Tiles with the same window pattern share one small mask. A custom autograd function runs the tiles
  in chunks of bounded size with explicit matmuls and softmax (on the CPU faster than
  scaled_dot_product_attention with a float mask, and the RPB gradient is just the summed logit
  gradient); the backward recomputes the probabilities unless they are small, so nothing of size
  tokens x halo outlives a chunk.
* ``natten``: NATTEN's fused CUDA kernels (``natten.na2d``, natten >= 0.20 built with its CUDA library,
  ``natten.HAS_LIBNATTEN``) when natten imports, the tensors are on CUDA and no RPB is given (NATTEN >= 0.20
  has no RPB). Any other install (0.17's submodule ``natten.na2d``, a build without libnatten, whose
  fallback is a dense score matrix) counts as unavailable, the reason in the backend log line.
* ``flex``: ``torch.nn.attention.flex_attention`` compiled into a block-sparse fused kernel, RPB supported
  (``stylenat.ops.na_flex``). Forward and backward on CUDA; forward only on the CPU (one C++ compile per
  problem shape), so "auto" never picks it there, and forcing it where it cannot run raises.

The window rule (per axis of length L, odd kernel k, dilation d, k*d <= L): token i is in group i mod d;
inside its group (the L_g positions with the same remainder) its window is the k consecutive group
members centred on it, shifted inward at the borders so it always holds k members. The 2-D window is the
product of the two axis windows; the RPB index of a key is (key - query) in group units + (k - 1).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import math
import os
import threading
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from stylenat.ops import na_flex
from stylenat.ops.na_checks import check_na_args

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "natten", "flex")
ENV_VAR = "STYLENAT_NA_BACKEND"

# Chunk budget of the torch backend, in attention-logit elements. On the CPU a chunk should stay
# cache-sized; on accelerators fewer, larger launches win.
_CPU_CHUNK_ELEMS = 1 << 20
_GPU_CHUNK_ELEMS = 1 << 27

# What the forward keeps for the backward, per call: the attention probabilities and the gathered q, k, v
# tiles when all of them fit in this many bytes (saves the backward 3 gathers, the k and v halos ~4x the
# size of k and v; ~10% of a forward+backward on the CPU), else the probabilities alone when they fit
# (saves recomputing a matmul and a softmax per chunk), else nothing.
_KEEP_BYTES = 256 << 20

_logged_backends: set[str] = set()
_override = threading.local()  # backend_override's backend, per thread


# ----------------------------------------------------------------------------------------------------
# Window rule
# ----------------------------------------------------------------------------------------------------


def window_start(index: int, length: int, kernel_size: int, dilation: int = 1) -> int:
    """First key position of ``index``'s window along one axis (NATTEN's rule, original coordinates)."""
    group = index % dilation
    group_len = len(range(group, length, dilation))
    j = index // dilation
    start_j = min(max(j - kernel_size // 2, 0), group_len - kernel_size)
    return group + dilation * start_j


def neighborhood(length: int, kernel_size: int, dilation: int = 1) -> list[list[int]]:
    """Key positions of every query's window along one axis (for tests, docs and debugging)."""
    _check_axis(length, kernel_size, dilation, "length")
    return [
        [window_start(i, length, kernel_size, dilation) + dilation * m for m in range(kernel_size)]
        for i in range(length)
    ]


def _check_axis(length: int, kernel_size: int, dilation: int, name: str) -> None:
    if kernel_size * dilation > length:
        raise ValueError(
            f"kernel_size {kernel_size} * dilation {dilation} = {kernel_size * dilation} exceeds {name} {length}"
        )


# ----------------------------------------------------------------------------------------------------
# Tiling plans (built once per shape, cached)
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _AxisPlan:
    """Query tiles and key halos along one axis, all dilation groups stacked."""

    tile: int  # queries per tile
    halo: int  # keys per tile
    q_pos: Tensor  # [n, tile] original positions (a partial last tile repeats its last query)
    q_valid: Tensor  # [n, tile] bool, False for the repeats
    k_pos: Tensor  # [n, halo] original positions (slots past a short group repeat a member)
    rel: Tensor  # [n, tile, halo] (key - query) in group units + k - 1, or -1 outside the window
    slot: Tensor  # [L] (tile, position in tile) of every position, flattened as tile * T + i


def _pick_tiles(height: int, width: int, kernel_size: int, dilation: int) -> tuple[int, int]:
    """Queries per tile along (y, x).

    Short groups (the dilated heads: StyleNAT's groups are 8 long) are one tile each, so the halo is the
    whole group. Otherwise 4 x 8 tiles: a tile of T queries attends to a halo of T + k - 1 keys per axis,
    so small tiles waste fewer logits, while the matmuls want many queries per tile; on a 2-core CPU
    4 x 8 (32 queries, 10 x 14 keys for k=7) measured ~15% faster than 8 x 8 and 4 x 4.
    """
    tiles = []
    for length, default in ((height, 4), (width, 8)):
        group_len = -(-length // dilation)
        # Bigger kernels get tiles of about half a kernel, which bounds the halo waste.
        tiles.append(group_len if group_len <= 2 * kernel_size else max(default, (kernel_size + 1) // 2))
    return tiles[0], tiles[1]


@functools.lru_cache(maxsize=256)
def _axis_plan(length: int, kernel_size: int, dilation: int, tile: int) -> _AxisPlan:
    r = kernel_size // 2
    max_group = -(-length // dilation)
    tile = min(tile, max_group)
    halo = min(tile + kernel_size - 1, max_group)
    q_pos, q_valid, k_pos, rel = [], [], [], []
    slot = [0] * length
    for g in range(dilation):
        group_len = len(range(g, length, dilation))
        for t0 in range(0, group_len, tile):
            qj = [min(t0 + i, group_len - 1) for i in range(tile)]
            starts = [min(max(j - r, 0), group_len - kernel_size) for j in qj]
            h0 = max(min(min(starts), group_len - halo), 0)
            kj = [h0 + m for m in range(halo)]
            for i in range(min(tile, group_len - t0)):
                slot[g + dilation * (t0 + i)] = len(q_pos) * tile + i
            q_pos.append([g + dilation * j for j in qj])
            q_valid.append([t0 + i < group_len for i in range(tile)])
            k_pos.append([g + dilation * min(j, group_len - 1) for j in kj])
            rel.append(
                [
                    [
                        (j - q) + kernel_size - 1 if (s <= j < s + kernel_size and j < group_len) else -1
                        for j in kj
                    ]
                    for q, s in zip(qj, starts)
                ]
            )
    return _AxisPlan(
        tile=tile,
        halo=halo,
        q_pos=torch.tensor(q_pos),
        q_valid=torch.tensor(q_valid),
        k_pos=torch.tensor(k_pos),
        rel=torch.tensor(rel),
        slot=torch.tensor(slot),
    )


def _dedupe(rel: Tensor) -> tuple[list[int], Tensor]:
    """Kind of every axis tile (tiles with the same window pattern share one) and the patterns."""
    kinds: dict[tuple, int] = {}
    ids = [kinds.setdefault(tuple(t.flatten().tolist()), len(kinds)) for t in rel]
    first = {kind: i for i, kind in reversed(list(enumerate(ids)))}
    return ids, rel[[first[kind] for kind in range(len(kinds))]]


def _affine(pos: Tensor) -> tuple[int, int, int] | None:
    """(start, tile_step, step) with pos[m, i] == start + tile_step * m + step * i, or None."""
    n, t = pos.shape
    start = int(pos[0, 0])
    tile_step = int(pos[1, 0] - pos[0, 0]) if n > 1 else 0
    step = int(pos[0, 1] - pos[0, 0]) if t > 1 else 0
    fit = start + tile_step * torch.arange(n)[:, None] + step * torch.arange(t)[None, :]
    return (start, tile_step, step) if torch.equal(fit, pos) else None


def _disjoint_every(pos: Tensor) -> int:
    """Smallest m such that tiles m apart never share a position (so their halos can be added at once)."""
    sets = [set(row.tolist()) for row in pos]
    for m in range(1, len(sets) + 1):
        if all(sets[a].isdisjoint(sets[b]) for a in range(len(sets)) for b in range(a + m, len(sets), m)):
            return m
    return len(sets)


@dataclass(frozen=True)
class _Grid:
    """The tiles of a piece as an affine grid: per axis, position = start + tile_step * tile + step * i.
    Its query tiles and key halos are then strided views of the feature map: copies and in-place adds
    of views replace index_select / index_add_ (about twice as fast on the CPU)."""

    shape: tuple[int, int]  # tiles along y, x
    q_runs: tuple[tuple[int, int, int], tuple[int, int, int]]  # (start, tile_step, step) along y, x
    k_runs: tuple[tuple[int, int, int], tuple[int, int, int]]
    q_size: tuple[int, int]  # tile
    k_size: tuple[int, int]  # halo
    fold_every: tuple[int, int]  # halos of tiles this many tiles apart along y (x) are disjoint

    def view(self, x: Tensor, keys: bool, first=(0, 0), every=(1, 1)) -> Tensor:
        """Tiles of x [cb, ch, H, W, D] as [cb, ch, ny, nx, rows, cols, D]; with first/every, only the
        tiles first[a] + every[a] * n along each axis a."""
        (y0, y_tile, y_step), (x0, x_tile, x_step) = self.k_runs if keys else self.q_runs
        rows, cols = self.k_size if keys else self.q_size
        n_y, n_x = (len(range(first[a], self.shape[a], every[a])) for a in range(2))
        s_b, s_h, s_y, s_x, s_d = x.stride()
        return x.as_strided(
            (x.shape[0], x.shape[1], n_y, n_x, rows, cols, x.shape[4]),
            (s_b, s_h, y_tile * every[0] * s_y, x_tile * every[1] * s_x, y_step * s_y, x_step * s_x, s_d),
            x.storage_offset() + (y0 + first[0] * y_tile) * s_y + (x0 + first[1] * x_tile) * s_x,
        )


def _grid(py: _AxisPlan, px: _AxisPlan, ty: list[int], tx: list[int]) -> _Grid | None:
    """The affine grid of the tiles ty x tx (row-major), or None when positions are not affine."""
    q_runs = (_affine(py.q_pos[ty]), _affine(px.q_pos[tx]))
    k_runs = (_affine(py.k_pos[ty]), _affine(px.k_pos[tx]))
    if None in q_runs or None in k_runs:
        return None
    if any(run[2] == 0 and size > 1 for run, size in zip(k_runs, (py.halo, px.halo))):
        return None  # a halo repeating a key (short groups): in-place adds would collide
    return _Grid(
        shape=(len(ty), len(tx)),
        q_runs=q_runs,
        k_runs=k_runs,
        q_size=(py.tile, px.tile),
        k_size=(py.halo, px.halo),
        fold_every=(_disjoint_every(py.k_pos[ty]), _disjoint_every(px.k_pos[tx])),
    )


@dataclass(frozen=True, eq=False)
class _Piece:
    """A run of 2-D tiles of one kind, processed together."""

    kind: int
    n_tiles: int
    slot0: int  # first query slot of the piece in the call's slot space (pieces in order)
    q_index: Tensor  # [n_tiles * tile_q] token of every query slot (tokens are y * W + x)
    k_index: Tensor  # [n_tiles * tile_k] token of every key slot
    q_valid: Tensor | None  # [n_tiles, tile_q, 1] bool, False on repeated query slots (None: all real)
    grid: _Grid | None  # strided layout of the tiles when they form an affine grid
    cache: dict = field(default_factory=dict, repr=False)  # index tables for stacked items


@dataclass(frozen=True, eq=False)
class _Plan:
    """2-D tiling. Tiles are grouped by kind (their mask pattern), so a mask is [tile_q, tile_k] per kind
    and broadcasts over every tile of a piece: masks stay tiny at any resolution."""

    tile_q: int
    tile_k: int
    pieces: tuple[_Piece, ...]
    bias_index: Tensor  # [kinds, tile_q, tile_k] flat RPB index, (2k-1)^2 outside the window
    n_slots: int  # query slots of all pieces
    token_slot: Tensor  # [H * W] the slot holding each token's query
    direct: bool  # every piece is an affine grid of real queries: results go straight to the tokens
    strided: bool  # every piece is an affine grid: gathers read strided views (any input layout)
    cache: dict = field(default_factory=dict, repr=False)


@functools.lru_cache(maxsize=256)
def _plan(height: int, width: int, kernel_size: int, dilation: int, tiles: tuple[int, int], device) -> _Plan:
    py = _axis_plan(height, kernel_size, dilation, tiles[0])
    px = _axis_plan(width, kernel_size, dilation, tiles[1])
    kind_y, rel_y = _dedupe(py.rel)
    kind_x, rel_x = _dedupe(px.rel)
    tile_q, tile_k = py.tile * px.tile, py.halo * px.halo

    span = 2 * kernel_size - 1
    ry = rel_y[:, None, :, None, :, None]  # [kinds_y, 1, ty, 1, hy, 1]
    rx = rel_x[None, :, None, :, None, :]  # [1, kinds_x, 1, tx, 1, hx]
    bias_index = torch.where((ry >= 0) & (rx >= 0), ry * span + rx, span * span)

    # A piece: rows of y tiles of one kind x all x tiles of one kind (a rectangle of tiles, row-major).
    budget = _GPU_CHUNK_ELEMS if torch.device(device).type != "cpu" else _CPU_CHUNK_ELEMS
    per_piece = max(1, budget // (tile_q * tile_k))
    pieces, slot0 = [], 0
    token_slot = torch.empty(height * width, dtype=torch.long)
    for ky in range(len(rel_y)):
        tiles_y = [t for t, kind in enumerate(kind_y) if kind == ky]
        for kx in range(len(rel_x)):
            tiles_x = [t for t, kind in enumerate(kind_x) if kind == kx]
            rows = max(1, per_piece // len(tiles_x))
            for r in range(0, len(tiles_y), rows):
                part_y = tiles_y[r : r + rows]
                ty = torch.tensor(part_y).repeat_interleave(len(tiles_x))
                tx = torch.tensor(tiles_x).repeat(len(part_y))
                q_index = (py.q_pos[ty][:, :, None] * width + px.q_pos[tx][:, None, :]).reshape(-1)
                k_index = py.k_pos[ty][:, :, None] * width + px.k_pos[tx][:, None, :]
                valid = (py.q_valid[ty][:, :, None] & px.q_valid[tx][:, None, :]).reshape(-1)
                token_slot[q_index[valid]] = slot0 + valid.nonzero().squeeze(1)
                all_valid = bool(valid.all())
                pieces.append(
                    _Piece(
                        kind=ky * len(rel_x) + kx,
                        n_tiles=len(ty),
                        slot0=slot0,
                        q_index=q_index.to(device),
                        k_index=k_index.reshape(-1).to(device),
                        q_valid=None if all_valid else valid.view(len(ty), tile_q, 1).to(device),
                        grid=_grid(py, px, part_y, tiles_x),
                    )
                )
                slot0 += q_index.numel()
    return _Plan(
        tile_q=tile_q,
        tile_k=tile_k,
        pieces=tuple(pieces),
        bias_index=bias_index.reshape(-1, tile_q, tile_k).to(device),
        n_slots=slot0,
        token_slot=token_slot.to(device),
        direct=all(p.grid is not None and p.q_valid is None for p in pieces),
        strided=all(p.grid is not None for p in pieces),
    )


@functools.lru_cache(maxsize=256)
def _window_mask(plan: _Plan, kernel_size: int, dtype: torch.dtype) -> Tensor:
    """Additive masks [1, kinds, tile_q, tile_k] without RPB: 0 inside each query's window, -inf outside."""
    outside = plan.bias_index == (2 * kernel_size - 1) ** 2
    zero = torch.zeros((), dtype=dtype, device=outside.device)
    return zero.masked_fill(outside, float("-inf")).unsqueeze(0)


def _bias_masks(rpb: Tensor, plan: _Plan) -> Tensor:
    """Additive masks [heads, kinds, tile_q, tile_k]: each head's RPB inside the windows, -inf outside."""
    table = torch.cat([rpb.flatten(1), rpb.new_full((rpb.shape[0], 1), float("-inf"))], dim=1)
    return table.index_select(1, plan.bias_index.view(-1)).view(rpb.shape[0], *plan.bias_index.shape)


def _bias_grad(grad_masks: Tensor, plan: _Plan, rpb: Tensor) -> Tensor:
    """Sum gradients of the masks [heads, kinds, tile_q, tile_k] into the RPB tables."""
    n_bins = rpb.shape[1] * rpb.shape[2]
    table = grad_masks.new_zeros(rpb.shape[0], n_bins + 1)
    table.index_add_(1, plan.bias_index.view(-1), grad_masks.flatten(1))
    return table[:, :n_bins].view(rpb.shape)


# ----------------------------------------------------------------------------------------------------
# torch backend
# ----------------------------------------------------------------------------------------------------


def _blocks(piece: _Piece, plan: _Plan, batch: int, heads: int, device: torch.device):
    """(b0, b1, h0, h1): rectangles of (batch, head) items, each within the logit budget."""
    budget = _GPU_CHUNK_ELEMS if device.type != "cpu" else _CPU_CHUNK_ELEMS
    step = max(1, budget // (piece.n_tiles * plan.tile_q * plan.tile_k))
    if step >= heads:
        per = step // heads
        for b0 in range(0, batch, per):
            yield b0, min(b0 + per, batch), 0, heads
    else:
        for b in range(batch):
            for h0 in range(0, heads, step):
                yield b, b + 1, h0, min(h0 + step, heads)


def _chunks(plan: _Plan, batch: int, heads: int, device: torch.device):
    """(piece, items) in a fixed order (the backward replays the forward's order)."""
    for piece in plan.pieces:
        for b0, b1, h0, h1 in _blocks(piece, plan, batch, heads, device):
            yield piece, (slice(b0, b1), slice(h0, h1))


def _stacked(owner: _Piece | _Plan, name: str, n: int, stride: int) -> Tensor:
    """Index ``owner.<name>`` repeated over n stacked blocks of ``stride`` rows (cached by the owner)."""
    index = getattr(owner, name)
    if n == 1:
        return index
    key = (name, n, stride)
    if key not in owner.cache:
        offsets = torch.arange(n, device=index.device) * stride
        owner.cache[key] = (offsets[:, None] + index[None, :]).view(-1)
    return owner.cache[key]


def _flat(x: Tensor) -> Tensor | None:
    """[..., D] as rows [-1, D] when that is a view and the row ops below are best done flat: on the
    CPU one index op along dim 0 beats the same op along an inner dim (or a loop over items); on
    accelerators the batched inner-dim op is fine and avoids the stacked index tables."""
    return x.view(-1, x.shape[-1]) if x.device.type == "cpu" and x.is_contiguous() else None


class _Scratch:
    """Named scratch buffers for the chunks of a call, grown on demand and reused."""

    def __init__(self, like: Tensor):
        self.like, self.buffers = like, {}

    def __call__(self, name: str, shape) -> Tensor:
        numel = math.prod(shape)
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < numel:
            # A normal tensor even when first made under inference_mode: the buffers outlive the call, and
            # an inference tensor could not be written to by a later call outside inference_mode.
            with torch.inference_mode(False):
                buf = self.buffers[name] = self.like.new_empty(numel)
        return buf[:numel].view(shape)


_cpu_scratch = threading.local()


def _scratch(like: Tensor) -> _Scratch:
    """Scratch space for one call. On the CPU it persists per thread and dtype (a few MB, bounded by the
    chunk budget): fresh multi-MB temporaries cost page faults on every call, as the C allocator hands
    freed memory back to the OS. Accelerators have caching allocators; there it is per call."""
    if like.device.type != "cpu":
        return _Scratch(like)
    per_dtype = _cpu_scratch.__dict__.setdefault("by_dtype", {})
    if like.dtype not in per_dtype:
        per_dtype[like.dtype] = _Scratch(torch.empty(0, dtype=like.dtype))
    return per_dtype[like.dtype]


def _gather(x: Tensor, piece: _Piece, keys: bool, out: Tensor, scale: float | None = None) -> Tensor:
    """Query tiles (or key halos) of x [cb, ch, H, W, D] -> out, viewed [cb, ch, n_tiles, rows, D],
    times ``scale`` when given (fused into the copy)."""
    cb, ch, _, _, dim = x.shape
    if piece.grid is not None:
        grid = piece.grid
        size = grid.k_size if keys else grid.q_size
        dst, src = out.view(cb, ch, *grid.shape, *size, dim), grid.view(x, keys)
        if scale is None:
            dst.copy_(src)
        else:
            torch.mul(src, scale, out=dst)
        return out
    name, x = ("k_index" if keys else "q_index"), x.flatten(2, 3)
    flat = _flat(x)
    if flat is not None:
        torch.index_select(flat, 0, _stacked(piece, name, cb * ch, x.shape[2]), out=out.view(-1, dim))
    else:
        torch.index_select(x, 2, getattr(piece, name), out=out.view(cb, ch, -1, dim))
    return out if scale is None else out.mul_(scale)


def _token_major(shape, like: Tensor, zero: bool = False) -> Tensor:
    """A new [B, heads, H, W, D] tensor stored as [B, H, W, heads, D]: the layout the attention layer
    feeds to its output projection, so the result needs no permuting copy there."""
    batch, heads, height, width, dim = shape
    make = like.new_zeros if zero else like.new_empty
    return make(batch, height, width, heads, dim).permute(0, 3, 1, 2, 4)


def _like_input(x: Tensor, zero: bool = False) -> Tensor:
    """A new tensor for a result or gradient shaped like input x: x's own layout when x is dense (a plain
    tensor in, a plain tensor out; autograd accumulates such gradients into a leaf's .grad without a
    re-layout copy), else (a strided view such as the attention layer's q, k, v of one qkv tensor)
    token-major, the layout the layer's output projection reads."""
    same = torch.empty_like(x)  # keeps x's strides exactly when x is non-overlapping and dense
    if same.stride() == x.stride():
        return same.zero_() if zero else same
    return _token_major(x.shape, x, zero)


def _from_slots(slots: Tensor, plan: _Plan) -> Tensor:
    """Query-slot values [B, heads, n_slots, D] -> tokens [B, heads, H*W, D]. Results go to a slot-space
    buffer chunk by chunk and come back in one gather: far cheaper than scattering every chunk into the
    tokens (index_copy_ is slow and serial on the CPU)."""
    batch, heads, n_slots, dim = slots.shape
    flat = _flat(slots)
    if flat is not None:
        out = flat.index_select(0, _stacked(plan, "token_slot", batch * heads, n_slots))
        return out.view(batch, heads, -1, dim)
    return slots.index_select(2, plan.token_slot)


def _fold(x: Tensor, piece: _Piece, out: Tensor) -> None:
    """Add key-slot gradients x [cb, ch, n_tiles, rows, D] into out [cb, ch, H, W, D] (halos overlap)."""
    cb, ch, _, _, dim = out.shape
    if piece.grid is not None:
        grid = piece.grid
        tiles = x.view(cb, ch, *grid.shape, *grid.k_size, dim)
        every_y, every_x = grid.fold_every
        # Two distinct tiles of one class differ by a multiple of every_y rows or every_x columns of
        # tiles, so their halos are disjoint and one in-place add per class is safe.
        for fy in range(every_y):
            for fx in range(every_x):
                part = tiles[:, :, fy::every_y, fx::every_x]
                grid.view(out, keys=True, first=(fy, fx), every=grid.fold_every).add_(part)
        return
    out, x = out.flatten(2, 3), x.flatten(2, 3)
    src, dst = _flat(x), _flat(out)
    if src is not None and dst is not None:
        dst.index_add_(0, _stacked(piece, "k_index", cb * ch, out.shape[2]), src)
    else:
        out.index_add_(2, piece.k_index, x)


class _QueryResults:
    """Where chunks put their per-query results ([cb, ch, n_tiles, tile_q, D]): straight into the
    [B, heads, H, W, D] result through the tiles' strided views when the plan allows it, else into a
    query-slot buffer that one gather turns into tokens at the end (scattering every chunk with
    index_copy_ is slow and serial on the CPU)."""

    def __init__(self, like: Tensor, plan: _Plan, out: Tensor | None = None):
        self.plan, self.shape, self.out = plan, like.shape, out
        batch, heads, *_, dim = like.shape
        if plan.direct:
            self.buffer = _like_input(like) if out is None else out
        else:
            self.buffer = like.new_empty(batch, heads, plan.n_slots, dim)

    def put(self, items, piece: _Piece, x: Tensor) -> None:
        if self.plan.direct:
            grid = piece.grid
            x = x.view(*x.shape[:2], *grid.shape, *grid.q_size, x.shape[-1])
            grid.view(self.buffer[items], keys=False).copy_(x)
        else:
            self.buffer[items][:, :, piece.slot0 : piece.slot0 + x.shape[2] * x.shape[3]] = x.flatten(2, 3)

    def result(self) -> Tensor:
        if self.plan.direct:
            return self.buffer
        tokens = _from_slots(self.buffer, self.plan).view(self.shape)
        return tokens if self.out is None else self.out.copy_(tokens)


def _mask(masks: Tensor, rpb: Tensor | None, items, piece: _Piece) -> Tensor:
    """A chunk's mask [ch or 1, tile_q, tile_k]: per head with RPB, shared without."""
    return masks[items[1] if rpb is not None else slice(None), piece.kind]


def _probs(qt: Tensor, kt: Tensor, mask: Tensor, logits: Tensor, out: Tensor) -> Tensor:
    """Attention probabilities of a chunk of tiles; mask [ch, tile_q, tile_k] broadcasts over tiles.

    softmax rather than exp(logits - logsumexp): on the CPU torch.exp takes a slow path on the many
    -inf (underflowing) entries, softmax's kernel does not.
    """
    torch.matmul(qt, kt.transpose(-1, -2), out=logits)
    return torch.softmax(logits.add_(mask.unsqueeze(1)), dim=-1, out=out)


def _fused_attend(qt: Tensor, kt: Tensor, vt: Tensor, mask: Tensor) -> Tensor:
    """softmax(qt kt^T + mask) vt for a chunk of tiles [cb, ch, n, rows, D] (q already scaled) through
    scaled_dot_product_attention's fused CPU kernel: ~20% faster than the explicit matmul, softmax,
    matmul here, with no logits in memory, but no probabilities to keep, so forward-only. The kernel
    wants 4-D [batch, heads, L, D], so (cb, ch) become its batch and the tiles its heads."""
    cb, ch, n, rows, dim = qt.shape
    if mask.shape[0] > 1 and cb > 1:  # per-head masks (RPB) repeat over the chunk's batch items
        mask = mask.unsqueeze(0).expand(cb, *mask.shape).reshape(cb * ch, *mask.shape[1:])
    out = F.scaled_dot_product_attention(
        qt.view(cb * ch, n, rows, dim),
        kt.view(cb * ch, n, -1, dim),
        vt.view(cb * ch, n, -1, dim),
        attn_mask=mask.unsqueeze(1),
        scale=1.0,
    )
    return out.view(qt.shape)


def _chunk_shapes(plan: _Plan, piece: _Piece, items, dim: int):
    """Shapes of one chunk's query tiles, key tiles and logits."""
    lead = (items[0].stop - items[0].start, items[1].stop - items[1].start, piece.n_tiles)
    return (*lead, plan.tile_q, dim), (*lead, plan.tile_k, dim), (*lead, plan.tile_q, plan.tile_k)


def _keep_level(q: Tensor, plan: _Plan) -> str | None:
    """What the forward keeps for the backward within _KEEP_BYTES: "tiles" (probabilities and the
    gathered q, k, v tiles), "probs" or None."""
    items = q.shape[0] * q.shape[1]
    n_tiles = items * plan.n_slots // plan.tile_q
    n_probs = n_tiles * plan.tile_q * plan.tile_k
    n_tiles_qkv = n_tiles * (plan.tile_q + 2 * plan.tile_k) * q.shape[-1]
    if (n_probs + n_tiles_qkv) * q.element_size() <= _KEEP_BYTES:
        return "tiles"
    return "probs" if n_probs * q.element_size() <= _KEEP_BYTES else None


def _tiled_forward(q, k, v, rpb, plan: _Plan, kernel_size: int, scale: float, keep=None, out=None):
    """The tiled forward: (output, per chunk (q, k, v tiles or None, probabilities) as ``keep`` asks
    (see _keep_level), or None). Writes into ``out`` (any strides) when given."""
    batch, heads, dim = q.shape[0], q.shape[1], q.shape[-1]
    results = _QueryResults(q, plan, out)
    masks = _window_mask(plan, kernel_size, q.dtype) if rpb is None else _bias_masks(rpb, plan)
    kept, scratch = [], _scratch(q)
    tiles = scratch if keep != "tiles" else (lambda name, shape: q.new_empty(shape))
    fused = keep is None and q.device.type == "cpu"
    for piece, items in _chunks(plan, batch, heads, q.device):
        q_shape, k_shape, p_shape = _chunk_shapes(plan, piece, items, dim)
        qt = _gather(q[items], piece, False, tiles("q", q_shape), scale)
        kt = _gather(k[items], piece, True, tiles("k", k_shape))
        vt = _gather(v[items], piece, True, tiles("v", k_shape))
        mask = _mask(masks, rpb, items, piece)
        if fused:
            results.put(items, piece, _fused_attend(qt, kt, vt, mask))
            continue
        probs_out = q.new_empty(p_shape) if keep else scratch("p", p_shape)
        probs = _probs(qt, kt, mask, scratch("logits", p_shape), probs_out)
        results.put(items, piece, torch.matmul(probs, vt, out=scratch("o", q_shape)))
        if keep:
            kept.append(((qt, kt, vt) if keep == "tiles" else None, probs))
    return results.result(), kept if keep else None


def _dense_rows(plan: _Plan, *tensors: Tensor) -> tuple[Tensor, ...]:
    """The tensors as they should enter the tiled loops: contiguous on the CPU when some piece is gathered
    with flat index ops (see _flat), else as they are (grid gathers read any strides)."""
    if tensors[0].device.type == "cpu" and not plan.strided:
        return tuple(t.contiguous() for t in tensors)
    return tensors


class _TiledNA(torch.autograd.Function):
    """Tiled neighborhood attention on q, k, v [B, heads, H, W, D].

    Saves the inputs and the output; the attention probabilities and the gathered tiles are kept too
    when they are small (see _KEEP_BYTES), else re-made chunk by chunk in the backward.
    """

    @staticmethod
    def forward(ctx, q, k, v, rpb, plan: _Plan, kernel_size: int, scale: float):
        q, k, v = _dense_rows(plan, q, k, v)
        out, kept = _tiled_forward(q, k, v, rpb, plan, kernel_size, scale, _keep_level(q, plan))
        ctx.save_for_backward(q, k, v, rpb, out)
        ctx.plan, ctx.kernel_size, ctx.scale, ctx.kept = plan, kernel_size, scale, kept
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, v, rpb, out = ctx.saved_tensors
        plan, scale, kept = ctx.plan, ctx.scale, ctx.kept
        ctx.kept = None
        batch, heads, dim = q.shape[0], q.shape[1], q.shape[-1]
        (grad_out,) = _dense_rows(plan, grad_out)
        grad_q = _QueryResults(q, plan)
        if plan.strided:
            grad_k, grad_v = _like_input(k, zero=True), _like_input(v, zero=True)
        else:  # dense rows for the flat index_add_ (see _fold)
            grad_k, grad_v = q.new_zeros(q.shape), q.new_zeros(q.shape)
        need_rpb = rpb is not None and ctx.needs_input_grad[3]
        masks = None
        if kept is None:
            masks = _window_mask(plan, ctx.kernel_size, q.dtype) if rpb is None else _bias_masks(rpb, plan)
        grad_masks = q.new_zeros(heads, *plan.bias_index.shape) if need_rpb else None
        scratch = _scratch(q)
        for i, (piece, items) in enumerate(_chunks(plan, batch, heads, q.device)):
            q_shape, k_shape, p_shape = _chunk_shapes(plan, piece, items, dim)
            tiles, probs = kept[i] if kept is not None else (None, None)
            if tiles is None:
                qt = _gather(q[items], piece, False, scratch("q", q_shape), scale)
                kt = _gather(k[items], piece, True, scratch("k", k_shape))
                vt = _gather(v[items], piece, True, scratch("v", k_shape))
            else:
                qt, kt, vt = tiles
            got = _gather(grad_out[items], piece, False, scratch("do", q_shape))
            if piece.q_valid is not None:  # repeated query slots must not count twice: dO = 0
                got.mul_(piece.q_valid)
            # delta_i = sum_j P_ij dP_ij = dO_i . O_i
            ot = _gather(out[items], piece, False, scratch("o", q_shape))
            delta = ot.mul_(got).sum(-1, keepdim=True)
            if probs is None:
                mask = _mask(masks, rpb, items, piece)
                probs = _probs(qt, kt, mask, scratch("logits", p_shape), scratch("p", p_shape))
            _fold(
                torch.matmul(probs.transpose(-1, -2), got, out=scratch("dk", k_shape)), piece, grad_v[items]
            )
            gs = torch.matmul(got, vt.transpose(-1, -2), out=scratch("logits", p_shape))
            gs.sub_(delta).mul_(probs)  # dL/dlogits
            grad_q.put(items, piece, torch.matmul(gs, kt, out=scratch("o", q_shape)).mul_(scale))
            _fold(torch.matmul(gs.transpose(-1, -2), qt, out=scratch("dk", k_shape)), piece, grad_k[items])
            if need_rpb:
                grad_masks[items[1], piece.kind] += gs.sum(dim=(0, 2))
        grad_rpb = _bias_grad(grad_masks, plan, rpb) if need_rpb else None
        return grad_q.result(), grad_k, grad_v, grad_rpb, None, None, None


@torch.compiler.disable  # Python-side plans, caches and chunk loops: run eagerly inside a compiled model
def _na2d_torch(q, k, v, kernel_size, dilation, rpb, scale, tiles=None, out=None):
    _, _, height, width, _ = q.shape
    if tiles is None:
        tiles = _pick_tiles(height, width, kernel_size, dilation)
    plan = _plan(height, width, kernel_size, dilation, tuple(tiles), q.device)
    if rpb is not None:
        rpb = rpb.to(q.dtype)
    if _needs_grad(q, k, v, rpb):
        return _TiledNA.apply(q, k, v, rpb, plan, kernel_size, scale)
    # No backward can follow: skip the autograd.Function and its saved state.
    q, k, v = _dense_rows(plan, q, k, v)
    with torch.no_grad():
        return _tiled_forward(q, k, v, rpb, plan, kernel_size, scale, out=out)[0]


def _needs_grad(*tensors) -> bool:
    """Whether a backward can follow (grad mode on and some input requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# ----------------------------------------------------------------------------------------------------
# natten backend
# ----------------------------------------------------------------------------------------------------


# The first NATTEN whose ``natten.na2d`` is the op (heads-last [B, H, W, heads, D], no RPB); in 0.17
# ``natten.na2d`` is a submodule (the op lived in natten.functional with another signature).
NATTEN_MIN_VERSION = (0, 20)


def _version_tuple(version: str) -> tuple[int, ...] | None:
    """(major, minor, ...) of a version string such as "0.21.0+torch280cu128", or None."""
    parts = []
    for piece in str(version).split("+")[0].split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts) if parts else None


def _natten_has_libnatten(natten) -> bool:
    """Whether this NATTEN install has its compiled CUDA library. NATTEN >= 0.20 says so in
    ``natten.HAS_LIBNATTEN`` (natten/_environment.py, re-exported by the package: True when the compiled
    ``natten.libnatten`` extension imports). Without that flag, the extension importing is the test. An
    install without libnatten still imports and runs its own uncompiled flex fallback, which builds a dense
    L x L score matrix (~17 GB per head at 256x256): never a backend to pick."""
    flag = getattr(natten, "HAS_LIBNATTEN", None)
    if flag is not None:
        return bool(flag)
    try:
        importlib.import_module("natten.libnatten")
    except (ImportError, OSError):
        return False
    return True


@functools.lru_cache(maxsize=1)
def _natten_import():
    """(natten, None) when a NATTEN >= 0.20 with its CUDA library imports, else (None, why not), the reason
    one line. Imported lazily, once."""
    try:
        import natten
    except (ImportError, OSError) as err:  # OSError: a build that does not match the CUDA/torch libs
        return None, f"natten does not import ({type(err).__name__}: {str(err).strip().splitlines()[0]})"
    version = getattr(natten, "__version__", "?")
    parsed = _version_tuple(version)
    if parsed is None or parsed < NATTEN_MIN_VERSION:
        return None, f"natten {version} is too old (needs >= 0.20, whose natten.na2d is the fused op)"
    if not callable(getattr(natten, "na2d", None)):
        return None, f"natten {version} has no callable natten.na2d"
    if not _natten_has_libnatten(natten):
        return None, (
            f"natten {version} was built without its CUDA library libnatten (natten.HAS_LIBNATTEN is not "
            "True): its fallback would materialise a dense L x L score matrix"
        )
    return natten, None


def _natten_unavailable(q: Tensor, rpb: Tensor | None) -> str | None:
    """Why the natten backend cannot run this call, or None when it can."""
    natten, why = _natten_import()
    if natten is None:
        return why
    if q.device.type != "cuda":
        return f"tensors are on {q.device.type}, natten's fused kernels need CUDA"
    if rpb is not None:
        return "rpb is given and natten >= 0.20 has no relative position bias"
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"dtype {q.dtype} is not supported (float32, float16, bfloat16 only)"
    if q.shape[-1] % 8:
        return f"head dim {q.shape[-1]} is not a multiple of 8"
    return None


def _na2d_natten(q, k, v, kernel_size, dilation, scale):
    natten, _ = _natten_import()
    # natten wants [B, H, W, heads, D]; ours is [B, heads, H, W, D].
    q, k, v = (t.permute(0, 2, 3, 1, 4).contiguous() for t in (q, k, v))
    out = natten.na2d(q, k, v, kernel_size=kernel_size, dilation=dilation, scale=scale)
    return out.permute(0, 3, 1, 2, 4)


# ----------------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def backend_override(name: str):
    """Inside the block every na2d call of this thread uses backend ``name``, whatever it asks for (an
    explicit backend, "auto", STYLENAT_NA_BACKEND): for measurements that need one implementation on every
    device, such as FLOP counting (under torch's FlopCounterMode the compiled flex kernel cannot run)."""
    if name not in BACKENDS or name == "auto":
        raise ValueError(
            f"backend_override needs a concrete backend, one of torch, natten, flex; got {name!r}"
        )
    previous = getattr(_override, "backend", None)
    _override.backend = name
    try:
        yield
    finally:
        _override.backend = previous


def available_backends(device: str | torch.device = "cpu", grad: bool = True) -> list[str]:
    """Backends that can run on ``device`` (without RPB): forward and backward, or with ``grad=False``
    forward only too (flex attention compiles a forward-only kernel on the CPU)."""
    device = torch.device(device)
    names = ["torch"]
    if _natten_import()[0] is not None and device.type == "cuda":
        names.append("natten")
    if na_flex.available(device) and (device.type != "cpu" or not grad):
        names.append("flex")
    return names


def _flex_unavailable(q: Tensor, k: Tensor, v: Tensor, rpb: Tensor | None) -> str | None:
    """Why the flex backend cannot run this call, or None when it can."""
    return na_flex.flex_unavailable(q, rpb, k, v)


def _resolve_backend(backend: str, q: Tensor, k: Tensor, v: Tensor, rpb: Tensor | None) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown na2d backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        env = os.environ.get(ENV_VAR, "").strip()
        if env:
            if env not in BACKENDS:
                raise ValueError(f"{ENV_VAR}={env!r} is not a backend; expected one of {', '.join(BACKENDS)}")
            backend = env
    if backend == "auto":
        if q.device.type != "cuda":  # the CPU: flex has no backward and compiles per shape; torch wins
            return "torch"
        if _natten_unavailable(q, rpb) is None:
            return "natten"
        return "flex" if _flex_unavailable(q, k, v, rpb) is None else "torch"
    reason = None
    if backend == "natten":
        reason = _natten_unavailable(q, rpb)
    elif backend == "flex":
        reason = _flex_unavailable(q, k, v, rpb)
    if reason is not None:
        raise RuntimeError(f"na2d backend {backend!r} is unavailable: {reason}")
    return backend


def na2d(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_size: int,
    dilation: int = 1,
    rpb: Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
    out: Tensor | None = None,
) -> Tensor:
    """2-D neighborhood attention (NATTEN semantics).

    q, k, v: [B, heads, H, W, D]; rpb: [heads, 2k-1, 2k-1] or None; scale defaults to D**-0.5 and
    multiplies q. logits = scale * q.k + rpb[h, dy + k - 1, dx + k - 1], softmax over the k*k window.
    backend: "auto" (on CUDA natten when it can run, else flex when it can, else torch; torch on every
    other device; env STYLENAT_NA_BACKEND overrides), "torch", "natten" or "flex" (a forced backend that
    cannot run the call raises RuntimeError saying why). out: an optional [B, heads, H, W, D] tensor of
    any strides (e.g. a permuted slice of a [B, H, W, heads, D] buffer) that receives the result and is
    returned, without autograd (the torch backend writes into it directly). Returns [B, heads, H, W, D]:
    the torch backend stores it like q when q is dense, else (q a strided view, such as the attention
    layer's q, k, v of one qkv tensor) token-major ([B, H, W, heads, D] memory).
    """
    check_na_args(q, k, v, kernel_size, dilation, rpb)
    if out is not None:
        if out.shape != q.shape or out.device != q.device or out.dtype != q.dtype:
            raise ValueError(
                f"out must match q ({tuple(q.shape)}, {q.dtype}, {q.device}), got "
                f"({tuple(out.shape)}, {out.dtype}, {out.device})"
            )
        if _needs_grad(q, k, v, rpb):
            raise RuntimeError("na2d(out=...) does not support autograd; call it without out")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    chosen = _resolve_backend(getattr(_override, "backend", None) or backend, q, k, v, rpb)
    if chosen not in _logged_backends:
        _logged_backends.add(chosen)
        why_not = _natten_import()[1] if chosen != "natten" and q.device.type == "cuda" else None
        logger.info(
            "na2d: using the %s backend (first call on %s%s)",
            chosen,
            q.device.type,
            f"; natten unavailable: {why_not}" if why_not else "",
        )
    if chosen == "torch":
        return _na2d_torch(q, k, v, kernel_size, dilation, rpb, scale, out=out)
    if chosen == "natten":
        result = _na2d_natten(q, k, v, kernel_size, dilation, scale)
    else:
        result = na_flex.na2d_flex(q, k, v, kernel_size, dilation, rpb=rpb, scale=scale)
    return result if out is None else out.copy_(result)
