#!/usr/bin/env python
"""Learning curves of a training run: RUN_DIR/log.jsonl -> RUN_DIR/curves.png.

    python scripts/plot_run.py RUN_DIR [--out PATH]

Panels against kimg, each only when the log holds its keys: D/G losses, D(real)/D(fake) logits, R1, ADA p
and r_t, learning rates, and one panel per metric (fid1k, ...). Runs write the same figure when they end
(logger.plots=true); scripts/evaluate_run.py adds metrics of every snapshot and re-plots. Keys (Hydra
override syntax) are documented in configs/plot_run.yaml.
"""

import sys

from stylenat import cli

USAGE = """\
usage: python scripts/plot_run.py RUN_DIR [--out PATH] [--cfg] [--help]

Writes the learning curves of RUN_DIR/log.jsonl to RUN_DIR/curves.png (or --out PATH, key out=) and prints
the path. Keys are documented in configs/plot_run.yaml."""


def plot(cfg) -> None:
    from stylenat.training.curves import plot_run

    print(plot_run(cfg.run_dir, cfg.out))


@cli.user_errors_to_exit
def main(argv: list[str] | None = None) -> int:
    argv = cli.translate_argv(
        sys.argv[1:] if argv is None else argv, positional=("run_dir",), flags={"--out": ("out", cli.VALUE)}
    )
    return cli.main_with_config(argv, USAGE, "plot_run", plot)


if __name__ == "__main__":
    sys.exit(main())
