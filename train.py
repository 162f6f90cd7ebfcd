"""Train StyleNAT: `python train.py [group=option ...] [key=value ...]`; `--help` lists the config groups.

`python train.py` runs the CPU demo; `python train.py dataset=ffhq256 dataset.path=/data/ffhq` the paper
recipe; `torchrun --nproc_per_node=8 train.py ...` the same on 8 GPUs. Keys: configs/config.yaml and groups.
"""

import sys

from stylenat import cli

USAGE = """\
usage: python train.py [group=option ...] [key=value ...] [--cfg] [--help]
       torchrun --nproc_per_node=N train.py [...]

Hydra override syntax: `dataset=ffhq256 dataset.path=/data/ffhq run_dir=runs/x train.total_kimg=100`.
  --cfg     print the composed config and exit
  --help    this text
Keys are documented in configs/config.yaml and in each group's YAML files."""


def train(cfg, overrides: list[str] = ()) -> None:
    """Parse the composed config (every check, before any data is read or network built), then train.
    ``overrides``: the command line's (``init`` keeps those that keep its weights' shapes)."""
    from stylenat.distributed import env_rank
    from stylenat.training.config import parse_config
    from stylenat.training.run import train as run_training

    config = parse_config(cfg, overrides=overrides)
    cli.setup_logging(env_rank())
    with cli.console_above_progress():
        run_training(config)


@cli.user_errors_to_exit
def main(argv: list[str]) -> int:
    from stylenat.training.config import check_moved_keys

    check_moved_keys(argv)
    overrides = [a for a in argv if not a.startswith("-")]
    return cli.main_with_config(argv, USAGE, "config", lambda cfg: train(cfg, overrides), list_groups=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
