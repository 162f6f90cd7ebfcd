#!/usr/bin/env python
"""Invert a photo into a generator's W (or W+) space: stylegan2-ada-pytorch's projector for StyleNAT.

    python scripts/project.py checkpoint=<snapshot> target=<image> outdir=<dir> [steps=1000 w_plus=true ...]

Keys (Hydra override syntax) are documented in configs/project.yaml; the method in stylenat/projection.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from stylenat import cli

USAGE = """\
usage: python scripts/project.py checkpoint=<snapshot> target=<image> [outdir=projection] [steps=1000]
                                 [w_plus=true] [vgg16=<vgg16.pt>] [gif=true] [key=value ...] [--cfg] [--help]

Finds the w whose image best matches the target photo (center-cropped and resized to the model's
resolution) and writes OUTDIR/projected_w.npz (render it with generate.py projected_w=...), proj.png
(target | projection), projection.json (options, final distances, the loss of every step) and, with
gif=true, proj.gif. Perceptual distance: LPIPS-VGG16 with vgg16=<NVIDIA's vgg16.pt>, else Inception
features (offline). Keys (Hydra override syntax) are documented in configs/project.yaml."""


def project(cfg) -> None:
    from stylenat.projection import parse_project_config, run_projection
    from stylenat.training.config import resolve_config

    config = parse_project_config(resolve_config(cfg))
    cli.setup_logging(0)
    record = run_projection(config)
    final = {"perceptual_distance": record["perceptual_distance"], **record["distances"]}
    print(json.dumps(final))
    print(f"wrote {Path(config.outdir) / 'projected_w.npz'}")


@cli.user_errors_to_exit
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return cli.main_with_config(argv, USAGE, "project", project)


if __name__ == "__main__":
    sys.exit(main())
