"""``na2d``: 2-D neighborhood attention, dispatched to one of three backends.

* ``torch`` (``torch_backend``): pure PyTorch tiles, every device, RPB supported; serves every call.
* ``natten`` (``natten_backend``): NATTEN's fused CUDA kernels, without RPB.
* ``flex`` (``flex_backend``): ``flex_attention`` compiled into a block-sparse kernel, RPB supported;
  forward and backward on CUDA, forward only on the CPU (one C++ compile per problem shape).

"auto" picks natten, then flex, then torch on CUDA, and torch on every other device (flex compiles per
shape and has no CPU backward). The environment variable STYLENAT_NA_BACKEND overrides "auto". This is the
only place that chooses: a backend asked for a call it cannot run raises ``BackendUnavailable``, and so
does ``na2d`` with that backend forced. The choice is logged once per backend.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading

import torch
from torch import Tensor

from stylenat.ops.na import flex_backend, natten_backend, torch_backend
from stylenat.ops.na.windows import BackendUnavailable, check_na_args, needs_grad

logger = logging.getLogger(__name__)

NA_BACKENDS = ("auto", "torch", "natten", "flex")
ENV_VAR = "STYLENAT_NA_BACKEND"

_logged_backends: set[str] = set()
_override = threading.local()  # backend_override's backend, per thread


@contextlib.contextmanager
def backend_override(name: str):
    """Inside the block every na2d call of this thread uses backend ``name``, whatever it asks for (an
    explicit backend, "auto", STYLENAT_NA_BACKEND): for measurements that need one implementation on every
    device, such as FLOP counting (under torch's FlopCounterMode the compiled flex kernel cannot run)."""
    if name not in NA_BACKENDS or name == "auto":
        raise ValueError(
            f"backend_override needs a concrete backend, one of torch, natten, flex; got {name!r}"
        )
    previous = getattr(_override, "backend", None)
    _override.backend = name
    try:
        yield
    finally:
        _override.backend = previous


def available_backends(device: str | torch.device = "cpu", grad: bool = True) -> list[str]:
    """Backends that can run on ``device`` (without RPB): forward and backward, or with ``grad=False``
    forward only too (flex attention compiles a forward-only kernel on the CPU)."""
    device = torch.device(device)
    names = ["torch"]
    if natten_backend.natten_import()[0] is not None and device.type == "cuda":
        names.append("natten")
    if flex_backend.available(device) and (device.type != "cpu" or not grad):
        names.append("flex")
    return names


def resolve_backend(backend: str, q: Tensor, k: Tensor, v: Tensor, rpb: Tensor | None) -> str:
    """The backend that runs this call: ``backend``, or for "auto" (after the environment override) the
    first of natten, flex, torch that can run it on CUDA and torch elsewhere. A forced backend that cannot
    run the call raises BackendUnavailable."""
    if backend not in NA_BACKENDS:
        raise ValueError(f"unknown na2d backend {backend!r}; expected one of {', '.join(NA_BACKENDS)}")
    if backend == "auto":
        env = os.environ.get(ENV_VAR, "").strip()
        if env:
            if env not in NA_BACKENDS:
                raise ValueError(
                    f"{ENV_VAR}={env!r} is not a backend; expected one of {', '.join(NA_BACKENDS)}"
                )
            backend = env
    if backend == "auto":
        if q.device.type != "cuda":  # the CPU: flex has no backward and compiles per shape; torch wins
            return "torch"
        if natten_backend.unavailable(q, rpb) is None:
            return "natten"
        return "flex" if flex_backend.unavailable(q, k, v, rpb) is None else "torch"
    reason = None
    if backend == "natten":
        reason = natten_backend.unavailable(q, rpb)
    elif backend == "flex":
        reason = flex_backend.unavailable(q, k, v, rpb)
    if reason is not None:
        raise BackendUnavailable(backend, reason)
    return backend


def _log_choice(backend: str, device_type: str) -> None:
    """One line per backend, the first time it is used (with why natten is not used, on CUDA)."""
    if backend in _logged_backends:
        return
    _logged_backends.add(backend)
    why_not = natten_backend.natten_import()[1] if backend != "natten" and device_type == "cuda" else None
    logger.info(
        "na2d: using the %s backend (first call on %s%s)",
        backend,
        device_type,
        f"; natten unavailable: {why_not}" if why_not else "",
    )


def na2d(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_size: int,
    dilation: int = 1,
    rpb: Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
    out: Tensor | None = None,
) -> Tensor:
    """2-D neighborhood attention (NATTEN semantics, see ``windows``).

    q, k, v: [B, heads, H, W, D]; rpb: [heads, 2k-1, 2k-1] or None; scale defaults to D**-0.5 and
    multiplies q. logits = scale * q.k + rpb[h, dy + k - 1, dx + k - 1], softmax over the k*k window.
    backend: "auto" (on CUDA natten when it can run, else flex when it can, else torch; torch on every
    other device; env STYLENAT_NA_BACKEND overrides), "torch", "natten" or "flex" (a forced backend that
    cannot run the call raises BackendUnavailable, a RuntimeError, saying why). out: an optional
    [B, heads, H, W, D] tensor of any strides (e.g. a permuted slice of a [B, H, W, heads, D] buffer) that
    receives the result and is returned, without autograd (the torch backend writes into it directly).
    Returns [B, heads, H, W, D]: the torch backend stores it like q when q is dense, else (q a strided
    view, such as the attention layer's q, k, v of one qkv tensor) token-major ([B, H, W, heads, D] memory).
    """
    scale = check_na_args(q, k, v, kernel_size, dilation, rpb, scale)
    if out is not None:
        if out.shape != q.shape or out.device != q.device or out.dtype != q.dtype:
            raise ValueError(
                f"out must match q ({tuple(q.shape)}, {q.dtype}, {q.device}), got "
                f"({tuple(out.shape)}, {out.dtype}, {out.device})"
            )
        if needs_grad(q, k, v, rpb):
            raise RuntimeError("na2d(out=...) does not support autograd; call it without out")
    chosen = resolve_backend(getattr(_override, "backend", None) or backend, q, k, v, rpb)
    _log_choice(chosen, q.device.type)
    if chosen == "torch":
        return torch_backend.na2d_torch(q, k, v, kernel_size, dilation, rpb, scale, out=out)
    if chosen == "natten":
        result = natten_backend.na2d_natten(q, k, v, kernel_size, dilation, scale=scale)
    else:
        result = flex_backend.na2d_flex(q, k, v, kernel_size, dilation, rpb=rpb, scale=scale)
    return result if out is None else out.copy_(result)
