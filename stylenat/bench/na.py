"""The neighborhood-attention op against its gather oracle (``scripts/benchmark.py na``): one JSON record per
implementation and pass, and the speed-ups between them."""

from __future__ import annotations

import statistics

import torch

from stylenat.perf import (
    error_text,
    gemm_split,
    max_rss_mb,
    peak_memory_mb,
    reset_peak_memory,
    time_call,
)


def na_head_groups(heads: int, res: int, dilation: str) -> list[tuple[slice, int]]:
    """(head slice, dilation) per na2d call: one call, or two for 'split' (half d=1, half d=res/8)."""
    if dilation == "split":
        half = heads // 2
        return [(slice(0, half), 1), (slice(half, heads), max(1, res // 8))]
    return [(slice(0, heads), int(dilation))]


DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def na_oracle_gb(s: dict) -> float:
    """The gather oracle's estimated peak (GB): it materialises k*k keys and values per token plus their
    gradients, measured ~3x one gathered [B, heads, H, W, k*k, D] tensor."""
    item = torch.tensor([], dtype=DTYPES[s["dtype"]]).element_size()
    return 3 * s["batch"] * s["heads"] * s["res"] ** 2 * s["kernel"] ** 2 * s["dim"] * item / 2**30


def _na_header(impl: str, pass_: str, s: dict) -> dict:
    """The fields that name an ``na`` measurement (shared by results and errors)."""
    return {
        "mode": "na",
        "impl": "na2d" if impl == "op" else "oracle_gather",
        "backend": s["backend"] if impl == "op" else "reference",
        "pass": pass_,
        "res": s["res"],
    }


def na_error_record(impl: str, pass_: str, s: dict, err: Exception) -> dict:
    return {
        **_na_header(impl, pass_, s),
        "dilation": s["dilation"],
        "device": s["device"],
        "error": error_text(err),
    }


def na_record(impl: str, pass_: str, s: dict) -> dict:
    """One na2d pass as a record: ``impl`` "op" (ours with ``s["backend"]``) or "oracle" (the naive
    gather), ``pass_`` "fwd" or "fwd+bwd"; ``s`` holds the shape, dilation ("split" or an int), rpb,
    dtype name, device, reps and threads (0: torch's default) of the ``na`` benchmark mode."""
    torch.manual_seed(0)
    if s["threads"]:
        torch.set_num_threads(s["threads"])
    device = torch.device(s["device"])
    figures = _na_figures(impl, pass_, s, device)
    shape = {k: s[k] for k in ("batch", "heads", "dim", "kernel", "dilation", "rpb", "dtype")}
    common = {"device": str(device), "threads": torch.get_num_threads(), "reps": s["reps"]}
    return {**_na_header(impl, pass_, s), **shape, **common, **figures}


def na_speedup_record(s: dict, median_ms: dict) -> dict:
    """The oracle's median over ours per pass, from ``{(impl, pass): median_ms}``."""
    speedups = {p: round(median_ms["oracle", p] / median_ms["op", p], 2) for p in ("fwd", "fwd+bwd")}
    return {
        "mode": "na",
        "res": s["res"],
        "dilation": s["dilation"],
        "speedup_vs_oracle": speedups["fwd+bwd"],
        "speedup_vs_oracle_fwd": speedups["fwd"],
        "speedup_vs_oracle_fwd_bwd": speedups["fwd+bwd"],
    }


def _na_figures(impl: str, pass_: str, s: dict, device: torch.device) -> dict:
    """Median / min ms, peak memory over the inputs and (CPU) the matrix-product split of one pass."""
    from stylenat.ops.na import na2d
    from stylenat.ops.na.reference import na2d_reference

    batch, res, dim, kernel, dtype = s["batch"], s["res"], s["dim"], s["kernel"], DTYPES[s["dtype"]]
    backward = pass_ == "fwd+bwd"
    groups = na_head_groups(s["heads"], res, s["dilation"])
    span = 2 * kernel - 1
    # One set of leaf tensors per head group (as the model's split feeds them), so neither impl pays
    # for slicing a shared tensor and accumulating its gradient.
    qkv = [
        [
            torch.randn(batch, sl.stop - sl.start, res, res, dim, device=device, dtype=dtype).requires_grad_(
                backward
            )
            for _ in range(3)
        ]
        for sl, _ in groups
    ]
    rpbs = [
        (0.02 * torch.randn(sl.stop - sl.start, span, span, device=device, dtype=dtype)).requires_grad_(
            backward
        )
        if s["rpb"]
        else None
        for sl, _ in groups
    ]
    if impl == "oracle":
        op = na2d_reference
    else:

        def op(q, k, v, kernel_size, dilation, rpb):
            return na2d(q, k, v, kernel_size, dilation, rpb=rpb, backend=s["backend"])

    grads = None

    def step():
        nonlocal grads
        outs = [op(q, k, v, kernel, d, bias) for (q, k, v), (_, d), bias in zip(qkv, groups, rpbs)]
        if backward:
            if grads is None:
                grads = [torch.randn_like(o) for o in outs]
            torch.autograd.backward(outs, grads)
            for t in [*(t for group in qkv for t in group), *rpbs]:
                if t is not None:
                    t.grad = None

    reset_peak_memory(device)
    cuda = device.type == "cuda"
    base = torch.cuda.memory_allocated(device) / 2**20 if cuda else max_rss_mb()
    with torch.set_grad_enabled(backward):
        times = time_call(step, device, s["reps"])
    figures = {
        "median_ms": round(statistics.median(times), 2),
        "min_ms": round(min(times), 2),
        "peak_mem_mb": round(peak_memory_mb(device) - base, 1),
        "peak_mem_kind": "cuda_max_allocated_minus_inputs"
        if cuda
        else "cpu_max_rss_increase_in_fresh_process",
    }
    if not cuda:
        with torch.set_grad_enabled(backward):
            gemm, share = gemm_split(step)
        figures.update(gemm_ms=round(gemm, 2), gemm_share=round(share, 3))
    return figures
