"""Haar wavelet transform (one level) as used by StyleSwin's / StyleNAT's wavelet discriminator.

The four 2x2 filters are buffers ``ll``, ``lh``, ``hl``, ``hh`` built in float32 from 1/sqrt(2), so each
entry is +-0.49999997 exactly like the reference checkpoints. Forward semantics equal the reference's
``upfirdn2d(x, filt, down=2)`` per band (a true, flipped convolution), computed in one strided conv.
Sub-band order along channels: LL, LH, HL, HH, each a block of C channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HaarTransform", "InverseHaarTransform", "haar_filters"]


def haar_filters() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the (ll, lh, hl, hh) 2x2 Haar filters; first letter = vertical (rows), second = horizontal."""
    low = torch.full((2,), 2**-0.5, dtype=torch.float32)
    high = low.clone()
    high[0] = -high[0]
    return torch.outer(low, low), torch.outer(high, low), torch.outer(low, high), torch.outer(high, high)


class HaarTransform(nn.Module):
    """[B, C, H, W] -> [B, 4C, H/2, W/2] (LL | LH | HL | HH)."""

    def __init__(self, in_channels: int | None = None):
        super().__init__()
        self.in_channels = in_channels  # informational; the filters are shared by all channels
        ll, lh, hl, hh = haar_filters()
        self.register_buffer("ll", ll)
        self.register_buffer("lh", lh)
        self.register_buffer("hl", hl)
        self.register_buffer("hh", hh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # One conv with 4 output maps; flip = upfirdn2d's true convolution.
        weight = torch.stack([self.ll, self.lh, self.hl, self.hh]).flip((1, 2)).unsqueeze(1)
        out = F.conv2d(x.reshape(b * c, 1, h, w), weight.to(x.dtype), stride=2)
        h2, w2 = out.shape[-2:]
        return out.reshape(b, c, 4, h2, w2).transpose(1, 2).reshape(b, 4 * c, h2, w2)


class InverseHaarTransform(nn.Module):
    """[B, 4C, H, W] (LL | LH | HL | HH) -> [B, C, 2H, 2W]; inverts :class:`HaarTransform`.

    As in the reference, the LH and HL buffers are stored negated, and the synthesis equals
    ``upfirdn2d(band, filt, up=2, pad=(1, 0, 1, 0))`` summed over bands.
    """

    def __init__(self, in_channels: int | None = None):
        super().__init__()
        self.in_channels = in_channels
        ll, lh, hl, hh = haar_filters()
        self.register_buffer("ll", ll)
        self.register_buffer("lh", -lh)
        self.register_buffer("hl", -hl)
        self.register_buffer("hh", hh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c4, h, w = x.shape
        if c4 % 4:
            raise ValueError(f"InverseHaarTransform needs a channel count divisible by 4, got {c4}")
        c = c4 // 4
        # With up=2 and pad (1, 0) the reference places band[i, j] * filt[r, s] at (2i + r, 2j + s):
        # exactly a stride-2 transposed conv with the unflipped filters.
        weight = torch.stack([self.ll, self.lh, self.hl, self.hh]).unsqueeze(1)
        bands = x.reshape(b, 4, c, h, w).transpose(1, 2).reshape(b * c, 4, h, w)
        out = F.conv_transpose2d(bands, weight.to(x.dtype), stride=2)
        return out.reshape(b, c, 2 * h, 2 * w)
