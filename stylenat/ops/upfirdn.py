"""FIR resampling (upsample, pad, filter, downsample) in pure PyTorch.

Semantics follow rosinality's / NVIDIA's ``upfirdn2d`` exactly, so checkpoints trained with the
reference CUDA op behave identically here: zero insertion, padding (negative values crop), a *true*
convolution (the kernel is flipped), then striding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Blur", "Downsample", "downsample2d", "make_kernel", "upfirdn2d", "upsample2d"]


def make_kernel(k) -> torch.Tensor:
    """Return a 2-D float32 FIR kernel summing to 1 (a 1-D kernel becomes its outer product).

    Idempotent, so callers may pass either taps like ``[1, 3, 3, 1]`` or an already-made kernel.
    """
    k = torch.as_tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = torch.outer(k, k)
    if k.ndim != 2:
        raise ValueError(f"make_kernel expects a 1-D or 2-D kernel, got shape {tuple(k.shape)}")
    return k / k.sum()


def _parse_pad(pad) -> tuple[int, int, int, int]:
    """Normalise ``pad`` to rosinality's (x0, x1, y0, y1) order."""
    if isinstance(pad, int):
        return (pad, pad, pad, pad)
    pad = tuple(int(p) for p in pad)
    if len(pad) == 2:
        return (pad[0], pad[1], pad[0], pad[1])
    if len(pad) == 4:
        return pad  # type: ignore[return-value]
    raise ValueError(f"pad must be an int, (pad0, pad1) or (x0, x1, y0, y1), got {pad}")


def upfirdn2d(
    x: torch.Tensor,
    kernel: torch.Tensor,
    up: int = 1,
    down: int = 1,
    pad: int | Sequence[int] = (0, 0),
) -> torch.Tensor:
    """Upsample by zero insertion, pad, convolve with ``kernel`` (flipped: true convolution), stride.

    ``x`` is NCHW; ``kernel`` is 2-D [kh, kw]. ``pad`` is (pad0, pad1) for both axes or
    (x0, x1, y0, y1); negative entries crop. Output size per axis:
    ``(in * up + pad0 + pad1 - k) // down + 1``. Differentiable w.r.t. ``x`` (and ``kernel``).
    """
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d expects an NCHW tensor, got shape {tuple(x.shape)}")
    if up < 1 or down < 1:
        raise ValueError(f"up and down must be >= 1, got up={up}, down={down}")
    if kernel.ndim != 2:
        raise ValueError(f"upfirdn2d expects a 2-D kernel (see make_kernel), got shape {tuple(kernel.shape)}")
    px0, px1, py0, py1 = _parse_pad(pad)
    n, c, h, w = x.shape
    kernel = kernel.to(device=x.device, dtype=x.dtype)
    kh, kw = kernel.shape

    out = x
    if up > 1:
        # Zero insertion: each sample is followed by up - 1 zeros (trailing zeros kept, as the reference).
        out = out.reshape(n, c, h, 1, w, 1)
        out = F.pad(out, (0, up - 1, 0, 0, 0, up - 1))
        out = out.reshape(n, c, h * up, w * up)

    out = F.pad(out, (max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)))
    if min(px0, px1, py0, py1) < 0:
        out = out[
            :,
            :,
            max(-py0, 0) : out.shape[2] - max(-py1, 0),
            max(-px0, 0) : out.shape[3] - max(-px1, 0),
        ]

    weight = torch.flip(kernel, (0, 1)).reshape(1, 1, kh, kw)
    if down > 1:
        # A strided convolution equals "convolve then keep every down-th sample". Channels folded into the
        # batch (one single-channel conv): the formulation training always used here, kept for the strided
        # calls (the discriminators' RGB downsampling, 3 channels: cheap either way) because oneDNN's
        # depthwise strided backward rounds differently, and runs would stop reproducing earlier ones.
        out = F.conv2d(out.reshape(n * c, 1, *out.shape[2:]), weight, stride=down)
        return out.reshape(n, c, out.shape[2], out.shape[3])
    # Every channel filtered independently: a depthwise convolution (groups = channels). The same sums as
    # the folded form (bit-identical at the tiny model's shapes), but oneDNN's backward of a single-channel
    # conv over batch x channels planes took 12.1 ms for a [8, 64, 17, 17] blur against 0.55 ms depthwise:
    # it was the largest op of the tiny model's training step (docs/performance.md).
    return F.conv2d(out, weight.expand(c, 1, kh, kw), groups=c)


def upsample2d(x: torch.Tensor, kernel, factor: int = 2) -> torch.Tensor:
    """Upsample by ``factor`` with an FIR kernel (gain ``factor**2`` keeps the DC level)."""
    k = make_kernel(kernel) * (factor**2)
    p = k.shape[0] - factor
    return upfirdn2d(x, k, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample2d(x: torch.Tensor, kernel, factor: int = 2) -> torch.Tensor:
    """Low-pass filter with an FIR kernel, then keep every ``factor``-th sample."""
    k = make_kernel(kernel)
    p = k.shape[0] - factor
    return upfirdn2d(x, k, down=factor, pad=((p + 1) // 2, p // 2))


class Blur(nn.Module):
    """FIR filter with a fixed padding; used before strided convs in the discriminators.

    The kernel is a buffer named ``kernel`` (as in the reference checkpoints).
    """

    def __init__(self, kernel, pad: Sequence[int], upsample_factor: int = 1):
        super().__init__()
        k = make_kernel(kernel)
        if upsample_factor > 1:
            k = k * (upsample_factor**2)
        self.register_buffer("kernel", k)
        self.pad = tuple(pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Downsample(nn.Module):
    """Module form of :func:`downsample2d` with the kernel stored as buffer ``kernel``."""

    def __init__(self, kernel, factor: int = 2):
        super().__init__()
        self.factor = factor
        k = make_kernel(kernel)
        self.register_buffer("kernel", k)
        p = k.shape[0] - factor
        self.pad = ((p + 1) // 2, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, down=self.factor, pad=self.pad)
