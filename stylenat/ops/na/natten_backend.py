"""The natten backend of neighborhood attention: NATTEN's fused CUDA kernels (``natten.na2d``).

Usable when NATTEN >= 0.20 built with its CUDA library imports (``natten.HAS_LIBNATTEN``), the tensors are
on CUDA and no RPB is given (NATTEN >= 0.20 has no RPB). Any other install (0.17's submodule
``natten.na2d``, a build without libnatten, whose fallback is a dense score matrix) counts as unavailable,
with the reason in one line.
"""

from __future__ import annotations

import functools
import importlib

import torch
from torch import Tensor

from stylenat.ops.na.windows import BackendUnavailable, check_na_args

# The first NATTEN whose ``natten.na2d`` is the op (heads-last [B, H, W, heads, D], no RPB); in 0.17
# ``natten.na2d`` is a submodule (the op lived in natten.functional with another signature).
NATTEN_MIN_VERSION = (0, 20)


def _version_tuple(version: str) -> tuple[int, ...] | None:
    """(major, minor, ...) of a version string such as "0.21.0+torch280cu128", or None."""
    parts = []
    for piece in str(version).split("+")[0].split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts) if parts else None


def _natten_has_libnatten(natten) -> bool:
    """Whether this NATTEN install has its compiled CUDA library. NATTEN >= 0.20 says so in
    ``natten.HAS_LIBNATTEN`` (natten/_environment.py, re-exported by the package: True when the compiled
    ``natten.libnatten`` extension imports). Without that flag, the extension importing is the test. An
    install without libnatten still imports and runs its own uncompiled flex fallback, which builds a dense
    L x L score matrix (~17 GB per head at 256x256): never a backend to pick."""
    flag = getattr(natten, "HAS_LIBNATTEN", None)
    if flag is not None:
        return bool(flag)
    try:
        importlib.import_module("natten.libnatten")
    except (ImportError, OSError):
        return False
    return True


@functools.lru_cache(maxsize=1)
def natten_import():
    """(natten, None) when a NATTEN >= 0.20 with its CUDA library imports, else (None, why not), the reason
    one line. Imported lazily, once."""
    try:
        import natten
    except (ImportError, OSError) as err:  # OSError: a build that does not match the CUDA/torch libs
        return None, f"natten does not import ({type(err).__name__}: {str(err).strip().splitlines()[0]})"
    version = getattr(natten, "__version__", "?")
    parsed = _version_tuple(version)
    if parsed is None or parsed < NATTEN_MIN_VERSION:
        return None, f"natten {version} is too old (needs >= 0.20, whose natten.na2d is the fused op)"
    if not callable(getattr(natten, "na2d", None)):
        return None, f"natten {version} has no callable natten.na2d"
    if not _natten_has_libnatten(natten):
        return None, (
            f"natten {version} was built without its CUDA library libnatten (natten.HAS_LIBNATTEN is not "
            "True): its fallback would materialise a dense L x L score matrix"
        )
    return natten, None


def unavailable(q: Tensor, rpb: Tensor | None = None) -> str | None:
    """Why the natten backend cannot run this call, or None when it can."""
    natten, why = natten_import()
    if natten is None:
        return why
    if q.device.type != "cuda":
        return f"tensors are on {q.device.type}, natten's fused kernels need CUDA"
    if rpb is not None:
        return "rpb is given and natten >= 0.20 has no relative position bias"
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"dtype {q.dtype} is not supported (float32, float16, bfloat16 only)"
    if q.shape[-1] % 8:
        return f"head dim {q.shape[-1]} is not a multiple of 8"
    return None


def na2d_natten(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_size: int,
    dilation: int = 1,
    rpb: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """``stylenat.ops.na2d`` on NATTEN's kernels (same contract); raises BackendUnavailable where they
    cannot run it (see ``unavailable``)."""
    scale = check_na_args(q, k, v, kernel_size, dilation, rpb, scale)
    reason = unavailable(q, rpb)
    if reason is not None:
        raise BackendUnavailable("natten", reason)
    natten, _ = natten_import()
    # natten wants [B, H, W, heads, D]; ours is [B, heads, H, W, D].
    q, k, v = (t.permute(0, 2, 3, 1, 4).contiguous() for t in (q, k, v))
    out = natten.na2d(q, k, v, kernel_size=kernel_size, dilation=dilation, scale=scale)
    return out.permute(0, 3, 1, 2, 4)
