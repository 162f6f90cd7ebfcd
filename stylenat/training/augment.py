"""DiffAugment (Zhao et al. 2020) as used for balanced consistency regularisation in the reference recipe.

Ops, always applied in this order: ``flip`` (horizontal, p=0.5 per image), ``translation`` (up to 1/8 of
the size, zero fill), ``color`` (brightness +U(-0.5, 0.5), saturation x U(0, 2), contrast x U(0.5, 1.5)),
``cutout`` (a zeroed square of half the size). They act on the pixel space D sees (ImageNet-normalised
for the reference model), as in the reference code.

All random parameters are drawn per image on the CPU from the given ``torch.Generator`` and then moved to
the images' device, so an augmentation is a pure function of (images, generator state) on every device;
that is what makes resumed runs identical to uninterrupted ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

AUGMENT_OPS = ("flip", "translation", "color", "cutout")


def check_ops(ops: Sequence[str]) -> tuple[str, ...]:
    """Validate op names; returns them in the canonical application order."""
    unknown = [o for o in ops if o not in AUGMENT_OPS]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown[0]!r}: expected a subset of {list(AUGMENT_OPS)}")
    return tuple(o for o in AUGMENT_OPS if o in ops)


def _uniform(n: int, generator, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(n, 1, 1, 1, generator=generator).to(device=like.device, dtype=like.dtype)


def random_flip(x: torch.Tensor, generator=None, p: float = 0.5) -> torch.Tensor:
    """Mirror each image horizontally with probability ``p``."""
    mask = torch.rand(x.shape[0], generator=generator) < p
    mask = mask.to(x.device).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(3), x)


def random_translation(x: torch.Tensor, generator=None, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by an integer offset in [-ratio*size, ratio*size] per axis, filling with zeros."""
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sh, sh + 1, (b, 1), generator=generator).to(x.device)
    tx = torch.randint(-sw, sw + 1, (b, 1), generator=generator).to(x.device)
    rows = torch.arange(h, device=x.device).view(1, h) + ty  # source row of each output row
    cols = torch.arange(w, device=x.device).view(1, w) + tx
    valid = ((rows >= 0) & (rows < h)).view(b, 1, h, 1) & ((cols >= 0) & (cols < w)).view(b, 1, 1, w)
    rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    out = x.permute(0, 2, 3, 1)[batch, rows.view(b, h, 1), cols.view(b, 1, w)].permute(0, 3, 1, 2)
    return out * valid.to(x.dtype)


def random_color(x: torch.Tensor, generator=None) -> torch.Tensor:
    """Brightness, then saturation, then contrast, each with one random factor per image."""
    b = x.shape[0]
    x = x + (_uniform(b, generator, x) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_uniform(b, generator, x) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(b, generator, x) + 0.5) + mean


def random_cutout(x: torch.Tensor, generator=None, ratio: float = 0.5) -> torch.Tensor:
    """Zero a (ratio*H) x (ratio*W) square per image, centred anywhere (it may overhang the border)."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (b, 1), generator=generator).to(x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (b, 1), generator=generator).to(x.device)
    y0, x0 = cy - ch // 2, cx - cw // 2
    rows = torch.arange(h, device=x.device).view(1, h)
    cols = torch.arange(w, device=x.device).view(1, w)
    in_rows = (rows >= y0) & (rows < y0 + ch)
    in_cols = (cols >= x0) & (cols < x0 + cw)
    keep = ~(in_rows.view(b, 1, h, 1) & in_cols.view(b, 1, 1, w))
    return x * keep.to(x.dtype)


_OPS = {
    "flip": random_flip,
    "translation": random_translation,
    "color": random_color,
    "cutout": random_cutout,
}


def diff_augment(x: torch.Tensor, ops: Sequence[str] = AUGMENT_OPS, generator=None) -> torch.Tensor:
    """Apply the named DiffAugment ops (canonical order) to a batch NCHW; differentiable in ``x``."""
    for name in check_ops(ops):
        x = _OPS[name](x, generator)
    return x.contiguous()
