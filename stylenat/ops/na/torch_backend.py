"""The torch backend of neighborhood attention: pure PyTorch, every device, RPB supported.

Queries are cut into tiles (per dilation group, see ``tiling``); a tile attends to the halo of keys
covering all its windows through an additive mask (-inf outside a query's window, RPB inside). A custom
autograd function runs the tiles in chunks of bounded size with explicit matmuls and softmax (on the CPU
faster than scaled_dot_product_attention with a float mask, and the RPB gradient is just the summed logit
gradient); the backward recomputes the probabilities unless they are small, so nothing of size tokens x
halo outlives a chunk. Without autograd the CPU runs each float32 chunk through
scaled_dot_product_attention's fused kernel instead (bf16 chunks keep the explicit ops, faster there;
softmax's max and sum are fp32 inside its kernel either way). This backend serves every call that passes
the argument checks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from stylenat.ops.buffers import pool_for
from stylenat.ops.na.tiling import (
    Piece,
    Plan,
    bias_grad,
    bias_masks,
    chunk_budget,
    pick_tiles,
    tile_plan,
    window_mask,
)
from stylenat.ops.na.windows import check_na_args, needs_grad

# What the forward keeps for the backward, per call: the attention probabilities and the gathered q, k, v
# tiles when all of them fit in this many bytes (saves the backward 3 gathers, the k and v halos ~4x the
# size of k and v; ~10% of a forward+backward on the CPU), else the probabilities alone when they fit
# (saves recomputing a matmul and a softmax per chunk), else nothing.
KEEP_BYTES = 256 << 20


def _blocks(piece: Piece, plan: Plan, batch: int, heads: int, device: torch.device):
    """(b0, b1, h0, h1): rectangles of (batch, head) items, each within the logit budget."""
    step = max(1, chunk_budget(device) // (piece.n_tiles * plan.tile_q * plan.tile_k))
    if step >= heads:
        per = step // heads
        for b0 in range(0, batch, per):
            yield b0, min(b0 + per, batch), 0, heads
    else:
        for b in range(batch):
            for h0 in range(0, heads, step):
                yield b, b + 1, h0, min(h0 + step, heads)


def _chunks(plan: Plan, batch: int, heads: int, device: torch.device):
    """(piece, items) in a fixed order (the backward replays the forward's order)."""
    for piece in plan.pieces:
        for b0, b1, h0, h1 in _blocks(piece, plan, batch, heads, device):
            yield piece, (slice(b0, b1), slice(h0, h1))


def _stacked(owner: Piece | Plan, name: str, n: int, stride: int) -> Tensor:
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


def _scratch(like: Tensor):
    """Scratch space for the chunks of one call: ``scratch(name, shape)`` -> an uninitialised tensor, reused
    by every chunk (and, on the CPU, every call: see ops.buffers.pool_for)."""
    pool = pool_for(like)
    return lambda name, shape: pool.get("na." + name, shape, like)


def _gather(x: Tensor, piece: Piece, keys: bool, out: Tensor, scale: float | None = None) -> Tensor:
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


def _from_slots(slots: Tensor, plan: Plan) -> Tensor:
    """Query-slot values [B, heads, n_slots, D] -> tokens [B, heads, H*W, D]. Results go to a slot-space
    buffer chunk by chunk and come back in one gather: far cheaper than scattering every chunk into the
    tokens (index_copy_ is slow and serial on the CPU)."""
    batch, heads, n_slots, dim = slots.shape
    flat = _flat(slots)
    if flat is not None:
        out = flat.index_select(0, _stacked(plan, "token_slot", batch * heads, n_slots))
        return out.view(batch, heads, -1, dim)
    return slots.index_select(2, plan.token_slot)


def _fold(x: Tensor, piece: Piece, out: Tensor) -> None:
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

    def __init__(self, like: Tensor, plan: Plan, out: Tensor | None = None):
        self.plan, self.shape, self.out = plan, like.shape, out
        batch, heads, *_, dim = like.shape
        if plan.direct:
            self.buffer = _like_input(like) if out is None else out
        else:
            self.buffer = like.new_empty(batch, heads, plan.n_slots, dim)

    def put(self, items, piece: Piece, x: Tensor) -> None:
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


def _mask(masks: Tensor, rpb: Tensor | None, items, piece: Piece) -> Tensor:
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


def _chunk_shapes(plan: Plan, piece: Piece, items, dim: int):
    """Shapes of one chunk's query tiles, key tiles and logits."""
    lead = (items[0].stop - items[0].start, items[1].stop - items[1].start, piece.n_tiles)
    return (*lead, plan.tile_q, dim), (*lead, plan.tile_k, dim), (*lead, plan.tile_q, plan.tile_k)


def _keep_level(q: Tensor, plan: Plan) -> str | None:
    """What the forward keeps for the backward within KEEP_BYTES: "tiles" (probabilities and the
    gathered q, k, v tiles), "probs" or None."""
    items = q.shape[0] * q.shape[1]
    n_tiles = items * plan.n_slots // plan.tile_q
    n_probs = n_tiles * plan.tile_q * plan.tile_k
    n_tiles_qkv = n_tiles * (plan.tile_q + 2 * plan.tile_k) * q.shape[-1]
    if (n_probs + n_tiles_qkv) * q.element_size() <= KEEP_BYTES:
        return "tiles"
    return "probs" if n_probs * q.element_size() <= KEEP_BYTES else None


def _tiled_forward(q, k, v, rpb, plan: Plan, kernel_size: int, scale: float, keep=None, out=None):
    """The tiled forward: (output, per chunk (q, k, v tiles or None, probabilities) as ``keep`` asks
    (see _keep_level), or None). Writes into ``out`` (any strides) when given."""
    batch, heads, dim = q.shape[0], q.shape[1], q.shape[-1]
    results = _QueryResults(q, plan, out)
    masks = window_mask(plan, kernel_size, q.dtype) if rpb is None else bias_masks(rpb, plan)
    kept, scratch = [], _scratch(q)
    tiles = scratch if keep != "tiles" else (lambda name, shape: q.new_empty(shape))
    # SDPA's fused CPU kernel is forward-only; in bf16 the explicit matmuls and softmax (its max and sum
    # kept in fp32 inside the kernel) measured faster than it (29 against 40 ms at the benchmark shape).
    fused = keep is None and q.device.type == "cpu" and q.dtype != torch.bfloat16
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


def _dense_rows(plan: Plan, *tensors: Tensor) -> tuple[Tensor, ...]:
    """The tensors as they should enter the tiled loops: contiguous on the CPU when some piece is gathered
    with flat index ops (see _flat), else as they are (grid gathers read any strides)."""
    if tensors[0].device.type == "cpu" and not plan.strided:
        return tuple(t.contiguous() for t in tensors)
    return tensors


class _TiledNA(torch.autograd.Function):
    """Tiled neighborhood attention on q, k, v [B, heads, H, W, D].

    Saves the inputs and the output; the attention probabilities and the gathered tiles are kept too
    when they are small (see KEEP_BYTES), else re-made chunk by chunk in the backward.
    """

    @staticmethod
    def forward(ctx, q, k, v, rpb, plan: Plan, kernel_size: int, scale: float):
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
            masks = window_mask(plan, ctx.kernel_size, q.dtype) if rpb is None else bias_masks(rpb, plan)
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
            if need_rpb:  # over the tiles, then the batch: one sum over dims (0, 2) is ~30x slower on the CPU
                grad_masks[items[1], piece.kind] += gs.sum(2).sum(0)
        grad_rpb = bias_grad(grad_masks, plan, rpb) if need_rpb else None
        return grad_q.result(), grad_k, grad_v, grad_rpb, None, None, None


@torch.compiler.disable  # Python-side plans, caches and chunk loops: run eagerly inside a compiled model
def na2d_torch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_size: int,
    dilation: int = 1,
    rpb: Tensor | None = None,
    scale: float | None = None,
    tiles: tuple[int, int] | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """``stylenat.ops.na2d`` on the torch backend (same contract). tiles: queries per tile along (y, x),
    default ``tiling.pick_tiles``. out: written without autograd (see na2d); the result is stored like q
    when q is dense, else token-major ([B, H, W, heads, D] memory)."""
    scale = check_na_args(q, k, v, kernel_size, dilation, rpb, scale)
    _, _, height, width, _ = q.shape
    if tiles is None:
        tiles = pick_tiles(height, width, kernel_size, dilation)
    plan = tile_plan(height, width, kernel_size, dilation, tuple(tiles), q.device)
    if rpb is not None:
        rpb = rpb.to(q.dtype)
    if needs_grad(q, k, v, rpb):
        return _TiledNA.apply(q, k, v, rpb, plan, kernel_size, scale)
    # No backward can follow: skip the autograd.Function and its saved state.
    q, k, v = _dense_rows(plan, q, k, v)
    with torch.no_grad():
        return _tiled_forward(q, k, v, rpb, plan, kernel_size, scale, out=out)[0]
