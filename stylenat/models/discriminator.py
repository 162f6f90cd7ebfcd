"""Discriminators: StyleSwin's wavelet D (the reference's) and the plain StyleGAN2 residual D.

Both map ``img [B, 3, R, R] -> logits [B, 1]``; with ``c_dim > 0`` they take a one-hot label c too and
condition by projection (``stylenat.models.conditioning``). Module and attribute names mirror the reference code
(rosinality / StyleSwin / StyleNAT) so that released state dicts load with at most a key rename:
spectral-normed layers are plain ``nn.Conv2d``/``nn.Linear`` wrapped by the legacy
``torch.nn.utils.spectral_norm`` (keys ``weight_orig``, ``weight_u``, ``weight_v``), activated convs have
no bias of their own (it lives in the following :class:`FusedLeakyReLU`), and the blur kernels and Haar
filters are buffers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils import spectral_norm

from stylenat.models.conditioning import ProjectionConditioned, check_labels
from stylenat.models.layers import EqualConv2d, EqualLinear, fused_leaky_relu
from stylenat.ops.checks import is_int, is_number, is_power_of_two
from stylenat.ops.upfirdn import Blur, Downsample
from stylenat.ops.wavelet import HaarTransform, InverseHaarTransform

__all__ = [
    "DISCRIMINATORS",
    "ConvBlock",
    "ConvLayer",
    "FromRGB",
    "FusedLeakyReLU",
    "ResBlock",
    "ScaledLeakyReLU",
    "StyleGAN2Discriminator",
    "WaveletDiscriminator",
    "channel_table",
    "check_discriminator_config",
    "minibatch_stddev",
]

DEFAULT_BLUR_KERNEL = (1, 3, 3, 1)


# --------------------------------------------------------------------------------------------- helpers


def channel_table(
    resolution: int,
    channel_multiplier: int = 2,
    channel_max: int | None = None,
    channels: Mapping[int, int] | None = None,
) -> dict[int, int]:
    """Channels per resolution label 4..resolution: 512 up to 32, then 16384 * cm / res (reference table).

    ``channels`` overrides single entries and ``channel_max`` caps all of them (small test models).
    """
    table = {}
    res = 4
    while res <= resolution:
        table[res] = 512 if res <= 32 else max(1, 16384 * channel_multiplier // res)
        res *= 2
    if channels is not None:
        table.update({int(k): int(v) for k, v in channels.items()})
    if channel_max is not None:
        table = {k: min(v, channel_max) for k, v in table.items()}
    return table


def _check_resolution(resolution, minimum: int, what: str) -> int:
    if not is_power_of_two(resolution, minimum):
        raise ValueError(f"{what}: resolution must be a power of two >= {minimum}, got {resolution!r}")
    return resolution


def _check_input(x: torch.Tensor, resolution: int, c=None, c_dim: int = 0) -> None:
    expected = (3, resolution, resolution)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"discriminator expected input of shape [B, 3, {resolution}, {resolution}], got {list(x.shape)}"
        )
    check_labels(c, c_dim, x.shape[0], "this discriminator")


def minibatch_stddev(x: torch.Tensor, group_size: int = 4, num_features: int = 1) -> torch.Tensor:
    """Append the per-group feature std (averaged over C/F, H, W) as ``num_features`` extra channels.

    Sample b belongs to group b mod (B / G), as in the reference. The reference requires B % G == 0;
    here G is lowered to the largest divisor of B that is <= group_size instead of failing, which is
    identical whenever the reference works.
    """
    b, c, h, w = x.shape
    g = min(b, group_size)
    while b % g:
        g -= 1
    y = x.reshape(g, -1, num_features, c // num_features, h, w)
    y = torch.sqrt(y.var(0, unbiased=False) + 1e-8)  # [B/G, F, C/F, H, W]
    y = y.mean(dim=(2, 3, 4)).reshape(-1, num_features, 1, 1)  # [B/G, F, 1, 1]
    y = y.repeat(g, 1, h, w)
    return torch.cat([x, y], dim=1)


class FusedLeakyReLU(nn.Module):
    """Bias + leaky ReLU(0.2) * sqrt(2); holds the bias of the layer before it (reference layout)."""

    def __init__(self, channel: int, negative_slope: float = 0.2, scale: float = 2**0.5):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel))
        self.negative_slope = negative_slope
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias, self.negative_slope, self.scale)


class ScaledLeakyReLU(nn.Module):
    """Leaky ReLU * sqrt(2) without a bias (activated layers built with ``bias=False``)."""

    def __init__(self, negative_slope: float = 0.2):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, None, self.negative_slope)


class ConvLayer(nn.Sequential):
    """[Blur] -> conv -> [activation]; the Sequential indices are part of the checkpoint keys.

    With ``sn`` the conv is a spectral-normed ``nn.Conv2d`` (reference: no equalized lr under SN),
    otherwise an :class:`EqualConv2d`.
    """

    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        kernel_size: int,
        downsample: bool = False,
        blur_kernel: Sequence[int] = DEFAULT_BLUR_KERNEL,
        bias: bool = True,
        activate: bool = True,
        sn: bool = False,
    ):
        layers: list[nn.Module] = []
        if downsample:
            p = (len(blur_kernel) - 2) + (kernel_size - 1)
            layers.append(Blur(blur_kernel, pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        conv_bias = bias and not activate
        if sn:
            conv = spectral_norm(
                nn.Conv2d(
                    in_channel, out_channel, kernel_size, stride=stride, padding=padding, bias=conv_bias
                )
            )
        else:
            conv = EqualConv2d(
                in_channel, out_channel, kernel_size, stride=stride, padding=padding, bias=conv_bias
            )
        layers.append(conv)
        if activate:
            layers.append(FusedLeakyReLU(out_channel) if bias else ScaledLeakyReLU(0.2))
        super().__init__(*layers)


def _final_linear(channels: int, sn: bool, out: int = 1) -> nn.Sequential:
    """The epilogue's two linear layers; ``out`` = 1 logit, or cmap_dim features when conditional."""
    if sn:
        # The reference keeps the Linear's own bias *and* an activation bias here (counted in the 26.2M).
        return nn.Sequential(
            spectral_norm(nn.Linear(channels * 4 * 4, channels)),
            FusedLeakyReLU(channels),
            spectral_norm(nn.Linear(channels, out)),
        )
    return nn.Sequential(
        EqualLinear(channels * 4 * 4, channels, activation="fused_lrelu"),
        EqualLinear(channels, out),
    )


# --------------------------------------------------------------------------------------------- wavelet D


class ConvBlock(nn.Module):
    """Two 3x3 convs, the second blur-downsamples by 2 (no residual skip in the wavelet D)."""

    def __init__(self, in_channel: int, out_channel: int, blur_kernel=DEFAULT_BLUR_KERNEL, sn: bool = False):
        super().__init__()
        self.conv1 = ConvLayer(in_channel, in_channel, 3, blur_kernel=blur_kernel, sn=sn)
        self.conv2 = ConvLayer(in_channel, out_channel, 3, downsample=True, blur_kernel=blur_kernel, sn=sn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class FromRGB(nn.Module):
    """Project the 12 wavelet channels of one pyramid level and add them to the running features.

    With ``downsample`` the wavelet input is first brought to the next level (IDWT -> blur-down -> DWT).
    Returns ``(wavelet_input_at_this_level, features)``.
    """

    def __init__(
        self, out_channel: int, downsample: bool = True, blur_kernel=DEFAULT_BLUR_KERNEL, sn: bool = False
    ):
        super().__init__()
        if downsample:
            self.iwt = InverseHaarTransform(3)
            self.downsample = Downsample(blur_kernel)
            self.dwt = HaarTransform(3)
        else:
            self.downsample = None
        self.conv = ConvLayer(3 * 4, out_channel, 1, sn=sn)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None):
        if self.downsample is not None:
            x = self.dwt(self.downsample(self.iwt(x)))
        out = self.conv(x)
        if skip is not None:
            out = out + skip
        return x, out


class WaveletDiscriminator(ProjectionConditioned):
    """StyleSwin's wavelet discriminator (the one StyleNAT trains with).

    The image is Haar-transformed (R/2 x R/2, 12 channels); each stage adds a FromRGB of the wavelet
    pyramid to the features, then a ConvBlock halves them, down to 4x4; then minibatch-stddev,
    a 3x3 conv and two linear layers. 26,211,585 parameters at R=256, cm=2, sn=True.
    """

    def __init__(
        self,
        resolution: int,
        channel_multiplier: int = 2,
        sn: bool = True,
        blur_kernel: Sequence[int] = DEFAULT_BLUR_KERNEL,
        channels: Mapping[int, int] | None = None,
        channel_max: int | None = None,
        stddev_group: int = 4,
        stddev_feat: int = 1,
        c_dim: int = 0,
    ):
        super().__init__()
        # At 8 the last FromRGB would reach 2x2 features: the reference layout needs >= 16.
        self.resolution = _check_resolution(resolution, 16, "WaveletDiscriminator")
        ch = channel_table(resolution, channel_multiplier, channel_max, channels)
        blur_kernel = tuple(blur_kernel)

        self.dwt = HaarTransform(3)
        self.from_rgbs = nn.ModuleList()
        self.convs = nn.ModuleList()
        # Features start at R/2 (after the DWT) with ch[R] channels; after the ConvBlock that brings them
        # to size s they have ch[s]. ch[R/2] is never used: that is the reference's layout.
        log_size = int(math.log2(resolution)) - 1
        in_channel = ch[resolution]
        for i in range(log_size, 2, -1):
            out_channel = ch[2 ** (i - 1)]
            self.from_rgbs.append(
                FromRGB(in_channel, downsample=i != log_size, blur_kernel=blur_kernel, sn=sn)
            )
            self.convs.append(ConvBlock(in_channel, out_channel, blur_kernel, sn=sn))
            in_channel = out_channel
        self.from_rgbs.append(FromRGB(ch[4], blur_kernel=blur_kernel, sn=sn))

        self.stddev_group = stddev_group
        self.stddev_feat = stddev_feat
        self.final_conv = ConvLayer(in_channel + stddev_feat, ch[4], 3, sn=sn)
        self._init_conditioning(c_dim, ch[4], lambda out: _final_linear(ch[4], sn, out))

    def blocks(self) -> list[list[nn.Module]]:
        """D's resolution levels from the image side (FreezeD's unit): FromRGB + ConvBlock each."""
        return [[from_rgb, conv] for from_rgb, conv in zip(self.from_rgbs, self.convs)]

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        _check_input(img, self.resolution, c, self.c_dim)
        x = self.dwt(img)
        out = None
        for from_rgb, conv in zip(self.from_rgbs, self.convs):
            x, out = from_rgb(x, out)
            out = conv(out)
        _, out = self.from_rgbs[-1](x, out)
        out = minibatch_stddev(out, self.stddev_group, self.stddev_feat)
        return self._logits(self.final_conv(out), c)


# --------------------------------------------------------------------------------------------- StyleGAN2 D


class ResBlock(nn.Module):
    """StyleGAN2 residual block: two 3x3 convs (second downsamples) + a 1x1 downsampling skip, / sqrt(2)."""

    def __init__(self, in_channel: int, out_channel: int, blur_kernel=DEFAULT_BLUR_KERNEL, sn: bool = False):
        super().__init__()
        self.conv1 = ConvLayer(in_channel, in_channel, 3, blur_kernel=blur_kernel, sn=sn)
        self.conv2 = ConvLayer(in_channel, out_channel, 3, downsample=True, blur_kernel=blur_kernel, sn=sn)
        self.skip = ConvLayer(
            in_channel,
            out_channel,
            1,
            downsample=True,
            blur_kernel=blur_kernel,
            activate=False,
            bias=False,
            sn=sn,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class StyleGAN2Discriminator(ProjectionConditioned):
    """rosinality's StyleGAN2 residual discriminator (equalized lr; optional spectral norm)."""

    def __init__(
        self,
        resolution: int,
        channel_multiplier: int = 2,
        sn: bool = False,
        blur_kernel: Sequence[int] = DEFAULT_BLUR_KERNEL,
        channels: Mapping[int, int] | None = None,
        channel_max: int | None = None,
        stddev_group: int = 4,
        stddev_feat: int = 1,
        c_dim: int = 0,
    ):
        super().__init__()
        self.resolution = _check_resolution(resolution, 8, "StyleGAN2Discriminator")
        ch = channel_table(resolution, channel_multiplier, channel_max, channels)
        blur_kernel = tuple(blur_kernel)

        convs: list[nn.Module] = [ConvLayer(3, ch[resolution], 1, sn=sn)]
        in_channel = ch[resolution]
        for i in range(int(math.log2(resolution)), 2, -1):
            out_channel = ch[2 ** (i - 1)]
            convs.append(ResBlock(in_channel, out_channel, blur_kernel, sn=sn))
            in_channel = out_channel
        self.convs = nn.Sequential(*convs)

        self.stddev_group = stddev_group
        self.stddev_feat = stddev_feat
        self.final_conv = ConvLayer(in_channel + stddev_feat, ch[4], 3, sn=sn)
        self._init_conditioning(c_dim, ch[4], lambda out: _final_linear(ch[4], sn, out))

    def blocks(self) -> list[list[nn.Module]]:
        """D's resolution levels from the image side (FreezeD's unit): a ResBlock each, the first with the
        1x1 FromRGB before it."""
        convs = list(self.convs)
        return [[convs[0], convs[1]], *([c] for c in convs[2:])]

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        _check_input(img, self.resolution, c, self.c_dim)
        out = self.convs(img)
        out = minibatch_stddev(out, self.stddev_group, self.stddev_feat)
        return self._logits(self.final_conv(out), c)


# --------------------------------------------------------------------------------------------- factory

DISCRIMINATORS: dict[str, type[nn.Module]] = {
    "stylegan2": StyleGAN2Discriminator,
    "wavelet": WaveletDiscriminator,
}


# Smallest resolution of each architecture (the wavelet D's last FromRGB needs 16, see its __init__).
MIN_RESOLUTION = {"stylegan2": 8, "wavelet": 16}
_CONFIG_KEYS = (
    "name",
    "channel_multiplier",
    "sn",
    "channel_max",
    "channels",
    "blur_kernel",
    "stddev_group",
    "stddev_feat",
)


def check_discriminator_config(cfg: Mapping, resolution) -> None:
    """Check a discriminator config (the keys of ``models.build.build_discriminator``) for a D of ``resolution`` before
    anything is built. Each error (ValueError) is one line that starts with the key as written in the
    config and its value (``channel_max=0: ...``): a config parser can prefix its own key path."""

    def fail(key: str, what: str):
        raise ValueError(f"{key}={cfg.get(key)!r}: {what}")

    if not isinstance(cfg, Mapping):
        raise TypeError(f"a discriminator config is a mapping of its keys, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - set(_CONFIG_KEYS), key=str)
    if unknown:
        fail(unknown[0], f"unknown key (known: {', '.join(_CONFIG_KEYS)})")
    name = cfg.get("name", "wavelet")
    if not isinstance(name, str) or name not in DISCRIMINATORS:
        fail("name", f"expected one of {', '.join(sorted(DISCRIMINATORS))}")
    minimum = MIN_RESOLUTION[name]
    if not is_power_of_two(resolution, minimum):
        fail("name", f"needs a power-of-two image resolution >= {minimum}, got {resolution!r}")
    if not is_int(cfg.get("channel_multiplier", 2)) or cfg.get("channel_multiplier", 2) < 1:
        fail("channel_multiplier", "expected an integer >= 1")
    if not isinstance(cfg.get("sn", name == "wavelet"), bool):
        fail("sn", "expected true or false")
    channel_max = cfg.get("channel_max")
    if channel_max is not None and (not is_int(channel_max) or channel_max < 1):
        fail("channel_max", "expected an integer >= 1 or null")
    channels = cfg.get("channels")
    if channels is not None:
        if not isinstance(channels, Mapping):
            fail("channels", "expected a mapping {resolution: channels}, e.g. {32: 64}, or null")
        for k, v in channels.items():
            try:
                res = int(k)
            except (TypeError, ValueError):
                res = -1
            if not is_power_of_two(res, 4) or res > resolution:
                fail("channels", f"key {k!r} is not a power-of-two resolution in 4..{resolution}")
            if not is_int(v) or v < 1:
                fail("channels", f"entry {k!r}: {v!r} is not an integer >= 1")
    blur = cfg.get("blur_kernel", DEFAULT_BLUR_KERNEL)
    ok = isinstance(blur, Sequence) and not isinstance(blur, str) and len(blur) > 0
    if not ok or not all(is_number(v) for v in blur):
        fail("blur_kernel", "expected a non-empty list of numbers")
    for key in ("stddev_group", "stddev_feat"):
        if not is_int(cfg.get(key, 4 if key == "stddev_group" else 1)) or cfg.get(key, 1) < 1:
            fail(key, "expected an integer >= 1")
    last = channel_table(resolution, cfg.get("channel_multiplier", 2), channel_max, channels)[4]
    if last % cfg.get("stddev_feat", 1):
        fail("stddev_feat", f"must divide the {last} channels at 4x4")
