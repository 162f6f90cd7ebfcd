"""Learning curves from log.jsonl: which panels, the PNG, the plot_run script, and the end-of-run hook."""

import json
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from stylenat.training import curves
from stylenat.training.curves import curve_panels, plot_curves, plot_run, read_log
from stylenat.training.outputs import Counters, RunOutputs

REPO = Path(__file__).resolve().parents[2]
ALL_TICK_PANELS = ["D / G loss", "D logits", "R1", "ADA p", "ADA r_t", "learning rate"]


def tick(step, **values):
    """A training record as RunOutputs._log_tick writes it (batch 4)."""
    record = {"kimg": step * 4 / 1000, "step": step, "images_seen": step * 4}
    record.update(values)
    return record


def full_tick(step):
    return tick(
        step,
        d_loss=1.4 - step / 100,
        g_loss=0.7 + step / 100,
        bcr=0.01,
        d_real=0.1 * step,
        d_fake=-0.1 * step,
        r1=None if step == 1 else 0.02,  # r1 is null until the first R1 step
        augment_p=0.01 * step,
        ada_rt=0.05 * step,
        lr_g=5e-5,
        lr_d=1.9e-4,
        sec_per_kimg=10.0,
        peak_mem_mb=100.0,
    )


def metric(step, name, value):
    return {"kimg": step * 4 / 1000, "step": step, "timestamp": 0.0, "metric": name, name: value}


def write_log(run_dir: Path, records, tail: str = "") -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "log.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def test_every_panel_with_metrics_and_events_ignored(tmp_path):
    records = [full_tick(s) for s in range(1, 11)]
    records += [metric(5, "fid1k", 300.0), metric(10, "fid1k", 250.0), metric(10, "kid50k_full", 0.2)]
    records.append({**tick(6), "event": "nonfinite", "what": "d_loss", "action": "rollback", "d_loss": 99.0})
    records.append({**tick(7), "event": "stop", "reason": "SIGTERM"})
    panels = {p.title: p for p in curve_panels(records)}
    assert list(panels) == [*ALL_TICK_PANELS, "fid1k", "kid50k_full"]
    assert set(panels["D / G loss"].series) == {"d_loss", "g_loss"}
    assert set(panels["D logits"].series) == {"d_real", "d_fake"}
    assert set(panels["learning rate"].series) == {"lr_g", "lr_d"}
    d_loss = panels["D / G loss"].series["d_loss"]
    assert len(d_loss) == 10 and 99.0 not in [y for _, y in d_loss]  # the event record is not a point
    assert [x for x, _ in panels["R1"].series["r1"]] == [s * 4 / 1000 for s in range(2, 11)]  # null skipped
    assert panels["fid1k"].series == {"fid1k": [(0.02, 300.0), (0.04, 250.0)]}
    assert panels["fid1k"].metric and not panels["D / G loss"].metric
    assert panels["ADA r_t"].series["ada_rt"][-1] == (0.04, pytest.approx(0.5))

    run = tmp_path / "run"
    write_log(run, records, tail='{"kimg": 0.05, "d_lo')  # a torn last line (a killed run) is skipped
    out = plot_run(run)
    assert out == run / "curves.png" and out.stat().st_size > 10_000
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (1500, 3 * 340)  # 3 columns x 3 rows of panels
    assert not list(run.glob(".*.tmp"))


def test_a_log_with_only_some_keys(tmp_path):
    # an older run: losses and lrs only, no R1 yet, no ADA, no metrics
    records = [tick(s, d_loss=1.0, g_loss=1.0, r1=None, lr_g=1e-4, lr_d=1e-4) for s in range(1, 4)]
    assert [p.title for p in curve_panels(records)] == ["D / G loss", "learning rate"]
    out = plot_curves(records, tmp_path / "c.png")
    assert [p.title for p in out] == ["D / G loss", "learning rate"]
    with Image.open(tmp_path / "c.png") as img:
        assert img.size == (1000, 340)

    # metrics only (e.g. a log that evaluate_run filled); one point per position, the latest wins
    only_metrics = [metric(1, "fid1k", 10.0), metric(2, "fid1k", 8.0), metric(1, "fid1k", 9.0)]
    (panel,) = curve_panels(only_metrics)
    assert panel.title == "fid1k" and panel.series["fid1k"] == [(0.004, 9.0), (0.008, 8.0)]


def test_nothing_to_plot_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_curves([{"event": "stop", "kimg": 0.0}, {"hello": 1}], tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plot_run(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="log.jsonl does not exist"):
        plot_run(tmp_path)


def test_read_log_skips_torn_and_foreign_lines(tmp_path):
    path = write_log(tmp_path, [tick(1, d_loss=1.0)], tail='[1, 2]\nnot json\n{"kimg": 0.0')
    assert read_log(path) == [tick(1, d_loss=1.0)]


def test_plot_run_script(tmp_path):
    run = tmp_path / "run"
    write_log(run, [full_tick(s) for s in range(1, 4)])
    script = str(REPO / "scripts" / "plot_run.py")
    proc = subprocess.run([sys.executable, script, str(run)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(run / "curves.png") and (run / "curves.png").stat().st_size > 0
    proc = subprocess.run(
        [sys.executable, script, str(tmp_path / "missing")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: run directory {tmp_path / 'missing'} does not exist"]


# ------------------------------------------------------------------------------ the end-of-run hook


class RecordingSink:
    def __init__(self):
        self.figures, self.closed = [], None

    def log_figure(self, path, step):
        self.figures.append((Path(path), step))

    def close(self, failed=False):
        self.closed = failed


def outputs_for(run_dir: Path, plots=True) -> RunOutputs:
    """A RunOutputs over a stand-in run setup: only what __exit__ reads."""
    setup = SimpleNamespace(
        config=SimpleNamespace(train=None, logger=SimpleNamespace(plots=plots)),
        env=SimpleNamespace(is_main=True),
        run_dir=run_dir,
        state=None,
    )
    out = RunOutputs(setup, Counters(step=3, images_seen=12), gan=None, stats=None, training_state=dict)
    out.sinks.append(RecordingSink())
    return out


def test_run_end_plots_and_sends_the_figure_to_the_sinks(tmp_path, caplog):
    write_log(tmp_path, [full_tick(s) for s in range(1, 4)])
    (tmp_path / "samples-000000.012.png").write_bytes(b"")
    out = outputs_for(tmp_path)
    with caplog.at_level(logging.INFO, logger="stylenat.training.run_log"):
        out.__exit__(None, None, None)
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert out.sinks[0].figures == [(tmp_path / "curves.png", 3)] and out.sinks[0].closed is False
    last = caplog.records[-1].getMessage()
    assert last == (
        f"finished at 0.012 kimg: run dir {tmp_path}; final grid {tmp_path / 'samples-000000.012.png'}; "
        f"curves {tmp_path / 'curves.png'}"
    )


def test_run_end_without_plots_or_after_a_failure(tmp_path, caplog):
    write_log(tmp_path, [full_tick(s) for s in range(1, 4)])
    out = outputs_for(tmp_path, plots=False)
    with caplog.at_level(logging.INFO, logger="stylenat.training.run_log"):
        out.__exit__(None, None, None)
    assert not (tmp_path / "curves.png").exists() and out.sinks[0].figures == []
    assert "curves off (logger.plots=false" in caplog.records[-1].getMessage()

    caplog.clear()
    out = outputs_for(tmp_path)
    out.__exit__(RuntimeError, RuntimeError("boom"), None)  # a failed run: no figure, no final line
    assert not (tmp_path / "curves.png").exists() and out.sinks[0].closed is True
    assert not caplog.records


def test_a_plotting_failure_is_a_warning_not_a_failed_run(tmp_path, caplog, monkeypatch):
    def broken(run_dir):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(curves, "plot_run", broken)
    write_log(tmp_path, [full_tick(1)])
    out = outputs_for(tmp_path)
    with caplog.at_level(logging.INFO, logger="stylenat.training.run_log"):
        out.__exit__(None, None, None)  # does not raise
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["could not plot the learning curves: RuntimeError: no fonts"]
    assert out.sinks[0].closed is False and out.sinks[0].figures == []
    assert "curves not plotted" in caplog.records[-1].getMessage()


def test_a_precision_recall_record_keeps_both_figures():
    from stylenat.training.sinks import metric_record

    pr = metric_record("pr50k3_inception", {"value": 0.7, "precision": 0.7, "recall": 0.4}, 8000, 500)
    assert (pr["pr50k3_inception"], pr["precision"], pr["recall"], pr["kimg"]) == (0.7, 0.7, 0.4, 8.0)
    fid = metric_record("fid50k_full", {"value": 3.1, "protocol": "stylegan"}, 8000, 500)
    assert fid["fid50k_full"] == 3.1 and "recall" not in fid
