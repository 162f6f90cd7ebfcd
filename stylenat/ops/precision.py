"""Precision in one place: the process-wide float32 switches for CUDA (TF32), and the names, device
support and autocast of the reduced-precision inference modes (bf16 / fp16).

torch >= 2.9 has two APIs for TF32: the legacy ones (``torch.set_float32_matmul_precision``,
``torch.backends.cuda.matmul.allow_tf32``, ``torch.backends.cudnn.allow_tf32``) and the per-backend
``fp32_precision`` attributes. When only the new ones are set, the legacy state disagrees with them and its
getters raise ("... you have used mix of the legacy and new APIs ..."): ``torch.get_float32_matmul_precision()``,
which inductor calls under ``torch.compile(mode="max-autotune")`` (select_algorithm's cache keys), and
``torch.backends.cuda.matmul.allow_tf32`` / ``torch.backends.cudnn.allow_tf32``. ``set_tf32`` therefore sets
the legacy state first and the new attributes to the matching values after it, so every getter answers
and agrees.
"""

from __future__ import annotations

import contextlib
import logging

import torch


def set_tf32(enabled: bool) -> None:
    """TF32 for CUDA matmuls and cuDNN convolutions (and RNNs) on or off, legacy and new APIs in agreement.

    The CPU's oneDNN matmul precision (``torch.backends.mkldnn.matmul.fp32_precision``, which the legacy
    ``set_float32_matmul_precision`` also moves) is left as it was.
    """
    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):  # torch < 2.9: the legacy flags are the only API
        matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled
        return
    precision = "tf32" if enabled else "ieee"
    cpu_matmul = torch.backends.mkldnn.matmul.fp32_precision
    # Legacy first (each legacy setter resets the new attributes it covers), then the new ones.
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.mkldnn.matmul.fp32_precision = cpu_matmul
    torch.backends.cudnn.allow_tf32 = enabled
    matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision
    torch.backends.cudnn.rnn.fp32_precision = precision


def tf32_flags() -> dict:
    """The TF32 switches as the legacy getters report them (what a metric record states)."""
    return {
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    }


@contextlib.contextmanager
def full_fp32():
    """TF32 off for CUDA matmuls and cuDNN convolutions inside the block (what NVIDIA's metrics do), every
    switch restored afterwards (also on error). Metrics run in it on every device, so their numbers do not
    depend on the GPU generation or on what training or generation had turned on."""
    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):  # torch < 2.9: the legacy flags are the only API
        saved = (matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        set_tf32(False)
        try:
            yield
        finally:
            matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        return
    cudnn = torch.backends.cudnn
    saved_new = (matmul.fp32_precision, cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision)
    saved_cpu = torch.backends.mkldnn.matmul.fp32_precision
    saved_legacy = []  # the legacy switches that answer (a getter raises when the two APIs disagree)
    for getter, setter in (
        (torch.get_float32_matmul_precision, torch.set_float32_matmul_precision),
        (lambda: cudnn.allow_tf32, lambda v: setattr(cudnn, "allow_tf32", v)),
    ):
        try:
            saved_legacy.append((setter, getter()))
        except RuntimeError:
            pass
    set_tf32(False)
    try:
        yield
    finally:
        for setter, value in saved_legacy:  # legacy first (each resets new attributes), then the new ones
            setter(value)
        torch.backends.mkldnn.matmul.fp32_precision = saved_cpu
        matmul.fp32_precision, cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision = saved_new


# ----------------------------------------------------------------------------------------------------
# Reduced-precision inference: names, device support, autocast
# ----------------------------------------------------------------------------------------------------

# Inference dtypes by name; the long names are torch's own, so configs may use either.
INFERENCE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
DTYPE_CHOICES = (*INFERENCE_DTYPES, *_ALIASES)  # every name a command line accepts

logger = logging.getLogger(__name__)
_fallback_logged: set[str] = set()


class DtypeUnavailable(ValueError):
    """A dtype the device cannot run (fp16 on the CPU, bf16 on an old GPU): a user error, one line."""


def dtype_name(dtype) -> str:
    """The short name (fp32 | bf16 | fp16) of ``dtype`` (a name, an alias or a torch.dtype); a one-line
    ValueError for anything else."""
    if isinstance(dtype, torch.dtype):
        for name, value in INFERENCE_DTYPES.items():
            if value == dtype:
                return name
    elif isinstance(dtype, str) and (dtype in INFERENCE_DTYPES or dtype in _ALIASES):
        return _ALIASES.get(dtype, dtype)
    raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(INFERENCE_DTYPES)}")


def cpu_bf16_supported() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (oneDNN with AVX512-BF16 or AMX): elsewhere
    bf16 products are emulated and slower than fp32."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # an older or stripped build without the query
        return False


def inference_dtype(dtype, device) -> torch.dtype:
    """The compute dtype a generator on ``device`` runs for the requested ``dtype`` (name or torch.dtype).

    The dispatcher of the reduced-precision modes: fp16 needs CUDA, bf16 on CUDA needs a GPU that has
    it (one-line DtypeUnavailable, a ValueError); bf16 on a CPU without native bf16 products falls back to fp32 with one
    log line (it would be slower than fp32, not wrong). fp32 on CUDA turns TF32 on.
    """
    name, device = dtype_name(dtype), torch.device(device)
    if device.type == "cuda":
        if name == "bf16" and not torch.cuda.is_bf16_supported():
            raise DtypeUnavailable(f"dtype=bf16: {torch.cuda.get_device_name(device)} cannot run bf16")
        if name == "fp32":
            set_tf32(True)
        return INFERENCE_DTYPES[name]
    if name == "fp16":
        raise DtypeUnavailable(f"dtype=fp16 needs a CUDA device (got {device.type}); use bf16 on the CPU")
    if name == "bf16" and device.type == "cpu" and not cpu_bf16_supported():
        if "cpu" not in _fallback_logged:
            _fallback_logged.add("cpu")
            logger.warning("dtype=bf16: this CPU has no native bf16 matrix products; running fp32")
        return torch.float32
    return INFERENCE_DTYPES[name]


def autocast(device, dtype: torch.dtype):
    """torch.autocast to ``dtype`` on ``device``'s type, or no context for float32 (so an autocast the
    caller entered stays in force)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
