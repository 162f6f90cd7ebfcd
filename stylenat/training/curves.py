"""Learning curves of a run: ``log.jsonl`` -> ``curves.png`` (one panel per figure, against kimg).

Panels, each drawn only when the log holds its keys: D/G losses, D's mean logits on reals and fakes, R1,
the ADA probability and its overfitting heuristic r_t, the learning rates, and one panel per metric
(``{"metric": "fid1k", "fid1k": value, ...}`` records). Event records (``"event"`` key) are ignored.

matplotlib is imported only here, lazily, and drawn through its Agg canvas on a ``Figure`` of our own
(no pyplot: nothing global is touched, so this is safe inside a training process).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from stylenat.files import atomic_write

LOG_NAME = "log.jsonl"
CURVES_NAME = "curves.png"

# (title, y label, keys of the tick records drawn in it)
TICK_PANELS = (
    ("D / G loss", "loss", ("d_loss", "g_loss")),
    ("D logits", "mean logit", ("d_real", "d_fake")),
    ("R1", "|grad D(real)|^2", ("r1",)),
    ("ADA p", "augment probability", ("augment_p",)),
    ("ADA r_t", "E[sign(D(real))]", ("ada_rt",)),
    ("learning rate", "lr", ("lr_g", "lr_d")),
)


@dataclass
class Panel:
    """One subplot: ``series`` maps a label to its (kimg, value) points, sorted by kimg."""

    title: str
    ylabel: str
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    metric: bool = False  # a metric panel: few points, drawn with markers


def read_log(path: str | os.PathLike) -> list[dict]:
    """The records of a ``log.jsonl`` (torn or foreign lines skipped)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _kimg(record: dict) -> float | None:
    if "images_seen" in record and _number(record["images_seen"]) is not None:
        return record["images_seen"] / 1000
    return _number(record.get("kimg"))


def curve_panels(records: list[dict]) -> list[Panel]:
    """The panels ``records`` can fill, in drawing order (absent keys give no panel, events are ignored)."""
    ticks, metrics = [], {}
    for r in records:
        if "event" in r or _kimg(r) is None:
            continue
        name = r.get("metric")
        if name is None:
            ticks.append(r)
        elif isinstance(name, str) and _number(r.get(name)) is not None:
            metrics.setdefault(name, []).append((_kimg(r), _number(r[name])))
    panels = []
    for title, ylabel, keys in TICK_PANELS:
        panel = Panel(title, ylabel)
        for key in keys:
            points = [(_kimg(r), _number(r.get(key))) for r in ticks]
            points = sorted((x, y) for x, y in points if y is not None)
            if points:
                panel.series[key] = points
        if panel.series:
            panels.append(panel)
    for name in sorted(metrics):
        # one point per position: a later record for the same kimg (a re-evaluation) wins
        by_kimg = dict(metrics[name])
        panels.append(Panel(name, name, {name: sorted(by_kimg.items())}, metric=True))
    return panels


def plot_curves(records: list[dict], out: str | os.PathLike, title: str | None = None) -> list[Panel]:
    """Draw the panels of ``records`` into the PNG ``out`` (written atomically); returns the panels.

    Raises ValueError when the records hold nothing to plot.
    """
    panels = curve_panels(records)
    if not panels:
        raise ValueError(f"nothing to plot for {out}: the log holds no training or metric records")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(5.0 * cols, 3.4 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels):
        for label, points in panel.series.items():
            xs, ys = zip(*points)
            marker = "o" if panel.metric or len(points) <= 20 else None
            ax.plot(xs, ys, label=label, marker=marker, markersize=4 if panel.metric else 2.5, linewidth=1.2)
        ax.set_title(panel.title)
        ax.set_xlabel("kimg")
        ax.set_ylabel(panel.ylabel)
        ax.grid(True, alpha=0.3)
        if len(panel.series) > 1:
            ax.legend(fontsize="small")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    atomic_write(out, lambda f: fig.savefig(f, format="png"))
    return panels


def plot_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """``run_dir/log.jsonl`` -> ``run_dir/curves.png`` (or ``out``); returns the path written."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    log_path = run_dir / LOG_NAME
    if not log_path.is_file():
        raise FileNotFoundError(f"{log_path} does not exist: is {run_dir} a training run directory?")
    out = Path(out) if out is not None else run_dir / CURVES_NAME
    plot_curves(read_log(log_path), out, title=run_dir.name)
    return out
