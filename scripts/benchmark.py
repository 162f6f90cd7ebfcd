"""Micro-benchmarks, one subcommand per mode; each measurement prints one JSON line.

    python scripts/benchmark.py na --res 64 --batch 4 --heads 8 --dim 32 --kernel 7 --dilation split

Modes: ``na`` (the neighborhood-attention op against the naive gather oracle), ``train-step`` (one
training step of the tiny and the 256 model: sec/kimg and peak memory), ``generator`` (sampling
images/s, FLOPs per image and the fraction of the CPU's FLOP bound; ``--compile`` adds torch.compile's
compile time and steady-state speed-up over eager), ``scaling`` (generator time, peak memory and FLOPs
per image as the output resolution grows at a fixed channel recipe, with the share of time in na2d),
``inception`` (Inception feature extraction img/s: the network alone, reference graph in fp32 and
channels_last and the fused fast path, against the pipelines from PNG files and from generated-like
tensors, with the ratios pipeline / network).
Add a mode by writing ``bench_<mode>(args)`` and registering its parser in ``build_parser``.

    python scripts/benchmark.py generator --model stylenat_256 --batch 4 --reps 5 --compile
    python scripts/benchmark.py scaling --resolutions 32 64 128 256 --batch 4
    python scripts/benchmark.py inception --n 64 --res 32 --batch 32 --net-batch 16
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
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stylenat.cli import tune_cpu_allocator  # noqa: E402
from stylenat.ops.na import na2d  # noqa: E402
from stylenat.ops.na_reference import na2d_reference  # noqa: E402

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


_allocator_tuned = False  # set by main(); the measuring children tune the same way


def emit(record: dict) -> None:
    print(json.dumps({**record, "malloc_tuned": _allocator_tuned}), flush=True)


# Matrix products: on the CPU their speed is the machine's, set by the BLAS library and shapes; the rest
# (gathers, softmax, elementwise work, Python) is what the code around them costs.
# Fused attention kernels (matrix products with the softmax between them) are counted with them.
GEMM_OPS = frozenset(
    f"aten.{name}.{overload}"
    for name in ("mm", "addmm", "bmm", "baddbmm", "addbmm")
    for overload in ("default", "out")
) | {"aten._scaled_dot_product_flash_attention_for_cpu.default"}


class _GemmTimer(TorchDispatchMode):
    """Wall time spent inside matrix-product ops (CPU: ops run synchronously, so timing each call works)."""

    def __init__(self):
        super().__init__()
        self.seconds = 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) not in GEMM_OPS:
            return func(*args, **(kwargs or {}))
        start = time.perf_counter()
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.seconds += time.perf_counter() - start


def gemm_split(fn, reps: int = 3) -> tuple[float, float]:
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


def error_text(err: Exception, limit: int = 500) -> str:
    return f"{type(err).__name__}: {err}"[:limit]


def measure_or_report(measure, on_error, *args) -> dict:
    """measure(*args), or on_error(*args, err) when it raises, so the other measurements still run."""
    try:
        return measure(*args)
    except Exception as err:  # noqa: BLE001 - e.g. a forced backend that cannot run: report, go on
        return on_error(*args, err)


def _child(measure, on_error, args, queue) -> None:
    tune_cpu_allocator()  # as the entry points do
    queue.put(measure_or_report(measure, on_error, *args))


def in_fresh_process(measure, on_error, *args) -> dict:
    """measure(*args) in a spawned process, so its max RSS is its own; on_error(*args, err) makes the
    record of a measurement that raised."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(measure, on_error, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


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
    groups = _na_groups(args)
    span = 2 * args.kernel - 1
    # One set of leaf tensors per head group (as the model's split feeds them), so neither impl pays
    # for slicing a shared tensor and accumulating its gradient.
    qkv = [
        [
            torch.randn(
                args.batch, sl.stop - sl.start, args.res, args.res, args.dim, device=device, dtype=dtype
            ).requires_grad_(backward)
            for _ in range(3)
        ]
        for sl, _ in groups
    ]
    rpbs = [
        (0.02 * torch.randn(sl.stop - sl.start, span, span, device=device, dtype=dtype)).requires_grad_(
            backward
        )
        if not args.no_rpb
        else None
        for sl, _ in groups
    ]
    if impl == "oracle":
        op = na2d_reference
    else:

        def op(q, k, v, kernel_size, dilation, rpb):
            return na2d(q, k, v, kernel_size, dilation, rpb=rpb, backend=args.backend)

    grads = None

    def step():
        nonlocal grads
        outs = [op(q, k, v, args.kernel, d, rpb) for (q, k, v), (_, d), rpb in zip(qkv, groups, rpbs)]
        if backward:
            if grads is None:
                grads = [torch.randn_like(o) for o in outs]
            torch.autograd.backward(outs, grads)
            for t in [*(t for group in qkv for t in group), *rpbs]:
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
    split = {}
    if device.type == "cpu":
        with torch.set_grad_enabled(backward):
            gemm, share = gemm_split(step)
        split = {"gemm_ms": round(gemm, 2), "gemm_share": round(share, 3)}
    return {
        **_na_header(args, impl, pass_),
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
        **split,
    }


def _na_header(args, impl: str, pass_: str) -> dict:
    """The fields that name an ``na`` measurement (shared by results and errors)."""
    return {
        "mode": "na",
        "impl": "na2d" if impl == "op" else "oracle_gather",
        "backend": args.backend if impl == "op" else "reference",
        "pass": pass_,
        "res": args.res,
    }


def _na_error(args, impl: str, pass_: str, err: Exception) -> dict:
    return {
        **_na_header(args, impl, pass_),
        "dilation": args.dilation,
        "device": args.device,
        "error": error_text(err),
    }


def _run_isolated(args, impl: str, pass_: str) -> dict:
    if torch.device(args.device).type == "cuda":
        return measure_or_report(_na_measure, _na_error, args, impl, pass_)
    return in_fresh_process(_na_measure, _na_error, args, impl, pass_)


def bench_na(args) -> None:
    """Our na2d against the gather oracle, forward and forward+backward."""
    # The oracle materialises k*k keys and values per token plus their gradients (measured peak ~3x one
    # gathered [B, heads, H, W, k*k, D] tensor); skip it when that would exceed --oracle-max-gb rather
    # than swamp a shared machine.
    item = torch.tensor([], dtype=DTYPES[args.dtype]).element_size()
    oracle_gb = 3 * args.batch * args.heads * args.res**2 * args.kernel**2 * args.dim * item / 2**30
    run_oracle = not args.no_oracle and oracle_gb <= args.oracle_max_gb
    if not args.no_oracle and not run_oracle:
        emit(
            {
                "mode": "na",
                "impl": "oracle_gather",
                "skipped": f"estimated {oracle_gb:.1f} GB > --oracle-max-gb",
            }
        )
    results = {}
    for pass_ in ("fwd", "fwd+bwd"):
        for impl in ("op", "oracle") if run_oracle else ("op",):
            record = _run_isolated(args, impl, pass_)
            results[impl, pass_] = record.get("median_ms")
            emit(record)
    if run_oracle and None not in results.values():
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


# ----------------------------------------------------------------------------------------------------
# mode: train-step
# ----------------------------------------------------------------------------------------------------

TRAIN_STEP_MODELS = {
    # name -> config overrides (the demo recipe for tiny, the paper recipe for 256)
    "tiny": ["dataset=demo"],
    "stylenat_256": ["dataset=ffhq256", "dataset.path=/unused"],
}


def _train_step_error(args, model: str, err: Exception) -> dict:
    return {"mode": "train-step", "model": model, "error": error_text(err)}


def _train_step_measure(args, model: str) -> dict:
    """One training step's parts (D + bCR, lazy R1, G) timed on random reals; peak memory of this process."""
    import tempfile

    from stylenat.training.config import compose_config
    from stylenat.distributed import DistEnv
    from stylenat.training.loop import Trainer, prepare_run

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    overrides = [
        *TRAIN_STEP_MODELS[model],
        f"run_dir={Path(tempfile.gettempdir()) / 'bench-train-step-unused'}",  # nothing is written
        f"train.batch={args.batch}",
        f"train.batch_per_gpu={args.batch}",
        f"train.amp={args.amp}",
        "logger.progress=false",
    ]
    cfg = compose_config(Path(__file__).resolve().parents[1] / "configs", overrides)
    rss_before = _max_rss_mb()
    env = DistEnv(rank=0, world_size=1, local_rank=device.index or 0, device=device)
    res = cfg.model.resolution
    norm = cfg.model.output_normalization
    generator = torch.Generator().manual_seed(0)

    def reals():
        while True:
            x = torch.rand(args.batch, 3, res, res, generator=generator) * 2 - 1
            if norm == "imagenet":
                mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
                std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
                x = ((x + 1) / 2 - mean) / std
            yield x

    trainer = Trainer(prepare_run(cfg, env, with_data=False), stream=reals())
    batch = [trainer.next_reals()]
    parts = {
        "d_main": lambda: trainer.d_step(batch),
        "r1": lambda: trainer.r1_step(batch),
        "g_main": trainer.g_step,
    }
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = {name: time_call(fn, device, args.reps, warmup=args.warmup) for name, fn in parts.items()}
    med = {name: statistics.median(t) / 1e3 for name, t in times.items()}
    r1_every = trainer.opts.r1_every
    step_s = med["d_main"] + med["g_main"] + (med["r1"] / r1_every if trainer.opts.r1_gamma > 0 else 0.0)
    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    else:
        peak, kind = _max_rss_mb(), "cpu_max_rss_process"
    return {
        "mode": "train-step",
        "model": model,
        "g_params_m": round(sum(p.numel() for p in trainer.G.parameters()) / 1e6, 3),
        "d_params_m": round(sum(p.numel() for p in trainer.D.parameters()) / 1e6, 3),
        "resolution": res,
        "batch": args.batch,
        "amp": args.amp,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "reps": args.reps,
        "d_step_s": round(med["d_main"], 4),
        "r1_step_s": round(med["r1"], 4),
        "g_step_s": round(med["g_main"], 4),
        "step_s_with_r1": round(med["d_main"] + med["r1"] + med["g_main"], 4),
        "step_s_amortized": round(step_s, 4),
        "sec_per_kimg": round(step_s / args.batch * 1000, 1),
        "peak_mem_mb": round(peak, 1),
        "peak_mem_kind": kind,
        "rss_before_build_mb": round(rss_before, 1) if device.type == "cpu" else None,
    }


def bench_train_step(args) -> None:
    """Training sec/kimg and peak memory per model (G step + D step with bCR + lazy R1 amortised)."""
    for model in args.models:
        if torch.device(args.device).type == "cuda":
            emit(_train_step_measure(args, model))
            continue
        emit(in_fresh_process(_train_step_measure, _train_step_error, args, model))


# ----------------------------------------------------------------------------------------------------
# mode: generator
# ----------------------------------------------------------------------------------------------------

# Bounds printed beside the generator figures: this machine's measured sgemm rate (see the Performance issue).
CPU_SGEMM_GFLOPS = 220.0


def _model_config(name: str) -> dict:
    """A configs/model entry (Hydra defaults resolved) as a plain dict."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "configs" / "model"), version_base=None):
        return OmegaConf.to_container(compose(config_name=name), resolve=True)


def bench_generator(args) -> None:
    """Sampling images/s of a freshly initialised generator (mapping + synthesis) and its FLOP-bound fraction;
    with --compile also torch.compile's first call (compile) time and its steady-state speed-up over eager,
    measured in the same process right after the eager figures."""
    from stylenat.metrics.throughput import generator_flops, measure_generator_throughput
    from stylenat.models.build import build_generator

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    G = build_generator(_model_config(args.model)).eval().requires_grad_(False).to(args.device)
    gflop = generator_flops(G, batch=1) / 1e9
    for batch in args.batch:
        settings = dict(
            batch=batch, warmup=args.warmup, reps=args.reps, dtype=args.dtype, tf32=not args.no_tf32
        )
        record = measure_generator_throughput(G, compile=False, **settings)
        record.update(model=args.model, gflop_per_img=round(gflop, 2))
        if torch.device(args.device).type == "cpu":
            bound = CPU_SGEMM_GFLOPS / gflop
            sgemm = measured_sgemm_gflops()
            z = torch.randn(batch, G.z_dim)
            with torch.no_grad():
                gemm, share = gemm_split(lambda z=z: G(z), reps=1)
            record.update(
                flop_bound_imgs_per_s=round(bound, 3),
                fraction_of_bound=round(record["imgs_per_s"] / bound, 3),
                sgemm_gflops_now=round(sgemm, 1),
                flop_bound_now_imgs_per_s=round(sgemm / gflop, 3),
                fraction_of_bound_now=round(record["imgs_per_s"] * gflop / sgemm, 3),
                gemm_s_per_batch=round(gemm / 1e3, 3),
                gemm_share=round(share, 3),
                imgs_per_s_if_only_gemm=round(batch * 1e3 / gemm, 4),
            )
        if args.compile:
            record.update(_compiled_figures(G, settings, record))
        emit(record)


def _compiled_figures(G, settings: dict, eager: dict) -> dict:
    """torch.compile(G)'s first call and steady state next to the eager record; a failure is reported
    (compile_error) rather than raised."""
    from stylenat.metrics.throughput import measure_generator_throughput

    # Two untimed calls at least: dynamo may recompile on the second call (guards on the first call's state).
    warmup = max(2, settings["warmup"])
    try:
        compiled = measure_generator_throughput(G, compile=True, **{**settings, "warmup": warmup})
    except Exception as err:  # noqa: BLE001 - inductor/C++ toolchain failures vary: report them
        return {"compile_error": error_text(err, 1000)}
    finally:
        torch._dynamo.reset()
    batch = settings["batch"]
    return {
        "compile_first_call_s": compiled["first_call_s"],
        "compile_s": round(compiled["first_call_s"] - eager["median_ms"] / 1e3, 3),
        "compiled_warmup": warmup,
        "compiled_median_ms": compiled["median_ms"],
        "compiled_imgs_per_s": round(batch * 1e3 / compiled["median_ms"], 4),
        "compile_speedup": round(eager["median_ms"] / compiled["median_ms"], 3),  # steady state, medians
    }


# ----------------------------------------------------------------------------------------------------
# mode: scaling
# ----------------------------------------------------------------------------------------------------


def _config_at(model: str, resolution: int) -> tuple[dict, str]:
    """The model config with its output resolution changed and every stage setting kept: channels from
    the config (its table, or its explicit list extended with its last entry), kernels extended with
    their last entry, dilations of new stages [1, size / 8] (the paper's Hydra split)."""
    from stylenat.models.generator import GeneratorConfig

    cfg = _model_config(model)
    n_stages = resolution.bit_length() - 2  # 4x4 .. resolution
    paper = GeneratorConfig()
    note = f"configs/model/{model}.yaml with resolution={resolution}"
    if cfg.get("channels") is not None:
        channels = list(cfg["channels"])
        cfg["channels"] = (channels + [channels[-1]] * n_stages)[:n_stages]
        note += f", channels {cfg['channels']}"
    else:
        note += f" (channels from its table, cm={cfg.get('channel_multiplier', 2)})"
    kernels, dilations = list(cfg["kernels"]), list(cfg["dilations"])
    kernels += [kernels[-1]] * (n_stages - len(kernels))
    for s in range(len(dilations), n_stages):
        size = 4 * 2**s
        dilations.append(paper.dilations[s] if s < len(paper.dilations) else [1, size // 8])
    cfg.update(resolution=resolution, kernels=kernels[:n_stages], dilations=dilations[:n_stages])
    return cfg, note


def _scaling_measure(args, resolution: int) -> dict:
    from stylenat.metrics.throughput import generator_flops
    from stylenat.models import attention
    from stylenat.models.build import build_generator

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg, note = _config_at(args.model, resolution)
    torch.manual_seed(0)
    G = build_generator(cfg).eval().requires_grad_(False).to(device)
    z = torch.randn(args.batch, G.z_dim, device=device)

    def call():
        with torch.inference_mode():
            G(z)

    # Peak memory of the calls over the built model (first call's plans and caches included).
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
        mem_kind = "cuda_max_allocated_minus_model"
    else:
        base = _max_rss_mb()
        mem_kind = (
            "cpu_max_rss_increase_over_model_in_fresh_process" if args.isolate else "cpu_max_rss_increase"
        )
    times = time_call(call, device, args.reps, warmup=max(1, args.warmup))
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20 - base
    else:
        peak = _max_rss_mb() - base
    gflop = generator_flops(G, batch=1) / 1e9

    # Share of time in na2d: one extra call with the layer's na2d timed (synchronised on accelerators).
    na_time, original = [0.0], attention.na2d

    def timed_na2d(*a, **kw):
        _sync(device)
        start = time.perf_counter()
        out = original(*a, **kw)
        _sync(device)
        na_time[0] += time.perf_counter() - start
        return out

    attention.na2d = timed_na2d
    try:
        _sync(device)
        start = time.perf_counter()
        call()
        _sync(device)
        total = time.perf_counter() - start
    finally:
        attention.na2d = original
    med = statistics.median(times)
    return {
        "mode": "scaling",
        "model": args.model,
        "config": note,
        "resolution": resolution,
        "batch": args.batch,
        "reps": args.reps,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "g_params_m": round(sum(p.numel() for p in G.parameters()) / 1e6, 3),
        "ms_per_img": round(med / args.batch, 2),
        "imgs_per_s": round(args.batch * 1e3 / med, 4),
        "median_ms_per_batch": round(med, 2),
        "peak_mem_mb": round(peak, 1),
        "peak_mem_mb_per_img": round(peak / args.batch, 1),
        "peak_mem_kind": mem_kind,
        "gflop_per_img": round(gflop, 2),
        "na2d_share": round(na_time[0] / total, 3),
    }


def _scaling_error(args, resolution, err) -> dict:
    return {"mode": "scaling", "resolution": resolution, "error": error_text(err)}


def bench_scaling(args) -> None:
    """Generator cost per image against the output resolution, one line per resolution, then growth ratios."""
    device = torch.device(args.device)
    resolutions = list(args.resolutions)
    if args.resolutions_default and device.type == "cuda":
        resolutions.append(1024)
    args.isolate = device.type == "cpu" and not args.in_process
    records = []
    for resolution in resolutions:
        if args.isolate:  # a fresh process per resolution, so the max RSS is its own
            record = in_fresh_process(_scaling_measure, _scaling_error, args, resolution)
        else:
            record = measure_or_report(_scaling_measure, _scaling_error, args, resolution)
        records.append(record)
        emit(record)
    ok = [r for r in records if "error" not in r]
    growth = []
    for a, b in zip(ok, ok[1:]):
        growth.append(
            {
                "from": a["resolution"],
                "to": b["resolution"],
                "pixels": round((b["resolution"] / a["resolution"]) ** 2, 2),
                **{
                    key: round(b[key] / a[key], 3) if a[key] else None
                    for key in ("ms_per_img", "peak_mem_mb", "gflop_per_img")
                },
            }
        )
    emit(
        {
            "mode": "scaling",
            "summary": "growth between consecutive resolutions",
            "model": args.model,
            "growth": growth,
        }
    )


# ----------------------------------------------------------------------------------------------------
# mode: inception
# ----------------------------------------------------------------------------------------------------


def _inception_extractor(args):
    from stylenat.metrics.inception import build_inception, load_inception

    if args.random_weights:
        return build_inception(seed=0, device=args.device)
    return load_inception(args.weights, device=args.device)


def _write_pngs(folder: Path, n: int, resolution: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.png")


def _inception_measure(args) -> dict:
    """Network alone (reference graph fp32 / channels_last, fused fast path), then the pipelines from PNG
    files and from generated-like tensors; the figures are measured round-robin, rep by rep, so the load
    of a shared machine falls on all of them alike. Returns {"records": [...]}."""
    import tempfile

    from stylenat.metrics.images import ImageFiles
    from stylenat.metrics.protocols import get_protocol
    from stylenat.metrics.statistics import compute_statistics, extract_features

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = _inception_extractor(args)
    proto = get_protocol(args.protocol)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.net_batch, 3, 299, 299, generator=gen).mul_(2).sub_(1).to(device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    uint8 = torch.randint(0, 256, (args.n, 3, args.res, args.res), dtype=torch.uint8, generator=gen)
    floats = torch.rand(args.n, 3, args.res, args.res, generator=gen).mul_(2).sub_(1)

    def network(fn, inp):
        def call():
            with torch.inference_mode():
                fn(inp)

        return call

    def tensors(batches, generated: bool):
        def call():
            for b in batches:
                b = proto.from_generator(b) if generated else b
                extract_features(model, b, proto.name, device)

        return call

    with tempfile.TemporaryDirectory(prefix="bench-inception-") as tmp:
        folder = Path(tmp)
        _write_pngs(folder, args.n, args.res)
        files = ImageFiles(folder)

        def from_files():
            compute_statistics(files.batches(args.batch), proto.name, model, device=device, progress=False)

        figures = {
            ("network", "fp32"): (network(model.features, x), args.net_batch),
            ("network", "channels_last"): (network(model.features, x_cl), args.net_batch),
            ("network", "fused"): (network(model.fast_features, x), args.net_batch),
            ("pipeline_files", "png"): (from_files, args.n),
            ("pipeline_tensors", "uint8"): (tensors(uint8.split(args.batch), False), args.n),
            ("pipeline_tensors", "float"): (tensors(floats.split(args.batch), True), args.n),
        }
        for fn, _ in figures.values():  # warm-up: first-call allocations, oneDNN weight reorders
            fn()
        seconds = {key: [] for key in figures}
        for _ in range(args.reps):
            for key, (fn, _) in figures.items():
                seconds[key].append(time_call(fn, device, reps=1, warmup=0)[0] / 1e3)
    rate = {key: figures[key][1] / statistics.median(s) for key, s in seconds.items()}
    common = {
        "mode": "inception",
        "protocol": proto.name,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "reps": args.reps,
        "weights": model.weights_source,
    }
    records = []
    for (figure, variant), value in rate.items():
        record = {**common, "figure": figure, "variant": variant, "imgs_per_s": round(value, 3)}
        if figure == "network":
            record.update(batch=args.net_batch, input=f"[{args.net_batch}, 3, 299, 299] float32")
        else:
            record.update(
                n=args.n,
                resolution=args.res,
                batch=args.batch,
                ratio_to_network=round(value / rate["network", "fused"], 3),
                ratio_to_network_fp32=round(value / rate["network", "fp32"], 3),
            )
        records.append(record)
    return {"records": records}


def _inception_error(args, err: Exception) -> dict:
    return {"records": [{"mode": "inception", "protocol": args.protocol, "error": error_text(err)}]}


def bench_inception(args) -> None:
    """Inception feature extraction img/s: the network alone and the pipelines around it (PNG files on
    disk, generated-like uint8 / float tensors upsampled to 299 by the protocol), with their ratios."""
    if torch.device(args.device).type == "cuda" or args.in_process:
        result = measure_or_report(_inception_measure, _inception_error, args)
    else:
        result = in_fresh_process(_inception_measure, _inception_error, args)
    for record in result["records"]:
        emit(record)


def _dilation_arg(value: str) -> str:
    if value != "split" and not (value.isdigit() and int(value) >= 1):
        raise argparse.ArgumentTypeError(f"--dilation must be a positive integer or 'split', got {value!r}")
    return value


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
    na.add_argument("--backend", choices=("auto", "torch", "natten", "flex"), default="auto")
    na.add_argument("--no-rpb", action="store_true", help="no relative position bias (lets natten run)")
    na.add_argument("--no-oracle", action="store_true")
    na.add_argument("--oracle-max-gb", type=float, default=6.0)
    na.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    na.set_defaults(func=bench_na)

    ts = modes.add_parser(
        "train-step", help="one training step (G + D + bCR + lazy R1): sec/kimg, peak memory"
    )
    ts.add_argument(
        "--models", nargs="+", choices=sorted(TRAIN_STEP_MODELS), default=["tiny", "stylenat_256"]
    )
    ts.add_argument("--batch", type=int, default=2)
    ts.add_argument("--reps", type=int, default=3)
    ts.add_argument("--warmup", type=int, default=1)
    ts.add_argument("--device", default="cpu")
    ts.add_argument("--amp", choices=("false", "bf16"), default="false")
    ts.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ts.set_defaults(func=bench_train_step)

    gen = modes.add_parser(
        "generator", help="G(z) sampling images/s (reference protocol on GPU: batch 1, 10+500)"
    )
    gen.add_argument("--model", default="stylenat_256", help="a configs/model name")
    gen.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    gen.add_argument("--reps", type=int, default=5, help="timed calls (the reference protocol uses 500)")
    gen.add_argument("--warmup", type=int, default=1, help="untimed calls (the reference protocol uses 10)")
    gen.add_argument("--device", default="cpu")
    gen.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    gen.add_argument("--no-tf32", action="store_true")
    gen.add_argument(
        "--compile",
        action="store_true",
        help="also time torch.compile(G): first-call (compile) time and steady-state speed-up over eager",
    )
    gen.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    gen.set_defaults(func=bench_generator)

    sc = modes.add_parser("scaling", help="generator ms, peak memory and GFLOP per image against resolution")
    sc.add_argument(
        "--model", default="stylenat_256", help="a configs/model name; its resolution is replaced"
    )
    sc.add_argument(
        "--resolutions",
        type=int,
        nargs="+",
        default=None,
        help="output sizes (default 32 64 128 256, plus 1024 on CUDA)",
    )
    sc.add_argument("--batch", type=int, default=4)
    sc.add_argument("--reps", type=int, default=3)
    sc.add_argument("--warmup", type=int, default=1, help="untimed calls (at least one)")
    sc.add_argument("--device", default="cpu")
    sc.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    sc.add_argument(
        "--in-process",
        action="store_true",
        help="CPU: no fresh process per resolution (max RSS then accumulates)",
    )
    sc.set_defaults(func=bench_scaling)

    inc = modes.add_parser(
        "inception", help="Inception feature extraction img/s: network alone vs the pipelines around it"
    )
    inc.add_argument("--n", type=_positive_int, default=64, help="images in each pipeline figure")
    inc.add_argument("--res", type=_positive_int, default=32, help="resolution of the images (upsampled)")
    inc.add_argument("--batch", type=_positive_int, default=32, help="pipeline batch (compute_ref_stats')")
    inc.add_argument("--net-batch", type=_positive_int, default=16, help="batch of the network-alone figures")
    inc.add_argument("--protocol", choices=("stylegan", "pytorch_fid"), default="stylegan")
    inc.add_argument("--reps", type=_positive_int, default=3, help="timed rounds (median reported)")
    inc.add_argument("--device", default="cpu")
    inc.add_argument("--weights", default=None, help="Inception weights file (default: the usual search)")
    inc.add_argument("--random-weights", action="store_true", help="seeded random weights (same speed)")
    inc.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    inc.add_argument("--in-process", action="store_true", help="CPU: measure in this process")
    inc.set_defaults(func=bench_inception)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    global _allocator_tuned
    _allocator_tuned = tune_cpu_allocator()  # as the entry points do (STYLENAT_MALLOC_TUNING=0: glibc's)
    if args.mode == "scaling":
        args.resolutions_default = args.resolutions is None
        if args.resolutions is None:
            args.resolutions = [32, 64, 128, 256]
        bad = [r for r in args.resolutions if r < 8 or r & (r - 1)]
        if bad:
            build_parser().error(f"--resolutions must be powers of two >= 8, got {bad}")
    args.func(args)


if __name__ == "__main__":
    main()
