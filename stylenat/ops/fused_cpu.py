"""The generator's fused no-autograd CPU inference path, and the CPU buffer pool and chunk budget.

The same maths as the modules' own forwards (tests/models hold the two together), lean on memory
traffic: each AdaIN becomes a per-sample (scale, shift) folded into the next projection, projections and
the MLP run in cache-sized chunks of tokens, residual adds go in place. On a GPU these chunk loops would
be hundreds of tiny launches per block, so only CPU inference takes this path (``applies``); the
generator's ``Stage`` hands itself to ``stage`` at that one point. The functions read the modules'
parameters by attribute (ops sit below models and do not import them).

The buffer pool and the chunk budget also serve the torch backend of neighborhood attention.
"""

from __future__ import annotations

import math
import threading

import torch
from torch import Tensor

# Elements per chunk of a chunked loop on the CPU: a chunk's product stays in the L2/L3 cache instead of
# streaming full-map temporaries through memory, and is still large enough for an efficient matrix product
# (2 threads: ~1.3x the throughput of one full-map projection at 128 or 256 channels).
CPU_CHUNK_ELEMS = 1 << 20
# The statistics pass only streams, so it takes quarter-size chunks (fewer cache misses).
_STATS_SHARE = 4


# ----------------------------------------------------------------------------------------------------
# Buffer pool
# ----------------------------------------------------------------------------------------------------


class BufferPool:
    """Named scratch buffers, grown on demand and reused: one flat tensor per (name, dtype)."""

    def __init__(self):
        self._buffers: dict[tuple[str, torch.dtype], Tensor] = {}

    def get(self, name: str, shape, like: Tensor) -> Tensor:
        """An uninitialised ``shape`` view of buffer ``name`` (like's dtype and device)."""
        numel = math.prod(shape)
        key = (name, like.dtype)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            self._buffers.pop(key, None)  # free the old one first
            # A normal tensor even when first made under inference_mode: the buffers outlive the call, and
            # an inference tensor could not be written by a later call outside inference_mode.
            with torch.inference_mode(False):
                buf = self._buffers[key] = like.new_empty(numel)
        return buf[:numel].view(shape)


_local = threading.local()


def pool_for(like: Tensor) -> BufferPool:
    """The pool for the temporaries of one call on like's device. On the CPU this thread's pool, kept
    between calls: a fresh multi-MB tensor costs a page fault per 4 kB on every call (the C allocator hands
    large blocks back to the OS), ~5% of a 256x256 forward. Elsewhere (caching allocators) a new pool, so
    reuse lasts one call."""
    if like.device.type != "cpu":
        return BufferPool()
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = BufferPool()
    return pool


def buffer(name: str, shape, like: Tensor) -> Tensor:
    """An uninitialised tensor for a temporary that dies inside one layer call: from this thread's pool
    on the CPU, a plain new tensor elsewhere."""
    if like.device.type != "cpu":
        return like.new_empty(shape)
    return pool_for(like).get(name, shape, like)


def release_buffers() -> None:
    """Free this thread's CPU buffers (they are kept between calls for speed)."""
    _local.__dict__.pop("pool", None)


# ----------------------------------------------------------------------------------------------------
# Chunks
# ----------------------------------------------------------------------------------------------------


def row_chunks(rows: int, width: int, budget: int | None = None) -> list[slice]:
    """Slices of ``rows`` rows, each about ``budget`` (default CPU_CHUNK_ELEMS) elements of ``width``
    columns (at least 64 rows)."""
    step = max(64, (CPU_CHUNK_ELEMS if budget is None else budget) // max(width, 1))
    return [slice(r, min(r + step, rows)) for r in range(0, rows, step)]


def sample_chunks(batch: int, rows: int, width: int, budget: int | None = None):
    """(samples, rows) slice pairs covering a [batch, rows, width] map in chunks of about ``budget``
    (default CPU_CHUNK_ELEMS) elements that never split a sample unless it is larger than a chunk: whole
    samples together for small maps (one larger matrix product instead of one per sample), else row
    chunks of one sample. The [samples, rows] block of a contiguous map is then a contiguous run of rows."""
    step = max(64, (CPU_CHUNK_ELEMS if budget is None else budget) // max(width, 1))
    if rows >= step:
        return [(slice(b, b + 1), r) for b in range(batch) for r in row_chunks(rows, width, budget)]
    per = max(1, step // rows)
    return [(slice(b, min(b + per, batch)), slice(0, rows)) for b in range(0, batch, per)]


def affine_chunks(x: Tensor, width: int, scale: Tensor | None = None, shift: Tensor | None = None):
    """The tokens of a contiguous map x [B, H, W, C] in the chunks of sample_chunks for a product ``width``
    columns wide: yields (samples, rows, tokens, inputs) with tokens the chunk of x as [n, C] (a view, so
    writes land in x) and inputs = tokens * scale + shift for per-sample scale, shift [B, C] in one reused
    buffer (tokens itself without scale), so the normalised map is never written out whole."""
    batch, channels = x.shape[0], x.shape[-1]
    flat = x.view(batch, -1, channels)
    chunk_inputs = None
    if scale is not None:
        scale, shift = scale.to(x.dtype)[:, None, :], shift.to(x.dtype)[:, None, :]
    for samples, rows in sample_chunks(batch, flat.shape[1], width):
        part = flat[samples, rows]
        n = part.shape[0] * part.shape[1]
        tokens = part.view(n, channels)
        if scale is None:
            yield samples, rows, tokens, tokens
            continue
        if chunk_inputs is None:  # the first chunk is the largest
            chunk_inputs = x.new_empty(n, channels)
        inputs = torch.addcmul(shift[samples], part, scale[samples], out=chunk_inputs[:n].view(part.shape))
        yield samples, rows, tokens, inputs.view(n, channels)


# ----------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------


def applies(x: Tensor) -> bool:
    """Whether the generator's stages take this path for the map x: CPU inference (grad mode off; not
    inside torch.compile, which gets the plain ops to fuse its own way; no autocast, whose casts the plain
    ops keep) in float32 or float64."""
    return (
        x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and not torch.is_autocast_enabled(x.device.type)
        and x.dtype in (torch.float32, torch.float64)
    )


def token_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample mean and biased variance over the tokens of x [B, H, W, C] -> ([B, C], [B, C]) float32,
    without autograd. Two passes (mean, then the centred squares chunk by chunk): as exact as torch.var
    and ~4x faster on the CPU, whose var kernel does not vectorise a reduction over the outer dims."""
    batch, channels = x.shape[0], x.shape[-1]
    flat = x.reshape(batch, -1, channels)
    mean = flat.mean(dim=1, dtype=torch.float32)
    sq = torch.zeros_like(mean)
    chunks = row_chunks(flat.shape[1], batch * channels, CPU_CHUNK_ELEMS // _STATS_SHARE)
    centred_rows = mean.new_empty(batch, chunks[0].stop, channels)
    for rows in chunks:
        centred = torch.sub(flat[:, rows], mean[:, None], out=centred_rows[:, : rows.stop - rows.start])
        sq += centred.square_().sum(dim=1)
    return mean, sq / flat.shape[1]


def adain_coefficients(norm, x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """(scale, shift) [B, C] with norm(x, w) = x * scale + shift for an AdaptiveInstanceNorm ``norm``
    (the fold of the mean into the shift costs ~1e-7 * |mean| / std of relative precision in float32)."""
    gamma, beta = norm.affine(w).chunk(2, dim=-1)
    mean, var = token_stats(x)
    scale = gamma * torch.rsqrt(var + norm.eps)
    return scale, beta - mean * scale


def affine(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """x * scale + shift for a map x [B, H, W, C] and per-sample scale, shift [B, C] (AdaIN's form)."""
    return torch.addcmul(shift[:, None, None, :].to(x.dtype), x, scale[:, None, None, :].to(x.dtype))


@torch.no_grad()
def linear_add(inp: Tensor, linear, residual: Tensor, inplace: bool = False) -> Tensor:
    """residual + linear(inp) for channels-last maps inp [..., K], residual [..., O] (contiguous), as a new
    tensor or (inplace) into residual, in cache-sized row chunks: a chunk's product goes straight onto its
    residual rows. On the CPU ~1.5x faster than one big projection when K is small (128, 256), whose
    output would otherwise stream through memory."""
    flat_in, flat_res = inp.reshape(-1, inp.shape[-1]), residual.view(-1, residual.shape[-1])
    out = flat_res if inplace else torch.empty_like(flat_res)
    weight = linear.weight.t().to(inp.dtype)
    bias = None if linear.bias is None else linear.bias.to(inp.dtype)
    for rows in row_chunks(flat_in.shape[0], weight.shape[1]):
        part = out[rows]
        torch.addmm(part if inplace else flat_res[rows], flat_in[rows], weight, out=part)
        if bias is not None:
            part.add_(bias)
    return out.view(residual.shape)


@torch.no_grad()
def affine_linear(x: Tensor, linear, scale: Tensor, shift: Tensor, name: str) -> Tensor:
    """linear(x * scale + shift) for per-sample scale, shift [B, C], chunk by chunk straight into the
    projection (the normalised map is never written out), into pooled buffer ``name``: the result must
    die inside the caller's layer call."""
    batch, height, width, _ = x.shape
    weight, bias = linear.weight.t().to(x.dtype), linear.bias.to(x.dtype)
    out = buffer(name, (batch, height * width, weight.shape[1]), x)
    for samples, rows, _, inputs in affine_chunks(x, weight.shape[1], scale, shift):
        torch.addmm(bias, inputs, weight, out=out[samples, rows].view(inputs.shape[0], -1))
    return out.view(batch, height, width, -1)


@torch.no_grad()
def mlp_add_(mlp, x: Tensor, scale: Tensor | None = None, shift: Tensor | None = None) -> Tensor:
    """x += mlp(x * scale + shift) in place, for x [B, H, W, C] and per-sample scale, shift [B, C] (None:
    mlp(x)). Runs in chunks of tokens through one reused buffer, so the 4x wider hidden activations never
    leave the cache (on the CPU ~2x faster than the plain forward at 128x128 and up)."""
    dtype, hidden = x.dtype, mlp.fc1.out_features
    w1, b1 = mlp.fc1.weight.t().to(dtype), mlp.fc1.bias.to(dtype)
    w2, b2 = mlp.fc2.weight.t().to(dtype), mlp.fc2.bias.to(dtype)
    hid = None
    for _, _, tokens, inputs in affine_chunks(x, hidden, scale, shift):
        n = tokens.shape[0]
        if hid is None:  # the first chunk is the largest
            hid = x.new_empty(n, hidden)
        h = torch.ops.aten.gelu_(torch.addmm(b1, inputs, w1, out=hid[:n]))
        torch.addmm(tokens, h, w2, out=tokens).add_(b2)
    return x


@torch.no_grad()
def attention_add(attn, x: Tensor, scale: Tensor, shift: Tensor, inplace: bool = False) -> Tensor:
    """x + attn(x * scale + shift) for per-sample scale, shift [B, C] (the AdaIN in front), as a new tensor
    or (inplace) into x. A layer with a separate ``attend`` step (Hydra-NA: qkv -> heads) gets the affine
    fused into its qkv projection and the residual into its output projection, its heads written into a
    pooled token-major buffer; others (the 4x4 MHSA, a few tokens) run whole."""
    if not hasattr(attn, "attend"):
        h = attn(affine(x, scale, shift))
        return x.add_(h) if inplace else x + h
    batch, height, width, _ = x.shape
    qkv = affine_linear(x, attn.qkv, scale, shift, "qkv")
    heads = buffer("heads", (batch, height, width, attn.num_heads, attn.head_dim), qkv)
    return linear_add(attn.attend(qkv, out=heads), attn.proj, x, inplace)


@torch.no_grad()
def transformer_block(block, x: Tensor, w: Tensor, inplace: bool = False) -> Tensor:
    """A TransformerBlock (x += Attn(AdaIN(x, w)); x += MLP(AdaIN(x, w))) on a contiguous map x, both
    residual adds in place: into a new tensor unless ``inplace`` (the caller owns x)."""
    x = attention_add(block.attn, x, *adain_coefficients(block.norm1, x, w), inplace=inplace)
    return mlp_add_(block.mlp, x, *adain_coefficients(block.norm2, x, w))


@torch.no_grad()
def upsample(up, x: Tensor) -> Tensor:
    """A BilinearUpsample: the x2 resize, then norm, projection and positional encoding in cache-sized
    row chunks, so neither the normalised map nor the projection streams through memory on its own."""
    x = up.resize(x)
    pos = up.alpha * up.pos.to(x.dtype)
    if not x.is_contiguous():
        return up.proj(up.norm(x)) + pos
    batch, height, width, channels = x.shape
    flat, pos = x.reshape(batch, height * width, channels), pos.reshape(height * width, -1)
    out = x.new_empty(batch, height * width, pos.shape[-1])
    weight = up.proj.weight.t().to(x.dtype)  # the projection has no bias
    for samples, rows in sample_chunks(batch, height * width, max(channels, pos.shape[-1])):
        normed = up.norm(flat[samples, rows])
        part = out[samples, rows]
        torch.mm(normed.view(-1, channels), weight, out=part.view(-1, part.shape[-1]))
        part.add_(pos[rows])
    return out.view(batch, height, width, -1)


@torch.no_grad()
def stage(module, x: Tensor, w0: Tensor, w1: Tensor, inplace: bool = False) -> Tensor:
    """A generator Stage: its two transformer blocks, then its upsample if it has one. ``inplace``: the
    caller owns x (the second block always owns its input). A map that is not contiguous (the first
    stage's broadcast constant input) goes through the block's plain forward."""
    for j, (block, w) in enumerate(zip(module.blocks, (w0, w1))):
        x = transformer_block(block, x, w, inplace or j > 0) if x.is_contiguous() else block(x, w)
    return upsample(module.upsample, x) if module.upsample is not None else x
