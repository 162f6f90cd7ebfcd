"""2-D neighborhood attention with NATTEN's exact semantics.

Two backends, picked per call:

* ``torch``: pure PyTorch, every device, relative position bias (RPB) supported. Queries are cut into
  tiles (per dilation group); a tile attends to the halo of keys covering all its windows (tile + k - 1
  keys per axis, clamped inward) through an additive mask: -inf outside a query's window, RPB inside.
  Tiles with the same window pattern share one small mask. A custom autograd function runs the tiles
  in chunks of bounded size with explicit matmuls and softmax (on the CPU faster than
  scaled_dot_product_attention with a float mask, and the RPB gradient is just the summed logit
  gradient); the backward recomputes the probabilities unless they are small, so nothing of size
  tokens x halo outlives a chunk.
* ``natten``: NATTEN's fused CUDA kernels (``natten.na2d``, natten >= 0.20) when natten imports, the
  tensors are on CUDA and no RPB is given (NATTEN >= 0.20 has no RPB).

The window rule (per axis of length L, odd kernel k, dilation d, k*d <= L): token i is in group i mod d;
inside its group (the L_g positions with the same remainder) its window is the k consecutive group
members centred on it, shifted inward at the borders so it always holds k members. The 2-D window is the
product of the two axis windows; the RPB index of a key is (key - query) in group units + (k - 1).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
from dataclasses import dataclass, field

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "natten")
ENV_VAR = "STYLENAT_NA_BACKEND"

# Chunk budget of the torch backend, in attention-logit elements. On the CPU a chunk should stay
# cache-sized; on accelerators fewer, larger launches win.
_CPU_CHUNK_ELEMS = 1 << 20
_GPU_CHUNK_ELEMS = 1 << 27

# The backward recomputes the attention probabilities (a matmul and a softmax per chunk, ~10% of a
# forward+backward on the CPU) unless keeping them from the forward takes at most this much memory.
_SAVE_PROBS_BYTES = 64 << 20

_logged_backends: set[str] = set()


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
    kinds: dict[bytes, int] = {}
    ids = [kinds.setdefault(t.numpy().tobytes(), len(kinds)) for t in rel]
    first = {kind: i for i, kind in reversed(list(enumerate(ids)))}
    return ids, rel[[first[kind] for kind in range(len(kinds))]]


@dataclass(frozen=True, eq=False)
class _Piece:
    """A run of 2-D tiles of one kind, processed together."""

    kind: int
    n_tiles: int
    q_index: Tensor  # [n_tiles * tile_q] token of every query slot (tokens are y * W + x)
    k_index: Tensor  # [n_tiles * tile_k] token of every key slot
    out_slots: Tensor | None  # query slots that hold a real query (None: all of them)
    out_tokens: Tensor  # the tokens of those slots
    q_valid: Tensor | None  # [n_tiles, tile_q, 1] bool, False on repeated query slots (None: all real)
    cache: dict = field(default_factory=dict, repr=False)  # index tables for stacked items


@dataclass(frozen=True, eq=False)
class _Plan:
    """2-D tiling. Tiles are grouped by kind (their mask pattern), so a mask is [tile_q, tile_k] per kind
    and broadcasts over every tile of a piece: masks stay tiny at any resolution."""

    tile_q: int
    tile_k: int
    pieces: tuple[_Piece, ...]
    bias_index: Tensor  # [kinds, tile_q, tile_k] flat RPB index, (2k-1)^2 outside the window


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

    by_kind: dict[int, list[tuple[int, int]]] = {}
    for ty, ky in enumerate(kind_y):
        for tx, kx in enumerate(kind_x):
            by_kind.setdefault(ky * len(rel_x) + kx, []).append((ty, tx))
    budget = _GPU_CHUNK_ELEMS if torch.device(device).type != "cpu" else _CPU_CHUNK_ELEMS
    per_piece = max(1, budget // (tile_q * tile_k))
    pieces = []
    for kind, tile_list in by_kind.items():
        for i in range(0, len(tile_list), per_piece):
            ty, tx = torch.tensor(tile_list[i : i + per_piece]).unbind(1)
            q_index = py.q_pos[ty][:, :, None] * width + px.q_pos[tx][:, None, :]
            k_index = py.k_pos[ty][:, :, None] * width + px.k_pos[tx][:, None, :]
            valid = (py.q_valid[ty][:, :, None] & px.q_valid[tx][:, None, :]).reshape(-1)
            q_index = q_index.reshape(-1)
            slots = None if bool(valid.all()) else valid.nonzero().squeeze(1).to(device)
            pieces.append(
                _Piece(
                    kind=kind,
                    n_tiles=len(ty),
                    q_index=q_index.to(device),
                    k_index=k_index.reshape(-1).to(device),
                    out_slots=slots,
                    out_tokens=q_index[valid].to(device),
                    q_valid=None if slots is None else valid.view(len(ty), tile_q, 1).to(device),
                )
            )
    return _Plan(
        tile_q=tile_q,
        tile_k=tile_k,
        pieces=tuple(pieces),
        bias_index=bias_index.reshape(-1, tile_q, tile_k).to(device),
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


def _stacked(piece: _Piece, name: str, n: int, stride: int) -> Tensor:
    """Index ``piece.<name>`` repeated over n stacked blocks of ``stride`` rows (cached per piece)."""
    index = getattr(piece, name)
    if n == 1:
        return index
    key = (name, n, stride)
    if key not in piece.cache:
        offsets = torch.arange(n, device=index.device) * stride
        piece.cache[key] = (offsets[:, None] + index[None, :]).view(-1)
    return piece.cache[key]


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


def _gather(x: Tensor, piece: _Piece, name: str, rows: int, out: Tensor) -> Tensor:
    """Token rows of x [cb, ch, tokens, D] (any strides) -> tiles [cb, ch, n_tiles, rows, D], in out."""
    cb, ch, tokens, dim = x.shape
    flat = _flat(x)
    if flat is not None:
        torch.index_select(flat, 0, _stacked(piece, name, cb * ch, tokens), out=out.view(-1, dim))
    else:
        torch.index_select(x, 2, getattr(piece, name), out=out.view(cb, ch, -1, dim))
    return out.view(cb, ch, -1, rows, dim)


def _untile(x: Tensor, piece: _Piece, out: Tensor) -> None:
    """Write query-slot values x [cb, ch, n_tiles, rows, D] to their tokens in out [cb, ch, tokens, D]."""
    cb, ch, tokens, _ = out.shape
    src, dst = _flat(x), _flat(out)
    if src is not None and dst is not None:
        if piece.out_slots is not None:
            src = src.index_select(0, _stacked(piece, "out_slots", cb * ch, piece.n_tiles * x.shape[3]))
        dst.index_copy_(0, _stacked(piece, "out_tokens", cb * ch, tokens), src)
        return
    x = x.flatten(2, 3)
    if piece.out_slots is not None:
        x = x.index_select(2, piece.out_slots)
    out.index_copy_(2, piece.out_tokens, x)


def _fold(x: Tensor, piece: _Piece, out: Tensor) -> None:
    """Add key-slot gradients x [cb, ch, n_tiles, rows, D] into out [cb, ch, tokens, D] (halos overlap)."""
    cb, ch, tokens, _ = out.shape
    src, dst = _flat(x), _flat(out)
    if src is not None and dst is not None:
        dst.index_add_(0, _stacked(piece, "k_index", cb * ch, tokens), src)
    else:
        out.index_add_(2, piece.k_index, x.flatten(2, 3))


def _probs(qt: Tensor, kt: Tensor, mask: Tensor, logits: Tensor, out: Tensor) -> Tensor:
    """Attention probabilities of a chunk of tiles; mask [ch, tile_q, tile_k] broadcasts over tiles.

    softmax rather than exp(logits - logsumexp): on the CPU torch.exp takes a slow path on the many
    -inf (underflowing) entries, softmax's kernel does not.
    """
    torch.matmul(qt, kt.transpose(-1, -2), out=logits)
    return torch.softmax(logits.add_(mask.unsqueeze(1)), dim=-1, out=out)


def _tokens(x: Tensor) -> Tensor:
    """[B, heads, H, W, D] -> [B, heads, H*W, D], a view whenever H, W, D are laid out densely."""
    return x.flatten(2, 3)


def _chunk_shapes(plan: _Plan, piece: _Piece, items, dim: int):
    """Shapes of one chunk's query tiles, key tiles and logits."""
    lead = (items[0].stop - items[0].start, items[1].stop - items[1].start, piece.n_tiles)
    return (*lead, plan.tile_q, dim), (*lead, plan.tile_k, dim), (*lead, plan.tile_q, plan.tile_k)


class _TiledNA(torch.autograd.Function):
    """Tiled neighborhood attention on q, k, v [B, heads, H, W, D].

    Saves the inputs and the output; the attention probabilities are kept too when they are small
    (see _SAVE_PROBS_BYTES), else recomputed chunk by chunk in the backward.
    """

    @staticmethod
    def forward(ctx, q, k, v, rpb, plan: _Plan, kernel_size: int, scale: float, grad: bool):
        batch, heads, dim = q.shape[0], q.shape[1], q.shape[-1]
        if q.device.type == "cpu":  # dense rows for the flat index ops (see _flat)
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        qf, kf, vf = _tokens(q), _tokens(k), _tokens(v)
        out = q.new_empty(q.shape)
        of = _tokens(out)
        masks = _window_mask(plan, kernel_size, q.dtype) if rpb is None else _bias_masks(rpb, plan)
        n_slots = sum(p.n_tiles for p in plan.pieces) * plan.tile_q * plan.tile_k
        keep = grad and batch * heads * n_slots * q.element_size() <= _SAVE_PROBS_BYTES
        kept, scratch = [], _scratch(q)
        for piece, items in _chunks(plan, batch, heads, q.device):
            q_shape, k_shape, p_shape = _chunk_shapes(plan, piece, items, dim)
            qt = _gather(qf[items], piece, "q_index", plan.tile_q, scratch("q", q_shape)).mul_(scale)
            kt = _gather(kf[items], piece, "k_index", plan.tile_k, scratch("k", k_shape))
            vt = _gather(vf[items], piece, "k_index", plan.tile_k, scratch("v", k_shape))
            mask = masks[items[1] if rpb is not None else slice(None), piece.kind]
            probs = _probs(
                qt,
                kt,
                mask,
                scratch("logits", p_shape),
                q.new_empty(p_shape) if keep else scratch("p", p_shape),
            )
            _untile(torch.matmul(probs, vt, out=scratch("o", q_shape)), piece, of[items])
            if keep:
                kept.append(probs)
        ctx.save_for_backward(q, k, v, rpb, out)
        ctx.plan, ctx.kernel_size, ctx.scale, ctx.kept = plan, kernel_size, scale, kept if keep else None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, v, rpb, out = ctx.saved_tensors
        plan, scale, kept = ctx.plan, ctx.scale, ctx.kept
        ctx.kept = None
        batch, heads, dim = q.shape[0], q.shape[1], q.shape[-1]
        if grad_out.device.type == "cpu":
            grad_out = grad_out.contiguous()
        qf, kf, vf, gof, of = _tokens(q), _tokens(k), _tokens(v), _tokens(grad_out), _tokens(out)
        grad_q, grad_k, grad_v = q.new_empty(q.shape), q.new_zeros(q.shape), q.new_zeros(q.shape)
        gqf, gkf, gvf = _tokens(grad_q), _tokens(grad_k), _tokens(grad_v)
        need_rpb = rpb is not None and ctx.needs_input_grad[3]
        masks = None
        if kept is None:
            masks = _window_mask(plan, ctx.kernel_size, q.dtype) if rpb is None else _bias_masks(rpb, plan)
        grad_masks = q.new_zeros(heads, *plan.bias_index.shape) if need_rpb else None
        scratch = _scratch(q)
        for i, (piece, items) in enumerate(_chunks(plan, batch, heads, q.device)):
            q_shape, k_shape, p_shape = _chunk_shapes(plan, piece, items, dim)
            qt = _gather(qf[items], piece, "q_index", plan.tile_q, scratch("q", q_shape)).mul_(scale)
            kt = _gather(kf[items], piece, "k_index", plan.tile_k, scratch("k", k_shape))
            vt = _gather(vf[items], piece, "k_index", plan.tile_k, scratch("v", k_shape))
            got = _gather(gof[items], piece, "q_index", plan.tile_q, scratch("do", q_shape))
            if piece.q_valid is not None:  # repeated query slots must not count twice: dO = 0
                got.mul_(piece.q_valid)
            # delta_i = sum_j P_ij dP_ij = dO_i . O_i
            ot = _gather(of[items], piece, "q_index", plan.tile_q, scratch("o", q_shape))
            delta = ot.mul_(got).sum(-1, keepdim=True)
            if kept is None:
                mask = masks[items[1] if rpb is not None else slice(None), piece.kind]
                probs = _probs(qt, kt, mask, scratch("logits", p_shape), scratch("p", p_shape))
            else:
                probs = kept[i]
            _fold(torch.matmul(probs.transpose(-1, -2), got, out=scratch("dk", k_shape)), piece, gvf[items])
            gs = torch.matmul(got, vt.transpose(-1, -2), out=scratch("logits", p_shape))
            gs.sub_(delta).mul_(probs)  # dL/dlogits
            _untile(torch.matmul(gs, kt, out=scratch("o", q_shape)).mul_(scale), piece, gqf[items])
            _fold(torch.matmul(gs.transpose(-1, -2), qt, out=scratch("dk", k_shape)), piece, gkf[items])
            if need_rpb:
                grad_masks[items[1], piece.kind] += gs.sum(dim=(0, 2))
        grad_rpb = _bias_grad(grad_masks, plan, rpb) if need_rpb else None
        return grad_q, grad_k, grad_v, grad_rpb, None, None, None, None


def _na2d_torch(q, k, v, kernel_size, dilation, rpb, scale, tiles=None):
    _, _, height, width, _ = q.shape
    if tiles is None:
        tiles = _pick_tiles(height, width, kernel_size, dilation)
    plan = _plan(height, width, kernel_size, dilation, tuple(tiles), q.device)
    if rpb is not None:
        rpb = rpb.to(q.dtype)
    # Whether a backward can follow (ctx.needs_input_grad ignores no_grad mode).
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, rpb))
    return _TiledNA.apply(q, k, v, rpb, plan, kernel_size, scale, grad)


# ----------------------------------------------------------------------------------------------------
# natten backend
# ----------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _natten_import():
    """(natten, None) when natten >= 0.20 imports, else (None, why not). Imported lazily, once."""
    try:
        import natten
    except (ImportError, OSError) as err:  # OSError: a build that does not match the CUDA/torch libs
        return None, f"natten does not import ({type(err).__name__}: {err})"
    if not hasattr(natten, "na2d"):
        return None, f"natten {getattr(natten, '__version__', '?')} is too old (needs >= 0.20)"
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


def available_backends(device: str | torch.device = "cpu") -> list[str]:
    """Backends that can run on ``device`` (without RPB)."""
    names = ["torch"]
    if _natten_import()[0] is not None and torch.device(device).type == "cuda":
        names.append("natten")
    return names


def _resolve_backend(backend: str, q: Tensor, rpb: Tensor | None) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown na2d backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        env = os.environ.get(ENV_VAR, "").strip()
        if env:
            if env not in BACKENDS:
                raise ValueError(f"{ENV_VAR}={env!r} is not a backend; expected one of {', '.join(BACKENDS)}")
            backend = env
    if backend == "auto":
        return "natten" if _natten_unavailable(q, rpb) is None else "torch"
    if backend == "natten":
        reason = _natten_unavailable(q, rpb)
        if reason is not None:
            raise RuntimeError(f"na2d backend 'natten' is unavailable: {reason}")
    return backend


def _validate(q, k, v, kernel_size, dilation, rpb):
    if q.dim() != 5:
        raise ValueError(f"q must be [B, heads, H, W, D], got shape {tuple(q.shape)}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v shapes differ: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd integer >= 1, got {kernel_size}")
    if not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"dilation must be an integer >= 1, got {dilation}")
    height, width = q.shape[2], q.shape[3]
    if kernel_size * dilation > min(height, width):
        raise ValueError(
            f"kernel_size {kernel_size} * dilation {dilation} = {kernel_size * dilation} "
            f"exceeds feature map {height}x{width}"
        )
    if rpb is not None:
        span = 2 * kernel_size - 1
        expected = (q.shape[1], span, span)
        if tuple(rpb.shape) != expected:
            raise ValueError(f"rpb must have shape {expected}, got {tuple(rpb.shape)}")
        if rpb.device != q.device:
            raise ValueError(f"rpb is on {rpb.device} but q is on {q.device}")


def na2d(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_size: int,
    dilation: int = 1,
    rpb: Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> Tensor:
    """2-D neighborhood attention (NATTEN semantics).

    q, k, v: [B, heads, H, W, D]; rpb: [heads, 2k-1, 2k-1] or None; scale defaults to D**-0.5 and
    multiplies q. logits = scale * q.k + rpb[h, dy + k - 1, dx + k - 1], softmax over the k*k window.
    backend: "auto" (natten when it can run, else torch; env STYLENAT_NA_BACKEND overrides), "torch"
    or "natten". Returns [B, heads, H, W, D].
    """
    _validate(q, k, v, kernel_size, dilation, rpb)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    chosen = _resolve_backend(backend, q, rpb)
    if chosen not in _logged_backends:
        _logged_backends.add(chosen)
        logger.info("na2d: using the %s backend (first call on %s)", chosen, q.device.type)
    if chosen == "natten":
        return _na2d_natten(q, k, v, kernel_size, dilation, scale)
    return _na2d_torch(q, k, v, kernel_size, dilation, rpb, scale)
