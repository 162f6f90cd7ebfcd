"""Where a generator's forward+backward goes, block by block: the first transformer block of every stage
timed whole and by part (AdaIN, the qkv projection, the attention between the projections, the MLP),
forward and backward on random inputs at a batch size. Parts are timed alone, so they need not add up to
the block."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from torch import nn

from stylenat import perf


def block_parts(G: nn.Module, batch: int, reps: int, device: torch.device, warmup: int = 1) -> list[dict]:
    """One record per stage: {stage, channels, heads, attention_with_projections, adain_ms, qkv_ms,
    attention_ms, mlp_ms, block_ms}, medians of ``reps`` forward+backward calls. The 4x4 stage's global
    attention has no separate step between its projections, so its figure includes them."""
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(0)
    rows = []
    for stage in G.stages:
        block = stage.blocks[0]
        row = {
            "stage": stage.size,
            "channels": block.mlp.fc1.in_features,
            "heads": block.attn.num_heads,
            "attention_with_projections": not hasattr(block.attn, "attend"),
        }
        for name, forward in _parts(block, stage.size, G.w_dim, batch, generator).items():
            times = perf.time_call(lambda forward=forward: forward().sum().backward(), device, reps, warmup)
            row[f"{name}_ms"] = round(statistics.median(times), 3)
        rows.append(row)
    G.zero_grad(set_to_none=True)
    return rows


def _parts(block: nn.Module, size: int, w_dim: int, batch: int, generator) -> dict[str, Callable]:
    """The block's forwards on fresh random inputs (requiring grad, so each has a backward)."""
    dim, attn, device = block.mlp.fc1.in_features, block.attn, generator.device

    def randn(*shape, grad=True):
        return torch.randn(*shape, generator=generator, device=device).requires_grad_(grad)

    x, w = randn(batch, size, size, dim), randn(batch, w_dim, grad=False)
    if hasattr(attn, "attend"):  # Hydra-NA: qkv -> attend -> proj
        qkv = randn(batch, size, size, 3 * dim)
        attention = lambda: attn.attend(qkv)  # noqa: E731
    else:
        attention = lambda: attn(x)  # noqa: E731
    return {
        "adain": lambda: block.norm1(x, w),
        "qkv": lambda: attn.qkv(x),
        "attention": attention,
        "mlp": lambda: block.mlp(x),
        "block": lambda: block(x, w),
    }
