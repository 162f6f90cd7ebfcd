"""Measuring helpers shared by every layer and by :mod:`stylenat.bench` (what ``scripts/benchmark.py`` sits on):
timers, peak memory, FLOP counting, the time spent in matrix products and a fresh-process runner.

At the bottom of the package (torch, the standard library and ``ops`` only), so every layer may time
itself the same way. CUDA timings synchronise the device; CPU memory is the process's max RSS, which only grows, hence
the fresh-process runner for figures that must be a measurement's own.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
from collections.abc import Callable

import torch
from torch._ops import HigherOrderOperator
from torch.utils._python_dispatch import TorchDispatchMode

# ----------------------------------------------------------------------------------------------------------
# Timers


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on the CPU), so a wall-clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 1) -> list[float]:
    """Wall-clock milliseconds of ``reps`` calls after ``warmup`` untimed ones (synchronised per call)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def call_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of one call: CUDA events around it on a GPU (device time, not launch time), else
    ``perf_counter``."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


# ----------------------------------------------------------------------------------------------------------
# Peak memory


def max_rss_mb() -> float:
    """This process's peak resident set size in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_memory(device: torch.device) -> None:
    """Start a new CUDA peak; the CPU's max RSS cannot be reset (measure in a fresh process instead)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated since the last reset, or the process's max RSS on the CPU, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return max_rss_mb()


def peak_memory_kind(device: torch.device) -> str:
    """What :func:`peak_memory_mb` measures on ``device``, for records."""
    return "cuda_max_allocated" if device.type == "cuda" else "process_max_rss"


# ----------------------------------------------------------------------------------------------------------
# FLOPs and matrix products


def _cpu_fused_attention_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs of ``fn()`` as torch's FlopCounterMode counts them (matmuls, convolutions, attention), the
    CPU's fused attention kernel included (torch's counter has no formula for it)."""
    from torch.utils.flop_counter import FlopCounterMode

    fused_cpu = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_fused_attention_flops}
    with FlopCounterMode(display=False, custom_mapping=fused_cpu) as counter:
        fn()
    return float(counter.get_total_flops())


# Matrix products: on the CPU their speed is the machine's, set by the BLAS library and shapes; the rest
# (gathers, softmax, elementwise work, Python) is what the code around them costs.
# Fused attention kernels (matrix products with the softmax between them) are counted with them, the
# flex_attention higher-order op (``STYLENAT_NA_BACKEND=flex``) too.
GEMM_OPS = frozenset(
    f"aten.{name}.{overload}"
    for name in ("mm", "addmm", "bmm", "baddbmm", "addbmm")
    for overload in ("default", "out")
) | {"aten._scaled_dot_product_flash_attention_for_cpu.default", "flex_attention"}


def _op_name(func) -> str:
    return func.name() if isinstance(func, HigherOrderOperator) else str(func)


class _GemmTimer(TorchDispatchMode):
    """Wall time spent inside matrix-product ops (CPU: ops run synchronously, so timing each call works).
    Higher-order ops (flex_attention) pass through it like any op: without this, torch refuses to run them
    under the mode."""

    supports_higher_order_operators = True

    def __init__(self):
        super().__init__()
        self.seconds = 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if _op_name(func) not in GEMM_OPS:
            return func(*args, **(kwargs or {}))
        start = time.perf_counter()
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.seconds += time.perf_counter() - start


def gemm_split(fn: Callable[[], object], reps: int = 3) -> tuple[float, float]:
    """(ms inside matrix products, their share of the call) for the median of reps calls of fn (CPU
    only: it times each product as it runs). The share is a lower bound: the timer adds a little
    Python per op to the rest of the call, never to the products."""
    gemm, total = [], []
    for _ in range(reps):
        timer = _GemmTimer()
        start = time.perf_counter()
        with timer:
            fn()
        total.append(time.perf_counter() - start)
        gemm.append(timer.seconds)
    middle = sorted(range(reps), key=lambda i: total[i])[reps // 2]
    return gemm[middle] * 1e3, gemm[middle] / total[middle]


def measured_sgemm_gflops(size: int = 2048, reps: int = 5) -> float:
    """This machine's float32 matrix-product rate now (a size^3 product, best of reps): the CPU's
    practical FLOP ceiling, which on shared hosts moves with their load."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    times = []
    for _ in range(reps + 1):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times[1:]) / 1e9


# ----------------------------------------------------------------------------------------------------------
# Running a measurement: report its failure, or run it in a fresh process


# Matrix products whose FLOPs torch.profiler counts in forward and backward alike (a convolution's are counted
# for its forward only, so convolutions are not among them).
PRODUCT_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def top_ops(fn: Callable[[], object], reps: int, limit: int = 12) -> dict:
    """Where ``reps`` calls of ``fn`` spend their time, by torch.profiler's CPU op events: the ``limit`` ops
    with the most self time, each with its self ms and calls per call of fn and its share of all ops'
    self time (the profiler's own overhead inflates the many small ops a little); and the matrix products
    (``PRODUCT_OPS``) apart from the rest: their ms, GFLOP and rate, against this machine's sgemm rate
    measured right after. That split says how far fusing the other ops could take ``fn``: not below the
    products' own time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for _ in range(reps):
            fn()
    events = list(prof.key_averages())
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:limit]
    products = [e for e in events if e.key in PRODUCT_OPS]
    product_us = sum(e.self_cpu_time_total for e in products)
    product_flop = sum(e.flops for e in products)
    return {
        "self_ms_per_call": round(total / 1e3 / reps, 1),
        "ops": [
            {
                "op": e.key,
                "self_ms": round(e.self_cpu_time_total / 1e3 / reps, 2),
                "calls": round(e.count / reps, 1),
                "share": round(e.self_cpu_time_total / total, 3),
            }
            for e in top
        ],
        "products": {
            "self_ms": round(product_us / 1e3 / reps, 1),
            "gflop": round(product_flop / 1e9 / reps, 3),
            "gflop_per_s": round(product_flop / 1e3 / product_us, 1) if product_us else None,
            "share": round(product_us / total, 3) if total else None,
        },
        "other_self_ms": round((total - product_us) / 1e3 / reps, 1),
        "sgemm_gflop_per_s": round(measured_sgemm_gflops(), 1),
    }


def error_text(err: Exception, limit: int = 500) -> str:
    return f"{type(err).__name__}: {err}"[:limit]


def measure_or_report(measure, on_error, *args) -> dict:
    """measure(*args), or on_error(*args, err) when it raises, so the other measurements still run."""
    try:
        return measure(*args)
    except Exception as err:  # noqa: BLE001 - e.g. a forced backend that cannot run: report, go on
        return on_error(*args, err)


def _child(setup, measure, on_error, args, queue) -> None:
    if setup is not None:
        setup()
    queue.put(measure_or_report(measure, on_error, *args))


def in_fresh_process(measure, on_error, *args, setup: Callable[[], object] | None = None) -> dict:
    """measure(*args) in a spawned process, so its max RSS is its own; on_error(*args, err) makes the
    record of a measurement that raised. ``setup()`` runs first in the child (e.g. the entry points'
    allocator tuning); every callable must be importable by name (spawn pickles references)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(setup, measure, on_error, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result
