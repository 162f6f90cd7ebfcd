"""Evaluation protocols: how images reach the Inception network.

``stylegan`` (StyleGAN2-ADA ``fid50k_full``): uint8 images, NVIDIA's TF1-style bilinear resize to
299 (``dst * in / out`` sampling, border clamp) of the 0..255 values, then ``(x - 128) / 128``.
Generator output in [-1, 1] becomes ``(x * 127.5 + 128).clamp(0, 255).to(uint8)``.

``pytorch_fid`` (StyleNAT / StyleSwin reference code, mseitzer's pytorch-fid): uint8 images read as
``x / 255`` in [0, 1], ``F.interpolate(x, (299, 299), bilinear, align_corners=False)``, then
``2 * x - 1``. The reference code saves generated images as PNG before scoring them
(torchvision ``save_image``), so generator output is mapped to [0, 1] and quantised the way
``save_image`` does (``x * 255 + 0.5``, clamp, truncate to uint8).

The resizes live here (the network in :mod:`stylenat.metrics.inception` only sees 299x299 input).
Both feed the same network (identical graph and weights); they differ only in resize and scaling.
The covariance convention follows each reference: NVIDIA's FeatureStats divides by N (ddof 0),
pytorch-fid uses ``np.cov`` (ddof 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from stylenat.data.transforms import minus_one_one_to_uint8

INPUT_SIZE = 299  # the Inception network's input side


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


def _check_images(images: torch.Tensor, protocol: str) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"protocol {protocol!r} expects a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"protocol {protocol!r} expects images [N, 3, H, W], got shape {tuple(images.shape)}"
        )


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    cov_ddof: int

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> the network input (float32, [N, 3, 299, 299], about [-1, 1])."""
        raise NotImplementedError

    def from_generator(self, images: torch.Tensor) -> torch.Tensor:
        """Generator output in [-1, 1] (float NCHW) -> uint8 NCHW, as the protocol's reference does it."""
        raise NotImplementedError


@dataclass(frozen=True)
class StyleGANProtocol(Protocol):
    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or float holding 0..255 values) -> TF-style resize -> (x - 128) / 128."""
        _check_images(images, self.name)
        x = images.to(torch.float32)
        x = tf_resize_bilinear(x, INPUT_SIZE)
        return (x - 128) / 128

    def from_generator(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, self.name)
        return minus_one_one_to_uint8(images)


@dataclass(frozen=True)
class PytorchFIDProtocol(Protocol):
    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (-> x/255) or float in [0, 1] -> torch bilinear resize -> 2x - 1."""
        _check_images(images, self.name)
        if images.dtype == torch.uint8:
            x = images.to(torch.float32) / 255
        elif images.is_floating_point():
            x = images.to(torch.float32)
            hi = float(x.max()) if x.numel() else 0.0
            if hi > 1.0 + 1e-3:
                raise ValueError(
                    f"protocol 'pytorch_fid' expects uint8 images or floats in [0, 1], got max {hi:.4g}"
                )
        else:
            raise TypeError(f"protocol 'pytorch_fid' expects uint8 or float images, got {images.dtype}")
        x = torch_resize_bilinear(x, INPUT_SIZE)
        return 2 * x - 1

    def from_generator(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, self.name)
        x = (images.float() + 1) / 2
        return x.mul(255).add(0.5).clamp(0, 255).to(torch.uint8)


PROTOCOLS: dict[str, Protocol] = {
    "stylegan": StyleGANProtocol(
        name="stylegan",
        description="StyleGAN2-ADA fid50k_full: uint8, NVIDIA TF-style bilinear resize, (x-128)/128",
        cov_ddof=0,
    ),
    "pytorch_fid": PytorchFIDProtocol(
        name="pytorch_fid",
        description="pytorch-fid (StyleNAT reference): x/255, torch bilinear resize, 2x-1",
        cov_ddof=1,
    ),
}


def get_protocol(name: str | Protocol) -> Protocol:
    if isinstance(name, Protocol):
        return name
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}") from None
