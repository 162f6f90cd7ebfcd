"""Data: image data sets (folder, zip, LMDB), normalisation, the demo set, resumable sampling.

Used by training and metrics, never by models; ``reader`` is the one way both open images. Policies
(unreadable files, resizing, x-flip) are in the docstrings of ``datasets`` and ``images``; resuming is
in ``sampler``. Names are imported lazily
so torch-free tools (``scripts/prepare_dataset.py``) start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "DatasetError": "errors",
    "DatasetWarning": "errors",
    "IMAGE_EXTENSIONS": "images",
    "ImageDataset": "datasets",
    "ImageFolderDataset": "datasets",
    "ZipDataset": "datasets",
    "LMDBDataset": "lmdb_dataset",
    "build_dataset": "reader",
    "dataset_fingerprint": "reader",
    "uint8_batches": "reader",
    "lmdb_key": "lmdb_dataset",
    "IMAGENET_MEAN": "transforms",
    "IMAGENET_STD": "transforms",
    "NORMALIZATIONS": "transforms",
    "normalize": "transforms",
    "denormalize": "transforms",
    "denormalize_to_uint8": "transforms",
    "minus_one_one_to_uint8": "transforms",
    "from_minus_one_one": "transforms",
    "InfiniteSampler": "sampler",
    "BatchStream": "sampler",
    "build_loader": "sampler",
    "demo_dataset_path": "demo",
    "dataset_path_or_demo": "demo",
    "prepare_dataset": "prepare",
    "LABELS_NAME": "labels",
    "label_pool": "labels",
}

__all__ = [
    "BatchStream",
    "DatasetError",
    "DatasetWarning",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "LABELS_NAME",
    "ImageDataset",
    "ImageFolderDataset",
    "InfiniteSampler",
    "LMDBDataset",
    "NORMALIZATIONS",
    "ZipDataset",
    "build_dataset",
    "build_loader",
    "dataset_fingerprint",
    "dataset_path_or_demo",
    "demo_dataset_path",
    "denormalize",
    "denormalize_to_uint8",
    "from_minus_one_one",
    "label_pool",
    "lmdb_key",
    "minus_one_one_to_uint8",
    "normalize",
    "prepare_dataset",
    "uint8_batches",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from stylenat.data.datasets import ImageDataset, ImageFolderDataset, ZipDataset
    from stylenat.data.demo import dataset_path_or_demo, demo_dataset_path
    from stylenat.data.errors import DatasetError, DatasetWarning
    from stylenat.data.images import IMAGE_EXTENSIONS
    from stylenat.data.labels import LABELS_NAME, label_pool
    from stylenat.data.lmdb_dataset import LMDBDataset, lmdb_key
    from stylenat.data.prepare import prepare_dataset
    from stylenat.data.reader import build_dataset, dataset_fingerprint, uint8_batches
    from stylenat.data.sampler import BatchStream, InfiniteSampler, build_loader
    from stylenat.data.transforms import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        NORMALIZATIONS,
        denormalize,
        denormalize_to_uint8,
        from_minus_one_one,
        minus_one_one_to_uint8,
        normalize,
    )
