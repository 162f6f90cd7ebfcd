"""Argument checks shared by every neighborhood-attention implementation (``na2d`` and its backends, the
flex backend, the gather oracle): one place, one set of error messages."""

from __future__ import annotations

from torch import Tensor


def check_na_args(q: Tensor, k: Tensor, v: Tensor, kernel_size, dilation, rpb: Tensor | None) -> None:
    """Raise ValueError unless q, k, v [B, heads, H, W, D], kernel_size, dilation and rpb describe a valid
    2-D neighborhood attention problem (odd kernel, k * d within both sides, rpb [heads, 2k-1, 2k-1] on
    q's device)."""
    if q.dim() != 5:
        raise ValueError(f"q must be [B, heads, H, W, D], got shape {tuple(q.shape)}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v shapes differ: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd integer >= 1, got {kernel_size}")
    if not isinstance(dilation, int) or dilation < 1:
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
