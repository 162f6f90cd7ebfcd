"""Affine warps of image batches as StyleGAN2-ADA's augmentation pipeline executes them.

Matrices are ``[n, 3, 3]`` maps from output to input positions in *centred pixel coordinates* (pixel ``i`` of
an axis of length ``L`` sits at ``i - (L - 1) / 2``), one per image.

- :func:`blit` moves whole pixels (flips, quarter turns, integer translations): an exact gather, the
  uncovered border filled by reflection (``F.pad``'s ``reflect``, mirrored about the edge pixel).
- :func:`resample_2x` is ADA's filtered path for fractional maps: pad by reflection wide enough for every
  image's map, upsample 2x with the sym6 wavelet low-pass, sample bilinearly at 2x, downsample 2x with the
  same filter (correlation, so up then down is the filter's autocorrelation: zero phase, and the identity for
  an orthogonal wavelet at integer positions). Both are differentiable in the images.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

__all__ = ["SYM6", "blit", "resample_2x", "to_pixel_matrices"]

#: Daubechies' symlet-6 low-pass decomposition filter (orthogonal: taps sum to sqrt(2), squares to 1).
SYM6 = (
    0.015404109327027373,
    0.0034907120842174702,
    -0.11799011114819057,
    -0.048311742585633,
    0.4910559419267466,
    0.787641141030194,
    0.3379294217276218,
    -0.07263752278646252,
    -0.021060292512300564,
    0.04472490177066578,
    0.0017677118642428036,
    -0.007800708325034148,
)


def _to_device(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A host tensor (maps, indices) on ``like``'s device without a blocking copy: pinned + non_blocking on
    CUDA (the training step's convention: no host sync per augmented batch)."""
    if like.device.type == "cuda":
        return t.pin_memory().to(like.device, non_blocking=True)
    return t.to(like.device)


def to_pixel_matrices(m: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """affine_grid's normalised [-1, 1] maps (align_corners=False) -> centred pixel coordinates."""
    s = torch.diag(torch.tensor([width / 2, height / 2, 1.0], dtype=m.dtype))
    s_inv = torch.diag(torch.tensor([2 / width, 2 / height, 1.0], dtype=m.dtype))
    return s @ m @ s_inv


def _reflect_index(k: torch.Tensor, length: int) -> torch.Tensor:
    """Indices mirrored about the edge pixels (``reflect``: ..., 2, 1, 0, 1, 2, ...), periodically."""
    if length == 1:
        return torch.zeros_like(k)
    period = 2 * (length - 1)
    k = k.remainder(period)
    return torch.where(k >= length, period - k, k)


def blit(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Move whole pixels: output pixel p takes input pixel ``m @ p`` (``m`` [n, 3, 3] CPU, centred pixel
    coordinates, mapping pixel centres onto pixel centres), mirrored into the image where it falls outside."""
    n, _, h, w = x.shape
    ys = torch.arange(h, dtype=m.dtype) - (h - 1) / 2
    xs = torch.arange(w, dtype=m.dtype) - (w - 1) / 2
    ones = torch.ones(h, w, dtype=m.dtype)
    grid = torch.stack([xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w), ones], 0)
    src = torch.einsum("nij,jhw->nihw", m[:, :2], grid.view(3, h, w))  # [n, 2, h, w]
    sx = _reflect_index(torch.round(src[:, 0] + (w - 1) / 2).long(), w)
    sy = _reflect_index(torch.round(src[:, 1] + (h - 1) / 2).long(), h)
    flat = _to_device((sy * w + sx).view(n, 1, h * w), x)
    out = x.reshape(n, x.shape[1], h * w).gather(2, flat.expand(n, x.shape[1], h * w))
    return out.view_as(x)


def _fir(
    x: torch.Tensor, taps: list[float], up: int, down: int, pad0: int, pad1: int, dim: int
) -> torch.Tensor:
    """upfirdn along ``dim`` (-1 or -2) of NCHW: zero insertion, pad (negative crops), true convolution,
    stride. Accumulated tap by tap in place: several times faster on a CPU than a one-channel convolution."""
    if up > 1:
        shape = list(x.shape)
        shape[dim] *= up
        inserted = x.new_zeros(shape)
        if dim == -1:
            inserted[..., ::up] = x
        else:
            inserted[..., ::up, :] = x
        x = inserted
    padding = (max(pad0, 0), max(pad1, 0)) if dim == -1 else (0, 0, max(pad0, 0), max(pad1, 0))
    x = F.pad(x, padding)
    x = x.narrow(dim, max(-pad0, 0), x.shape[dim] - max(-pad0, 0) - max(-pad1, 0))
    k = len(taps)
    size = (x.shape[dim] - k) // down + 1
    out = None
    for i, tap in enumerate(reversed(taps)):  # reversed: a true convolution
        part = x.narrow(dim, i, (size - 1) * down + 1)
        part = part[..., ::down] if dim == -1 else part[..., ::down, :]
        out = part * tap if out is None else out.add_(part, alpha=tap)
    return out


def _fir_separable(
    x: torch.Tensor, taps: list[float], up: int, down: int, pad: tuple[int, int]
) -> torch.Tensor:
    """The same 1-D upfirdn along the width, then the height, of an NCHW batch (a separable 2-D filter)."""
    return _fir(_fir(x, taps, up, down, *pad, dim=-1), taps, up, down, *pad, dim=-2)


def _translate(tx: float, ty: float) -> torch.Tensor:
    return torch.tensor([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _scale(sx: float, sy: float) -> torch.Tensor:
    return torch.diag(torch.tensor([sx, sy, 1.0], dtype=torch.float64))


@functools.lru_cache(maxsize=8)
def _filter_taps(taps: tuple[float, ...]) -> tuple[list[float], list[float]]:
    """(upsampling taps with gain 2, downsampling taps flipped for a correlation) of ``taps`` normalised to
    sum 1: built once per filter, not on every augmented batch."""
    t = torch.tensor(taps, dtype=torch.float64)
    t = t / t.sum()
    return (t * 2).tolist(), t.flip(0).tolist()


def resample_2x(x: torch.Tensor, m: torch.Tensor, taps=SYM6) -> torch.Tensor:
    """ADA's filtered resampling of ``x`` (NCHW) through the maps ``m`` ([n, 3, 3] CPU, output -> input,
    centred pixel coordinates); same output size. Padding sizes come from ``m`` on the host (no device sync)."""
    n, c, h, w = x.shape
    up_taps, down_taps = _filter_taps(tuple(taps))
    fw = len(up_taps)
    support = fw // 4  # the filter's reach, in input pixels, on each side
    m = m.to(torch.float64)

    # Reflect-pad far enough that every output pixel (and the filter around it) samples the padded image.
    cx, cy = (w - 1) / 2, (h - 1) / 2
    corners = torch.tensor(
        [[-cx, cx, cx, -cx], [-cy, -cy, cy, cy], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64
    )
    reach = (m @ corners)[:, :2].permute(1, 0, 2).flatten(1)  # [xy, n * 4]
    margin = torch.cat([-reach, reach]).amax(1) + torch.tensor([2 * support - cx, 2 * support - cy] * 2)
    limit = torch.tensor([w - 1, h - 1] * 2, dtype=torch.float64)
    mx0, my0, mx1, my1 = (int(math.ceil(v)) for v in margin.clamp(min=0).minimum(limit).tolist())
    x = F.pad(x, [mx0, mx1, my0, my1], mode="reflect")
    m = _translate((mx0 - mx1) / 2, (my0 - my1) / 2) @ m

    # Upsample 2x (gain 2 per axis keeps the DC level), in coordinates of the 2x grid.
    x = _fir_separable(x, up_taps, up=2, down=1, pad=((fw + 1) // 2, (fw - 2) // 2))
    m = _scale(2, 2) @ m @ _scale(0.5, 0.5)
    m = _translate(-0.5, -0.5) @ m @ _translate(0.5, 0.5)

    # Sample bilinearly on a 2x output grid that extends ``support`` pixels past the image (for the filter).
    out_h, out_w = (h + 2 * support) * 2, (w + 2 * support) * 2
    m = _scale(2 / x.shape[3], 2 / x.shape[2]) @ m @ _scale(out_w / 2, out_h / 2)
    theta = _to_device(m[:, :2].to(x.dtype), x)
    grid = F.affine_grid(theta, [n, c, out_h, out_w], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    # Downsample 2x with the same filter as a correlation, cropping the extension.
    pad = (-2 * support + (fw - 1) // 2, -2 * support + (fw - 2) // 2)
    return _fir_separable(x, down_taps, up=1, down=2, pad=pad)
