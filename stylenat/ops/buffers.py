"""The CPU kernels' shared scratch: the buffer pool, the chunk budget and the weights cast once.

The generator's fused CPU inference path (``stylenat.models.fused``), the torch backend of neighborhood
attention and its tiling all draw on these: one pool of named scratch buffers per thread on the CPU (kept
between calls), one budget for the cache-sized chunks of their loops, and reduced-precision copies of
weights cast once and remade when the weight changes.
"""

from __future__ import annotations

import math
import threading
import weakref

import torch
from torch import Tensor

# Elements per chunk of a chunked loop on the CPU: a chunk's product stays in the L2/L3 cache instead of
# streaming full-map temporaries through memory, and is still large enough for an efficient matrix product
# (2 threads: ~1.3x the throughput of one full-map projection at 128 or 256 channels).
CPU_CHUNK_ELEMS = 1 << 20


# ----------------------------------------------------------------------------------------------------
# Buffer pool
# ----------------------------------------------------------------------------------------------------


class BufferPool:
    """Named scratch buffers, grown on demand and reused: one flat tensor per (name, dtype)."""

    def __init__(self):
        self._buffers: dict[tuple[str, torch.dtype], Tensor] = {}

    def get(self, name: str, shape, like: Tensor) -> Tensor:
        """An uninitialised ``shape`` view of buffer ``name`` (like's dtype and device)."""
        numel = math.prod(shape)
        key = (name, like.dtype)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            self._buffers.pop(key, None)  # free the old one first
            # A normal tensor even when first made under inference_mode: the buffers outlive the call, and
            # an inference tensor could not be written by a later call outside inference_mode.
            with torch.inference_mode(False):
                buf = self._buffers[key] = like.new_empty(numel)
        return buf[:numel].view(shape)


_local = threading.local()


def pool_for(like: Tensor) -> BufferPool:
    """The pool for the temporaries of one call on like's device. On the CPU this thread's pool, kept
    between calls: a fresh multi-MB tensor costs a page fault per 4 kB on every call (the C allocator hands
    large blocks back to the OS), ~5% of a 256x256 forward. Elsewhere (caching allocators) a new pool, so
    reuse lasts one call."""
    if like.device.type != "cpu":
        return BufferPool()
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = BufferPool()
    return pool


def buffer(name: str, shape, like: Tensor) -> Tensor:
    """An uninitialised tensor for a temporary that dies inside one layer call: from this thread's pool
    on the CPU, a plain new tensor elsewhere."""
    if like.device.type != "cpu":
        return like.new_empty(shape)
    return pool_for(like).get(name, shape, like)


def release_buffers() -> None:
    """Free this thread's CPU buffers (they are kept between calls for speed)."""
    _local.__dict__.pop("pool", None)


# ----------------------------------------------------------------------------------------------------
# Weights cast once
# ----------------------------------------------------------------------------------------------------

# (id(param), dtype) -> (weak reference to param, its stamp when cast, the cast copy)
_casts: dict[tuple[int, torch.dtype], tuple] = {}


def _stamp(param: Tensor) -> tuple:
    """What changes when a parameter's values may have: its in-place version counter (load_state_dict's
    copy_, an optimizer step), its storage (``.data =``, a move) and device."""
    try:
        version = param._version
    except RuntimeError:  # an inference tensor keeps no version counter (only inference_mode writes it)
        version = -1
    return version, param.data_ptr(), param.device


def cast_weight(param: Tensor, dtype: torch.dtype) -> Tensor:
    """``param`` in ``dtype``: cast on first use and cached until the parameter changes (see _stamp), so
    a bf16 forward pays no per-call weight conversion."""
    if param.dtype == dtype:
        return param
    key = (id(param), dtype)
    entry = _casts.get(key)
    stamp = _stamp(param)
    if entry is not None and entry[0]() is param and entry[1] == stamp:
        return entry[2]
    if entry is None or entry[0]() is not param:
        weakref.finalize(param, _casts.pop, key, None)  # drop the copy with the parameter
    with torch.inference_mode(False), torch.no_grad():  # a normal tensor: it outlives inference_mode
        cast = param.detach().to(dtype).contiguous()
    _casts[key] = (weakref.ref(param), stamp, cast)
    return cast


# ----------------------------------------------------------------------------------------------------
# Chunks
# ----------------------------------------------------------------------------------------------------


def row_chunks(rows: int, width: int, budget: int | None = None) -> list[slice]:
    """Slices of ``rows`` rows, each about ``budget`` (default CPU_CHUNK_ELEMS) elements of ``width``
    columns (at least 64 rows)."""
    step = max(64, (CPU_CHUNK_ELEMS if budget is None else budget) // max(width, 1))
    return [slice(r, min(r + step, rows)) for r in range(0, rows, step)]


def sample_chunks(batch: int, rows: int, width: int, budget: int | None = None):
    """(samples, rows) slice pairs covering a [batch, rows, width] map in chunks of about ``budget``
    (default CPU_CHUNK_ELEMS) elements that never split a sample unless it is larger than a chunk: whole
    samples together for small maps (one larger matrix product instead of one per sample), else row
    chunks of one sample. The [samples, rows] block of a contiguous map is then a contiguous run of rows."""
    step = max(64, (CPU_CHUNK_ELEMS if budget is None else budget) // max(width, 1))
    if rows >= step:
        return [(slice(b, b + 1), r) for b in range(batch) for r in row_chunks(rows, width, budget)]
    per = max(1, step // rows)
    return [(slice(b, min(b + per, batch)), slice(0, rows)) for b in range(0, batch, per)]
