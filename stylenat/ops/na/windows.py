"""The neighborhood window rule (NATTEN's) and the argument checks, shared by every backend.

Per axis of length L, odd kernel k, dilation d (k * d <= L): token i is in group i mod d; inside its group
(the L_g positions with the same remainder) its window is the k consecutive group members centred on it,
shifted inward at the borders so it always holds k members. The 2-D window is the product of the two axis
windows; the RPB index of a key is (key - query) in group units + (k - 1) per axis.
"""

from __future__ import annotations

import torch
from torch import Tensor

from stylenat.ops.checks import is_int, is_odd_kernel


class BackendUnavailable(RuntimeError):
    """A backend asked to run a call it cannot serve; the message says which backend and why."""

    def __init__(self, backend: str, reason: str):
        super().__init__(f"na2d backend {backend!r} is unavailable: {reason}")
        self.backend, self.reason = backend, reason


def group_length(length: int, dilation: int, group: int) -> int:
    """Members of dilation group ``group`` along an axis of ``length`` positions."""
    return len(range(group, length, dilation))


def start_in_group(j: int, group_len: int, kernel_size: int) -> int:
    """First window member (group units) of the j-th member of a group: centred, shifted inward at borders."""
    return min(max(j - kernel_size // 2, 0), group_len - kernel_size)


def window_start(index: int, length: int, kernel_size: int, dilation: int = 1) -> int:
    """First key position of ``index``'s window along one axis (original coordinates)."""
    group = index % dilation
    start = start_in_group(index // dilation, group_length(length, dilation, group), kernel_size)
    return group + dilation * start


def neighborhood(length: int, kernel_size: int, dilation: int = 1) -> list[list[int]]:
    """Key positions of every query's window along one axis (for tests, docs and debugging)."""
    if kernel_size * dilation > length:
        product = kernel_size * dilation
        raise ValueError(
            f"kernel_size {kernel_size} * dilation {dilation} = {product} exceeds length {length}"
        )
    return [
        [window_start(i, length, kernel_size, dilation) + dilation * m for m in range(kernel_size)]
        for i in range(length)
    ]


def axis_windows(length: int, kernel_size: int, dilation: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per position along one axis, as tensors: dilation group, index in the group, window start (group
    units). The vectorised form of ``window_start``."""
    i = torch.arange(length)
    group, j = i % dilation, i // dilation
    group_len = (length - group + dilation - 1) // dilation
    start = torch.minimum((j - kernel_size // 2).clamp(min=0), group_len - kernel_size)
    return group, j, start


def check_na_args(
    q: Tensor, k: Tensor, v: Tensor, kernel_size, dilation, rpb: Tensor | None, scale: float | None = None
) -> float:
    """Raise ValueError unless q, k, v [B, heads, H, W, D], kernel_size, dilation and rpb describe a valid
    2-D neighborhood attention problem (odd kernel, k * d within both sides, rpb [heads, 2k-1, 2k-1] on
    q's device). Returns the scale of the logits: ``scale`` as a float, by default D**-0.5."""
    if q.dim() != 5:
        raise ValueError(f"q must be [B, heads, H, W, D], got shape {tuple(q.shape)}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v shapes differ: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not is_odd_kernel(kernel_size):
        raise ValueError(f"kernel_size must be an odd integer >= 1, got {kernel_size}")
    if not is_int(dilation) or dilation < 1:
        raise ValueError(f"dilation must be an integer >= 1, got {dilation}")
    height, width = q.shape[2], q.shape[3]
    if kernel_size * dilation > min(height, width):
        raise ValueError(
            f"kernel_size {kernel_size} * dilation {dilation} = {kernel_size * dilation} "
            f"exceeds feature map {height}x{width}"
        )
    if rpb is not None:
        span = 2 * kernel_size - 1
        expected = (q.shape[1], span, span)
        if tuple(rpb.shape) != expected:
            raise ValueError(f"rpb must have shape {expected}, got {tuple(rpb.shape)}")
        if rpb.device != q.device:
            raise ValueError(f"rpb is on {rpb.device} but q is on {q.device}")
    return q.shape[-1] ** -0.5 if scale is None else float(scale)


def needs_grad(*tensors) -> bool:
    """Whether a backward can follow (grad mode on and some input requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
