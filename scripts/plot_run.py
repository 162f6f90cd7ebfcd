#!/usr/bin/env python
"""Learning curves of a training run: RUN_DIR/log.jsonl -> RUN_DIR/curves.png.

    python scripts/plot_run.py RUN_DIR [--out PATH]

Panels against kimg, each only when the log holds its keys: D/G losses, D(real)/D(fake) logits, R1, ADA p
and r_t, learning rates, and one panel per metric (fid1k, ...). Runs write the same figure when they end
(logger.plots=true); scripts/evaluate_run.py adds metrics of every snapshot and re-plots.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from stylenat.cli import user_errors_to_exit  # noqa: E402
from stylenat.training.curves import plot_run  # noqa: E402


@user_errors_to_exit
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a training run directory (holds log.jsonl)")
    p.add_argument("--out", default=None, help="where to write the PNG (default: RUN_DIR/curves.png)")
    args = p.parse_args(argv)
    print(plot_run(args.run_dir, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
