"""Naive gather-based neighborhood attention: the yardstick for tests and benchmarks, never the default.

It materialises every query's k*k keys and values ([B, heads, H, W, k*k, D]), which is simple to check by
eye but slow and memory hungry. Use ``stylenat.ops.na2d`` everywhere else. Its window rule is written
out here again on purpose (not taken from ``windows``): an oracle that shares the code it checks could
not catch a mistake in it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from stylenat.ops.na.windows import check_na_args


def _axis_windows(length: int, kernel_size: int, dilation: int) -> tuple[Tensor, Tensor]:
    """Key positions [L, k] of each query's window and their RPB offsets [L, k] along one axis."""
    i = torch.arange(length)
    group, j = i % dilation, i // dilation
    group_len = (length - group + dilation - 1) // dilation
    start = torch.minimum((j - kernel_size // 2).clamp(min=0), group_len - kernel_size)
    m = torch.arange(kernel_size)
    key_j = start[:, None] + m[None, :]
    return group[:, None] + dilation * key_j, key_j - j[:, None] + kernel_size - 1


def na2d_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_size: int,
    dilation: int = 1,
    rpb: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """Same contract as ``stylenat.ops.na2d`` (q, k, v [B, heads, H, W, D]), computed by brute gather."""
    scale = check_na_args(q, k, v, kernel_size, dilation, rpb, scale)
    height, width = q.shape[2], q.shape[3]
    pos_y, rel_y = (t.to(q.device) for t in _axis_windows(height, kernel_size, dilation))
    pos_x, rel_x = (t.to(q.device) for t in _axis_windows(width, kernel_size, dilation))
    iy = pos_y[:, None, :, None]  # [H, 1, k, 1]
    ix = pos_x[None, :, None, :]  # [1, W, 1, k]
    keys = k[:, :, iy, ix].flatten(4, 5)  # [B, heads, H, W, k*k, D]
    values = v[:, :, iy, ix].flatten(4, 5)
    logits = torch.einsum("bhyxd,bhyxnd->bhyxn", q * scale, keys)
    if rpb is not None:
        bias = rpb[:, rel_y[:, None, :, None], rel_x[None, :, None, :]]  # [heads, H, W, k, k]
        logits = logits + bias.flatten(3, 4)
    return torch.einsum("bhyxn,bhyxnd->bhyxd", logits.softmax(-1), values)
