"""Micro-benchmarks, one subcommand per mode; each measurement prints one JSON line.

    python scripts/benchmark.py na --res 64 --batch 4 --heads 8 --dim 32 --kernel 7 --dilation split

Modes: ``na`` (the neighborhood-attention op against the naive gather oracle). Add a mode by writing
``bench_<mode>(args)`` and registering its parser in ``build_parser``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stylenat.ops.na import na2d  # noqa: E402
from stylenat.ops.na_reference import na2d_reference  # noqa: E402

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device: torch.device, reps: int, warmup: int = 1) -> list[float]:
    """Wall-clock milliseconds of ``reps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# ----------------------------------------------------------------------------------------------------
# mode: na
# ----------------------------------------------------------------------------------------------------


def _na_groups(args) -> list[tuple[slice, int]]:
    """(head slice, dilation) per na2d call: one call, or two for 'split' (half d=1, half d=res/8)."""
    if args.dilation == "split":
        half = args.heads // 2
        return [(slice(0, half), 1), (slice(half, args.heads), max(1, args.res // 8))]
    return [(slice(0, args.heads), int(args.dilation))]


def _na_measure(args, impl: str, pass_: str) -> dict:
    """One (impl, pass) measurement; on the CPU it runs in a fresh process so max RSS is its own."""
    torch.manual_seed(0)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    backward = pass_ == "fwd+bwd"
    shape = (args.batch, args.heads, args.res, args.res, args.dim)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=backward) for _ in range(3))
    groups = _na_groups(args)
    span = 2 * args.kernel - 1
    rpbs = [
        (0.02 * torch.randn(sl.stop - sl.start, span, span, device=device, dtype=dtype)).requires_grad_(backward)
        if not args.no_rpb
        else None
        for sl, _ in groups
    ]
    if impl == "oracle":
        op = na2d_reference
    else:
        def op(q, k, v, kernel_size, dilation, rpb):
            return na2d(q, k, v, kernel_size, dilation, rpb=rpb, backend=args.backend)

    def step():
        outs = [op(q[:, sl], k[:, sl], v[:, sl], args.kernel, d, rpb) for (sl, d), rpb in zip(groups, rpbs)]
        if backward:
            torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
            for t in [q, k, v, *rpbs]:
                if t is not None:
                    t.grad = None

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        mem_kind = "cuda_max_allocated_minus_inputs"
    else:
        base = _max_rss_mb()
        mem_kind = "cpu_max_rss_increase_in_fresh_process"
    with torch.set_grad_enabled(backward):
        times = time_call(step, device, args.reps)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        peak = _max_rss_mb() - base
    return {
        "mode": "na",
        "impl": "na2d" if impl == "op" else "oracle_gather",
        "backend": args.backend if impl == "op" else "reference",
        "pass": pass_,
        "res": args.res,
        "batch": args.batch,
        "heads": args.heads,
        "dim": args.dim,
        "kernel": args.kernel,
        "dilation": args.dilation,
        "rpb": not args.no_rpb,
        "dtype": args.dtype,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "reps": args.reps,
        "median_ms": round(statistics.median(times), 2),
        "min_ms": round(min(times), 2),
        "peak_mem_mb": round(peak, 1),
        "peak_mem_kind": mem_kind,
    }


def _na_child(args, impl, pass_, queue) -> None:
    queue.put(_na_measure(args, impl, pass_))


def _run_isolated(args, impl: str, pass_: str) -> dict:
    if torch.device(args.device).type == "cuda":
        return _na_measure(args, impl, pass_)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_na_child, args=(args, impl, pass_, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def bench_na(args) -> None:
    """Our na2d against the gather oracle, forward and forward+backward."""
    # The oracle materialises k*k keys and values per token (plus their gradients); skip it when that
    # alone would exceed --oracle-max-gb rather than swamp a shared machine.
    item = torch.tensor([], dtype=DTYPES[args.dtype]).element_size()
    oracle_gb = 6 * args.batch * args.heads * args.res**2 * args.kernel**2 * args.dim * item / 2**30
    run_oracle = not args.no_oracle and oracle_gb <= args.oracle_max_gb
    if not args.no_oracle and not run_oracle:
        emit({"mode": "na", "impl": "oracle_gather", "skipped": f"estimated {oracle_gb:.1f} GB > --oracle-max-gb"})
    results = {}
    for pass_ in ("fwd", "fwd+bwd"):
        for impl in ("op", "oracle") if run_oracle else ("op",):
            record = _run_isolated(args, impl, pass_)
            results[impl, pass_] = record["median_ms"]
            emit(record)
    if run_oracle:
        speedups = {p: round(results["oracle", p] / results["op", p], 2) for p in ("fwd", "fwd+bwd")}
        emit(
            {
                "mode": "na",
                "res": args.res,
                "dilation": args.dilation,
                "speedup_vs_oracle": speedups["fwd+bwd"],
                "speedup_vs_oracle_fwd": speedups["fwd"],
                "speedup_vs_oracle_fwd_bwd": speedups["fwd+bwd"],
            }
        )


def _dilation_arg(value: str) -> str:
    if value != "split" and not (value.isdigit() and int(value) >= 1):
        raise argparse.ArgumentTypeError(f"--dilation must be a positive integer or 'split', got {value!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_subparsers(dest="mode", required=True)

    na = modes.add_parser("na", help="neighborhood attention op vs the naive gather oracle")
    na.add_argument("--res", type=int, default=64)
    na.add_argument("--batch", type=int, default=4)
    na.add_argument("--heads", type=int, default=8)
    na.add_argument("--dim", type=int, default=32)
    na.add_argument("--kernel", type=int, default=7)
    na.add_argument("--dilation", type=_dilation_arg, default="split", help="int or 'split'")
    na.add_argument("--reps", type=int, default=5)
    na.add_argument("--device", default="cpu")
    na.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    na.add_argument("--backend", choices=("auto", "torch", "natten"), default="auto")
    na.add_argument("--no-rpb", action="store_true", help="no relative position bias (lets natten run)")
    na.add_argument("--no-oracle", action="store_true")
    na.add_argument("--oracle-max-gb", type=float, default=6.0)
    na.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    na.set_defaults(func=bench_na)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
