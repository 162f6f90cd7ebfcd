#!/usr/bin/env python
"""Prepare a training zip (StyleGAN2-ADA dataset_tool layout) from a folder of images.

python scripts/prepare_dataset.py SRC DST.zip --resolution 256 [--filter lanczos|box] [--max-images N]
    [--class-folders]   # class labels (dataset.json) from one sub-folder of SRC per class

Keys and their flag aliases are documented in configs/prepare_dataset.yaml.
"""

import json
import sys
import warnings

from stylenat import cli

USAGE = """\
usage: python scripts/prepare_dataset.py SRC DST.zip --resolution R [--filter lanczos|box] [--max-images N]
                                         [--compress-level L] [--overwrite] [--class-folders]
                                         [key=value ...] [--cfg] [--help]

Writes DST.zip (images resized to R x R, a manifest inside and DST.manifest.json beside it) and prints the
manifest. Keys and their flag aliases are documented in configs/prepare_dataset.yaml."""

FLAGS = cli.flag_aliases(
    values=("resolution", "filter", "max_images", "compress_level"), switches=("overwrite", "class_folders")
)


def prepare(cfg) -> None:
    from stylenat.data.errors import DatasetError
    from stylenat.data.prepare import prepare_dataset

    if cfg.filter not in ("lanczos", "box"):
        raise cli.ConfigError(f"filter must be lanczos or box, got {cfg.filter!r}")
    warnings.simplefilter("always")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    try:
        manifest = prepare_dataset(
            str(cfg.src),
            str(cfg.dst),
            cfg.resolution,
            filter=cfg.filter,
            max_images=cfg.max_images,
            overwrite=cfg.overwrite,
            compress_level=cfg.compress_level,
            progress=True,
            class_folders=cfg.class_folders,
        )
    except DatasetError as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps(manifest, indent=2, sort_keys=True))


@cli.user_errors_to_exit
def main(argv: list[str] | None = None) -> int:
    argv = cli.translate_argv(sys.argv[1:] if argv is None else argv, positional=("src", "dst"), flags=FLAGS)
    return cli.main_with_config(argv, USAGE, "prepare_dataset", prepare)


if __name__ == "__main__":
    sys.exit(main())
