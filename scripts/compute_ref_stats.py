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

import argparse
import logging
import sys
from pathlib import Path

import torch

from stylenat.cli import tune_cpu_allocator
from stylenat.data import uint8_batches
from stylenat.metrics import (
    PROTOCOLS,
    InceptionWeightsError,
    compute_statistics,
    load_inception,
    open_real_images,
    select_indices,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="image folder, zip archive or LMDB directory")
    p.add_argument("out", help="output .npz")
    p.add_argument("--protocol", required=True, choices=sorted(PROTOCOLS))
    p.add_argument("--max-images", type=int, default=None, help="use exactly N images (default: all)")
    p.add_argument(
        "--subset",
        choices=["first", "random"],
        default=None,
        help="which N images with --max-images (default: first for stylegan, random for pytorch_fid)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random subset")
    p.add_argument("--features", action="store_true", help="also store the features (for KID)")
    p.add_argument("--weights", default=None, help="Inception weights file (default: the usual search)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--resolution", type=int, default=None, help="read at R like training (default: as stored)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    tune_cpu_allocator()  # as the other entry points do: large activations reuse memory, no page faults
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
