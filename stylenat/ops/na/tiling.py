"""Tiling plans of the torch backend: which queries form a tile, which keys its halo, and the masks.

Queries are cut into tiles per dilation group; a tile attends to the halo of keys covering all its windows
(tile + k - 1 keys per axis, clamped inward) through an additive mask: -inf outside a query's window, RPB
inside. Tiles with the same window pattern (kind) share one small mask. Plans depend only on the problem
shape, so they are built once per (H, W, k, d, tiles, device) and cached.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import Tensor

from stylenat.ops.buffers import CPU_CHUNK_ELEMS
from stylenat.ops.na.windows import group_length, start_in_group

# Logits per chunk on accelerators (fewer, larger launches win there); the CPU's chunks are cache-sized
# (buffers.CPU_CHUNK_ELEMS, bound at import so that patching it for a test cannot leak into cached plans).
GPU_CHUNK_ELEMS = 1 << 27
_CPU_CHUNK_ELEMS = CPU_CHUNK_ELEMS


def chunk_budget(device: torch.device) -> int:
    """Attention-logit elements per chunk of the tiled loops on ``device``."""
    return GPU_CHUNK_ELEMS if torch.device(device).type != "cpu" else _CPU_CHUNK_ELEMS


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


def pick_tiles(height: int, width: int, kernel_size: int, dilation: int) -> tuple[int, int]:
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
    max_group = -(-length // dilation)
    tile = min(tile, max_group)
    halo = min(tile + kernel_size - 1, max_group)
    q_pos, q_valid, k_pos, rel = [], [], [], []
    slot = [0] * length
    for g in range(dilation):
        group_len = group_length(length, dilation, g)
        for t0 in range(0, group_len, tile):
            qj = [min(t0 + i, group_len - 1) for i in range(tile)]
            starts = [start_in_group(j, group_len, kernel_size) for j in qj]
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
class Grid:
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


def _grid(py: _AxisPlan, px: _AxisPlan, ty: list[int], tx: list[int]) -> Grid | None:
    """The affine grid of the tiles ty x tx (row-major), or None when positions are not affine."""
    q_runs = (_affine(py.q_pos[ty]), _affine(px.q_pos[tx]))
    k_runs = (_affine(py.k_pos[ty]), _affine(px.k_pos[tx]))
    if None in q_runs or None in k_runs:
        return None
    if any(run[2] == 0 and size > 1 for run, size in zip(k_runs, (py.halo, px.halo))):
        return None  # a halo repeating a key (short groups): in-place adds would collide
    return Grid(
        shape=(len(ty), len(tx)),
        q_runs=q_runs,
        k_runs=k_runs,
        q_size=(py.tile, px.tile),
        k_size=(py.halo, px.halo),
        fold_every=(_disjoint_every(py.k_pos[ty]), _disjoint_every(px.k_pos[tx])),
    )


@dataclass(frozen=True, eq=False)
class Piece:
    """A run of 2-D tiles of one kind, processed together."""

    kind: int
    n_tiles: int
    slot0: int  # first query slot of the piece in the call's slot space (pieces in order)
    q_index: Tensor  # [n_tiles * tile_q] token of every query slot (tokens are y * W + x)
    k_index: Tensor  # [n_tiles * tile_k] token of every key slot
    q_valid: Tensor | None  # [n_tiles, tile_q, 1] bool, False on repeated query slots (None: all real)
    grid: Grid | None  # strided layout of the tiles when they form an affine grid
    cache: dict = field(default_factory=dict, repr=False)  # index tables for stacked items


@dataclass(frozen=True, eq=False)
class Plan:
    """2-D tiling. Tiles are grouped by kind (their mask pattern), so a mask is [tile_q, tile_k] per kind
    and broadcasts over every tile of a piece: masks stay tiny at any resolution."""

    tile_q: int
    tile_k: int
    pieces: tuple[Piece, ...]
    bias_index: Tensor  # [kinds, tile_q, tile_k] flat RPB index, (2k-1)^2 outside the window
    n_slots: int  # query slots of all pieces
    token_slot: Tensor  # [H * W] the slot holding each token's query
    direct: bool  # every piece is an affine grid of real queries: results go straight to the tokens
    strided: bool  # every piece is an affine grid: gathers read strided views (any input layout)
    cache: dict = field(default_factory=dict, repr=False)


@functools.lru_cache(maxsize=256)
def tile_plan(
    height: int, width: int, kernel_size: int, dilation: int, tiles: tuple[int, int], device
) -> Plan:
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
    per_piece = max(1, chunk_budget(device) // (tile_q * tile_k))
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
                    Piece(
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
    return Plan(
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
def window_mask(plan: Plan, kernel_size: int, dtype: torch.dtype) -> Tensor:
    """Additive masks [1, kinds, tile_q, tile_k] without RPB: 0 inside each query's window, -inf outside."""
    outside = plan.bias_index == (2 * kernel_size - 1) ** 2
    zero = torch.zeros((), dtype=dtype, device=outside.device)
    return zero.masked_fill(outside, float("-inf")).unsqueeze(0)


def bias_masks(rpb: Tensor, plan: Plan) -> Tensor:
    """Additive masks [heads, kinds, tile_q, tile_k]: each head's RPB inside the windows, -inf outside."""
    table = torch.cat([rpb.flatten(1), rpb.new_full((rpb.shape[0], 1), float("-inf"))], dim=1)
    return table.index_select(1, plan.bias_index.view(-1)).view(rpb.shape[0], *plan.bias_index.shape)


def bias_grad(grad_masks: Tensor, plan: Plan, rpb: Tensor) -> Tensor:
    """Sum gradients of the masks [heads, kinds, tile_q, tile_k] into the RPB tables."""
    n_bins = rpb.shape[1] * rpb.shape[2]
    table = grad_masks.new_zeros(rpb.shape[0], n_bins + 1)
    table.index_add_(1, plan.bias_index.view(-1), grad_masks.flatten(1))
    return table[:, :n_bins].view(rpb.shape)
