"""Micro-benchmarks, one subcommand per mode; each measurement prints one JSON line.

    python scripts/benchmark.py na --res 64 --batch 4 --heads 8 --dim 32 --kernel 7 --dilation split

Modes: ``na`` (the neighborhood-attention op against the naive gather oracle), ``train-step`` (one
training step of the tiny and the 256 model: sec/kimg and peak memory; ``--profile N`` its top ops and the products against the rest,
``--blocks`` G's blocks by part), ``generator`` (sampling
images/s, FLOPs per image and the fraction of the CPU's FLOP bound; ``--compile`` adds torch.compile's
compile time and steady-state speed-up over eager), ``scaling`` (generator time, peak memory and FLOPs
per image as the output resolution grows at a fixed channel recipe, with the share of time in na2d),
``inception`` (Inception feature extraction img/s: the network alone, reference graph in fp32 and
channels_last and the fused fast path, against the pipelines from PNG files and from generated-like
tensors, with the ratios pipeline / network), ``viewer`` (the browser viewer's server time per image and per
attention click, ``stylenat.viewer.bench``).
Add a mode by writing ``bench_<mode>(args)``, its keys in configs/benchmark.yaml and its entry in ``MODES``. The
measuring itself is the library's: timers, memory, FLOPs and the fresh-process runner in
``stylenat.perf``, the benchmark records and figures in ``stylenat.bench`` (``na``, ``generator``, ``inception``).

    OMP_NUM_THREADS=2 python scripts/benchmark.py generator --model stylenat_256 --batch 4 --dtype fp32 bf16
    python scripts/benchmark.py scaling --resolutions 32 64 128 256 --batch 4
    python scripts/benchmark.py inception --n 64 --res 32 --batch 32 --net-batch 16
"""

from __future__ import annotations

import functools
import itertools
import json
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from stylenat import cli, perf
from stylenat.bench import na as na_bench
from stylenat.cli import tune_cpu_allocator
from stylenat.ops.precision import DTYPE_CHOICES
from stylenat.perf import gemm_split  # noqa: F401  (the tests time through the script)

REPO = Path(__file__).resolve().parents[1]

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
        *([] if args.reuse_fakes in (None, "null") else [f"train.reuse_fakes={args.reuse_fakes}"]),
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
    # train.reuse_fakes: the step's one G forward is timed in the G part; the D and R1 parts run on fakes
    # drawn once here, whose graph is held through them as in a step (peak memory)
    fakes = gan.g_fakes() if gan.opts.reuse_fakes else None
    perf.reset_peak_memory(device)
    times = {
        name: perf.time_call(fn, device, args.reps, warmup=args.warmup)
        for name, fn in (("d", lambda: gan.d_step(batch, None, fakes)), ("r1", lambda: gan.r1_step(batch)))
    }
    fakes = None  # released: the G part draws its own
    times["g"] = perf.time_call(gan.g_step, device, args.reps, warmup=args.warmup)
    med = {name: statistics.median(t) / 1e3 for name, t in times.items()}
    opts = trainer.opts
    step_s = med["d"] + med["g"] + (med["r1"] / opts.r1_every if opts.r1_gamma > 0 else 0.0)
    cuda = device.type == "cuda"
    extras = {}  # --profile's top ops, --blocks' parts
    if args.profile > 0:  # whole steps (gan.run: D, lazy R1 on its steps, G, EMA)
        steps = itertools.count(1)
        top = perf.top_ops(lambda: gan.run(next(steps), batch), args.profile)
        extras.update(profile_steps=args.profile, profile=top)
    if args.blocks:  # G's first block per stage, whole and by part, forward+backward at this batch
        from stylenat.bench.blocks import block_parts

        extras["blocks"] = block_parts(gan.G, args.batch, args.reps, device, warmup=max(1, args.warmup))
    return {
        "mode": "train-step",
        "model": model,
        "g_params_m": round(sum(p.numel() for p in gan.G.parameters()) / 1e6, 3),
        "d_params_m": round(sum(p.numel() for p in gan.D.parameters()) / 1e6, 3),
        "resolution": res,
        "batch": args.batch,
        "amp": args.amp,
        "reuse_fakes": gan.opts.reuse_fakes,
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
        **extras,
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


# ----------------------------------------------------------------------------------------------------
# command line: configs/benchmark.yaml, the mode positional and each mode's flags as keys of its section
# ----------------------------------------------------------------------------------------------------

USAGE = """\
usage: python scripts/benchmark.py {na,train-step,generator,scaling,viewer,inception} [--device cpu]
                                   [--threads N] [mode flags ...] [key=value ...] [--cfg] [--help]

  na          neighborhood attention op vs the naive gather oracle
              [--res --batch --heads --dim --kernel --dilation N|split --reps --dtype ... --backend
               --no-rpb --no-oracle --oracle-max-gb]
  train-step  one training step (G + D + bCR + lazy R1): sec/kimg, peak memory
              [--models ... --batch --reps --warmup --amp false bf16 --profile STEPS --blocks
               --reuse-fakes true|false]
  generator   G(z) sampling images/s (reference protocol on GPU: batch 1, 10+500)
              [--model --batch N ... --reps --warmup --dtype ... --no-tf32 --compile]
  scaling     generator ms, peak memory and GFLOP per image against resolution
              [--model --resolutions ... --batch --reps --warmup --in-process]
  viewer      the viewer's server ms per image and per attention click
              [--models ... --dtype ... --reps --warmup --no-attention]
  inception   Inception feature extraction img/s: network alone vs the pipelines around it
              [--n --res --batch --net-batch --protocol --reps --weights --random-weights --in-process]
A flag is its mode's key with '-' for '_' (--oracle-max-gb: na.oracle_max_gb); several values (...) are
measured side by side. Keys, defaults and meanings are documented in configs/benchmark.yaml."""

# mode -> (bench function, {key: type}): int / float / str / ints / strs (lists) / switch
INT, FLOAT, STR, INTS, STRS, SWITCH = "int", "float", "str", "ints", "strs", "switch"
MODES = {
    "na": (bench_na, dict(res=INT, batch=INT, heads=INT, dim=INT, kernel=INT, dilation=STR, reps=INT,
                          dtype=STRS, backend=STR, no_rpb=SWITCH, no_oracle=SWITCH, oracle_max_gb=FLOAT)),
    "train-step": (bench_train_step, dict(models=STRS, batch=INT, reps=INT, warmup=INT, amp=STRS, profile=INT,
                                          blocks=SWITCH, reuse_fakes=STR)),
    "generator": (bench_generator, dict(model=STR, batch=INTS, reps=INT, warmup=INT, dtype=STRS,
                                        no_tf32=SWITCH, compile=SWITCH)),
    "scaling": (bench_scaling, dict(model=STR, resolutions=INTS, batch=INT, reps=INT, warmup=INT,
                                    in_process=SWITCH)),
    "viewer": (bench_viewer, dict(models=STRS, dtype=STRS, reps=INT, warmup=INT, no_attention=SWITCH)),
    "inception": (bench_inception, dict(n=INT, res=INT, batch=INT, net_batch=INT, protocol=STR, reps=INT,
                                        weights=STR, random_weights=SWITCH, in_process=SWITCH)),
}
_FLAG_KIND = {INT: cli.VALUE, FLOAT: cli.VALUE, STR: cli.VALUE, INTS: cli.LIST, STRS: cli.LIST, SWITCH: cli.SWITCH}
# (mode, key) -> the values it accepts; keys that must be >= 1
CHOICES = {
    ("na", "dtype"): sorted(na_bench.DTYPES),
    ("na", "backend"): ("auto", "torch", "natten", "flex"),
    ("train-step", "models"): sorted(TRAIN_STEP_MODELS),
    ("train-step", "amp"): ("false", "bf16"),
    ("generator", "dtype"): DTYPE_CHOICES,
    ("viewer", "dtype"): DTYPE_CHOICES,
    ("inception", "protocol"): ("stylegan", "pytorch_fid"),
}
POSITIVE = {("viewer", "reps"), *(("inception", k) for k in ("n", "res", "batch", "net_batch", "reps"))}


def _section(mode: str) -> str:
    return mode.replace("-", "_")


def _mode_of(argv: list[str]) -> str | None:
    """The mode: the first bare word, or mode=... (None when neither is there)."""
    for arg in argv:
        if arg.startswith("mode="):
            return arg.partition("=")[2]
        if not arg.startswith("-") and "=" not in arg:
            return arg
    return None


def _flags(mode: str | None) -> dict:
    flags = {"--device": ("device", cli.VALUE), "--threads": ("threads", cli.VALUE)}
    if mode in MODES:
        for key, kind in MODES[mode][1].items():
            flags[f"--{key.replace('_', '-')}"] = (f"{_section(mode)}.{key}", _FLAG_KIND[kind])
    return flags


def _typed(mode: str, key: str, kind: str, value):
    """One key's value checked against its type (and choices / positivity): one line naming the key."""
    name = f"{_section(mode)}.{key}"

    def scalar(v, t):
        if t == STR:
            return "false" if v is False else "true" if v is True else str(v)
        ok = isinstance(v, int) and not isinstance(v, bool) if t == INT else isinstance(v, (int, float))
        if not ok or isinstance(v, bool):
            raise cli.ConfigError(f"{name} must be {'an integer' if t == INT else 'a number'}, got {v!r}")
        return float(v) if t == FLOAT else v

    if value is None:
        return None
    if kind == SWITCH:
        if not isinstance(value, bool):
            raise cli.ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if kind in (INTS, STRS):
        values = value if isinstance(value, list) else [value]
        if not values:
            raise cli.ConfigError(f"{name} needs at least one value")
        value = [scalar(v, INT if kind == INTS else STR) for v in values]
    else:
        value = scalar(value, kind)
    allowed = CHOICES.get((mode, key))
    for v in value if isinstance(value, list) else [value]:
        if allowed is not None and v not in allowed:
            raise cli.ConfigError(f"{name} must be one of {' | '.join(allowed)}, got {v!r}")
        if (mode, key) in POSITIVE and v < 1:
            raise cli.ConfigError(f"{name} must be a positive integer, got {v!r}")
    return value


def parse_args(cfg) -> SimpleNamespace:
    """The composed config -> the arguments of one mode: mode, device, threads and its section's keys."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True)
    mode = c["mode"]
    if mode not in MODES:
        raise cli.ConfigError(f"mode must be one of {' | '.join(MODES)}, got {mode!r}")
    func, kinds = MODES[mode]
    section = c[_section(mode)]
    args = SimpleNamespace(mode=mode, func=func, device=str(c["device"]))
    args.threads = _typed(mode, "threads", INT, c["threads"])
    for key, kind in kinds.items():
        setattr(args, key, _typed(mode, key, kind, section[key]))
    if mode == "na" and args.dilation != "split" and not (args.dilation.isdigit() and int(args.dilation) >= 1):
        raise cli.ConfigError(f"na.dilation must be a positive integer or 'split', got {args.dilation!r}")
    if mode == "scaling":
        args.resolutions_default = args.resolutions is None
        if args.resolutions is None:
            args.resolutions = [32, 64, 128, 256]
        bad = [r for r in args.resolutions if r < 8 or r & (r - 1)]
        if bad:
            raise cli.ConfigError(f"scaling.resolutions must be powers of two >= 8, got {bad}")
    return args


def _run(cfg) -> None:
    args = parse_args(cfg)
    global _allocator_tuned
    _allocator_tuned = tune_cpu_allocator()  # as the entry points do (STYLENAT_MALLOC_TUNING=0: glibc's)
    args.func(args)


def main(argv: list[str] | None = None) -> int:
    """The mode first (a bare word or mode=), then its flags translated to keys of its section."""
    argv = sys.argv[1:] if argv is None else argv
    argv = cli.translate_argv(argv, positional=("mode",), flags=_flags(_mode_of(argv)))
    return cli.user_errors_to_exit(cli.main_with_config)(argv, USAGE, "benchmark", _run)


if __name__ == "__main__":
    sys.exit(main())
