"""2-D neighborhood attention with NATTEN's exact semantics.

Two backends, picked per call:

* ``torch``: pure PyTorch, every device, relative position bias (RPB) supported. Queries are cut into
  tiles (per dilation group); each tile attends to the halo of keys covering all its windows, with an
  additive mask (-inf outside a query's window, RPB inside). A custom autograd function runs this in
  chunks and recomputes the attention in the backward (flash-attention style), so nothing of size
  ``tokens x halo`` outlives a chunk: memory stays lean and the CPU works in cache.
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
import os
from dataclasses import dataclass

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "natten")
ENV_VAR = "STYLENAT_NA_BACKEND"

# Chunk budget of the torch backend, in attention-logit elements. On the CPU a chunk should stay
# cache-sized; on accelerators fewer, larger launches win.
_CPU_CHUNK_ELEMS = 1 << 20
_GPU_CHUNK_ELEMS = 1 << 27

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


def _pick_tile(group_len: int, kernel_size: int) -> int:
    """Queries per tile along an axis: whole groups when short, else small tiles (less halo waste)."""
    if group_len <= 2 * kernel_size:
        return group_len
    return 8 if kernel_size <= 9 else kernel_size


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


@dataclass(frozen=True, eq=False)
class _Plan:
    """2-D tiling: tiles are (y tile, x tile) pairs; tokens are flattened as y * W + x."""

    n_tiles: int
    tile_q: int  # queries per tile
    tile_k: int  # keys per tile
    q_index: Tensor  # [n_tiles * tile_q] token of every query slot
    k_index: Tensor  # [n_tiles * tile_k] token of every key slot
    out_index: Tensor  # [H * W] query slot of every token
    q_valid: Tensor  # [n_tiles * tile_q] bool
    bias_index: Tensor  # [n_tiles, tile_q, tile_k] flat RPB index, (2k-1)^2 outside the window
    tiles_yx: tuple[int, int, int, int, int, int]  # (ny, nx, ty, tx, hy, hx)
    onehot_y: Tensor  # [ny * ty * hy, 2k-1] bool: slot pair -> RPB row (all False outside the window)
    onehot_x: Tensor  # [nx * tx * hx, 2k-1] bool


@functools.lru_cache(maxsize=256)
def _plan(height: int, width: int, kernel_size: int, dilation: int, tiles: tuple[int, int], device) -> _Plan:
    py = _axis_plan(height, kernel_size, dilation, tiles[0])
    px = _axis_plan(width, kernel_size, dilation, tiles[1])
    ny, nx = py.q_pos.shape[0], px.q_pos.shape[0]
    ty, tx, hy, hx = py.tile, px.tile, py.halo, px.halo

    # Tile-major, then row-major inside a tile: [ny, nx, ty, tx].
    q_index = py.q_pos[:, None, :, None] * width + px.q_pos[None, :, None, :]
    k_index = py.k_pos[:, None, :, None] * width + px.k_pos[None, :, None, :]
    q_valid = py.q_valid[:, None, :, None] & px.q_valid[None, :, None, :]
    tile_y, in_y = py.slot // ty, py.slot % ty
    tile_x, in_x = px.slot // tx, px.slot % tx
    out_index = ((tile_y[:, None] * nx + tile_x[None, :]) * ty + in_y[:, None]) * tx + in_x[None, :]

    span = 2 * kernel_size - 1
    ry = py.rel[:, None, :, None, :, None]  # [ny, 1, ty, 1, hy, 1]
    rx = px.rel[None, :, None, :, None, :]  # [1, nx, 1, tx, 1, hx]
    bias_index = torch.where((ry >= 0) & (rx >= 0), ry * span + rx, span * span)

    def put(t: Tensor) -> Tensor:
        return t.reshape(-1).to(device)

    def onehot(rel: Tensor) -> Tensor:
        return (rel.reshape(-1, 1) == torch.arange(span)).to(device)

    return _Plan(
        n_tiles=ny * nx,
        tile_q=ty * tx,
        tile_k=hy * hx,
        q_index=put(q_index),
        k_index=put(k_index),
        out_index=put(out_index),
        q_valid=put(q_valid),
        bias_index=bias_index.reshape(ny * nx, ty * tx, hy * hx).to(device),
        tiles_yx=(ny, nx, ty, tx, hy, hx),
        onehot_y=onehot(py.rel),
        onehot_x=onehot(px.rel),
    )


@functools.lru_cache(maxsize=256)
def _window_mask(plan: _Plan, kernel_size: int, dtype: torch.dtype) -> Tensor:
    """Additive mask without RPB: 0 inside each query's window, -inf outside."""
    outside = plan.bias_index == (2 * kernel_size - 1) ** 2
    zero = torch.zeros((), dtype=dtype, device=outside.device)
    return zero.masked_fill(outside, float("-inf"))


def _bias_grad(grad_logits: Tensor, plan: _Plan) -> Tensor:
    """Sum logit gradients [n_tiles, tile_q, tile_k] into the RPB table [2k-1, 2k-1] of one head.

    The window is a product of axis windows, so the sum factorises into two small matmuls with the
    per-axis one-hot offset tables (a scatter-add over every logit is far slower on the CPU).
    """
    ny, nx, ty, tx, hy, hx = plan.tiles_yx
    g = grad_logits.view(ny, nx, ty, tx, hy, hx).permute(0, 2, 4, 1, 3, 5).reshape(ny * ty * hy, -1)
    oy, ox = plan.onehot_y.to(g.dtype), plan.onehot_x.to(g.dtype)
    return oy.t() @ (g @ ox)


def _bias_mask(rpb_head: Tensor, plan: _Plan) -> Tensor:
    """Additive mask of one head: its RPB inside each window, -inf outside."""
    table = torch.cat([rpb_head.reshape(-1), rpb_head.new_full((1,), float("-inf"))])
    return table[plan.bias_index]


# ----------------------------------------------------------------------------------------------------
# torch backend
# ----------------------------------------------------------------------------------------------------


def _chunks(plan: _Plan, batch: int, heads: int, per_head: bool, device: torch.device):
    """(head or None, first, last) ranges over the flattened batch*heads axis."""
    budget = _GPU_CHUNK_ELEMS if device.type != "cpu" else _CPU_CHUNK_ELEMS
    per_item = plan.n_tiles * plan.tile_q * plan.tile_k
    step = max(1, budget // per_item)
    if per_head:  # items of one chunk share a head: index [head, b0:b1] of a [heads, B] layout
        for h in range(heads):
            for b in range(0, batch, step):
                yield h, h * batch + b, h * batch + min(b + step, batch)
    else:
        for i in range(0, batch * heads, step):
            yield None, i, min(i + step, batch * heads)


def _gather(x: Tensor, index: Tensor, rows: int) -> Tensor:
    """x [n, tokens, D] -> [n, tiles, rows, D] (index_select on dim 0 is the fast path on the CPU)."""
    if x.shape[0] == 1:
        g = x[0].index_select(0, index).unsqueeze(0)
    else:
        g = x.index_select(1, index)
    return g.view(x.shape[0], -1, rows, x.shape[-1])


def _scatter_back(x: Tensor, index: Tensor) -> Tensor:
    """Tile slots [n, slots, D] -> tokens [n, tokens, D] (each token has exactly one slot)."""
    if x.shape[0] == 1:
        return x[0].index_select(0, index).unsqueeze(0)
    return x.index_select(1, index)


def _fold_into(out: Tensor, x: Tensor, index: Tensor) -> None:
    """Add halo-slot gradients [n, slots, D] into tokens out [n, tokens, D] (halos overlap)."""
    if x.shape[0] == 1:
        out[0].index_add_(0, index, x[0])
    else:
        out.index_add_(1, index, x)


def _probs(qt: Tensor, kt: Tensor, mask: Tensor) -> Tensor:
    """Attention probabilities of a chunk of tiles.

    Recomputed in the backward rather than saved. softmax, not exp(logits - logsumexp): on the CPU
    torch.exp takes a slow path on the many -inf (underflowing) entries, softmax's kernel does not.
    """
    return torch.softmax(torch.matmul(qt, kt.transpose(-1, -2)).add_(mask), dim=-1)


class _TiledNA(torch.autograd.Function):
    """Tiled neighborhood attention; q, k, v: [heads, B, tokens, D] (q already scaled)."""

    @staticmethod
    def forward(ctx, q, k, v, rpb, plan: _Plan, kernel_size: int):
        heads, batch, tokens, dim = q.shape
        qf, kf, vf = (t.reshape(heads * batch, tokens, dim) for t in (q, k, v))
        out = torch.empty_like(qf)
        mask = None if rpb is not None else _window_mask(plan, kernel_size, q.dtype)
        for h, i0, i1 in _chunks(plan, batch, heads, rpb is not None, q.device):
            if rpb is not None and (mask is None or i0 == h * batch):
                mask = _bias_mask(rpb[h], plan)
            qt = _gather(qf[i0:i1], plan.q_index, plan.tile_q)
            kt = _gather(kf[i0:i1], plan.k_index, plan.tile_k)
            vt = _gather(vf[i0:i1], plan.k_index, plan.tile_k)
            ot = torch.matmul(_probs(qt, kt, mask), vt)
            out[i0:i1] = _scatter_back(ot.view(i1 - i0, -1, dim), plan.out_index)
        ctx.save_for_backward(q, k, v, rpb, out)
        ctx.plan, ctx.kernel_size = plan, kernel_size
        return out.view(heads, batch, tokens, dim)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, v, rpb, out = ctx.saved_tensors
        plan, kernel_size = ctx.plan, ctx.kernel_size
        heads, batch, tokens, dim = q.shape
        qf, kf, vf = (t.reshape(heads * batch, tokens, dim) for t in (q, k, v))
        go = grad_out.reshape(heads * batch, tokens, dim)
        # delta_i = sum_j P_ij dP_ij = dO_i . O_i; zero it (and dO) on repeated query slots so they
        # contribute nothing to any gradient.
        delta = (go * out).sum(-1, keepdim=True)
        valid = plan.q_valid.to(q.dtype).view(1, plan.n_tiles, plan.tile_q, 1)
        grad_q, grad_k, grad_v = torch.empty_like(qf), torch.zeros_like(kf), torch.zeros_like(vf)
        need_rpb = rpb is not None and ctx.needs_input_grad[3]
        grad_rpb = torch.zeros_like(rpb) if need_rpb else None
        mask = None if rpb is not None else _window_mask(plan, kernel_size, q.dtype)
        for h, i0, i1 in _chunks(plan, batch, heads, rpb is not None, q.device):
            if rpb is not None and (mask is None or i0 == h * batch):
                mask = _bias_mask(rpb[h], plan)
            qt = _gather(qf[i0:i1], plan.q_index, plan.tile_q)
            kt = _gather(kf[i0:i1], plan.k_index, plan.tile_k)
            vt = _gather(vf[i0:i1], plan.k_index, plan.tile_k)
            got = _gather(go[i0:i1], plan.q_index, plan.tile_q).mul_(valid)
            dt = _gather(delta[i0:i1], plan.q_index, plan.tile_q).mul_(valid)
            probs = _probs(qt, kt, mask)
            gvt = torch.matmul(probs.transpose(-1, -2), got)
            gs = torch.matmul(got, vt.transpose(-1, -2)).sub_(dt).mul_(probs)  # dL/dlogits
            gqt = torch.matmul(gs, kt)
            gkt = torch.matmul(gs.transpose(-1, -2), qt)
            n = i1 - i0
            grad_q[i0:i1] = _scatter_back(gqt.view(n, -1, dim), plan.out_index)
            _fold_into(grad_k[i0:i1], gkt.view(n, -1, dim), plan.k_index)
            _fold_into(grad_v[i0:i1], gvt.view(n, -1, dim), plan.k_index)
            if need_rpb:
                grad_rpb[h] += _bias_grad(gs.sum(0), plan)
        shape = (heads, batch, tokens, dim)
        return grad_q.view(shape), grad_k.view(shape), grad_v.view(shape), grad_rpb, None, None


def _na2d_torch(q, k, v, kernel_size, dilation, rpb, scale, tiles=None):
    batch, heads, height, width, dim = q.shape
    if tiles is None:
        tiles = (
            _pick_tile(-(-height // dilation), kernel_size),
            _pick_tile(-(-width // dilation), kernel_size),
        )
    plan = _plan(height, width, kernel_size, dilation, tuple(tiles), q.device)

    def heads_first(t: Tensor) -> Tensor:
        return t.transpose(0, 1).reshape(heads, batch, height * width, dim)

    if rpb is not None:
        rpb = rpb.to(q.dtype)
    out = _TiledNA.apply(heads_first(q * scale), heads_first(k), heads_first(v), rpb, plan, kernel_size)
    return out.view(heads, batch, height, width, dim).transpose(0, 1)


# ----------------------------------------------------------------------------------------------------
# natten backend
# ----------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _natten_module():
    """natten if importable (>= 0.20 functional API), else None."""
    try:
        import natten
    except ImportError:
        return None
    return natten if hasattr(natten, "na2d") else None


def _natten_unavailable(q: Tensor, rpb: Tensor | None) -> str | None:
    """Why the natten backend cannot run this call, or None when it can."""
    if _natten_module() is None:
        return "natten (>= 0.20) is not installed"
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
    natten = _natten_module()
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
    if _natten_module() is not None and torch.device(device).type == "cuda":
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
        raise ValueError(
            f"q, k, v shapes differ: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
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
