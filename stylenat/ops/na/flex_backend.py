"""2-D neighborhood attention on ``torch.nn.attention.flex_attention`` (NATTEN semantics, with RPB).

``na2d_flex`` computes exactly what ``stylenat.ops.na2d`` computes (same arguments, same window rule, same
relative position bias) with a block-sparse fused flex-attention kernel:

* The H*W tokens are flattened. With dilation d > 1 they are first reordered so that every dilation group
  (the tokens sharing ``row % d`` and ``col % d``, a (H/d)x(W/d) sub-image) is contiguous: every window
  then lives inside one contiguous run of tokens, which keeps the block mask as sparse at dilation 8 as at
  dilation 1. Inside a group tokens are rasterised; groups wider than a block (128) may instead be cut into
  4x32 or 8x16 tiles, whichever touches the fewest key blocks (256x256, k=7: 14 -> 8.2 key blocks per
  query block). The output is put back in the original order.
* The window rule is evaluated by ``mask_mod`` from small per-token integer tables (group, position in the
  group, window start/end in group units). Nothing in the compiled graph depends on the kernel size or the
  dilation as a Python constant: problems with the same tensor shapes share one compiled kernel, and on
  CUDA (automatic dynamic shapes) one kernel serves every map size after the first recompile.
* ``score_mod`` adds ``rpb[h, dy + k - 1, dx + k - 1]`` with dy, dx in group units, read from the same kind
  of tables (one flat index per query plus one per key).
* The ``BlockMask`` is built analytically from the k*k window of every query (no dense Q x KV mask, which
  ``create_block_mask`` would materialise: 4 G booleans at 256x256) on the target device, and cached per
  (H, W, k, d, device). Its blocks equal what ``create_block_mask`` builds from the same ``mask_mod``
  (tested).

Platform support (torch 2.14, measured): on the CPU the compiled flex kernel runs forward only, in float32,
float16 and bfloat16 (no float64, no backward: torch raises "FlexAttention does not support backward on
CPU"). Calls the flex kernel cannot serve -- CPU with autograd needed, CPU float64, or a device flex does not
support -- raise ``BackendUnavailable``; ``unavailable`` returns the reason so the dispatcher
(``stylenat.ops.na.dispatch``) can choose another backend before calling. The CPU compiles with static
shapes (one C++ compile, 10-25 s, per new problem shape; see ``_compiled``). On CUDA forward and backward
(including the RPB gradient) are flex's fused Triton kernels (not exercised here: no GPU; see the ``gpu``
tests).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from stylenat.ops.na.windows import BackendUnavailable, axis_windows, check_na_args, needs_grad

# Flex attention's sparse block size (tokens per query / key block of the BlockMask).
BLOCK_SIZE = 128

# Queries per chunk while building a BlockMask (bounds the temporary [chunk, k*k] index tensors and the
# [chunk / BLOCK_SIZE, n_blocks] pair counts).
_MASK_CHUNK_TOKENS = 1 << 15

# Recompile budget for our flex_attention calls (torch's default, 8, is shared by every call site of
# flex_attention; a model with many feature-map sizes and static shapes on the CPU can exceed it, after
# which torch silently runs flex's dense eager reference).
_RECOMPILE_LIMIT = 64

_compiled_flex: dict[bool | None, object] = {}


def _flex_module():
    try:
        from torch.nn.attention import flex_attention as module
    except ImportError:  # torch < 2.5
        return None
    return module


def _compiled(device_type: str):
    """``torch.compile(flex_attention)``, created once per shape policy on first use.

    CUDA: automatic dynamic shapes (one recompile on the first shape change, after which one kernel should
    serve every map size, kernel size and dilation: nothing in the graph depends on them as Python
    constants; not measured here, no GPU).
    CPU: static shapes, one compile per problem. torch 2.14's C++ flex template miscompiles dynamic shapes
    (it renames its split-size symbol with a plain string replace, so ``ks4`` also rewrites ``ks49`` into
    ``cur_qSplitSize9``: "C++ compile error ... was not declared in this scope").
    """
    dynamic = False if device_type == "cpu" else None
    if dynamic not in _compiled_flex:
        _compiled_flex[dynamic] = torch.compile(_flex_module().flex_attention, dynamic=dynamic)
    return _compiled_flex[dynamic]


def _run_eager_under_mode(*args, **kwargs) -> Tensor:
    """flex_attention without torch.compile, for calls under a user TorchDispatchMode (e.g.
    ``stylenat.perf.gemm_split``'s timer): torch.compile finds no frame it may compile there and raises, even
    flex's own internal one. The higher-order op then reaches the mode (which must pass it through) and
    runs torch's unfused implementation: the same attention, not the compiled kernel's speed or bits."""
    module = _flex_module()
    flag = "_FLEX_ATTENTION_DISABLE_COMPILE_DEBUG"
    saved = getattr(module, flag, False)
    setattr(module, flag, True)
    try:
        return module.flex_attention(*args, **kwargs)
    finally:
        setattr(module, flag, saved)


def _run_compiled(device_type: str, *args, **kwargs) -> Tensor:
    if torch.compiler.is_compiling():  # inside a caller's torch.compile: let it trace flex itself
        return _flex_module().flex_attention(*args, **kwargs)
    if _get_current_dispatch_mode() is not None:
        return _run_eager_under_mode(*args, **kwargs)
    attend = _compiled(device_type)
    try:
        import torch._dynamo.config as dynamo_config

        limit = max(_RECOMPILE_LIMIT, dynamo_config.recompile_limit)
        patch = dynamo_config.patch(recompile_limit=limit)
    except (ImportError, AttributeError):  # private knob moved: live with torch's default
        return attend(*args, **kwargs)
    with patch:
        return attend(*args, **kwargs)


def available(device: str | torch.device = "cpu") -> bool:
    """Whether this torch has flex attention for ``device`` (per-call limits: ``unavailable``)."""
    return _flex_module() is not None and torch.device(device).type in ("cuda", "cpu", "xpu")


def unavailable(
    q: Tensor,
    k: Tensor | None = None,
    v: Tensor | None = None,
    rpb: Tensor | None = None,
    compile: bool = True,
) -> str | None:
    """Why flex attention cannot run this call (``na2d_flex`` would raise), or None when it can."""
    if _flex_module() is None:
        return f"torch {torch.__version__} has no torch.nn.attention.flex_attention"
    device = q.device.type
    if device not in ("cuda", "cpu", "xpu"):
        return f"flex attention does not run on {device}"
    if device != "cpu" and q.shape[-1] < 16:
        return f"flex attention's {device} kernels need a head dim >= 16, got {q.shape[-1]}"
    if device == "cpu":
        if compile and q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            return f"flex attention on the CPU supports float32/float16/bfloat16, not {q.dtype}"
        if needs_grad(q, k, v, rpb):
            return "flex attention has no backward on the CPU"
    return None


# ----------------------------------------------------------------------------------------------------
# Token layout, index tables and block mask (built once per shape, cached)
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _FlexPlan:
    """Everything ``na2d_flex`` needs for one (H, W, k, d, device)."""

    perm: Tensor | None  # [L] original token at each flex position (None: identity)
    inv_perm: Tensor | None  # [L] flex position of each original token
    block_mask: object  # torch.nn.attention.flex_attention.BlockMask
    q_bias: Tensor  # [L_pad] flat RPB index base per query: (k-1)*(2k-1) + (k-1) - jy*(2k-1) - jx
    kv_bias: Tensor  # [L_pad] flat RPB index part per key: jy*(2k-1) + jx


# Candidate tiles (rows, cols) of BLOCK_SIZE tokens for groups wider than a block. Narrower groups are
# rasterised (a block then holds whole rows, which measured best); wider ones try tiles too and keep
# whichever order needs the fewest key blocks (256x256, k=7: 14 -> 8.2 key blocks per query block).
_WIDE_TILES = ((4, 32), (8, 16))


def _order(height: int, width: int, dilation: int, tile: tuple[int, int] | None) -> Tensor:
    """Original token (y * W + x) at each flex position: dilation groups contiguous (group-major by
    (y % d, x % d)); inside a group raster order, or ``tile``-major then raster inside each tile."""
    iy, ix = torch.arange(height), torch.arange(width)
    gy, jy, gx, jx = iy % dilation, iy // dilation, ix % dilation, ix // dilation
    th, tw = tile if tile is not None else (1, width)
    key = (gy[:, None] * dilation + gx[None, :]) * height + jy[:, None] // th
    key = (key * width + jx[None, :] // tw) * th + jy[:, None] % th
    key = key * tw + jx[None, :] % tw
    return key.reshape(-1).argsort()


def _block_pairs(order: Tensor, height: int, width: int, kernel_size: int, dilation: int):
    """Unique (q block, kv block) ids (q * n_blocks + kv) touched by the windows, with their pair counts."""
    length = height * width
    _, _, sy = axis_windows(height, kernel_size, dilation)
    _, _, sx = axis_windows(width, kernel_size, dilation)
    pos = torch.empty_like(order).scatter_(0, order, torch.arange(length))  # token -> flex position
    rows, cols = order // width, order % width
    n_blocks = -(-length // BLOCK_SIZE)
    m = torch.arange(kernel_size)
    pair_ids, pair_counts = [], []
    chunk = max(BLOCK_SIZE, _MASK_CHUNK_TOKENS // BLOCK_SIZE * BLOCK_SIZE)
    for t0 in range(0, length, chunk):
        t = torch.arange(t0, min(t0 + chunk, length))
        key_rows = rows[t, None] % dilation + dilation * (sy[rows[t], None] + m)  # [n, k]
        key_cols = cols[t, None] % dilation + dilation * (sx[cols[t], None] + m)
        keys = pos[(key_rows[:, :, None] * width + key_cols[:, None, :]).reshape(len(t), -1)]  # [n, k*k]
        q0 = t0 // BLOCK_SIZE  # chunks start on block boundaries: count block pairs with a local bincount
        local = (t[:, None] // BLOCK_SIZE - q0) * n_blocks + keys // BLOCK_SIZE
        counts = torch.bincount(local.reshape(-1), minlength=-(-len(t) // BLOCK_SIZE) * n_blocks)
        hit = counts.nonzero().squeeze(1)
        pair_ids.append(hit + q0 * n_blocks)
        pair_counts.append(counts[hit])
    return torch.cat(pair_ids), torch.cat(pair_counts)  # chunks are block aligned: no duplicates


def _block_lists(pairs_q: Tensor, pairs_kv: Tensor, n_q_blocks: int, n_kv_blocks: int):
    """BlockMask rows (num_blocks [nq], indices [nq, n_kv]) of the listed unique (q block, kv block) pairs:
    each row's blocks first, ascending; the unused tail is zero (flex requires the full width)."""
    counts = torch.bincount(pairs_q, minlength=n_q_blocks)
    order = torch.argsort(pairs_q * n_kv_blocks + pairs_kv)
    pq, pk = pairs_q[order], pairs_kv[order]
    first = torch.cumsum(counts, 0) - counts
    slot = torch.arange(pq.numel()) - first[pq]
    indices = torch.zeros(n_q_blocks, n_kv_blocks, dtype=torch.int32)
    indices[pq, slot] = pk.to(torch.int32)
    return counts.to(torch.int32), indices


@functools.lru_cache(maxsize=128)
def _plan(height: int, width: int, kernel_size: int, dilation: int, device: str) -> _FlexPlan:
    # Normal tensors even when first built under inference_mode (throughput and benchmark code): the plan
    # is cached, and inference tensors could not be saved for backward by a later call with autograd.
    # torch.device: build on the target device (seconds on the CPU for 512x512 maps).
    with torch.inference_mode(False), torch.device(device):
        return _build_plan(height, width, kernel_size, dilation, device)


def _build_plan(height: int, width: int, kernel_size: int, dilation: int, device: str) -> _FlexPlan:
    flex = _flex_module()
    length = height * width
    k = kernel_size
    span = 2 * k - 1

    # Token order: the candidate whose windows touch the fewest (q block, kv block) pairs.
    tiles = [None] + (list(_WIDE_TILES) if -(-width // dilation) > BLOCK_SIZE else [])
    best = None
    for tile in tiles:
        order = _order(height, width, dilation, tile)
        ids, cnt = _block_pairs(order, height, width, k, dilation)
        if best is None or ids.numel() < best[1].numel():
            best = (order, ids, cnt)
    order, ids, cnt = best
    identity = bool((order == torch.arange(length)).all())
    perm = None if identity else order
    inv_perm = None if identity else torch.empty_like(order).scatter_(0, order, torch.arange(length))

    # Block lists: partial blocks evaluate mask_mod, full ones (every pair in a window) skip it.
    n_blocks = -(-length // BLOCK_SIZE)
    full = cnt == BLOCK_SIZE * BLOCK_SIZE
    partial_q, partial_kv = ids[~full] // n_blocks, ids[~full] % n_blocks
    full_q, full_kv = ids[full] // n_blocks, ids[full] % n_blocks
    kv_num, kv_idx = _block_lists(partial_q, partial_kv, n_blocks, n_blocks)
    full_num, full_idx = _block_lists(full_q, full_kv, n_blocks, n_blocks)

    gy, jy, sy = (t[order // width] for t in axis_windows(height, k, dilation))
    gx, jx, sx = (t[order % width] for t in axis_windows(width, k, dilation))
    group = gy * dilation + gx

    # Per-token tables for mask_mod / score_mod, padded to whole blocks with never-matching entries.
    padded = n_blocks * BLOCK_SIZE
    big = max(height, width) + 1  # > any in-group window end: folds the group into the y coordinate

    def table(values: Tensor, fill: int) -> Tensor:
        out = torch.full((padded,), fill, dtype=torch.int32)
        out[:length] = values.to(torch.int32)
        return out.to(device)

    # padding: keys get y = -1 (below every window), queries an empty window
    kv_y = table(group * big + jy, -1)
    kv_x = table(jx, -1)
    q_y0 = table(group * big + sy, 0)
    q_y1 = table(group * big + sy + k, 0)
    q_x0 = table(sx, 0)
    q_x1 = table(sx + k, 0)

    def mask_mod(b, h, q_idx, kv_idx):
        y = kv_y[kv_idx]
        x = kv_x[kv_idx]
        return (y >= q_y0[q_idx]) & (y < q_y1[q_idx]) & (x >= q_x0[q_idx]) & (x < q_x1[q_idx])

    dev = torch.device(device)
    block_mask = flex.BlockMask.from_kv_blocks(
        kv_num[None, None].to(dev),
        kv_idx[None, None].to(dev),
        full_num[None, None].to(dev),
        full_idx[None, None].to(dev),
        BLOCK_SIZE=BLOCK_SIZE,
        mask_mod=mask_mod,
        seq_lengths=(length, length),
    )
    center = (k - 1) * span + (k - 1)
    return _FlexPlan(
        perm=None if perm is None else perm.to(dev),
        inv_perm=None if inv_perm is None else inv_perm.to(dev),
        block_mask=block_mask,
        q_bias=table(center - jy * span - jx, 0),
        kv_bias=table(jy * span + jx, 0),
    )


def block_mask(height: int, width: int, kernel_size: int, dilation: int = 1, device="cpu"):
    """The cached BlockMask of a (H, W, k, d) problem (in flex token order; for tests and inspection)."""
    return _plan(height, width, kernel_size, dilation, str(torch.device(device))).block_mask


# ----------------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------------


def na2d_flex(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_size: int,
    dilation: int = 1,
    rpb: Tensor | None = None,
    scale: float | None = None,
    compile: bool = True,
) -> Tensor:
    """2-D neighborhood attention on flex attention; same contract as ``stylenat.ops.na2d``.

    q, k, v: [B, heads, H, W, D]; rpb: [heads, 2k-1, 2k-1] or None; scale defaults to D**-0.5.
    compile: run ``torch.compile(flex_attention)`` (the fused block-sparse kernel). False runs flex's eager
    reference, which materialises the full (H*W)^2 score matrix: debugging and tiny maps only.
    Calls flex cannot serve (see ``unavailable``: CPU + autograd, CPU float64) raise
    ``BackendUnavailable``. Returns [B, heads, H, W, D].
    """
    scale = check_na_args(q, k, v, kernel_size, dilation, rpb, scale)
    reason = unavailable(q, k, v, rpb, compile)
    if reason is not None:
        raise BackendUnavailable("flex", reason)

    batch, heads, height, width, dim = q.shape
    plan = _plan(height, width, kernel_size, dilation, str(q.device))

    def tokens(x: Tensor) -> Tensor:
        x = x.reshape(batch, heads, height * width, dim)
        return x if plan.perm is None else x.index_select(2, plan.perm)

    score_mod = None
    if rpb is not None:
        bias = rpb.reshape(heads, -1)
        q_bias, kv_bias = plan.q_bias, plan.kv_bias

        def score_mod(score, b, h, q_idx, kv_idx):
            # clamp: masked-out pairs (other groups, far keys) must still index inside rpb
            return score + bias[h, (q_bias[q_idx] + kv_bias[kv_idx]).clamp(0, bias.shape[1] - 1)]

    args = (tokens(q), tokens(k), tokens(v))
    kwargs = dict(score_mod=score_mod, block_mask=plan.block_mask, scale=scale)
    if compile:
        out = _run_compiled(q.device.type, *args, **kwargs)
    else:
        out = _flex_module().flex_attention(*args, **kwargs)
    if plan.inv_perm is not None:
        out = out.index_select(2, plan.inv_perm)
    return out.reshape(batch, heads, height, width, dim)
