"""Class conditioning, StyleGAN2-ADA's scheme (SPEC "Conditioning and transfer"), shared by G and both Ds.

- G: the one-hot label c goes through ``embed`` (c_dim -> w_dim); z and embed(c) are each normalised by
  their second moment and concatenated before the mapping layers (``MappingNetwork`` in generator.py).
- D: ``LabelMapping`` (StyleGAN2-ADA's MappingNetwork with z_dim = 0) maps c to ``cmap`` (cmap_dim = D's
  channels at 4x4); D's last layer outputs cmap_dim features x and the logit is
  ``sum(x * cmap) / sqrt(cmap_dim)`` (``project``), a projection discriminator.

Every path here runs only when c_dim > 0: an unconditional network has none of these parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from stylenat.models.layers import EqualLinear
from stylenat.ops.checks import is_int

D_MAPPING_LAYERS = 8  # StyleGAN2-ADA's D mapping depth (its MappingNetwork default)
D_MAPPING_LR_MUL = 0.01


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) over dim 1 (StyleGAN2-ADA's normalize_2nd_moment)."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def check_labels(c, c_dim: int, batch: int, what: str) -> None:
    """One-line ValueErrors: c missing for a conditional network, given to an unconditional one, or of
    the wrong shape."""
    if c_dim == 0:
        if c is not None:
            raise ValueError(f"{what} is unconditional (c_dim=0): call it without c")
        return
    if c is None:
        raise ValueError(
            f"{what} is class-conditional (c_dim={c_dim}): pass c, a one-hot [batch, {c_dim}] tensor"
        )
    if not isinstance(c, torch.Tensor) or c.ndim != 2 or tuple(c.shape) != (batch, c_dim):
        shape = list(c.shape) if isinstance(c, torch.Tensor) else type(c).__name__
        raise ValueError(f"{what}: expected c of shape [{batch}, {c_dim}] (one-hot), got {shape}")


class LabelMapping(nn.Module):
    """c -> cmap: embed (c_dim -> cmap_dim), 2nd-moment normalisation, ``num_layers`` lrelu layers at
    lr_mul 0.01 (StyleGAN2-ADA's D mapping: z_dim 0, embed and layer width cmap_dim)."""

    def __init__(
        self, c_dim: int, cmap_dim: int, num_layers: int = D_MAPPING_LAYERS, lr_mul: float = D_MAPPING_LR_MUL
    ):
        super().__init__()
        self.embed = EqualLinear(c_dim, cmap_dim)
        self.layers = nn.Sequential(
            *[
                EqualLinear(cmap_dim, cmap_dim, lr_mul=lr_mul, activation="fused_lrelu")
                for _ in range(num_layers)
            ]
        )

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.layers(normalize_2nd_moment(self.embed(c.to(self.embed.weight.dtype))))


def project(x: torch.Tensor, cmap: torch.Tensor) -> torch.Tensor:
    """The projection logit [B, 1]: sum(x * cmap) / sqrt(cmap_dim)."""
    return (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(cmap.shape[1]))


class ProjectionConditioned(nn.Module):
    """What both Ds share: their epilogue's last layers (``final_linear``), widened to cmap_dim features
    and projected on ``mapping(c)`` when c_dim > 0 (cmap_dim = D's channels at 4x4), one logit otherwise."""

    def _init_conditioning(self, c_dim, channels: int, final_linear: Callable[[int], nn.Module]) -> None:
        """``final_linear(out)`` builds the epilogue's linear layers with ``out`` outputs."""
        if not is_int(c_dim) or c_dim < 0:
            raise ValueError(f"c_dim={c_dim!r}: expected an integer >= 0 (0 = unconditional)")
        self.c_dim = c_dim
        self.final_linear = final_linear(channels if c_dim else 1)
        if c_dim:
            self.mapping = LabelMapping(c_dim, channels)

    def _logits(self, features: torch.Tensor, c) -> torch.Tensor:
        x = self.final_linear(features.reshape(features.shape[0], -1))
        return x if not self.c_dim else project(x, self.mapping(c))
