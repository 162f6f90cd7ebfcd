"""The StyleNAT generator, top to bottom: mapping -> 4x4 constant -> stages of transformer blocks -> RGB.

Tokens stay channels-last ([B, H, W, C]) from the constant input to the last ToRGB; only the bilinear
upsample and the RGB skip path switch to NCHW. The modules' forwards are the plain maths; CPU inference
runs each Stage through ``stylenat.models.fused`` instead (the same maths in cache-sized fused kernels)
while the generator's inference path is "fused" (the default; ``Generator.set_inference_path``), decided
at one point, ``Stage.forward``; "modules" always takes the modules' own forwards (so hooks on them fire).
A reduced compute dtype (``Generator.set_compute_dtype``) is handed to the fused path there, or else
entered there as an autocast: the stages' outputs, and with them the RGB skip path, stay float32.
"""

import contextlib
import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from stylenat.models import fused
from stylenat.models.attention import HydraNeighborhoodAttention, MultiHeadSelfAttentionRPB, check_backend
from stylenat.models.conditioning import check_labels, normalize_2nd_moment
from stylenat.models.layers import AdaptiveInstanceNorm, EqualLinear, Mlp, PixelNorm, sinusoidal_grid_2d
from stylenat.ops.checks import is_int, is_number, is_odd_kernel, is_power_of_two
from stylenat.ops.constants import IMAGENET_MEAN, IMAGENET_STD
from stylenat.ops.precision import INFERENCE_DTYPES, autocast, dtype_name
from stylenat.ops.upfirdn import make_kernel, upfirdn2d

OUTPUT_NORMALIZATIONS = ("imagenet", "minus_one_one")
# How the stages run: "fused" takes the fused CPU kernels wherever they apply (CPU, no autograd, float32 or
# float64; see fused.applies) and the modules' forwards elsewhere; "modules" always the modules' forwards.
INFERENCE_PATHS = ("fused", "modules")
# Runtime settings older snapshots stored in their model config; now Generator arguments (from_dict
# drops them).
LEGACY_RUNTIME_KEYS = ("na_backend", "checkpoint_blocks")


def paper_channels(resolution, channel_multiplier=2):
    """Channels per stage (4x4 first): 512 up to 32x32, then 256*cm, 128*cm, ... (the reference table)."""
    table = [512, 512, 512, 512] + [c * channel_multiplier for c in (256, 128, 64, 32, 16)]
    return table[: int(math.log2(resolution)) - 1]


@dataclass
class GeneratorConfig:
    """Everything needed to rebuild a generator; stored in every snapshot."""

    resolution: int = 256
    z_dim: int = 512
    w_dim: int = 512
    n_mlp: int = 8
    lr_mlp: float = 0.01
    channel_multiplier: int = 2
    channels: list | None = None  # per stage from 4x4; None = paper_channels(resolution, channel_multiplier)
    min_heads: int = 4
    head_channels: int = 32  # heads = max(C // head_channels, min_heads)
    mlp_ratio: float = 4.0
    kernels: list = field(default_factory=lambda: [[3]] + [[7]] * 8)  # per stage; the 4x4 entry is unused
    dilations: list = field(
        default_factory=lambda: [[1], [1], [1, 2], [1, 4], [1, 8], [1, 16], [1, 32], [1, 64], [1, 128]]
    )
    use_rpb: bool = True
    output_normalization: str = "imagenet"  # pixel space of synthesis(): what D sees in training
    c_dim: int = 0  # number of classes (class-conditional; set from the data's labels); 0 = unconditional

    @classmethod
    def from_dict(cls, cfg):
        """From a plain mapping (a Hydra ``model`` group, a snapshot's ``model_config``); per-stage entries
        may be single integers. Unknown keys raise; the legacy runtime keys are dropped."""
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in dict(cfg).items() if key not in LEGACY_RUNTIME_KEYS}
        unknown = sorted(set(values) - known)
        if unknown:
            key = unknown[0]
            raise ValueError(f"{key}={values[key]!r}: unknown key (known: {', '.join(sorted(known))})")
        for key in ("kernels", "dilations"):
            if values.get(key) is not None:
                values[key] = [[s] if isinstance(s, int) else list(s) for s in values[key]]
        if values.get("channels") is not None:
            values["channels"] = list(values["channels"])
        return cls(**values)

    def to_dict(self):
        """The plain config; ``c_dim`` only when conditional, so unconditional configs stay as they were."""
        values = asdict(self)
        if not values["c_dim"]:
            del values["c_dim"]
        return values

    @property
    def num_stages(self):
        return int(math.log2(self.resolution)) - 1

    def stage_channels(self):
        return (
            list(self.channels)
            if self.channels is not None
            else paper_channels(self.resolution, self.channel_multiplier)
        )

    def validate(self):
        """Check types and ranges before any layer is built. Each error is one line that starts with the
        field as written here (``resolution=...``, ``kernels[2]=...``), its value and, for per-stage
        fields, the stage: a config parser can prefix its own key path."""
        r = self.resolution
        if not is_power_of_two(r, minimum=8):
            raise ValueError(f"resolution={r!r}: expected a power of two >= 8")
        for key in ("z_dim", "w_dim", "n_mlp", "min_heads", "head_channels", "channel_multiplier"):
            v = getattr(self, key)
            if not is_int(v) or v < 1:
                raise ValueError(f"{key}={v!r}: expected an integer >= 1")
        if not is_int(self.c_dim) or self.c_dim < 0:
            raise ValueError(f"c_dim={self.c_dim!r}: expected an integer >= 0 (0 = unconditional)")
        for key in ("lr_mlp", "mlp_ratio"):
            v = getattr(self, key)
            if not is_number(v) or v <= 0:
                raise ValueError(f"{key}={v!r}: expected a number > 0")
        if not isinstance(self.use_rpb, bool):
            raise ValueError(f"use_rpb={self.use_rpb!r}: expected true or false")
        n = self.num_stages
        channels = self.stage_channels()
        if len(channels) != n:
            raise ValueError(f"channels={channels}: expected {n} entries (one per stage) for resolution {r}")
        for key in ("kernels", "dilations"):
            values = getattr(self, key)
            if len(values) < n:
                raise ValueError(
                    f"{key}={values}: expected {n} entries (one per stage) for resolution {r}, "
                    f"got {len(values)}"
                )
        if self.output_normalization not in OUTPUT_NORMALIZATIONS:
            raise ValueError(
                f"output_normalization={self.output_normalization!r}: expected one of "
                f"{', '.join(OUTPUT_NORMALIZATIONS)}"
            )
        for s in range(n):
            self._validate_stage(s, channels[s])
        return self

    def _validate_stage(self, s, dim):
        """Stage s's channels, heads and (from 8x8 on) its kernels and dilations."""
        size = 4 * 2**s
        stage = f"stage {size}x{size}"
        if not is_int(dim) or dim < 1:
            raise ValueError(f"channels[{s}]={dim!r}: {stage}: expected an integer >= 1")
        heads = max(dim // self.head_channels, self.min_heads)
        if dim % heads:
            raise ValueError(
                f"channels[{s}]={dim}: {stage}: {dim} channels are not divisible by {heads} heads "
                f"(heads = max(channels // head_channels, min_heads))"
            )
        if s == 0:
            return  # the 4x4 stage is full attention: its kernels/dilations entry is unused
        kernels, dilations = self.kernels[s], self.dilations[s]
        for key, values in (("kernels", kernels), ("dilations", dilations)):
            if (
                not isinstance(values, (list, tuple))
                or not values
                or not all(is_int(v) and v >= 1 for v in values)
            ):
                raise ValueError(f"{key}[{s}]={values!r}: {stage}: expected positive integers")
        for k in kernels:
            if not is_odd_kernel(k):
                raise ValueError(f"kernels[{s}]={kernels}: {stage}: kernel_size {k} must be odd")
        both = f"kernels[{s}]={kernels} x dilations[{s}]={dilations}: {stage}"
        for k in kernels:
            for d in dilations:
                if k * d > size:
                    raise ValueError(
                        f"{both}: kernel_size {k} * dilation {d} = {k * d} exceeds the feature map"
                    )
        groups = max(len(kernels), len(dilations))
        if len(kernels) != len(dilations) and 1 not in (len(kernels), len(dilations)):
            raise ValueError(f"{both}: give one kernel per dilation, or a single kernel or dilation for all")
        if heads < groups:
            raise ValueError(
                f"dilations[{s}]={dilations}: {stage}: {groups} head groups need at least "
                f"{groups} heads, the stage has {heads}"
            )


class MappingNetwork(nn.Module):
    """z -> w: PixelNorm then n_mlp equalized layers at lr_mul 0.01.

    With c_dim > 0 (StyleGAN2-ADA): ``embed`` maps the one-hot c to w_dim; z and embed(c) are each
    normalised by their second moment and concatenated (the first layer is z_dim + w_dim wide)."""

    def __init__(self, z_dim, w_dim, n_mlp, lr_mlp, c_dim=0):
        super().__init__()
        self.norm = PixelNorm()
        self.c_dim = c_dim
        if c_dim:
            self.embed = EqualLinear(c_dim, w_dim)
        dims = [z_dim + (w_dim if c_dim else 0)] + [w_dim] * n_mlp
        self.layers = nn.Sequential(
            *[EqualLinear(i, o, lr_mul=lr_mlp, activation="fused_lrelu") for i, o in zip(dims[:-1], dims[1:])]
        )

    def forward(self, z, c=None):
        if not self.c_dim:
            return self.layers(self.norm(z))
        y = normalize_2nd_moment(self.embed(c.to(z.dtype)))
        return self.layers(torch.cat([normalize_2nd_moment(z), y], dim=1))


class TransformerBlock(nn.Module):
    """Pre-norm block: x += Attn(AdaIN(x, w)); x += MLP(AdaIN(x, w))."""

    def __init__(self, dim, w_dim, attn, mlp_ratio):
        super().__init__()
        self.norm1 = AdaptiveInstanceNorm(dim, w_dim)
        self.attn = attn
        self.norm2 = AdaptiveInstanceNorm(dim, w_dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, w):
        x = x + self.attn(self.norm1(x, w))
        return x + self.mlp(self.norm2(x, w))


class BilinearUpsample(nn.Module):
    """x2 bilinear, LayerNorm, channel projection, plus a learned-scale sinusoidal positional encoding."""

    def __init__(self, in_dim, out_dim, out_size):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, out_dim, bias=False)
        self.alpha = nn.Parameter(torch.zeros(1))
        self.register_buffer("pos", sinusoidal_grid_2d(out_size, out_size, out_dim), persistent=False)

    def forward(self, x):
        x = self.resize(x)
        return self.proj(self.norm(x)) + self.alpha * self.pos.to(x.dtype)

    @staticmethod
    def resize(x):
        """x2 bilinear of a channels-last map (through NCHW and back, a view)."""
        x = F.interpolate(x.permute(0, 3, 1, 2), scale_factor=2, mode="bilinear", align_corners=False)
        return x.permute(0, 2, 3, 1)


class ToRGB(nn.Module):
    """1x1 conv to RGB (no modulation); the running image is FIR-upsampled and added (StyleGAN2 skips).

    The separate `bias` duplicates the conv's own bias; the reference has both, and keeping both keeps its
    parameter count (48,921,000 at 256) and its optimisation dynamics.
    """

    def __init__(self, dim, upsample_skip):
        super().__init__()
        self.conv = nn.Conv2d(dim, 3, kernel_size=1)
        self.bias = nn.Parameter(torch.zeros(3))
        self.upsample_skip = upsample_skip
        if upsample_skip:
            self.register_buffer("blur", make_kernel([1, 3, 3, 1]) * 4, persistent=False)

    def forward(self, x, skip):
        rgb = F.linear(x, self.conv.weight.flatten(1), self.conv.bias + self.bias).permute(0, 3, 1, 2)
        if skip is None:
            return rgb
        if self.upsample_skip:
            skip = upfirdn2d(skip, self.blur, up=2, pad=(2, 1))
        return rgb + skip


class Stage(nn.Module):
    """Two transformer blocks at one resolution, then (except in the last stage) the upsample."""

    def __init__(self, cfg, size, dim, next_dim, kernels, dilations, na_backend="auto"):
        super().__init__()
        heads = max(dim // cfg.head_channels, cfg.min_heads)
        if dim % heads:
            raise ValueError(f"stage {size}x{size}: {dim} channels are not divisible by {heads} heads")

        def make_attn():
            if size == 4:
                return MultiHeadSelfAttentionRPB(dim, heads, size)
            return HydraNeighborhoodAttention(dim, heads, kernels, dilations, cfg.use_rpb, na_backend)

        self.size = size
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, cfg.w_dim, make_attn(), cfg.mlp_ratio) for _ in range(2)
        )
        self.upsample = BilinearUpsample(dim, next_dim, 2 * size) if next_dim is not None else None
        self.checkpoint_blocks = False  # activation checkpointing per block in training (Generator sets it)
        self.compute_dtype = torch.float32  # the matrix products' dtype (Generator.set_compute_dtype)
        self.inference_path = "fused"  # Generator.set_inference_path

    def forward(self, x, w0, w1, inplace=False):
        """inplace: the caller owns x, so CPU inference may overwrite it (the synthesis loop does)."""
        if self.inference_path == "fused" and fused.applies(x):  # the same maths, cache-sized kernels
            return fused.stage(self, x, w0, w1, inplace, self.compute_dtype)
        with autocast(x.device, self.compute_dtype):
            for block, w in zip(self.blocks, (w0, w1)):
                if self.checkpoint_blocks and self.training and torch.is_grad_enabled():
                    x = checkpoint(block, x, w, use_reentrant=False)
                else:
                    x = block(x, w)
            return self.upsample(x) if self.upsample is not None else x


class Generator(nn.Module):
    """StyleNAT generator. `G(z)` returns images in [-1, 1]; `synthesis(ws)` returns the training pixel space."""

    def __init__(self, cfg: GeneratorConfig, *, na_backend: str = "auto", checkpoint_blocks: bool = False):
        """na_backend: the neighborhood attention backend (see stylenat.ops.na); checkpoint_blocks:
        activation checkpointing per transformer block in training (memory for the 1024 model). Both are
        runtime settings, not part of the model: snapshots do not store them."""
        super().__init__()
        cfg.validate()
        check_backend(na_backend)
        if not isinstance(checkpoint_blocks, bool):
            raise ValueError(f"checkpoint_blocks={checkpoint_blocks!r}: expected true or false")
        self.cfg = cfg
        self.z_dim, self.w_dim, self.resolution = cfg.z_dim, cfg.w_dim, cfg.resolution
        self.c_dim = cfg.c_dim
        self.class_names = None  # list[str] of a conditional G, from its snapshot (load_generator)
        channels = cfg.stage_channels()
        n = cfg.num_stages
        self.n_latent = 2 * n
        self.mapping_net = MappingNetwork(cfg.z_dim, cfg.w_dim, cfg.n_mlp, cfg.lr_mlp, cfg.c_dim)
        self.const = nn.Parameter(torch.randn(1, 4, 4, channels[0]))
        self.stages = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        for s in range(n):
            last = s == n - 1
            next_dim = None if last else channels[s + 1]
            size = 4 * 2**s
            self.stages.append(
                Stage(cfg, size, channels[s], next_dim, cfg.kernels[s], cfg.dilations[s], na_backend)
            )
            self.to_rgbs.append(ToRGB(channels[s] if last else next_dim, upsample_skip=not last))
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("out_mean", mean, persistent=False)
        self.register_buffer("out_std", std, persistent=False)
        self.apply(_init_weights)
        self.na_backend = na_backend
        self.compute_dtype = torch.float32
        self.inference_path = "fused"
        self.set_checkpoint_blocks(checkpoint_blocks)

    @property
    def model_config(self):
        return self.cfg.to_dict()

    def set_na_backend(self, name: str) -> None:
        """Run every neighborhood attention layer on backend ``name`` (auto | torch | natten | flex)."""
        self.na_backend = check_backend(name)
        for module in self.modules():
            if isinstance(module, HydraNeighborhoodAttention):
                module.backend = name

    def set_compute_dtype(self, dtype) -> None:
        """Run the stages' matrix products in ``dtype`` (fp32 | bf16 | fp16, or the torch.dtype): a runtime
        setting like the backend (snapshots do not store it). Whether a device can run it is the loader's
        question (``stylenat.ops.precision.inference_dtype``)."""
        self.compute_dtype = INFERENCE_DTYPES[dtype_name(dtype)]
        for stage in self.stages:
            stage.compute_dtype = self.compute_dtype

    def set_inference_path(self, path: str) -> str:
        """Run the stages on inference path ``path``: "fused" (the default) takes the fused CPU kernels
        where they apply (CPU, no autograd: sampling) and the modules' forwards elsewhere; "modules" always
        the modules' forwards (hooks on them fire). A runtime setting; returns the previous path."""
        if path not in INFERENCE_PATHS:
            raise ValueError(f"inference_path={path!r}: expected one of {', '.join(INFERENCE_PATHS)}")
        previous, self.inference_path = self.inference_path, path
        for stage in self.stages:
            stage.inference_path = path
        return previous

    @contextlib.contextmanager
    def using_inference_path(self, path: str):
        """Inside the block the stages run on ``path`` (see set_inference_path); the previous path after."""
        previous = self.set_inference_path(path)
        try:
            yield self
        finally:
            self.set_inference_path(previous)

    def set_checkpoint_blocks(self, enabled: bool) -> None:
        """Turn activation checkpointing per transformer block (training only) on or off."""
        self.checkpoint_blocks = enabled
        for stage in self.stages:
            stage.checkpoint_blocks = enabled

    def mapping(
        self, z, c=None, truncation_psi=1.0, truncation_cutoff=None, update_w_avg=False, w_avg_beta=0.995
    ):
        """z [B, z_dim] (and, when conditional, the one-hot c [B, c_dim]) -> per-layer ws
        [B, n_latent, w_dim], with optional truncation toward w_avg (one average over all classes)."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"expected z of shape [batch, {self.z_dim}], got {list(z.shape)}")
        check_labels(c, self.c_dim, z.shape[0], "this generator")
        w = self.mapping_net(z) if c is None else self.mapping_net(z, c)
        if update_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(w.detach().float().mean(0).lerp(self.w_avg, w_avg_beta))
        ws = w.unsqueeze(1).repeat(1, self.n_latent, 1)
        if truncation_psi != 1:
            cutoff = self.n_latent if truncation_cutoff is None else truncation_cutoff
            avg = self.w_avg.to(ws.dtype)
            ws[:, :cutoff] = avg.lerp(ws[:, :cutoff], truncation_psi)
        return ws

    def synthesis(self, ws):
        """ws [B, n_latent, w_dim] (or [B, w_dim]) -> images NCHW in `output_normalization` space."""
        if ws.ndim == 2:
            ws = ws.unsqueeze(1).expand(-1, self.n_latent, -1)
        if ws.ndim != 3 or ws.shape[1:] != (self.n_latent, self.w_dim):
            raise ValueError(
                f"expected ws of shape [batch, {self.n_latent}, {self.w_dim}], got {list(ws.shape)}"
            )
        x = self.const.expand(ws.shape[0], -1, -1, -1).to(ws.dtype)
        rgb = None
        for s, (stage, to_rgb) in enumerate(zip(self.stages, self.to_rgbs)):
            # from the second stage on x is the previous upsample's fresh output: the blocks may reuse it
            x = stage(x, ws[:, 2 * s], ws[:, 2 * s + 1], inplace=s > 0)
            rgb = to_rgb(x, rgb)
        return rgb

    def to_minus_one_one(self, img):
        """Map synthesis output to the public [-1, 1] convention."""
        if self.cfg.output_normalization == "imagenet":
            return (img * self.out_std.to(img.dtype) + self.out_mean.to(img.dtype)) * 2 - 1
        return img

    def forward(self, z, c=None, truncation_psi=1.0, truncation_cutoff=None):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.to_minus_one_one(self.synthesis(ws))


def _init_weights(m):
    """The reference init: trunc-normal Linear, unit LayerNorm, tiny-gain xavier Conv; equalized layers keep theirs."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        nn.init.xavier_normal_(m.weight, gain=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
