"""Pixel conversions shared by every data set format and by ``prepare_dataset``.

Using one code path for "decode -> RGB 8-bit -> square -> resolution" is what makes a folder, the zip
built from it and an LMDB holding the same images produce identical tensors.

Conversion policy (``to_rgb8``):
  * 8-bit RGB passes through; L, 1, CMYK, YCbCr, LA, P (palette) become RGB via Pillow.
  * 16-bit / 32-bit integer grayscale (modes I;16*, I) is scaled to 8 bits (round(v / 257)); Pillow's
    own ``convert`` would clip everything above 255 to white.
  * Alpha is discarded, not composited (as StyleGAN2-ADA's dataset_tool does).
  * EXIF orientation is not applied (as dataset_tool and the reference code).

Geometry policy (``fit_square``): a non-square image is center-cropped to its short side, then a
square of another size is resized to the resolution with the chosen filter (LANCZOS by default).
Images smaller than the resolution are upscaled the same way; data sets warn about that once.

Normalisation: "imagenet" is ((x / 255) - mean) / std, the space the reference code trained in and its
released checkpoints produce; "minus_one_one" is x / 127.5 - 1; ``None`` keeps uint8.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from stylenat.data.errors import DatasetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("imagenet", "minus_one_one")

FILTERS = {"lanczos": Image.Resampling.LANCZOS, "box": Image.Resampling.BOX}

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def check_normalize(normalize: str | None) -> str | None:
    """Validate a normalisation name early, so a typo fails at construction, not in a worker."""
    if normalize is not None and normalize not in NORMALIZATIONS:
        raise DatasetError(
            f"unknown normalize {normalize!r}: expected one of {', '.join(NORMALIZATIONS)} or None"
        )
    return normalize


def resample_filter(name: str) -> Image.Resampling:
    """Map a filter name ('lanczos' | 'box') to Pillow's constant."""
    try:
        return FILTERS[name]
    except KeyError:
        raise DatasetError(f"unknown resize filter {name!r}: expected one of {', '.join(FILTERS)}") from None


def to_rgb8(img: Image.Image) -> Image.Image:
    """Return ``img`` as 8-bit RGB following the module's conversion policy."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "F":
        arr = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode in ("P", "PA"):
        # Through RGBA so palette transparency does not trigger Pillow's warning; alpha is then dropped.
        img = img.convert("RGBA")
    return img.convert("RGB")


def fit_square(
    img: Image.Image, resolution: int, resample: Image.Resampling = Image.Resampling.LANCZOS
) -> Image.Image:
    """Center-crop to a square, then resize to ``resolution`` (no-op when already that size)."""
    w, h = img.size
    if w != h:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), resample=resample)
    return img


def pil_to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor (3, H, W)."""
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (3, 1, 1) if x.dim() == 3 else (1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(shape)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(shape)
    return mean, std


def normalize(x: torch.Tensor, normalize: str | None) -> torch.Tensor:
    """uint8 (or 0..255 float) images, CHW or NCHW -> float32 in the named space (None: unchanged)."""
    check_normalize(normalize)
    if normalize is None:
        return x
    x = x.to(torch.float32)
    if normalize == "imagenet":
        mean, std = _stats(x)
        return (x / 255.0 - mean) / std
    return x / 127.5 - 1.0


def denormalize(x: torch.Tensor, normalize: str | None, clamp: bool = True) -> torch.Tensor:
    """Images in the named space, CHW or NCHW -> float in [0, 1] (clamped unless ``clamp=False``)."""
    check_normalize(normalize)
    if normalize is None:
        y = x.to(torch.float32) / 255.0
    elif normalize == "imagenet":
        mean, std = _stats(x)
        y = x * std + mean
    else:
        y = (x + 1.0) / 2.0
    return y.clamp(0.0, 1.0) if clamp else y


def to_uint8(x: torch.Tensor, normalize: str | None) -> torch.Tensor:
    """Images in the named space -> uint8 (rounded, clamped); exact inverse of ``normalize`` on uint8."""
    if normalize is None and x.dtype == torch.uint8:
        return x
    return (denormalize(x, normalize) * 255.0).round().to(torch.uint8)
