"""The generator's fused no-autograd CPU inference path: its stage and transformer-block kernels.

The same maths as the modules' own forwards (tests/models hold the two together), lean on memory
traffic: each AdaIN becomes a per-sample (scale, shift) folded into the next projection, projections and
the MLP run in cache-sized chunks of tokens, residual adds go in place. On a GPU these chunk loops would
be hundreds of tiny launches per block, so only CPU inference takes this path (``applies``), and only
while the generator's inference path is "fused" (``Generator.set_inference_path``, the default): the
generator's ``Stage`` hands itself to ``stage`` at that one point. The functions read the modules'
parameters by attribute.

Reduced precision (``dtype=torch.bfloat16``): the matrix products (projections, MLP, the attention's q.k
and p.v) run in bf16 on weights cast once and cached (``ops.buffers.cast_weight``; a weight's cast is
remade when the weight changes: a ``load_state_dict``, an optimizer step, a move). The residual stream,
the statistics, the normalisations, softmax's statistics (inside SDPA's bf16 kernel) and the RGB
accumulation stay fp32: bf16 only where a product's inputs are rounded, so errors do not compound through
the 2 x stages blocks.

The buffer pool, the chunk budget and the weight casts live in ``stylenat.ops.buffers`` (the torch
backend of neighborhood attention shares them).
"""

from __future__ import annotations

import torch
from torch import Tensor

from stylenat.ops import buffers
from stylenat.ops.buffers import buffer, cast_weight, row_chunks, sample_chunks

# The statistics pass only streams, so it takes quarter-size chunks (fewer cache misses).
_STATS_SHARE = 4


def _weights(linear, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """A linear layer's (weight transposed [in, out], bias) in ``dtype`` (cached casts)."""
    bias = None if linear.bias is None else cast_weight(linear.bias, dtype)
    return cast_weight(linear.weight, dtype).t(), bias


def _product_dtype(x: Tensor, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype of the matrix products for a map x: ``dtype`` when it is a reduced float32 (bf16), else
    x's own (float32, float64)."""
    return dtype if dtype is not None and x.dtype == torch.float32 else x.dtype


def affine_chunks(
    x: Tensor,
    width: int,
    scale: Tensor | None = None,
    shift: Tensor | None = None,
    dtype: torch.dtype | None = None,
):
    """The tokens of a contiguous map x [B, H, W, C] in the chunks of sample_chunks for a product ``width``
    columns wide: yields (samples, rows, tokens, inputs) with tokens the chunk of x as [n, C] (a view, so
    writes land in x) and inputs = tokens * scale + shift for per-sample scale, shift [B, C] in one reused
    buffer (tokens itself without scale), so the normalised map is never written out whole. ``dtype``:
    the inputs' dtype (default x's; the affine is computed in x's and rounded once on the way out)."""
    batch, channels = x.shape[0], x.shape[-1]
    flat = x.view(batch, -1, channels)
    dtype = x.dtype if dtype is None else dtype
    chunk_inputs = None
    if scale is not None:
        scale, shift = scale.to(x.dtype)[:, None, :], shift.to(x.dtype)[:, None, :]
    for samples, rows in sample_chunks(batch, flat.shape[1], width):
        part = flat[samples, rows]
        n = part.shape[0] * part.shape[1]
        tokens = part.view(n, channels)
        if scale is None and dtype == x.dtype:
            yield samples, rows, tokens, tokens
            continue
        if chunk_inputs is None:  # the first chunk is the largest
            chunk_inputs = x.new_empty(n, channels, dtype=dtype)
        inputs = chunk_inputs[:n].view(part.shape)
        if scale is None:
            inputs.copy_(part)
        else:
            torch.addcmul(shift[samples], part, scale[samples], out=inputs)
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
    chunks = row_chunks(flat.shape[1], batch * channels, buffers.CPU_CHUNK_ELEMS // _STATS_SHARE)
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
    output would otherwise stream through memory. The product runs in inp's dtype: a bf16 inp makes a
    bf16 product per chunk, added onto the (float32) residual."""
    flat_in, flat_res = inp.reshape(-1, inp.shape[-1]), residual.view(-1, residual.shape[-1])
    out = flat_res if inplace else torch.empty_like(flat_res)
    weight, bias = _weights(linear, inp.dtype)
    mixed = inp.dtype != residual.dtype
    chunks = row_chunks(flat_in.shape[0], weight.shape[1])
    product = inp.new_empty(chunks[0].stop, weight.shape[1]) if mixed else None
    for rows in chunks:
        part = out[rows]
        base = part if inplace else flat_res[rows]
        if mixed:
            prod = product[: rows.stop - rows.start]
            if bias is None:
                torch.mm(flat_in[rows], weight, out=prod)
            else:
                torch.addmm(bias, flat_in[rows], weight, out=prod)
            torch.add(base, prod, out=part)
            continue
        torch.addmm(base, flat_in[rows], weight, out=part)
        if bias is not None:
            part.add_(bias)
    return out.view(residual.shape)


@torch.no_grad()
def affine_linear(
    x: Tensor, linear, scale: Tensor, shift: Tensor, name: str, dtype: torch.dtype | None = None
) -> Tensor:
    """linear(x * scale + shift) for per-sample scale, shift [B, C], chunk by chunk straight into the
    projection (the normalised map is never written out), into pooled buffer ``name``: the result must
    die inside the caller's layer call. ``dtype``: the product's and the result's (default x's)."""
    batch, height, width, _ = x.shape
    dtype = _product_dtype(x, dtype)
    weight, bias = _weights(linear, dtype)
    out = buffer(name, (batch, height * width, weight.shape[1]), weight)
    for samples, rows, _, inputs in affine_chunks(x, weight.shape[1], scale, shift, dtype):
        torch.addmm(bias, inputs, weight, out=out[samples, rows].view(inputs.shape[0], -1))
    return out.view(batch, height, width, -1)


@torch.no_grad()
def mlp_add_(
    mlp,
    x: Tensor,
    scale: Tensor | None = None,
    shift: Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """x += mlp(x * scale + shift) in place, for x [B, H, W, C] and per-sample scale, shift [B, C] (None:
    mlp(x)). Runs in chunks of tokens through one reused buffer, so the 4x wider hidden activations never
    leave the cache (on the CPU ~2x faster than the plain forward at 128x128 and up). ``dtype``: the
    products' and the hidden activations' (default x's); the sum stays in x."""
    dtype, hidden = _product_dtype(x, dtype), mlp.fc1.out_features
    (w1, b1), (w2, b2) = _weights(mlp.fc1, dtype), _weights(mlp.fc2, dtype)
    mixed = dtype != x.dtype
    hid = out = None
    for _, _, tokens, inputs in affine_chunks(x, hidden, scale, shift, dtype):
        n = tokens.shape[0]
        if hid is None:  # the first chunk is the largest
            hid = x.new_empty(n, hidden, dtype=dtype)
            out = x.new_empty(n, tokens.shape[1], dtype=dtype) if mixed else None
        h = torch.ops.aten.gelu_(torch.addmm(b1, inputs, w1, out=hid[:n]))
        if mixed:
            tokens.add_(torch.addmm(b2, h, w2, out=out[:n]))
        else:
            torch.addmm(tokens, h, w2, out=tokens).add_(b2)
    return x


@torch.no_grad()
def attention_add(
    attn, x: Tensor, scale: Tensor, shift: Tensor, inplace: bool = False, dtype: torch.dtype | None = None
) -> Tensor:
    """x + attn(x * scale + shift) for per-sample scale, shift [B, C] (the AdaIN in front), as a new tensor
    or (inplace) into x. A layer with a separate ``attend`` step (Hydra-NA: qkv -> heads) gets the affine
    fused into its qkv projection and the residual into its output projection, its heads written into a
    pooled token-major buffer; others (the 4x4 MHSA, a few tokens) run whole, in x's dtype. ``dtype``: the
    products' and the attention's (bf16: SDPA's bf16 kernel, its softmax statistics in fp32)."""
    if not hasattr(attn, "attend"):
        h = attn(affine(x, scale, shift))
        return x.add_(h) if inplace else x + h
    batch, height, width, _ = x.shape
    qkv = affine_linear(x, attn.qkv, scale, shift, "qkv", dtype)
    heads = buffer("heads", (batch, height, width, attn.num_heads, attn.head_dim), qkv)
    return linear_add(attn.attend(qkv, out=heads), attn.proj, x, inplace)


@torch.no_grad()
def transformer_block(
    block, x: Tensor, w: Tensor, inplace: bool = False, dtype: torch.dtype | None = None
) -> Tensor:
    """A TransformerBlock (x += Attn(AdaIN(x, w)); x += MLP(AdaIN(x, w))) on a contiguous map x, both
    residual adds in place: into a new tensor unless ``inplace`` (the caller owns x). ``dtype``: the
    products' (see the module notes)."""
    x = attention_add(block.attn, x, *adain_coefficients(block.norm1, x, w), inplace=inplace, dtype=dtype)
    return mlp_add_(block.mlp, x, *adain_coefficients(block.norm2, x, w), dtype=dtype)


@torch.no_grad()
def upsample(up, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """A BilinearUpsample: the x2 resize, then norm, projection and positional encoding in cache-sized
    row chunks, so neither the normalised map nor the projection streams through memory on its own.
    ``dtype``: the projection's (the resize, the norm and the sum stay in x's)."""
    x = up.resize(x)
    pos = up.alpha * up.pos.to(x.dtype)
    if not x.is_contiguous():
        return up.proj(up.norm(x)) + pos
    batch, height, width, channels = x.shape
    flat, pos = x.reshape(batch, height * width, channels), pos.reshape(height * width, -1)
    out = x.new_empty(batch, height * width, pos.shape[-1])
    dtype = _product_dtype(x, dtype)
    weight = cast_weight(up.proj.weight, dtype).t()  # the projection has no bias
    product = None
    for samples, rows in sample_chunks(batch, height * width, max(channels, pos.shape[-1])):
        normed = up.norm(flat[samples, rows]).view(-1, channels)
        part = out[samples, rows]
        if dtype == x.dtype:
            torch.mm(normed, weight, out=part.view(-1, part.shape[-1]))
            part.add_(pos[rows])
            continue
        if product is None:  # the first chunk is the largest
            product = x.new_empty(normed.shape[0], weight.shape[1], dtype=dtype)
        prod = torch.mm(normed.to(dtype), weight, out=product[: normed.shape[0]])
        torch.add(prod.view(part.shape), pos[rows], out=part)
    return out.view(batch, height, width, -1)


@torch.no_grad()
def stage(
    module, x: Tensor, w0: Tensor, w1: Tensor, inplace: bool = False, dtype: torch.dtype | None = None
) -> Tensor:
    """A generator Stage: its two transformer blocks, then its upsample if it has one. ``inplace``: the
    caller owns x (the second block always owns its input). A map that is not contiguous (the first
    stage's broadcast constant input) goes through the block's plain forward. ``dtype``: the matrix
    products' (None or float32: x's; bfloat16: see the module notes)."""
    for j, (block, w) in enumerate(zip(module.blocks, (w0, w1))):
        if x.is_contiguous():
            x = transformer_block(block, x, w, inplace or j > 0, dtype)
        else:
            x = block(x, w)
    return upsample(module.upsample, x, dtype) if module.upsample is not None else x
