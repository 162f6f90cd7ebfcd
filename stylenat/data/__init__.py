"""Data: image data sets (folder, zip, LMDB), normalisation, the demo set, resumable sampling.

Used by training and metrics, never by models. See the module docstrings of ``datasets`` (formats and
the unreadable-file / resize / x-flip policies) and ``sampler`` (how to resume).
"""

from stylenat.data.datasets import (
    IMAGE_EXTENSIONS,
    ImageDataset,
    ImageFolderDataset,
    LMDBDataset,
    ZipDataset,
    build_dataset,
    dataset_fingerprint,
    lmdb_key,
)
from stylenat.data.demo import demo_dataset_path
from stylenat.data.errors import DatasetError, DatasetWarning
from stylenat.data.prepare import prepare_dataset
from stylenat.data.sampler import BatchStream, InfiniteSampler, build_loader
from stylenat.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALIZATIONS,
    denormalize,
    normalize,
    to_uint8,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "NORMALIZATIONS",
    "BatchStream",
    "DatasetError",
    "DatasetWarning",
    "ImageDataset",
    "ImageFolderDataset",
    "InfiniteSampler",
    "LMDBDataset",
    "ZipDataset",
    "build_dataset",
    "build_loader",
    "dataset_fingerprint",
    "demo_dataset_path",
    "denormalize",
    "lmdb_key",
    "normalize",
    "prepare_dataset",
    "to_uint8",
]
