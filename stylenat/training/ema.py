"""Exponential moving average of the generator (G_ema), the network every snapshot and sample uses."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_beta(decay: float | None, halflife_kimg: float | None, batch: int) -> float:
    """Per-step EMA coefficient.

    ``halflife_kimg`` (StyleGAN convention, independent of the batch size) wins when set:
    beta = 0.5 ** (batch / (halflife_kimg * 1000)); otherwise ``decay`` is the per-step beta
    (the reference's 0.5 ** (32 / 10000)).
    """
    if halflife_kimg is not None:
        if halflife_kimg <= 0:
            raise ValueError(f"train.ema_halflife_kimg must be > 0, got {halflife_kimg}")
        return 0.5 ** (batch / (halflife_kimg * 1000.0))
    if decay is None or not 0.0 <= decay < 1.0:
        raise ValueError(f"train.ema_decay must be in [0, 1), got {decay}")
    return float(decay)


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen, eval-mode copy of ``model`` to average into."""
    ema = copy.deepcopy(model).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """ema = beta * ema + (1 - beta) * model for parameters; buffers (e.g. w_avg) are copied."""
    ema_params = list(ema.parameters())
    params = [p.detach() for p in model.parameters()]
    if len(ema_params) != len(params):
        raise ValueError(f"EMA model has {len(ema_params)} parameters, the model {len(params)}")
    torch._foreach_lerp_(ema_params, params, 1.0 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)
