"""Shared test helpers: real photos, a cheap fake feature extractor, an independent TF1 resize."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from stylenat.metrics.protocols import get_protocol

PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "colorwheel",
    "cat",
)


def photo_batch(n: int, size: int = 256, seed: int = 0) -> torch.Tensor:
    """``n`` uint8 [n, 3, size, size] views (random crop, flip) of skimage's bundled photos."""
    from skimage import data

    rng = np.random.default_rng(seed)
    sources = [getattr(data, name)()[..., :3] for name in PHOTOS]
    out = []
    for i in range(n):
        img = sources[i % len(sources)]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.6, 1.0))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = img[y : y + side, x : x + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        pil = Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BILINEAR)
        out.append(np.asarray(pil))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def tf1_resize_bilinear(img: np.ndarray, out: int) -> np.ndarray:
    """TF1 ``resize_bilinear(align_corners=False)`` (no half-pixel centres) of [C, H, W], in float64:
    output pixel ``i`` samples source ``i * in / out``, neighbours clamped to the last row/column."""
    _, h, w = img.shape

    def axis(n_in):
        src = np.arange(out) * (n_in / out)
        i0 = np.floor(src).astype(int)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0

    y0, y1, fy = axis(h)
    x0, x1, fx = axis(w)
    img = img.astype(np.float64)
    top = img[:, y0][:, :, x0] * (1 - fx) + img[:, y0][:, :, x1] * fx
    bottom = img[:, y1][:, :, x0] * (1 - fx) + img[:, y1][:, :, x1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


class FakeExtractor(torch.nn.Module):
    """Cheap stand-in for Inception: the protocol's real preprocessing, then 4x4 average pooling (48-d)."""

    weights_sha256 = "fake-weights"
    weights_digest = "fake-digest"

    def forward(self, images, protocol="stylegan"):
        x = get_protocol(protocol).prepare(images)
        return F.adaptive_avg_pool2d(x, 4).flatten(1)


def seeded_generator(shift: float = 0.0, size: int = 16):
    """generator_fn: seeds -> images in [-1, 1], each a pure function of its seed."""

    def fn(seeds: torch.Tensor) -> torch.Tensor:
        imgs = []
        for s in seeds.tolist():
            g = torch.Generator().manual_seed(int(s))
            imgs.append(torch.tanh(torch.randn(3, size, size, generator=g) + shift))
        return torch.stack(imgs)

    return fn
