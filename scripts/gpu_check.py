"""The CUDA checks behind scripts/gpu_check.sh, one stage per subcommand; every figure is one JSON line.

    python scripts/gpu_check.py info        # torch, GPU, NATTEN (and whether it has libnatten), flex
    python scripts/gpu_check.py tests       # every gpu-marked test (pytest -m gpu)
    python scripts/gpu_check.py parity      # NA natten and flex against the torch backend, forward+backward
    python scripts/gpu_check.py train       # 20 steps of the 256 model at batch 4: fp32+TF32 and bf16
    python scripts/gpu_check.py throughput  # the reference protocol: batch 1, 10 + 500 calls, fp32+TF32, bf16

``--dry-run`` (every stage) lists what the stage would run without touching CUDA (train also composes and
validates its configs), so the script is exercised on a CPU-only machine by the test suite.

Parity criterion (``torch.testing.assert_close``'s): every element satisfies |got - want| <= atol + rtol *
|want| with rtol = atol = the dtype's tolerance below; the reference is the torch backend in float32 (TF32
off) on the same, already rounded, inputs; the RPB gradient (a sum over every query) uses atol = tolerance
x its largest magnitude. Each record carries the worst ratio |got - want| / (atol + rtol |want|) (pass:
<= 1) and the largest absolute error.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from stylenat import cli

REPO = Path(__file__).resolve().parents[1]  # train.py, benchmark.py and configs/ of this checkout

# Per dtype: (output tolerance, gradient tolerance), rtol = atol (see the module docstring).
TOLERANCES = {"float32": (1e-4, 1e-4), "bfloat16": (3e-2, 5e-2)}
PARITY_SIZES = (64, 128)
PARITY_BATCH = 2
# (q/k/v dtype, RPB dtype or None): fp32 RPB with bf16 q is what autocast hands the op (fp32 parameters).
PARITY_DTYPES = (
    ("float32", "float32"),
    ("float32", None),
    ("bfloat16", "bfloat16"),
    ("bfloat16", "float32"),
    ("bfloat16", None),
)
LAYOUTS = ("strided", "contiguous")  # q, k, v as views of one qkv tensor (the model's), or dense copies
TRAIN_MODEL, TRAIN_STEPS, TRAIN_BATCH = "stylenat_256", 20, 4
TRAIN_VARIANTS = {"fp32_tf32": ["train.amp=false", "train.tf32=true"], "bf16": ["train.amp=bf16"]}
THROUGHPUT_DTYPES = ("float32", "bfloat16")  # float32 with TF32 (benchmark.py's default)


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


# ----------------------------------------------------------------------------------------------------
# info
# ----------------------------------------------------------------------------------------------------


def stage_info(args) -> int:
    import torch

    from stylenat.ops.na import flex_backend, natten_backend

    natten, why_not = natten_backend.natten_import()
    record = {
        "check": "info",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "natten": getattr(natten, "__version__", None) if natten is not None else None,
        "natten_unavailable": why_not,
        "flex": flex_backend.available("cuda"),
    }
    emit(record)
    if args.dry_run:
        return 0
    return 0 if record["gpu"] else 1


# ----------------------------------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------------------------------


def pytest_command() -> list[str]:
    return [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-n", "0", "-rfE", "-p", "no:cacheprovider"]


def stage_tests(args) -> int:
    cmd = pytest_command()
    if args.dry_run:
        emit({"check": "gpu_tests", "dry_run": True, "command": " ".join(["python", *cmd[1:]])})
        return 0
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    counts = {
        key: int(n)
        for n, key in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", proc.stdout[-3000:])
    }
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-8000:] + proc.stderr[-2000:])
    emit(
        {
            "check": "gpu_tests",
            "rc": proc.returncode,
            **{k.rstrip("s") if k.startswith("error") else k: v for k, v in counts.items()},
            "seconds": round(time.perf_counter() - start, 1),
            "pass": proc.returncode == 0 and counts.get("passed", 0) > 0,
        }
    )
    return proc.returncode


# ----------------------------------------------------------------------------------------------------
# parity
# ----------------------------------------------------------------------------------------------------


def model_config(name: str) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "model" / f"{name}.yaml"), resolve=True)


def paper_groups(size: int, model: str = TRAIN_MODEL) -> tuple[int, list[tuple[int, int, int]]]:
    """(head dim, [(heads, kernel, dilation) per head group]) of the model's stage at size x size."""
    from stylenat.models.attention import broadcast_groups, split_heads
    from stylenat.models.generator import GeneratorConfig

    cfg = GeneratorConfig.from_dict(model_config(model))
    stage = int(math.log2(size)) - 2
    dim = cfg.stage_channels()[stage]
    heads = max(dim // cfg.head_channels, cfg.min_heads)
    kernels, dilations = broadcast_groups(cfg.kernels[stage], cfg.dilations[stage])
    return dim // heads, list(zip(split_heads(heads, len(kernels)), kernels, dilations))


def parity_cases(sizes=PARITY_SIZES, backends=("natten", "flex")):
    for size in sizes:
        head_dim, groups = paper_groups(size)
        for heads, kernel, dilation in groups:
            for backend in backends:
                for dtype, rpb in PARITY_DTYPES:
                    if backend == "natten" and rpb is not None:
                        continue  # NATTEN >= 0.20 has no RPB
                    for layout in LAYOUTS:
                        yield {
                            "backend": backend,
                            "size": size,
                            "heads": heads,
                            "head_dim": head_dim,
                            "kernel": kernel,
                            "dilation": dilation,
                            "dtype": dtype,
                            "rpb": rpb,
                            "layout": layout,
                        }


def _excess(got, want, tol: float, atol_scale: float = 1.0) -> tuple[float, float]:
    """(worst |got - want| / (atol + rtol |want|), largest |got - want|) with rtol = tol, atol = tol x scale."""
    err = (got.float() - want).abs()
    return float((err / (tol * atol_scale + tol * want.abs())).max()), float(err.max())


def run_parity_case(case: dict, batch: int = PARITY_BATCH, seed: int = 0) -> dict:
    import torch

    from stylenat.ops import na2d

    dtype = getattr(torch, case["dtype"])
    size, heads, dim, kernel = case["size"], case["heads"], case["head_dim"], case["kernel"]
    gen = torch.Generator("cuda").manual_seed(seed)
    base = torch.randn(batch, size, size, 3, heads, dim, device="cuda", generator=gen).to(dtype)
    rpb0 = None
    if case["rpb"] is not None:
        rpb0 = (0.5 * torch.randn(heads, 2 * kernel - 1, 2 * kernel - 1, device="cuda", generator=gen)).to(
            getattr(torch, case["rpb"])
        )
    grad_out = torch.randn(batch, heads, size, size, dim, device="cuda", generator=gen).to(dtype)

    def attend(qkv, rpb, backend):
        q, k, v = qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)  # [B, heads, H, W, D] views, as the model's
        if case["layout"] == "contiguous":
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        return na2d(q, k, v, kernel, case["dilation"], rpb=rpb, backend=backend)

    leaves = [base.clone().requires_grad_()] + ([rpb0.clone().requires_grad_()] if rpb0 is not None else [])
    start = time.perf_counter()
    out = attend(leaves[0], leaves[1] if rpb0 is not None else None, case["backend"])
    grads = torch.autograd.grad(out, leaves, grad_out)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    ref_leaves = [t.detach().float().requires_grad_() for t in leaves]
    ref = attend(ref_leaves[0], ref_leaves[1] if rpb0 is not None else None, "torch")
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad_out.float())

    out_tol, grad_tol = TOLERANCES[case["dtype"]]
    ratios, errors = {}, {}
    ratios["out"], errors["out"] = _excess(out, ref.detach(), out_tol)
    ratios["grad_qkv"], errors["grad_qkv"] = _excess(grads[0], ref_grads[0], grad_tol)
    if rpb0 is not None:
        scale = float(ref_grads[1].abs().max())
        ratios["grad_rpb"], errors["grad_rpb"] = _excess(grads[1], ref_grads[1], grad_tol, scale)
    worst = max(ratios.values())
    return {
        "check": "na_parity",
        **case,
        "out_dtype": str(out.dtype).removeprefix("torch."),
        "tolerance_out": out_tol,
        "tolerance_grad": grad_tol,
        "max_abs_err": {k: float(f"{v:.3g}") for k, v in errors.items()},
        "worst_ratio": {k: round(v, 4) for k, v in ratios.items()},
        "first_call_s": round(seconds, 3),
        "pass": worst <= 1.0 and out.dtype == dtype,
    }


def stage_parity(args) -> int:
    cases = list(parity_cases(args.sizes, args.backends))
    if args.dry_run:
        for case in cases:
            emit({"check": "na_parity", "dry_run": True, **case})
        return 0
    import torch

    from stylenat.ops.na import natten_backend
    from stylenat.ops.precision import set_tf32

    set_tf32(False)  # float32 parity is strict; bf16 matmuls are unaffected
    failed = 0
    natten_why = natten_backend.natten_import()[1]
    if "natten" in args.backends and natten_why is not None:
        emit({"check": "na_parity", "backend": "natten", "skipped": natten_why, "pass": None})
    for case in cases:
        if case["backend"] == "natten" and natten_why is not None:
            continue
        try:
            record = run_parity_case(case)
        except Exception as err:  # noqa: BLE001 - report the case, go on with the others
            record = {
                "check": "na_parity",
                **case,
                "error": f"{type(err).__name__}: {err}"[:800],
                "pass": False,
            }
        failed += not record["pass"]
        emit(record)
        torch.cuda.empty_cache()
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------------


def train_overrides(run_dir: str, variant: str, compile: bool | None, device: str = "cuda") -> list[str]:
    steps, batch = TRAIN_STEPS, TRAIN_BATCH
    overrides = [
        "dataset=demo",  # the bundled faces (no download), upscaled to the model's size with a warning
        f"model={TRAIN_MODEL}",
        f"dataset.resolution={model_config(TRAIN_MODEL)['resolution']}",
        "discriminator.channel_max=null",  # the reference D (the demo caps it for the tiny model)
        "discriminator.sn=true",  # with its spectral norm (the demo drops it)
        "train.reuse_fakes=false",  # the paper's step (the demo's reuses G's fakes)
        f"train.batch={batch}",
        "train.batch_per_gpu=null",
        f"train.total_kimg={steps * batch / 1000:.3f}",
        f"train.log_every_kimg={batch / 1000:.3f}",  # a log record per step
        "train.image_every_kimg=null",
        "train.snapshot_every_kimg=null",
        "train.state_every_kimg=null",
        "train.metrics=[]",
        "train.sample_grid=[2,2]",
        "logger.progress=false",
        f"device={device}",
        f"run_dir={run_dir}",
        *TRAIN_VARIANTS[variant],
    ]
    if compile is not None:
        overrides.append(f"train.compile={str(compile).lower()}")
    return overrides


def check_train_config(overrides: list[str]) -> None:
    """Compose and validate the run's config as train.py would (no data read, no network built)."""
    from stylenat.cli import compose_config
    from stylenat.training.config import parse_config

    parse_config(compose_config(REPO / "configs", overrides), world_size=1)


def summarize_train(records: list[dict], steps: int) -> dict:
    d_loss = [r["d_loss"] for r in records]
    finite = all(
        math.isfinite(r[key]) for r in records for key in ("d_loss", "g_loss") if r.get(key) is not None
    )
    head, tail = d_loss[:5], d_loss[-5:]
    step_times = sorted(r["sec_per_step"] for r in records[1:]) or [float("nan")]
    summary = {
        "steps": len(records),
        "first_step_s": round(records[0]["sec_per_step"], 2) if records else None,
        "median_step_s": round(step_times[len(step_times) // 2], 4),
        "d_loss_first5": round(sum(head) / len(head), 4) if head else None,
        "d_loss_last5": round(sum(tail) / len(tail), 4) if tail else None,
        "finite": finite,
    }
    summary["d_loss_decreasing"] = bool(head) and summary["d_loss_last5"] < summary["d_loss_first5"]
    summary["pass"] = len(records) == steps and finite and summary["d_loss_decreasing"]
    return summary


def stage_train(args) -> int:
    failed = 0
    for variant in args.variants:
        with tempfile.TemporaryDirectory(prefix=f"gpu-check-{variant}-") as run_dir:
            overrides = train_overrides(run_dir, variant, args.compile)
            if args.dry_run:
                check_train_config(overrides)
                emit({"check": "train", "variant": variant, "dry_run": True, "overrides": overrides})
                continue
            start = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, str(REPO / "train.py"), *overrides], cwd=REPO, capture_output=True, text=True
            )
            log = Path(run_dir) / "log.jsonl"
            lines = log.read_text().splitlines() if log.exists() else []
            records = [r for r in map(json.loads, lines) if "d_loss" in r]
            record = {
                "check": "train",
                "variant": variant,
                "model": TRAIN_MODEL,
                "batch": TRAIN_BATCH,
                "compile": args.compile,
                "rc": proc.returncode,
                "wall_s": round(time.perf_counter() - start, 1),
                **summarize_train(records, TRAIN_STEPS),
                "d_loss": [round(r["d_loss"], 4) for r in records],
            }
            if proc.returncode != 0:
                record["pass"] = False
                record["stderr_tail"] = proc.stderr[-1500:]
            failed += not record["pass"]
            emit(record)
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------------------
# throughput
# ----------------------------------------------------------------------------------------------------


def throughput_command(dtype: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "scripts" / "benchmark.py"),
        "generator",
        "--model",
        TRAIN_MODEL,
        "--device",
        "cuda",
        "--batch",
        "1",
        "--warmup",
        "10",
        "--reps",
        "500",
        "--dtype",
        dtype,
    ]


def stage_throughput(args) -> int:
    failed = 0
    for dtype in args.dtypes:
        cmd = throughput_command(dtype)
        if args.dry_run:
            emit(
                {
                    "check": "throughput",
                    "dtype": dtype,
                    "dry_run": True,
                    "command": " ".join(["python", *cmd[1:]]),
                }
            )
            continue
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        for record in records:
            emit({"check": "throughput", **record, "pass": proc.returncode == 0})
        if proc.returncode != 0 or not records:
            failed += 1
            emit(
                {
                    "check": "throughput",
                    "dtype": dtype,
                    "rc": proc.returncode,
                    "pass": False,
                    "stderr_tail": proc.stderr[-1500:],
                }
            )
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------


USAGE = """\
usage: python scripts/gpu_check.py {info,tests,parity,train,throughput} [--dry-run]
           [--sizes N ...] [--backends natten|flex ...]          (parity)
           [--variants fp32_tf32|bf16 ...] [--compile true|false] (train)
           [--dtypes float32|bfloat16 ...]                       (throughput)
           [key=value ...] [--cfg] [--help]

  info        versions, GPU, NATTEN and flex availability
  tests       every gpu-marked test
  parity      NA natten/flex vs the torch backend, forward and backward
  train       training steps of the 256 model at batch 4: fp32+TF32 and bf16
  throughput  generator images/s, the reference protocol
Keys and their flag aliases are documented in configs/gpu_check.yaml."""

STAGES = {
    "info": stage_info,
    "tests": stage_tests,
    "parity": stage_parity,
    "train": stage_train,
    "throughput": stage_throughput,
}
FLAGS = cli.flag_aliases(
    values=("compile",), switches=("dry_run",), lists=("sizes", "backends", "variants", "dtypes")
)


def _choices(key: str, values, allowed) -> list:
    values = list(values)
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise cli.ConfigError(f"{key} must be a non-empty list of {' | '.join(map(str, allowed))}, got {values}")
    return values


def parse_args(cfg) -> SimpleNamespace:
    """The composed config -> the stages' arguments (the script's defaults where a key is null)."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True)
    if c["stage"] not in STAGES:
        raise cli.ConfigError(f"stage must be one of {' | '.join(STAGES)}, got {c['stage']!r}")
    sizes = list(PARITY_SIZES) if c["sizes"] is None else c["sizes"]
    if not sizes or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in sizes):
        raise cli.ConfigError(f"sizes must be a list of positive integers, got {sizes}")
    if c["compile"] not in (None, True, False):
        raise cli.ConfigError(f"compile must be true or false, got {c['compile']!r}")
    return SimpleNamespace(
        stage=c["stage"],
        func=STAGES[c["stage"]],
        dry_run=bool(c["dry_run"]),
        sizes=sizes,
        backends=_choices("backends", c["backends"] or ["natten", "flex"], ("natten", "flex")),
        variants=_choices("variants", c["variants"] or list(TRAIN_VARIANTS), tuple(TRAIN_VARIANTS)),
        compile=c["compile"],
        dtypes=_choices("dtypes", c["dtypes"] or list(THROUGHPUT_DTYPES), THROUGHPUT_DTYPES),
    )


@cli.user_errors_to_exit
def main(argv: list[str] | None = None) -> int:
    argv = cli.translate_argv(sys.argv[1:] if argv is None else argv, positional=("stage",), flags=FLAGS)
    status = []

    def work(cfg) -> None:
        args = parse_args(cfg)
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        status.append(args.func(args))

    rc = cli.main_with_config(argv, USAGE, "gpu_check", work)
    return status[0] if status else rc


if __name__ == "__main__":
    sys.exit(main())
