"""Normalisation of image tensors (CHW or NCHW).

"imagenet": ((x / 255) - mean) / std, the space the reference code trained in and its released
checkpoints produce; "minus_one_one": x / 127.5 - 1; ``None``: uint8 kept as is.
``denormalize_to_uint8(normalize(x, n), n) == x`` exactly for uint8 ``x``.

One quantisation to uint8, ``minus_one_one_to_uint8`` (StyleGAN2-ADA's: ``x * 127.5 + 128``, clamped,
truncated), for generator output (``sampling.to_uint8``'s images, the stylegan metric protocol) and for
the inverse of a normalisation (``denormalize_to_uint8``). Generator output goes into a normalisation
space (e.g. what D sees) through ``from_minus_one_one``.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from stylenat.data.errors import DatasetError
from stylenat.ops.constants import IMAGENET_MEAN, IMAGENET_STD  # re-exported (stylenat.data)

NORMALIZATIONS = ("imagenet", "minus_one_one")


def check_normalize(normalize: str | None) -> str | None:
    """Validate a normalisation name early, so a typo fails at construction, not in a worker."""
    if normalize is not None and normalize not in NORMALIZATIONS:
        raise DatasetError(
            f"unknown normalize {normalize!r}: expected one of {', '.join(map(repr, NORMALIZATIONS))} or None"
        )
    return normalize


def pil_to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor (3, H, W)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (3, 1, 1) if x.dim() == 3 else (1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(shape)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(shape)
    return mean, std


def normalize(x: torch.Tensor, normalize: str | None) -> torch.Tensor:
    """uint8 (or 0..255 float) images -> float32 in the named space (``None``: returned unchanged)."""
    check_normalize(normalize)
    if normalize is None:
        return x
    x = x.to(torch.float32)
    if normalize == "imagenet":
        mean, std = _stats(x)
        return (x / 255.0 - mean) / std
    return x / 127.5 - 1.0


def denormalize(x: torch.Tensor, normalize: str | None, clamp: bool = True) -> torch.Tensor:
    """Images in the named space -> float in [0, 1] (clamped unless ``clamp=False``)."""
    check_normalize(normalize)
    if normalize is None:
        y = x.to(torch.float32) / 255.0
    elif normalize == "imagenet":
        x = x if x.is_floating_point() else x.to(torch.float32)
        mean, std = _stats(x)
        y = x * std + mean
    else:
        y = (x.to(torch.float32) + 1.0) / 2.0 if not x.is_floating_point() else (x + 1.0) / 2.0
    return y.clamp(0.0, 1.0) if clamp else y


def denormalize_to_uint8(x: torch.Tensor, normalize: str | None) -> torch.Tensor:
    """Images in the named space -> uint8, clamped and rounded half up (``minus_one_one_to_uint8``)."""
    if normalize is None and x.dtype == torch.uint8:
        return x
    if normalize == "minus_one_one" and x.is_floating_point():
        return minus_one_one_to_uint8(x)
    return minus_one_one_to_uint8(denormalize(x, normalize) * 2 - 1)


def minus_one_one_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> uint8 as StyleGAN2-ADA saves and scores them: ``x * 127.5 + 128``, clamped,
    truncated (so rounded half up)."""
    return (x.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def from_minus_one_one(x: torch.Tensor, normalize_to: str) -> torch.Tensor:
    """[-1, 1] images -> the named normalisation space (``minus_one_one``: returned unchanged)."""
    check_normalize(normalize_to)
    return x if normalize_to == "minus_one_one" else normalize((x + 1) * 127.5, normalize_to)
