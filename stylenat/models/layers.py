"""Small building blocks shared by the generator and the discriminators."""

import math
import threading

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)


def fused_leaky_relu(x, bias=None, negative_slope=0.2, scale=SQRT2):
    """StyleGAN's bias + leaky ReLU * sqrt(2); the bias broadcasts over dim 1 for NCHW, the last dim otherwise."""
    if bias is not None:
        shape = [1] * x.ndim
        channel_dim = 1 if x.ndim == 4 else x.ndim - 1
        shape[channel_dim] = -1
        x = x + bias.view(shape)
    return F.leaky_relu(x, negative_slope) * scale


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate: weights stored at unit scale, rescaled at run time.

    `lr_mul` slows this layer's effective learning rate (0.01 in the mapping network) without a
    separate optimizer group.
    """

    def __init__(self, in_dim, out_dim, bias=True, bias_init=0.0, lr_mul=1.0, activation=None):
        super().__init__()
        if activation not in (None, "fused_lrelu"):
            raise ValueError(f"unknown activation {activation!r}; expected None or 'fused_lrelu'")
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x):
        bias = self.bias * self.lr_mul if self.bias is not None else None
        if self.activation == "fused_lrelu":
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), bias)
        return F.linear(x, self.weight * self.scale, bias)

    def extra_repr(self):
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, lr_mul={self.lr_mul}, activation={self.activation}"


class PixelNorm(nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


# Elements per chunk of the chunked no-grad paths below, which run on the CPU only (see fast_path): a
# chunk's product stays in the CPU's L2/L3 cache instead of streaming full-map temporaries through memory,
# and is still large enough for an efficient matrix product (2 threads: ~1.3x the throughput of one
# full-map projection at 128 or 256 channels). On a GPU the same loops would be many tiny launches.
CPU_CHUNK_ELEMS = 1 << 20
# The statistics pass only streams: smaller chunks, fewer cache misses.
_CPU_STATS_CHUNK_ELEMS = 1 << 18


def row_chunks(rows: int, width: int, budget: int | None = None):
    """Slices of ``rows`` rows, each about ``budget`` (default CPU_CHUNK_ELEMS) elements of ``width``
    columns (at least 64 rows)."""
    step = max(64, (CPU_CHUNK_ELEMS if budget is None else budget) // max(width, 1))
    return [slice(r, min(r + step, rows)) for r in range(0, rows, step)]


_workspaces = threading.local()


def workspace(name: str, shape, like):
    """An uninitialised tensor of ``shape`` (like's dtype and device) for a temporary that dies inside one
    layer call (the attention layer's qkv and head outputs). On the CPU the memory persists per thread,
    name and dtype and is reused by every layer and call: a fresh multi-100-MB tensor costs a page fault
    per 4 kB on every call (the C allocator hands large blocks back to the OS), ~5% of a 256x256 forward.
    Elsewhere (caching allocators) it is a plain new tensor."""
    if like.device.type != "cpu":
        return like.new_empty(shape)
    numel = math.prod(shape)
    pool = _workspaces.__dict__.setdefault("buffers", {})
    key = (name, like.dtype)
    buf = pool.get(key)
    if buf is None or buf.numel() < numel:
        pool.pop(key, None)  # free the old one first
        with torch.inference_mode(False):  # writable by later calls outside inference_mode too
            buf = pool[key] = torch.empty(numel, dtype=like.dtype)
    return buf[:numel].view(shape)


def release_workspaces() -> None:
    """Free this thread's CPU workspaces (they are kept between calls for speed)."""
    _workspaces.__dict__.pop("buffers", None)


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


def affine(x, scale, shift):
    """x * scale + shift for a map x [B, H, W, C] and per-sample scale, shift [B, C] (AdaIN's form)."""
    return torch.addcmul(shift[:, None, None, :].to(x.dtype), x, scale[:, None, None, :].to(x.dtype))


def affine_chunks(x, width, scale=None, shift=None):
    """The tokens of a contiguous map x [B, H, W, C] in the chunks of sample_chunks for a product ``width``
    columns wide: yields (samples, rows, tokens, inputs) with tokens the chunk of x as [n, C] (a view, so
    writes land in x) and inputs = tokens * scale + shift for per-sample scale, shift [B, C] in one reused
    buffer (tokens itself without scale), so the normalised map is never written out whole."""
    batch, channels = x.shape[0], x.shape[-1]
    flat = x.view(batch, -1, channels)
    buffer = None
    if scale is not None:
        scale, shift = scale.to(x.dtype)[:, None, :], shift.to(x.dtype)[:, None, :]
    for samples, rows in sample_chunks(batch, flat.shape[1], width):
        part = flat[samples, rows]
        n = part.shape[0] * part.shape[1]
        tokens = part.view(n, channels)
        if scale is None:
            yield samples, rows, tokens, tokens
            continue
        if buffer is None:  # the first chunk is the largest
            buffer = x.new_empty(n, channels)
        inputs = torch.addcmul(shift[samples], part, scale[samples], out=buffer[:n].view(part.shape))
        yield samples, rows, tokens, inputs.view(n, channels)


def fast_path(x) -> bool:
    """Whether the hand-fused no-autograd paths of the generator apply to the map x: on the CPU (their
    cache-sized chunk loops would be hundreds of tiny launches per block on a GPU), grad mode off, not
    inside torch.compile (which gets the plain ops, to fuse its own way), no autocast (whose casts the
    plain ops keep), float32/float64 and contiguous."""
    return (
        x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and not torch.is_autocast_enabled(x.device.type)
        and x.dtype in (torch.float32, torch.float64)
        and x.is_contiguous()
    )


def token_stats(x):
    """Per-sample mean and biased variance over the tokens of x [B, H, W, C] -> ([B, C], [B, C]) float32,
    without autograd. Two passes (mean, then the centred squares chunk by chunk): as exact as torch.var
    and ~4x faster on the CPU, whose var kernel does not vectorise a reduction over the outer dims."""
    batch, channels = x.shape[0], x.shape[-1]
    flat = x.reshape(batch, -1, channels)
    mean = flat.mean(dim=1, dtype=torch.float32)
    sq = torch.zeros_like(mean)
    chunks = row_chunks(flat.shape[1], batch * channels, _CPU_STATS_CHUNK_ELEMS)
    buf = mean.new_empty(batch, chunks[0].stop, channels)
    for rows in chunks:
        centred = torch.sub(flat[:, rows], mean[:, None], out=buf[:, : rows.stop - rows.start])
        sq += centred.square_().sum(dim=1)
    return mean, sq / flat.shape[1]


@torch.no_grad()
def linear_add(inp, linear, residual, inplace=False):
    """residual + linear(inp) for channels-last maps inp [..., K], residual [..., O] (contiguous), as a new
    tensor or (inplace) into residual, in cache-sized row chunks (no autograd): a chunk's product goes
    straight onto its residual rows. On the CPU chunked projections run ~1.5x faster than one big one
    when K is small (128, 256), whose output would otherwise stream through memory."""
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


class AdaptiveInstanceNorm(nn.Module):
    """Instance norm over the tokens of a [B, H, W, C] map, then a per-sample affine predicted from w."""

    def __init__(self, channels, w_dim, eps=1e-5):
        super().__init__()
        self.affine = EqualLinear(w_dim, 2 * channels)
        self.eps = eps

    def coefficients(self, x, w):
        """(scale, shift) [B, C] with AdaIN(x, w) = x * scale + shift (no-grad use: the fold of the mean
        into the shift costs ~1e-7 * |mean| / std of relative precision in float32)."""
        gamma, beta = self.affine(w).chunk(2, dim=-1)
        mean, var = token_stats(x)
        scale = gamma * torch.rsqrt(var + self.eps)
        return scale, beta - mean * scale

    def forward(self, x, w):
        if not fast_path(x):
            mean = x.mean(dim=(1, 2), keepdim=True)
            centred = x - mean
            var = centred.square().mean(dim=(1, 2), keepdim=True)
            gamma, beta = self.affine(w).chunk(2, dim=-1)
            scale = gamma[:, None, None, :] * torch.rsqrt(var + self.eps)
            return torch.addcmul(beta[:, None, None, :], centred, scale)
        return affine(x, *self.coefficients(x, w))


class Mlp(nn.Module):
    def __init__(self, channels, hidden):
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))

    @torch.no_grad()
    def add_to_(self, x, scale=None, shift=None):
        """x += MLP(x * scale + shift) in place, for x [B, H, W, C] and per-sample scale, shift [B, C]
        (None: MLP(x)); no autograd. Runs in chunks of tokens through reused buffers, so the 4x wider
        hidden activations never leave the cache (on the CPU ~2x faster than the plain forward at 128x128
        and up)."""
        dtype, hidden = x.dtype, self.fc1.out_features
        w1, b1 = self.fc1.weight.t().to(dtype), self.fc1.bias.to(dtype)
        w2, b2 = self.fc2.weight.t().to(dtype), self.fc2.bias.to(dtype)
        hid = None
        for _, _, tokens, inputs in affine_chunks(x, hidden, scale, shift):
            n = tokens.shape[0]
            if hid is None:  # the first chunk is the largest
                hid = x.new_empty(n, hidden)
            h = torch.ops.aten.gelu_(torch.addmm(b1, inputs, w1, out=hid[:n]))
            torch.addmm(tokens, h, w2, out=tokens).add_(b2)
        return x


def sinusoidal_table(num_positions, dim):
    """fairseq/SPE table used by StyleSwin: row p = [sin(p f), cos(p f)], f_i = 10000^(-i/(dim/2-1)); row 0 = 0."""
    half = dim // 2
    if half < 2:
        raise ValueError(f"sinusoidal encoding needs at least 4 channels per axis, got {dim}")
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    angles = torch.arange(num_positions, dtype=torch.float32)[:, None] * freq[None, :]
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    table[0] = 0
    return table


def sinusoidal_grid_2d(height, width, channels):
    """2-D encoding [H, W, C]: the first C/2 channels encode x (column), the rest y (row); positions start at 1."""
    if channels % 4:
        raise ValueError(f"2-D sinusoidal encoding needs channels divisible by 4, got {channels}")
    dim = channels // 2
    x_emb = sinusoidal_table(width + 1, dim)[1:]  # [W, dim]
    y_emb = sinusoidal_table(height + 1, dim)[1:]  # [H, dim]
    return torch.cat(
        [x_emb[None, :, :].expand(height, width, dim), y_emb[:, None, :].expand(height, width, dim)], dim=-1
    )


class EqualConv2d(nn.Module):
    """Conv2d with equalized learning rate (rosinality layout: `weight` at unit scale, optional `bias`).

    Used by the discriminators when spectral norm is off.
    """

    def __init__(self, in_channel, out_channel, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channel)) if bias else None
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.stride = stride
        self.padding = padding

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)

    def extra_repr(self):
        o, i, k, _ = self.weight.shape
        return f"{i}, {o}, {k}, stride={self.stride}, padding={self.padding}, bias={self.bias is not None}"
