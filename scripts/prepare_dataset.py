"""Prepare a training zip (StyleGAN2-ADA dataset_tool layout) from a folder of images.

python scripts/prepare_dataset.py SRC DST.zip --resolution 256 [--filter lanczos|box] [--max-images N]
    [--class-folders]   # class labels (dataset.json) from one sub-folder of SRC per class
"""

from __future__ import annotations

import argparse
import json
import warnings


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="folder of images (searched recursively)")
    p.add_argument("dst", help="output .zip")
    p.add_argument("--resolution", type=int, required=True, help="output size in pixels (square)")
    p.add_argument("--filter", default="lanczos", choices=["lanczos", "box"], help="resize filter")
    p.add_argument("--max-images", type=int, default=None, help="keep only the first N images (sorted paths)")
    p.add_argument("--compress-level", type=int, default=0, help="PNG compression 0..9 (0: fastest to read)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument(
        "--class-folders",
        action="store_true",
        help="label each image with its top-level sub-folder (one per class, sorted names -> 0, 1, ...); "
        "without it a dataset.json in SRC is carried over",
    )
    args = p.parse_args(argv)

    from stylenat.data.errors import DatasetError
    from stylenat.data.prepare import prepare_dataset

    warnings.simplefilter("always")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    try:
        manifest = prepare_dataset(
            args.src,
            args.dst,
            args.resolution,
            filter=args.filter,
            max_images=args.max_images,
            overwrite=args.overwrite,
            compress_level=args.compress_level,
            progress=True,
            class_folders=args.class_folders,
        )
    except DatasetError as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps(manifest, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
