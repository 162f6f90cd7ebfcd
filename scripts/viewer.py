#!/usr/bin/env python
"""The browser viewer of a snapshot, served from this machine (open it through an SSH tunnel).

    python scripts/viewer.py checkpoint=<snapshot> [port=8000] [host=127.0.0.1]

Keys (Hydra override syntax) are documented in configs/viewer.yaml; the work is
stylenat.viewer.server.run_viewer (needs ``pip install 'stylenat[viewer]'``).
"""

import sys

from stylenat import cli

USAGE = """\
usage: python scripts/viewer.py checkpoint=<snapshot> [port=8000] [host=127.0.0.1] [device=auto] [dtype=fp32]
                                [key=value ...] [--cfg] [--help]

Serves one page: the image of a seed (truncation, class, style mixing), interpolation strips and videos, and
the attention of every head group at a clicked pixel. Listens on 127.0.0.1 unless host= says otherwise; from
another machine: ssh -L 8000:127.0.0.1:8000 user@host, then open http://localhost:8000. Keys are documented
in configs/viewer.yaml."""


def viewer(cfg) -> None:
    from stylenat.viewer.server import run_viewer

    cli.setup_logging()
    run_viewer(cfg)


@cli.user_errors_to_exit
def main(argv: list[str] | None = None) -> int:
    return cli.main_with_config(sys.argv[1:] if argv is None else argv, USAGE, "viewer", viewer)


if __name__ == "__main__":
    sys.exit(main())
