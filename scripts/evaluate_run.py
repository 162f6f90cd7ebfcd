#!/usr/bin/env python
"""Metrics of every snapshot of a training run, appended to its log.jsonl, then the curves re-plotted.

    python scripts/evaluate_run.py RUN_DIR metrics=[fid1k] [num_gen=N batch=32 device=cpu ...]

Keys (Hydra override syntax) are documented in configs/evaluate_run.yaml. A rerun computes only the
(snapshot, metric) pairs the log does not hold yet.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from stylenat import cli  # noqa: E402

USAGE = """\
usage: python scripts/evaluate_run.py RUN_DIR [metrics=[fid1k,...]] [key=value ...] [--help]

Scores every network-snapshot-*.pt in RUN_DIR with the metric registry against the run's data set
(config.yaml dataset.path; the demo faces when null), appends one metric record per snapshot and metric
to RUN_DIR/log.jsonl (pairs already there are skipped, so a rerun only adds what is new) and re-plots
RUN_DIR/curves.png. Keys (Hydra override syntax) are documented in configs/evaluate_run.yaml."""


def evaluate(cfg) -> None:
    from stylenat.training.config import resolve_config
    from stylenat.training.run_metrics import evaluate_run

    cfg = resolve_config(cfg)
    cli.setup_logging(0)
    with cli.console_above_progress():
        records = evaluate_run(
            cfg["run_dir"],
            cfg["metrics"],
            num_gen=cfg["num_gen"],
            batch=cfg["batch"],
            device=cfg["device"],
            inception_weights=cfg["inception_weights"],
            plot=cfg["plot"],
        )
    for record in records:
        print(json.dumps({k: record[k] for k in ("kimg", "step", "metric", record["metric"], "snapshot")}))


@cli.user_errors_to_exit
def main(argv: list[str] | None = None) -> int:
    """RUN_DIR is positional; everything else is the common command line (stylenat.cli)."""
    argv = sys.argv[1:] if argv is None else argv
    positional = [a for a in argv if not a.startswith("-") and "=" not in a]
    if len(positional) > 1:
        raise cli.ConfigError(f"one RUN_DIR expected, got {len(positional)}: {' '.join(positional)}")
    rest = [a for a in argv if a not in positional] + ([f"run_dir={positional[0]}"] if positional else [])
    return cli.main_with_config(rest, USAGE, "evaluate_run", evaluate)


if __name__ == "__main__":
    sys.exit(main())
