"""VGG16 for precision/recall (fc2 features, 4096-d) and LPIPS, from weights the user provides.

Two kinds of file are read: NVIDIA's TorchScript ``vgg16.pt`` (StyleGAN2-ADA's ``pr50k3_full`` detector, the
original VGG16 with Zhang et al.'s LPIPS heads; called as ``net(images_uint8, return_features=True)``), or a
torchvision ``vgg16`` state dict (ImageNet weights; fc2 features only, and not NVIDIA's network, so its
numbers are not comparable with published ones). Nothing is ever downloaded: :func:`load_vgg16` looks at
the path given, env ``STYLENAT_VGG16``, then ``stylenat.files.cache_root() / "vgg16.pt"``.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stylenat.files import cache_root, sha256_file
from stylenat.metrics.inception_weights import is_torchscript_archive
from stylenat.ops.constants import IMAGENET_MEAN, IMAGENET_STD

ENV_VGG16 = "STYLENAT_VGG16"
CACHE_FILE = "vgg16.pt"
NVIDIA_VGG16_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt"
FEATURE_DIM = 4096
TORCHVISION_INPUT = 224  # the side torchvision's VGG16 was trained at
# torchvision's vgg16 "features": channels per conv, "M" a 2x2 max pool (configuration D of the paper)
_VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16WeightsError(ValueError):
    """VGG16 weights missing, unreadable, or of an unknown layout."""


class TorchvisionVGG16(nn.Module):
    """torchvision's ``vgg16`` up to fc2 + ReLU, with its state-dict keys (``features.N``,
    ``classifier.N``); fc3 (the 1000 classes) is read and kept so a full state dict loads strictly."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for v in _VGG16_LAYERS:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, FEATURE_DIM),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(FEATURE_DIM, FEATURE_DIM),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(FEATURE_DIM, 1000),
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or 0..255 float) [N, 3, H, W] -> fc2 features after ReLU, [N, 4096]."""
        x = images.to(torch.float32)
        if x.shape[2:] != (TORCHVISION_INPUT, TORCHVISION_INPUT):
            x = F.interpolate(x, size=(TORCHVISION_INPUT, TORCHVISION_INPUT), mode="bilinear", antialias=True)
        x = (x - self.mean) / self.std
        x = self.avgpool(self.features(x)).flatten(1)
        return self.classifier[:5](x)


class VGG16:
    """A loaded VGG16: ``features(images)`` for precision/recall, ``lpips(a, b)`` for projection.

    ``source`` is ``"nvidia"`` (TorchScript) or ``"torchvision"`` (state dict); ``sha256`` is the weights
    file's, recorded in every metric result; ``path`` is where it was read from.
    """

    feature_network = "vgg16"

    def __init__(self, net: nn.Module, source: str, path: Path, sha256: str):
        self.net, self.source, self.path, self.sha256 = net, source, path, sha256
        self.weights_sha256 = sha256  # the name the metric registry records for any feature network
        self.weights_digest = ""

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters(), torch.empty(0)).device

    def to(self, device) -> VGG16:
        self.net = self.net.to(device)
        return self

    def _check(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"VGG16 expects images [N, 3, H, W] in 0..255, got {shape}")
        return images.to(self.device)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, H, W] at any size (resized inside) -> fc2 features, float32 [N, 4096]."""
        images = self._check(images)
        if self.source == "nvidia":
            feats = self.net(images, return_features=True)
        else:
            feats = self.net(images)
        return feats.to(torch.float32)

    def __call__(self, images: torch.Tensor, protocol: str | None = None) -> torch.Tensor:
        """The feature-extractor call the metric registry makes; the protocol's resize is Inception's, so
        only its uint8 conversion of generator output applies (VGG16 resizes on its own)."""
        return self.features(images)

    def lpips_features(self, images: torch.Tensor) -> torch.Tensor:
        """NVIDIA's LPIPS embedding of 0..255 images (not resized: StyleGAN2-ADA's projector first
        area-resizes to 256 px); differentiable, so a projector can optimise through it."""
        if self.source != "nvidia":
            raise VGG16WeightsError(
                f"LPIPS needs NVIDIA's TorchScript vgg16.pt ({NVIDIA_VGG16_URL}); {self.path} is a "
                "torchvision state dict, which has no LPIPS heads"
            )
        return self.net(self._check(images).to(torch.float32), resize_images=False, return_lpips=True)

    def lpips(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """LPIPS distance per pair, [N], as StyleGAN2-ADA computes it (squared embedding difference)."""
        return (self.lpips_features(a) - self.lpips_features(b)).square().sum(dim=1)


def _read(path: Path) -> tuple[nn.Module, str]:
    if is_torchscript_archive(path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
                return torch.jit.load(str(path), map_location="cpu").eval(), "nvidia"
        except (RuntimeError, ValueError) as exc:
            raise VGG16WeightsError(f"cannot load TorchScript file {path}: {exc}") from exc
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise VGG16WeightsError(f"cannot read VGG16 weights from {path}: {exc}") from exc
    if not isinstance(sd, dict) or "classifier.3.weight" not in sd:
        raise VGG16WeightsError(
            f"{path} is neither NVIDIA's TorchScript vgg16.pt nor a torchvision vgg16 state dict"
        )
    net = TorchvisionVGG16()
    try:
        net.load_state_dict(sd)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise VGG16WeightsError(f"{path}: not a torchvision vgg16 state dict ({first[-1].strip()})") from exc
    return net.eval(), "torchvision"


def vgg16_path(path: str | os.PathLike | None = None) -> Path:
    """Where the weights are: ``path``, else env ``STYLENAT_VGG16``, else the cache root's ``vgg16.pt``."""
    if path is not None:
        where = Path(path).expanduser()
        if not where.is_file():
            raise VGG16WeightsError(f"VGG16 weights file not found: {where}")
        return where
    env = os.environ.get(ENV_VGG16)
    if env:
        where = Path(env).expanduser()
        if not where.is_file():
            raise VGG16WeightsError(f"{ENV_VGG16} points to a missing file: {where}")
        return where
    cached = cache_root() / CACHE_FILE
    if cached.is_file():
        return cached
    raise VGG16WeightsError(
        f"no VGG16 weights: give a path, set {ENV_VGG16}=PATH, or put the file at {cached}; "
        f"NVIDIA's (for pr50k3_full as published): {NVIDIA_VGG16_URL}"
    )


def load_vgg16(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> VGG16:
    """VGG16 from NVIDIA's TorchScript or a torchvision state dict (see :func:`vgg16_path`), eval mode."""
    where = vgg16_path(path)
    net, source = _read(where)
    for param in net.parameters():  # ScriptModules lack requires_grad_
        param.requires_grad_(False)
    return VGG16(net, source, where, sha256_file(where)).to(device)
