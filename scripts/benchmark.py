"""Micro-benchmarks, one subcommand per mode; each measurement prints one JSON line.

    python scripts/benchmark.py na --res 64 --batch 4 --heads 8 --dim 32 --kernel 7 --dilation split

Modes: ``na`` (the neighborhood-attention op against the naive gather oracle), ``train-step`` (one
training step of the tiny and the 256 model: sec/kimg and peak memory), ``generator`` (sampling
images/s, FLOPs per image and the fraction of the CPU's FLOP bound; ``--compile`` adds torch.compile's
compile time and steady-state speed-up over eager), ``scaling`` (generator time, peak memory and FLOPs
per image as the output resolution grows at a fixed channel recipe, with the share of time in na2d),
``inception`` (Inception feature extraction img/s: the network alone, reference graph in fp32 and
channels_last and the fused fast path, against the pipelines from PNG files and from generated-like
tensors, with the ratios pipeline / network), ``viewer`` (the browser viewer's server time per image and per
attention click, ``stylenat.viewer.bench``).
Add a mode by writing ``bench_<mode>(args)`` and registering its parser in ``build_parser``. The
measuring itself is the library's: timers, memory, FLOPs and the fresh-process runner in
``stylenat.perf``, the benchmark records and figures in ``stylenat.bench`` (``na``, ``generator``, ``inception``).

    OMP_NUM_THREADS=2 python scripts/benchmark.py generator --model stylenat_256 --batch 4 --dtype fp32 bf16
    python scripts/benchmark.py scaling --resolutions 32 64 128 256 --batch 4
    python scripts/benchmark.py inception --n 64 --res 32 --batch 32 --net-batch 16
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stylenat import perf  # noqa: E402
from stylenat.bench import na as na_bench  # noqa: E402
from stylenat.cli import tune_cpu_allocator  # noqa: E402
from stylenat.ops.precision import DTYPE_CHOICES  # noqa: E402
from stylenat.perf import gemm_split  # noqa: E402, F401  (the tests time through the script)

_allocator_tuned = False  # set by main(); the measuring children tune the same way


def emit(record: dict) -> None:
    print(json.dumps({**record, "malloc_tuned": _allocator_tuned}), flush=True)


SIDE_BY_SIDE = "several: measured in one invocation, then each one's speed-up over the first"


def _side_by_side(args, key: str, measure, header: dict) -> None:
    """measure() -> {figure: seconds} once per value of the list option ``key`` (args.<key> set to each in
    turn), then one record per later value with its speed-ups over the first."""
    values, times = list(dict.fromkeys(getattr(args, key))), {}
    for value in values:
        setattr(args, key, value)
        times[value] = measure()
    setattr(args, key, values)
    base = times[values[0]]
    for value in values[1:]:
        ratios = {f"speedup_{f}": round(base[f] / t, 3) for f, t in times[value].items() if t and base.get(f)}
        emit({**header, key: value, "speedup_vs": values[0], **ratios})


def _measure(isolate: bool, measure, on_error, *args) -> dict:
    """measure(*args), or on_error(*args, err) when it raises; ``isolate``: in a fresh process (its own
    max RSS), tuned like the entry points."""
    if isolate:
        return perf.in_fresh_process(measure, on_error, *args, setup=tune_cpu_allocator)
    return perf.measure_or_report(measure, on_error, *args)


# ----------------------------------------------------------------------------------------------------
# mode: na
# ----------------------------------------------------------------------------------------------------


def _na_settings(args) -> dict:
    keys = "res batch heads dim kernel dilation dtype device backend reps threads".split()
    return {**{k: getattr(args, k) for k in keys}, "rpb": not args.no_rpb}


def bench_na(args) -> None:
    """Our na2d against the gather oracle, forward and forward+backward, per --dtype (side by side)."""
    _side_by_side(args, "dtype", functools.partial(_bench_na_dtype, args), {"mode": "na", "res": args.res})


def _bench_na_dtype(args) -> dict:
    """One dtype's records (on the CPU each in a fresh process: its own max RSS); the op's ms per pass."""
    settings = _na_settings(args)
    # Skip the oracle when it would exceed --oracle-max-gb rather than swamp a shared machine.
    oracle_gb = na_bench.na_oracle_gb(settings)
    run_oracle = not args.no_oracle and oracle_gb <= args.oracle_max_gb
    if not args.no_oracle and not run_oracle:
        emit(
            {
                "mode": "na",
                "impl": "oracle_gather",
                "skipped": f"estimated {oracle_gb:.1f} GB > --oracle-max-gb",
            }
        )
    results, isolate = {}, torch.device(args.device).type != "cuda"
    for pass_ in ("fwd", "fwd+bwd"):
        for impl in ("op", "oracle") if run_oracle else ("op",):
            record = _measure(isolate, na_bench.na_record, na_bench.na_error_record, impl, pass_, settings)
            results[impl, pass_] = record.get("median_ms")
            emit(record)
    if run_oracle and None not in results.values():
        emit(na_bench.na_speedup_record(settings, results))
    return {pass_: results.get(("op", pass_)) for pass_ in ("fwd", "fwd+bwd")}


# ----------------------------------------------------------------------------------------------------
# mode: train-step
# ----------------------------------------------------------------------------------------------------

TRAIN_STEP_MODELS = {
    # name -> config overrides (the demo recipe for tiny, the paper recipe for 256)
    "tiny": ["dataset=demo"],
    "stylenat_256": ["dataset=ffhq256", "dataset.path=/unused"],
}


def _train_step_error(args, model: str, err: Exception) -> dict:
    return {"mode": "train-step", "model": model, "error": perf.error_text(err)}


def _train_step_measure(args, model: str) -> dict:
    """One training step's parts (D + bCR, lazy R1, G) timed on random reals; peak memory of this process."""
    import tempfile

    from stylenat.cli import compose_config
    from stylenat.data.transforms import from_minus_one_one
    from stylenat.distributed import DistEnv
    from stylenat.training.run import Trainer, prepare_run

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
    cfg = compose_config(REPO / "configs", overrides)
    rss_before = perf.max_rss_mb()
    env = DistEnv(rank=0, world_size=1, local_rank=device.index or 0, device=device)
    res, norm = cfg.model.resolution, cfg.model.output_normalization
    generator = torch.Generator().manual_seed(0)

    def reals():
        while True:
            yield from_minus_one_one(torch.rand(args.batch, 3, res, res, generator=generator) * 2 - 1, norm)

    trainer = Trainer(prepare_run(cfg, env, with_data=False), stream=reals())
    batch, gan = [trainer.next_reals()], trainer.gan
    parts = {"d": lambda: gan.d_step(batch), "r1": lambda: gan.r1_step(batch), "g": gan.g_step}
    perf.reset_peak_memory(device)
    times = {name: perf.time_call(fn, device, args.reps, warmup=args.warmup) for name, fn in parts.items()}
    med = {name: statistics.median(t) / 1e3 for name, t in times.items()}
    opts = trainer.opts
    step_s = med["d"] + med["g"] + (med["r1"] / opts.r1_every if opts.r1_gamma > 0 else 0.0)
    cuda = device.type == "cuda"
    return {
        "mode": "train-step",
        "model": model,
        "g_params_m": round(sum(p.numel() for p in gan.G.parameters()) / 1e6, 3),
        "d_params_m": round(sum(p.numel() for p in gan.D.parameters()) / 1e6, 3),
        "resolution": res,
        "batch": args.batch,
        "amp": args.amp,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "reps": args.reps,
        **{f"{name}_step_s": round(seconds, 4) for name, seconds in med.items()},  # d, r1, g
        "step_s_with_r1": round(sum(med.values()), 4),
        "step_s_amortized": round(step_s, 4),
        "sec_per_kimg": round(step_s / args.batch * 1000, 1),
        "peak_mem_mb": round(perf.peak_memory_mb(device), 1),
        "peak_mem_kind": "cuda_max_allocated" if cuda else "cpu_max_rss_process",
        "rss_before_build_mb": None if cuda else round(rss_before, 1),
    }


def bench_train_step(args) -> None:
    """Training sec/kimg and peak memory per model (G step + D step with bCR + lazy R1 amortised), per
    --amp setting (side by side, model by model)."""

    def measure(model):
        if torch.device(args.device).type == "cuda":
            record = _train_step_measure(args, model)
        else:
            record = _measure(True, _train_step_measure, _train_step_error, args, model)
        emit(record)
        return {"step": record.get("step_s_amortized")}

    for model in args.models:
        _side_by_side(args, "amp", functools.partial(measure, model), {"mode": "train-step", "model": model})


# ----------------------------------------------------------------------------------------------------
# modes: generator, scaling
# ----------------------------------------------------------------------------------------------------


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
    from stylenat.bench import generator as throughput
    from stylenat.models.build import build_generator

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    G = build_generator(_model_config(args.model)).eval().requires_grad_(False).to(args.device)
    gflop = throughput.generator_flops(G, batch=1) / 1e9
    dtypes = list(dict.fromkeys(args.dtype))
    for batch in args.batch:
        settings = dict(batch=batch, warmup=args.warmup, reps=args.reps, tf32=not args.no_tf32)
        if len(dtypes) == 1:
            records = [throughput.measure_generator_throughput(G, dtype=dtypes[0], **settings)]
        else:  # side by side, round-robin, with the speed-ups and errors against fp32
            records = throughput.dtype_comparison(G, dtypes, batch, args.warmup, args.reps)
        for record in records:
            record.update(model=args.model, gflop_per_img=round(gflop, 2))
            if torch.device(args.device).type == "cpu" and record["compute_dtype"] == "fp32":
                record.update(throughput.cpu_bound_figures(G, batch, record["imgs_per_s"], gflop))
            if args.compile:
                record.update(throughput.compiled_figures(G, {**settings, "dtype": record["dtype"]}, record))
            emit(record)


def _config_at(model: str, resolution: int) -> tuple[dict, str]:
    """configs/model/<model>.yaml at another output resolution (see ``stylenat.bench.generator.config_at_resolution``)."""
    from stylenat.bench.generator import config_at_resolution

    cfg, note = config_at_resolution(_model_config(model), resolution)
    return cfg, f"configs/model/{model}.yaml with resolution={resolution}{note}"


def _scaling_measure(args, resolution: int) -> dict:
    from stylenat.bench.generator import scaling_figures
    from stylenat.models.build import build_generator

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, note = _config_at(args.model, resolution)
    torch.manual_seed(0)
    G = build_generator(cfg).eval().requires_grad_(False).to(torch.device(args.device))
    figures = scaling_figures(G, args.batch, args.reps, args.warmup, args.isolate)
    return {"mode": "scaling", "model": args.model, "config": note, **figures}


def _scaling_error(args, resolution, err) -> dict:
    return {"mode": "scaling", "resolution": resolution, "error": perf.error_text(err)}


def bench_scaling(args) -> None:
    """Generator cost per image against the output resolution, one line per resolution, then growth ratios."""
    from stylenat.bench.generator import scaling_growth

    device = torch.device(args.device)
    resolutions = list(args.resolutions)
    if args.resolutions_default and device.type == "cuda":
        resolutions.append(1024)
    args.isolate = device.type == "cpu" and not args.in_process
    records = []
    for resolution in resolutions:
        # isolated: a fresh process per resolution, so the max RSS is its own
        record = _measure(args.isolate, _scaling_measure, _scaling_error, args, resolution)
        records.append(record)
        emit(record)
    summary = {"mode": "scaling", "summary": "growth between consecutive resolutions", "model": args.model}
    emit({**summary, "growth": scaling_growth(records)})


# ----------------------------------------------------------------------------------------------------
# mode: viewer
# ----------------------------------------------------------------------------------------------------


def bench_viewer(args) -> None:
    """The viewer's server time per image (batch 1, uncached) and per attention click, per model and dtype
    (default fp32, plus bf16 where native); random weights. The measuring is ``stylenat.viewer.bench``."""
    from stylenat.models.build import build_generator
    from stylenat.ops.precision import inference_dtype
    from stylenat.viewer.bench import default_dtypes, image_latency

    if args.threads:
        torch.set_num_threads(args.threads)
    for model in args.models:
        torch.manual_seed(0)
        G = build_generator(_model_config(model)).eval().requires_grad_(False).to(args.device)
        for dtype in args.dtype or default_dtypes(args.device):
            G.set_compute_dtype(inference_dtype(dtype, args.device))
            figures = image_latency(G, args.device, args.reps, args.warmup, attention=not args.no_attention)
            emit({"mode": "viewer", "model": model, "dtype": dtype, "device": args.device, **figures})


# ----------------------------------------------------------------------------------------------------
# mode: inception
# ----------------------------------------------------------------------------------------------------


def _inception_measure(args) -> dict:
    from stylenat.bench.inception import inception_pipeline_figures
    from stylenat.metrics.inception import build_inception
    from stylenat.metrics.inception_weights import load_inception

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.random_weights:
        model = build_inception(seed=0, device=args.device)
    else:
        model = load_inception(args.weights, device=args.device)
    figures = (args.protocol, args.n, args.res, args.batch, args.net_batch, args.reps, args.device)
    return {"records": inception_pipeline_figures(model, *figures)}


def _inception_error(args, err: Exception) -> dict:
    return {"records": [{"mode": "inception", "protocol": args.protocol, "error": perf.error_text(err)}]}


def bench_inception(args) -> None:
    """Inception feature extraction img/s: the network alone and the pipelines around it (PNG files on
    disk, generated-like uint8 / float tensors upsampled to 299 by the protocol), with their ratios."""
    isolate = torch.device(args.device).type != "cuda" and not args.in_process
    result = _measure(isolate, _inception_measure, _inception_error, args)
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


def _mode(modes, name: str, bench, help: str) -> argparse.ArgumentParser:
    """A subcommand running ``bench(args)``, with the options every mode has (--device, --threads)."""
    mode = modes.add_parser(name, help=help)
    mode.add_argument("--device", default="cpu")
    mode.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    mode.set_defaults(func=bench)
    return mode


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    modes = parser.add_subparsers(dest="mode", required=True)

    na = _mode(modes, "na", bench_na, "neighborhood attention op vs the naive gather oracle")
    na.add_argument("--res", type=int, default=64)
    na.add_argument("--batch", type=int, default=4)
    na.add_argument("--heads", type=int, default=8)
    na.add_argument("--dim", type=int, default=32)
    na.add_argument("--kernel", type=int, default=7)
    na.add_argument("--dilation", type=_dilation_arg, default="split", help="int or 'split'")
    na.add_argument("--reps", type=int, default=5)
    na.add_argument("--dtype", nargs="+", choices=sorted(na_bench.DTYPES), default=["float32"], help=SIDE_BY_SIDE)
    na.add_argument("--backend", choices=("auto", "torch", "natten", "flex"), default="auto")
    na.add_argument("--no-rpb", action="store_true", help="no relative position bias (lets natten run)")
    na.add_argument("--no-oracle", action="store_true")
    na.add_argument("--oracle-max-gb", type=float, default=6.0)

    ts = _mode(
        modes,
        "train-step",
        bench_train_step,
        "one training step (G + D + bCR + lazy R1): sec/kimg, peak memory",
    )
    ts.add_argument(
        "--models", nargs="+", choices=sorted(TRAIN_STEP_MODELS), default=["tiny", "stylenat_256"]
    )
    ts.add_argument("--batch", type=int, default=2)
    ts.add_argument("--reps", type=int, default=3)
    ts.add_argument("--warmup", type=int, default=1)
    ts.add_argument("--amp", nargs="+", choices=("false", "bf16"), default=["false"], help=SIDE_BY_SIDE)

    gen = _mode(
        modes,
        "generator",
        bench_generator,
        "G(z) sampling images/s (reference protocol on GPU: batch 1, 10+500)",
    )
    gen.add_argument("--model", default="stylenat_256", help="a configs/model name")
    gen.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    gen.add_argument("--reps", type=int, default=5, help="timed calls (the reference protocol uses 500)")
    gen.add_argument("--warmup", type=int, default=1, help="untimed calls (the reference protocol uses 10)")
    gen.add_argument(
        "--dtype", nargs="+", choices=DTYPE_CHOICES, default=["fp32"], help=SIDE_BY_SIDE + ", round-robin"
    )
    gen.add_argument("--no-tf32", action="store_true")
    gen.add_argument(
        "--compile",
        action="store_true",
        help="also time torch.compile(G): first-call (compile) time and steady-state speed-up over eager",
    )

    sc = _mode(
        modes, "scaling", bench_scaling, "generator ms, peak memory and GFLOP per image against resolution"
    )
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
    sc.add_argument(
        "--in-process",
        action="store_true",
        help="CPU: no fresh process per resolution (max RSS then accumulates)",
    )

    vw = _mode(modes, "viewer", bench_viewer, "the viewer's server ms per image and per attention click")
    vw.add_argument("--models", nargs="+", default=["tiny", "stylenat_256"], help="configs/model names")
    vw.add_argument("--dtype", nargs="+", choices=DTYPE_CHOICES, default=None, help="default: fp32 (+ bf16 if native)")
    vw.add_argument("--reps", type=_positive_int, default=5, help="timed images (median reported)")
    vw.add_argument("--warmup", type=int, default=1, help="untimed images first")
    vw.add_argument("--no-attention", action="store_true", help="skip the attention-click figure")

    inc = _mode(
        modes,
        "inception",
        bench_inception,
        "Inception feature extraction img/s: network alone vs the pipelines around it",
    )
    inc.add_argument("--n", type=_positive_int, default=64, help="images in each pipeline figure")
    inc.add_argument("--res", type=_positive_int, default=32, help="resolution of the images (upsampled)")
    inc.add_argument("--batch", type=_positive_int, default=32, help="pipeline batch (compute_ref_stats')")
    inc.add_argument("--net-batch", type=_positive_int, default=16, help="batch of the network-alone figures")
    inc.add_argument("--protocol", choices=("stylegan", "pytorch_fid"), default="stylegan")
    inc.add_argument("--reps", type=_positive_int, default=3, help="timed rounds (median reported)")
    inc.add_argument("--weights", default=None, help="Inception weights file (default: the usual search)")
    inc.add_argument("--random-weights", action="store_true", help="seeded random weights (same speed)")
    inc.add_argument("--in-process", action="store_true", help="CPU: measure in this process")
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
