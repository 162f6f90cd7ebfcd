#!/usr/bin/env python
"""Compute Inception reference statistics (mu, sigma + provenance) of a folder, zip or LMDB of real images.

    python scripts/compute_ref_stats.py DATA OUT.npz --protocol {stylegan,pytorch_fid}
        [--max-images N] [--subset {first,random}] [--seed S] [--features]
        [--weights PATH] [--batch B] [--device cpu] [--resolution R]

The images are read by the training data reader (same files, same order), as stored: the protocol
resizes them to 299 (--resolution reads them as training does at R, and picks one of an LMDB's sizes).

``stylegan`` is StyleGAN2-ADA's fid50k_full pipeline, ``pytorch_fid`` the StyleNAT paper's. Without
--max-images every image is used; with it exactly N (the first N for stylegan, a seeded random N for
pytorch_fid, unless --subset says otherwise). --features also stores the features (needed for KID).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from stylenat import cli
from stylenat.data import uint8_batches
from stylenat.metrics import (
    PROTOCOLS,
    InceptionWeightsError,
    compute_statistics,
    load_inception,
    open_real_images,
    select_indices,
)

USAGE = """\
usage: python scripts/compute_ref_stats.py DATA OUT.npz --protocol {stylegan,pytorch_fid} [--max-images N]
           [--subset {first,random}] [--seed S] [--features] [--weights PATH] [--batch B] [--device cpu]
           [--resolution R] [--quiet] [key=value ...] [--cfg] [--help]

Writes OUT.npz: the Inception statistics of DATA under the protocol, with their provenance. Keys and their
flag aliases are documented in configs/compute_ref_stats.yaml."""

FLAGS = cli.flag_aliases(
    values=("protocol", "max_images", "subset", "seed", "weights", "batch", "device", "resolution"),
    switches=("features", "quiet"),
)


@cli.user_errors_to_exit
def main(argv: list[str] | None = None) -> int:
    argv = cli.translate_argv(sys.argv[1:] if argv is None else argv, positional=("data", "out"), flags=FLAGS)
    return cli.main_with_config(argv, USAGE, "compute_ref_stats", compute)


def compute(cfg) -> None:
    from omegaconf import OmegaConf

    args = SimpleNamespace(**OmegaConf.to_container(cfg, resolve=True))
    args.data, args.out = str(args.data), str(args.out)
    if args.protocol not in PROTOCOLS:
        raise cli.ConfigError(f"protocol must be one of {sorted(PROTOCOLS)}, got {args.protocol!r}")
    if args.subset not in (None, "first", "random"):
        raise cli.ConfigError(f"subset must be first or random, got {args.subset!r}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    if out.suffix != ".npz":
        raise SystemExit(f"error: output must end in .npz, got {out}")
    if args.batch < 1:
        raise SystemExit(f"error: --batch must be >= 1, got {args.batch}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {args.device} requested but CUDA is not available")
    subset = args.subset or ("random" if args.protocol == "pytorch_fid" else "first")
    try:
        files = open_real_images(args.data, args.resolution)
        indices = select_indices(len(files), args.max_images, subset, args.seed)
        extractor = load_inception(args.weights, device=args.device)
        stats = compute_statistics(
            uint8_batches(files, args.batch, indices),
            args.protocol,
            extractor,
            total=len(indices),
            data_fingerprint=files.fingerprint,
            keep_features=args.features,
            subset=subset if args.max_images is not None else "all",
            seed=args.seed,
            progress=not args.quiet,
        )
        stats.save(out)
    except (FileNotFoundError, ValueError, InceptionWeightsError, OSError, RuntimeError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(
        f"wrote {out}: {stats.num_images} images of {args.data}, protocol {stats.protocol}, "
        f"weights sha256 {stats.weights_sha256[:16]}"
    )


if __name__ == "__main__":
    sys.exit(main())
