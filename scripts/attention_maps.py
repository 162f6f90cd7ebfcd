#!/usr/bin/env python
"""True neighborhood attention maps of a snapshot, per head group, drawn over the generated images.

    python scripts/attention_maps.py checkpoint=<snapshot> seeds=[0] queries=[[y,x],...] outdir=<dir>

Keys (Hydra override syntax) are documented in configs/attention_maps.yaml; the work is
stylenat.attention_maps.run_attention_maps.
"""

from __future__ import annotations

import sys

from stylenat import cli

USAGE = """\
usage: python scripts/attention_maps.py checkpoint=<snapshot> queries=[[y,x],...] [seeds=[0]] [outdir=DIR]
                                        [layers=[stage16,...]] [proxy=true] [key=value ...] [--cfg] [--help]

For each seed and query pixel, the real attention weights of every head group of every neighborhood
attention layer (softmax over its k x k window of q.k*scale + RPB), drawn over the image at that stage's
resolution (seed<N>_<layer>.png), saved as arrays (attention.npz, meta.json), with the mean attention
distance per head group and stage (printed, attention_distance.json). Keys (Hydra override syntax) are
documented in configs/attention_maps.yaml."""


def attention_maps(cfg) -> None:
    from omegaconf import OmegaConf

    from stylenat.attention_maps import distance_summary, distance_table, run_attention_maps

    cli.setup_logging()
    maps = run_attention_maps(**OmegaConf.to_container(cfg, resolve=True))
    print(distance_table(distance_summary(maps)))
    print(f"wrote {cfg.outdir}")


@cli.user_errors_to_exit
def main(argv: list[str] | None = None) -> int:
    return cli.main_with_config(
        sys.argv[1:] if argv is None else argv, USAGE, "attention_maps", attention_maps
    )


if __name__ == "__main__":
    sys.exit(main())
