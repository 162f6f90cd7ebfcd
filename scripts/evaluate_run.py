#!/usr/bin/env python
"""Metrics of every snapshot of a training run, appended to its log.jsonl, then the curves re-plotted.

    python scripts/evaluate_run.py RUN_DIR metrics=[fid1k] [num_gen=N batch=32 device=cpu ...]

Keys (Hydra override syntax) are documented in configs/evaluate_run.yaml. A rerun computes only the
(snapshot, metric) pairs the log does not hold yet.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from stylenat.cli import user_errors_to_exit  # noqa: E402
from stylenat.training.config import default_config_dir  # noqa: E402
from stylenat.training.run_metrics import evaluate_run_main  # noqa: E402


@user_errors_to_exit
def main(argv: list[str] | None = None) -> int:
    return evaluate_run_main(default_config_dir(), sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
