"""scripts/evaluate_run.py: metrics of every snapshot of a tiny run, appended to its log once, curves re-plotted.

The real metric pipeline runs (generation, statistics of the demo faces, FID) with a cheap stand-in for
Inception (tests/metrics/helpers.FakeExtractor), so no weights are needed.
"""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stylenat import metrics
from stylenat.cli import compose_config
from stylenat.distributed import DistEnv
from stylenat.training.run import Trainer, prepare_run
from stylenat.training.run_metrics import evaluate_run
from tests.metrics.helpers import FakeExtractor
from tests.training.helpers import CONFIG_DIR, TINY

ROOT = Path(__file__).resolve().parents[1]
CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
SCRIPT = str(ROOT / "scripts" / "evaluate_run.py")
ARGS = ["num_gen=6", "batch=6", "device=cpu"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Demo faces and real statistics in a cache of this module's own (never the user's)."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STYLENAT_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, cache):
    """Two steps of batch 4 with a snapshot every step: network-snapshot-000000.004.pt and .008.pt."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    cfg = compose_config(
        CONFIG_DIR,
        [*TINY, f"run_dir={run}", "train.total_kimg=0.008", "train.snapshot_every_kimg=0.004"],
    )
    Trainer(prepare_run(cfg, CPU)).fit()
    return run


@pytest.fixture
def run_copy(tiny_run, tmp_path, monkeypatch, cache):
    """A fresh copy of the tiny run, Inception replaced by FakeExtractor, compute_metric calls counted."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    calls = []
    real_compute = metrics.compute_metric

    def counting(name, generator_fn, **kw):
        calls.append(name)
        return real_compute(name, generator_fn, **kw)

    monkeypatch.setenv("STYLENAT_CACHE", str(cache))
    monkeypatch.setattr(metrics, "load_inception", lambda weights=None, device="cpu": FakeExtractor())
    monkeypatch.setattr(metrics, "compute_metric", counting)
    return run, calls


def _metric_records(run):
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r for r in records if "metric" in r]


def test_every_snapshot_is_scored_once_and_plotted(run_copy):
    run, calls = run_copy
    assert [p.name for p in sorted(run.glob("network-snapshot-*.pt"))] == [
        "network-snapshot-000000.004.pt",
        "network-snapshot-000000.008.pt",
    ]
    ticks_before = (run / "log.jsonl").read_text()
    (run / "curves.png").unlink()  # written at the end of the run; evaluate_run writes it again

    new = evaluate_run(run, ["fid1k", "fid10k"], num_gen=6, batch=6, device="cpu", progress=False)
    assert calls == ["fid1k", "fid10k", "fid1k", "fid10k"]
    logged = _metric_records(run)
    assert logged == json.loads(json.dumps(new))  # everything returned is in the log, nothing else
    assert [(r["kimg"], r["step"], r["metric"], r["snapshot"]) for r in logged] == [
        (0.004, 1, "fid1k", "network-snapshot-000000.004.pt"),
        (0.004, 1, "fid10k", "network-snapshot-000000.004.pt"),
        (0.008, 2, "fid1k", "network-snapshot-000000.008.pt"),
        (0.008, 2, "fid10k", "network-snapshot-000000.008.pt"),
    ]
    for r in logged:  # the training loop's metric record shape
        assert {"kimg", "step", "timestamp", "metric", r["metric"], "protocol", "metric_time_s"} <= set(r)
        assert math.isfinite(r[r["metric"]]) and r[r["metric"]] > 0 and r["protocol"] == "stylegan"
        assert r["num_gen"] == 6
    assert (run / "log.jsonl").read_text().startswith(ticks_before)  # appended, the training records kept
    assert (run / "curves.png").stat().st_size > 0

    # a rerun finds every pair in the log: nothing computed, nothing appended
    again = evaluate_run(run, ["fid1k", "fid10k"], num_gen=6, batch=6, device="cpu", progress=False)
    assert again == [] and len(calls) == 4 and len(_metric_records(run)) == 4  # idempotent


def test_pairs_already_in_the_log_are_skipped(run_copy):
    run, calls = run_copy
    # as if the training loop had computed fid1k at 0.008 kimg
    with open(run / "log.jsonl", "a") as f:
        f.write(json.dumps({"kimg": 0.008, "step": 2, "timestamp": 0.0, "metric": "fid1k", "fid1k": 123.0}))
        f.write("\n")
    new = evaluate_run(run, ["fid1k"], num_gen=6, batch=6, device="cpu", progress=False, plot=False)
    assert calls == ["fid1k"] and [r["kimg"] for r in new] == [0.004]
    assert sorted((r["kimg"], r["fid1k"] == 123.0) for r in _metric_records(run)) == [
        (0.004, False),
        (0.008, True),
    ]


def test_script_end_to_end_and_rerun(run_copy, capsys):
    from scripts.evaluate_run import main

    run, calls = run_copy
    assert main([str(run), "metrics=[fid1k]", *ARGS]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(p["kimg"], p["metric"]) for p in printed] == [(0.004, "fid1k"), (0.008, "fid1k")]
    assert main([f"run_dir={run}", "metrics=[fid1k]", *ARGS]) == 0  # rerun: nothing new
    assert capsys.readouterr().out == "" and calls == ["fid1k", "fid1k"]


def _one_line_error(capsys, argv) -> str:
    from scripts.evaluate_run import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_input_is_one_line(run_copy, tmp_path, capsys):
    run, calls = run_copy
    assert _one_line_error(capsys, [str(tmp_path / "nope"), *ARGS]) == (
        f"error: run directory {tmp_path / 'nope'} does not exist"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no network-snapshot-*.pt in" in _one_line_error(capsys, [str(empty), *ARGS])
    assert "unknown metric 'fid2k'" in _one_line_error(capsys, [str(run), "metrics=[fid2k]", *ARGS])
    assert "metrics is empty" in _one_line_error(capsys, [str(run), "metrics=[]", *ARGS])
    assert "run_dir is required" in _one_line_error(capsys, ARGS)
    assert "bogus" in _one_line_error(capsys, [str(run), "bogus=1"])
    assert "one RUN_DIR expected" in _one_line_error(capsys, [str(run), str(run)])
    assert calls == []


def test_script_runs_as_a_command(tmp_path):
    proc = subprocess.run(
        [sys.executable, SCRIPT, str(tmp_path / "nope")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: run directory {tmp_path / 'nope'} does not exist"


def test_help(capsys):
    from scripts.evaluate_run import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert (
        out.startswith("usage: python scripts/evaluate_run.py RUN_DIR") and "configs/evaluate_run.yaml" in out
    )
