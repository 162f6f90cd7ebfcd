"""Sample images from a snapshot: `python generate.py checkpoint=<snapshot> seeds=0-15 outdir=out`."""

import sys

from stylenat import cli

USAGE = """\
usage: python generate.py checkpoint=<snapshot> [seeds=0-15] [outdir=generated] [key=value ...] [--cfg] [--help]

Hydra override syntax; keys are documented in configs/generate.yaml."""


def generate(cfg) -> None:
    from stylenat.sampling import parse_generate_config, run_generate

    config = parse_generate_config(cfg)  # every key checked before a network is loaded
    cli.setup_logging()
    run_generate(config)


@cli.user_errors_to_exit
def main(argv: list[str]) -> int:
    return cli.main_with_config(argv, USAGE, "generate", generate)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
