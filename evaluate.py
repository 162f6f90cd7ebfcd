"""Metrics of a snapshot: `python evaluate.py checkpoint=<snapshot> metrics=[fid50k_full] ref_stats=<npz>`."""

import sys

from stylenat import cli

USAGE = """\
usage: python evaluate.py checkpoint=<snapshot> metrics=[fid50k_full] (dataset=<name> dataset.path=<data> |
                          ref_stats=<npz>) [key=value ...] [--cfg] [--help]

Hydra override syntax; keys are documented in configs/evaluate.yaml."""


def evaluate(cfg) -> None:
    from stylenat.distributed import env_rank
    from stylenat.evaluation import parse_evaluate_config, run_evaluate

    config = parse_evaluate_config(cfg)  # every key checked before a network is loaded
    cli.setup_logging(env_rank())
    run_evaluate(config)


@cli.user_errors_to_exit
def main(argv: list[str]) -> int:
    return cli.main_with_config(argv, USAGE, "evaluate", evaluate)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
