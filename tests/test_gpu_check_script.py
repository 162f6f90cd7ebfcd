"""scripts/gpu_check.sh and its Python stages on the CPU: --dry-run lists every check (the train stage also
composes and validates its configs), and the pieces that judge results work on made-up figures."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"


def _gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dry_run_lists_every_stage_without_a_gpu():
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    summary = records[-1]
    assert summary["check"] == "summary" and summary["pass"] and summary["dry_run"]
    assert set(summary["stages"]) == {"info", "tests", "parity", "train", "throughput"}
    by_check = {}
    for record in records[:-1]:
        by_check.setdefault(record["check"], []).append(record)
    assert "-m gpu" in by_check["gpu_tests"][0]["command"]

    parity = by_check["na_parity"]
    combos = {(r["backend"], r["size"], r["dtype"], r["rpb"], r["layout"], r["dilation"]) for r in parity}
    for size, dilation in ((64, 8), (128, 16)):  # the paper's dilated head group at each size
        for layout in ("strided", "contiguous"):
            assert ("natten", size, "bfloat16", None, layout, dilation) in combos  # natten in bf16
            assert ("natten", size, "float32", None, layout, 1) in combos
            assert ("flex", size, "bfloat16", "float32", layout, dilation) in combos  # fp32 RPB, bf16 q
            assert ("flex", size, "float32", "float32", layout, 1) in combos
    assert not any(r["backend"] == "natten" and r["rpb"] for r in parity)  # NATTEN >= 0.20 has no RPB
    assert {(r["heads"], r["head_dim"]) for r in parity} == {(8, 32), (4, 32)}  # 16 and 8 heads in 2 groups

    train = {r["variant"]: r["overrides"] for r in by_check["train"]}
    assert set(train) == {"fp32_tf32", "bf16"}
    assert "train.amp=bf16" in train["bf16"] and "train.tf32=true" in train["fp32_tf32"]
    assert all("model=stylenat_256" in o and "train.batch=4" in o for o in train.values())
    assert {r["dtype"] for r in by_check["throughput"]} == {"float32", "bfloat16"}
    assert all("--batch 1 --warmup 10 --reps 500" in r["command"] for r in by_check["throughput"])


def test_stage_selection_and_bad_arguments():
    env = {**os.environ, "PYTHON": sys.executable}
    run = lambda *args: subprocess.run(  # noqa: E731
        ["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    proc = run("--dry-run", "--only", "tests,throughput", "--skip", "throughput")
    assert proc.returncode == 0, proc.stderr
    assert list(json.loads(proc.stdout.splitlines()[-1])["stages"]) == ["tests"]
    assert run("--only", "bogus").returncode == 2
    assert run("--frobnicate").returncode == 2
    if not torch.cuda.is_available():
        proc = run("--only", "tests")
        assert proc.returncode == 1 and "no CUDA device" in proc.stderr


def test_train_summary_judges_loss_and_finiteness():
    gpu_check = _gpu_check_module()
    records = [
        {"d_loss": 1.4 - 0.01 * i, "g_loss": 0.7, "sec_per_step": 30.0 if i == 0 else 0.2} for i in range(20)
    ]
    summary = gpu_check.summarize_train(records, 20)
    assert summary["pass"] and summary["first_step_s"] == 30.0 and summary["median_step_s"] == 0.2
    assert summary["d_loss_first5"] > summary["d_loss_last5"]
    assert not gpu_check.summarize_train(records[::-1], 20)["pass"]  # rising D loss
    assert not gpu_check.summarize_train(records[:19], 20)["pass"]  # a step short
    bad = [dict(r) for r in records]
    bad[7]["g_loss"] = math.nan
    assert not gpu_check.summarize_train(bad, 20)["finite"]


def test_parity_criterion_is_assert_close():
    gpu_check = _gpu_check_module()
    want = torch.tensor([1.0, -2.0, 0.0])
    ratio, err = gpu_check._excess(want + torch.tensor([1e-4, 2e-4, 0.5e-4]), want, 1e-4)
    assert err == pytest.approx(2e-4, rel=1e-3) and ratio == pytest.approx(2e-4 / (1e-4 + 2e-4), rel=1e-3)
    ratio, _ = gpu_check._excess(want + 3e-4, want, 1e-4)
    assert ratio > 1  # 3e-4 > 1e-4 + 1e-4 * |0|
    # The verdict (worst ratio <= 1) is assert_close's with rtol = atol = the tolerance, for every tolerance
    # the stage uses, on errors around each one; every dtype the stage runs has its tolerances.
    gen = torch.Generator().manual_seed(0)
    for tol in {t for pair in gpu_check.TOLERANCES.values() for t in pair}:
        for scale in (0.3, 1.0, 3.0):
            want = torch.randn(512, generator=gen)
            got = want + torch.randn(512, generator=gen) * tol * scale
            ratio, _ = gpu_check._excess(got, want, tol)
            try:
                torch.testing.assert_close(got, want, rtol=tol, atol=tol)
                close = True
            except AssertionError:
                close = False
            assert (ratio <= 1) == close, (tol, scale, ratio)
    assert {dtype for dtype, _ in gpu_check.PARITY_DTYPES} <= set(gpu_check.TOLERANCES)
