#!/usr/bin/env python
"""Metrics of every snapshot of a training run, appended to its log.jsonl, then the curves re-plotted.

    python scripts/evaluate_run.py RUN_DIR metrics=[fid1k] [num_gen=N batch=32 device=cpu ...]

Keys (Hydra override syntax) are documented in configs/evaluate_run.yaml. A rerun computes only the
(snapshot, metric) pairs the log does not hold yet.
"""

from __future__ import annotations

import json
import sys

from stylenat import cli

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
    """RUN_DIR is positional (key run_dir); everything else is the common command line (stylenat.cli)."""
    argv = cli.translate_argv(sys.argv[1:] if argv is None else argv, positional=("run_dir",))
    return cli.main_with_config(argv, USAGE, "evaluate_run", evaluate)


if __name__ == "__main__":
    sys.exit(main())
