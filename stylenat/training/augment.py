"""Augmentations of the images D sees: DiffAugment (Zhao et al. 2020; bCR in the reference recipe, and
``train.augment=diffaugment``) and ADA (Karras et al. 2020, "Training GANs with limited data";
``train.augment=ada``).

DiffAugment ops: ``flip`` (horizontal, p=0.5 per image), ``translation`` (up to 1/8 of the size, zero fill),
``color`` (brightness +U(-0.5, 0.5), saturation x U(0, 2), contrast x U(0.5, 1.5)), ``cutout`` (a zeroed
square of half the size). Two uses, each as its reference has it:

- bCR (:func:`diff_augment`, the StyleNAT/StyleSwin reference recipe): always in the order above, on the
  pixel space D sees (ImageNet-normalised for the reference model), as the reference code does.
- ``train.augment=diffaugment`` (:func:`diffaugment_policy`, Zhao et al.'s published DiffAugment): the ops in
  the order given (its default: color, translation, cutout), on [-1, 1] RGB whatever D's normalisation, so
  the brightness offset is the published one and translation / cutout fill with 0 in [-1, 1] (mid grey).

All random parameters are drawn per image on the CPU from the given ``torch.Generator`` and then moved to
the images' device (pinned, without a host sync on CUDA), so an augmentation is a pure function of
(images, generator state) on every device; that is what makes resumed runs identical to uninterrupted ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from stylenat.data.transforms import denormalize, from_minus_one_one
from stylenat.ops import warp

AUGMENT_OPS = ("flip", "translation", "color", "cutout")


def check_ops(ops: Sequence[str]) -> tuple[str, ...]:
    """Validate op names; returns them in the canonical application order."""
    unknown = [o for o in ops if o not in AUGMENT_OPS]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown[0]!r}: expected a subset of {list(AUGMENT_OPS)}")
    return tuple(o for o in AUGMENT_OPS if o in ops)


def to_device(t: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A CPU tensor (random parameters) on ``device`` without a blocking copy: pinned + non_blocking on CUDA.

    The pinned staging buffer stays alive until the copy is done: the caching host allocator records the
    copy's stream and does not reuse the block before it completes.
    """
    t = t if dtype is None else t.to(dtype)
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _uniform(n: int, generator, like: torch.Tensor) -> torch.Tensor:
    return to_device(torch.rand(n, 1, 1, 1, generator=generator), like.device, like.dtype)


def random_flip(x: torch.Tensor, generator=None, p: float = 0.5) -> torch.Tensor:
    """Mirror each image horizontally with probability ``p``."""
    mask = torch.rand(x.shape[0], generator=generator) < p
    mask = to_device(mask, x.device).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(3), x)


def random_translation(x: torch.Tensor, generator=None, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by an integer offset in [-ratio*size, ratio*size] per axis, filling with zeros."""
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sh, sh + 1, (b, 1), generator=generator)
    tx = torch.randint(-sw, sw + 1, (b, 1), generator=generator)
    ty, tx = to_device(torch.cat([ty, tx], 1), x.device).unbind(1)
    ty, tx = ty.view(b, 1), tx.view(b, 1)
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
    cy = torch.randint(0, h + (1 - ch % 2), (b, 1), generator=generator)
    cx = torch.randint(0, w + (1 - cw % 2), (b, 1), generator=generator)
    cy, cx = to_device(torch.cat([cy, cx], 1), x.device).unbind(1)
    cy, cx = cy.view(b, 1), cx.view(b, 1)
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
    """bCR's augmentation: the named DiffAugment ops (canonical order) on a batch NCHW in D's pixel space;
    differentiable in ``x``."""
    for name in check_ops(ops):
        x = _OPS[name](x, generator)
    return x.contiguous()


def diffaugment_policy(
    x: torch.Tensor, ops: Sequence[str], generator=None, normalization: str = "minus_one_one"
) -> torch.Tensor:
    """Published DiffAugment: the ops in the order given, on [-1, 1] RGB (``x`` is in D's ``normalization``
    and comes back in it); differentiable in ``x``."""
    check_ops(ops)
    y = _to_unit_range(x, normalization)
    for name in ops:
        y = _OPS[name](y, generator)
    return _from_unit_range(y, normalization).contiguous()


# ------------------------------------------------------------------------------------------------ ADA

AUGMENT_MODES = ("none", "ada", "diffaugment")

# ADA's "bgc" pipeline, in its order: pixel blitting, general geometric, colour transformations.
ADA_OPS = (
    "xflip",
    "rotate90",
    "xint",
    "scale",
    "rotate",
    "aniso",
    "xfrac",
    "brightness",
    "contrast",
    "lumaflip",
    "hue",
    "saturation",
)
_GEOMETRIC = frozenset(ADA_OPS[:7])
# Strengths of the ADA paper (stylegan2-ada-pytorch AugmentPipe defaults).
XINT_MAX, SCALE_STD, ROTATE_MAX, ANISO_STD, XFRAC_STD = 0.125, 0.2, 1.0, 0.2, 0.125
BRIGHTNESS_STD, CONTRAST_STD, HUE_MAX, SATURATION_STD = 0.2, 0.5, 1.0, 1.0


def check_ada_ops(ops: Sequence[str]) -> tuple[str, ...]:
    """Validate ADA op names; returns them in the pipeline's order."""
    unknown = [o for o in ops if o not in ADA_OPS]
    if unknown:
        raise ValueError(f"unknown ADA op {unknown[0]!r}: expected a subset of {list(ADA_OPS)}")
    return tuple(o for o in ADA_OPS if o in ops)


def _gate(values: torch.Tensor, identity: float, prob: float, generator) -> torch.Tensor:
    """Each image keeps its random parameter with probability ``prob``, else the identity value."""
    keep = torch.rand(values.shape[0], generator=generator) < prob
    return torch.where(keep.view(-1, *[1] * (values.dim() - 1)), values, torch.full_like(values, identity))


def _scale2d(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    m = torch.eye(3).repeat(sx.shape[0], 1, 1)
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    return m


def _rotate2d(theta: torch.Tensor) -> torch.Tensor:
    m = torch.eye(3).repeat(theta.shape[0], 1, 1)
    c, s = torch.cos(theta), torch.sin(theta)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = c, -s, s, c
    return m


def _translate2d(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    m = torch.eye(3).repeat(tx.shape[0], 1, 1)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def ada_geometric_matrices(
    n: int, size: int, p: float, ops: Sequence[str], generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """([n, 3, 3] pixel blits, [n, 3, 3] general maps), each from output to input coordinates (affine_grid's
    normalised [-1, 1] space); the image goes through the blit first: input = blit @ general @ output.

    Each op is applied to an image with probability ``p``; the two rotations (before and after the
    anisotropic scaling) each with 1 - sqrt(1 - p), so that some rotation happens with probability p.
    Integer translations move whole pixels (2 / size per pixel in normalised units). The draws are ADA's,
    in its order.
    """
    blit = torch.eye(3).repeat(n, 1, 1)
    g = torch.eye(3).repeat(n, 1, 1)
    ops = set(ops)
    if "xflip" in ops:
        i = _gate(torch.randint(0, 2, (n,), generator=generator).float(), 0.0, p, generator)
        blit = blit @ _scale2d(1 - 2 * i, torch.ones(n))
    if "rotate90" in ops:
        i = _gate(torch.randint(0, 4, (n,), generator=generator).float(), 0.0, p, generator)
        blit = blit @ _rotate2d(-math.pi / 2 * i)
    if "xint" in ops:
        t = (torch.rand(n, 2, generator=generator) * 2 - 1) * XINT_MAX
        t = _gate(torch.round(t * size) * 2 / size, 0.0, p, generator)
        blit = blit @ _translate2d(t[:, 0], t[:, 1])
    if "scale" in ops:
        s = _gate(torch.exp2(torch.randn(n, generator=generator) * SCALE_STD), 1.0, p, generator)
        g = g @ _scale2d(s, s)
    p_rot = 1 - math.sqrt(max(0.0, 1 - p))
    if "rotate" in ops:
        theta = _gate(
            (torch.rand(n, generator=generator) * 2 - 1) * math.pi * ROTATE_MAX, 0.0, p_rot, generator
        )
        g = g @ _rotate2d(-theta)
    if "aniso" in ops:
        s = _gate(torch.exp2(torch.randn(n, generator=generator) * ANISO_STD), 1.0, p, generator)
        g = g @ _scale2d(s, 1 / s)
    if "rotate" in ops:
        theta = _gate(
            (torch.rand(n, generator=generator) * 2 - 1) * math.pi * ROTATE_MAX, 0.0, p_rot, generator
        )
        g = g @ _rotate2d(-theta)
    if "xfrac" in ops:
        t = _gate(torch.randn(n, 2, generator=generator) * XFRAC_STD * 2, 0.0, p, generator)
        g = g @ _translate2d(t[:, 0], t[:, 1])
    return blit, g


_LUMA = torch.tensor([1.0, 1.0, 1.0, 0.0]) / math.sqrt(3)


def ada_color_matrix(n: int, p: float, ops: Sequence[str], generator) -> torch.Tensor:
    """[n, 4, 4] affine colour transforms of [-1, 1] RGB (homogeneous), each op with probability ``p``.

    Brightness adds, contrast scales about 0, luma flip mirrors along the luma axis, hue rotates about
    it, saturation scales away from it (ADA's definitions).
    """
    c = torch.eye(4).repeat(n, 1, 1)
    ops = set(ops)
    v = _LUMA
    vv = torch.outer(v, v)
    if "brightness" in ops:
        b = _gate(torch.randn(n, generator=generator) * BRIGHTNESS_STD, 0.0, p, generator)
        t = torch.eye(4).repeat(n, 1, 1)
        t[:, :3, 3] = b.view(n, 1)
        c = t @ c
    if "contrast" in ops:
        s = _gate(torch.exp2(torch.randn(n, generator=generator) * CONTRAST_STD), 1.0, p, generator)
        t = torch.eye(4).repeat(n, 1, 1)
        t[:, 0, 0] = t[:, 1, 1] = t[:, 2, 2] = s
        c = t @ c
    if "lumaflip" in ops:
        i = _gate(torch.randint(0, 2, (n,), generator=generator).float(), 0.0, p, generator)
        c = (torch.eye(4) - 2 * vv * i.view(n, 1, 1)) @ c
    if "hue" in ops:
        theta = _gate((torch.rand(n, generator=generator) * 2 - 1) * math.pi * HUE_MAX, 0.0, p, generator)
        c = _rotate_about(v[:3], theta) @ c
    if "saturation" in ops:
        s = _gate(torch.exp2(torch.randn(n, generator=generator) * SATURATION_STD), 1.0, p, generator)
        c = (vv + (torch.eye(4) - vv) * s.view(n, 1, 1)) @ c
    return c


def _rotate_about(axis: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """[n, 4, 4] rotations by ``theta`` about a unit 3-vector (Rodrigues)."""
    x, y, z = axis.tolist()
    k = torch.tensor([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    s, c = torch.sin(theta).view(-1, 1, 1), torch.cos(theta).view(-1, 1, 1)
    r = torch.eye(3) + s * k + (1 - c) * (k @ k)
    m = torch.eye(4).repeat(theta.shape[0], 1, 1)
    m[:, :3, :3] = r
    return m


def _to_unit_range(x: torch.Tensor, normalization: str) -> torch.Tensor:
    """D's pixel space -> [-1, 1] RGB, where ADA's colour transforms are defined."""
    return x if normalization == "minus_one_one" else denormalize(x, normalization, clamp=False) * 2 - 1


_from_unit_range = from_minus_one_one  # [-1, 1] RGB -> D's pixel space


def ada_augment(
    x: torch.Tensor, p: float, ops: Sequence[str], generator, normalization: str = "minus_one_one"
) -> torch.Tensor:
    """ADA's augmentation of a batch NCHW (square images) at probability ``p``; differentiable in ``x``.

    Geometric ops as ADA executes them (:mod:`stylenat.ops.warp`): whole-pixel moves (flips, quarter
    turns, integer translations) exactly, by gathering pixels (reflection fills what they uncover); the
    fractional ops (scale, rotate, aniso, xfrac) through ADA's 2x path: reflection padding, 2x upsampling
    with the sym6 wavelet low-pass, bilinear sampling at 2x, 2x downsampling with the same filter. Colour
    ops are one 3x4 matrix per image. ``p = 0`` returns ``x`` itself.
    """
    if p <= 0:
        return x
    ops = check_ada_ops(ops)
    n, _, h, w = x.shape
    if h != w:
        raise ValueError(f"ADA needs square images, got {h}x{w}")
    dtype = x.dtype
    y = _to_unit_range(x.float(), normalization)  # ADA's pixel space: zero fill and colour act there
    geometric = [o for o in ops if o in _GEOMETRIC]
    colour = [o for o in ops if o not in _GEOMETRIC]
    if geometric:
        blit, g = ada_geometric_matrices(n, h, p, geometric, generator)
        identity = torch.eye(3).expand_as(g)
        if not torch.equal(blit, identity):
            y = warp.blit(y, warp.to_pixel_matrices(blit, h, w))
        if not torch.equal(g, identity):
            y = warp.resample_2x(y, warp.to_pixel_matrices(g, h, w))
    if colour:
        c = ada_color_matrix(n, p, colour, generator)
        if not torch.equal(c, torch.eye(4).expand_as(c)):
            c = to_device(c[:, :3, :], y.device)
            y = torch.einsum("nij,njhw->nihw", c[:, :, :3], y) + c[:, :, 3].view(n, 3, 1, 1)
    y = _from_unit_range(y, normalization)
    return y.to(dtype).contiguous()


class AdaptiveAugment:
    """The ADA controller: p moves by sign(r_t - target) x (images since the last move) / (kimg x 1000).

    r_t = E[sign(D(real))] over the last ``interval`` steps (the D step's and R1's real logits, as ADA): near 1
    when D overfits (it calls every real image real), near 0 when it cannot tell. ``kimg=None`` keeps p
    fixed. ``state_dict`` holds p and the running sum, so a resumed run continues exactly.
    """

    def __init__(
        self,
        ops: Sequence[str],
        normalization: str,
        p: float = 0.0,
        target: float = 0.6,
        interval: int = 4,
        kimg: float | None = 500.0,
    ):
        self.ops = check_ada_ops(ops)
        self.normalization = normalization
        self.p, self.target, self.interval, self.kimg = float(p), float(target), int(interval), kimg
        self.last_rt = float("nan")

    def __call__(self, x: torch.Tensor, generator) -> torch.Tensor:
        return ada_augment(x, self.p, self.ops, generator, self.normalization)

    def adjust(self, rt: float, images: int) -> float:
        """Move p after ``images`` images whose mean sign(D(real)) was ``rt``; returns the new p."""
        self.last_rt = float(rt)
        if self.kimg is None or not math.isfinite(rt):
            return self.p
        step = images / (self.kimg * 1000)
        direction = (rt > self.target) - (rt < self.target)
        self.p = min(1.0, max(0.0, self.p + direction * step))
        return self.p

    def state_dict(self) -> dict:
        return {"p": self.p, "last_rt": self.last_rt}

    def load_state_dict(self, state: dict) -> None:
        self.p = float(state["p"])
        self.last_rt = float(state.get("last_rt", float("nan")))


class FixedDiffAugment:
    """``train.augment=diffaugment``: the published DiffAugment policy, ops in the order given, on every
    image D sees (p has no role)."""

    p = 1.0
    last_rt = float("nan")

    def __init__(self, ops: Sequence[str], normalization: str = "minus_one_one"):
        check_ops(ops)
        self.ops, self.normalization = tuple(ops), normalization

    def __call__(self, x: torch.Tensor, generator) -> torch.Tensor:
        return diffaugment_policy(x, self.ops, generator, self.normalization)


def build_augment(opts, normalization: str):
    """The augmentation of every image D sees (``train.augment`` of ``TrainOptions``), or None."""
    if opts.augment == "ada":
        return AdaptiveAugment(
            opts.ada_ops,
            normalization,
            p=opts.augment_p,
            target=opts.ada_target,
            interval=opts.ada_interval,
            kimg=opts.ada_kimg,
        )
    if opts.augment == "diffaugment":
        return FixedDiffAugment(opts.diffaugment_ops, normalization)
    return None
