"""The one image reader of training and metrics: a path -> a folder, zip or LMDB data set.

Training reads it through ``sampler.build_loader`` at the model resolution; the metrics read it with
``resolution=None`` (images as stored, the Inception protocols resize) through :func:`uint8_batches`.
Both therefore see the same files: one list of extensions, one hidden-file rule (``images``).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from stylenat.data.datasets import ImageDataset, ImageFolderDataset, ZipDataset
from stylenat.data.errors import DatasetError
from stylenat.data.images import check_resolution
from stylenat.data.lmdb_dataset import LMDBDataset
from stylenat.data.transforms import check_normalize


def build_dataset(
    path,
    resolution: int | None,
    normalize: str | None = "imagenet",
    xflip: bool = False,
    max_images: int | None = None,
    use_labels=False,
) -> ImageDataset:
    """Open ``path`` as an LMDB (directory with data.mdb), a zip (.zip file) or an image folder.

    ``resolution`` None opens the images as stored (see ``datasets``), what the metrics read.
    ``use_labels`` (auto | True | False): its dataset.json class labels (``labels``)."""
    check_normalize(normalize)
    if resolution is not None:
        check_resolution(resolution)
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"dataset path {p} does not exist")
    if p.is_file() and p.name == "data.mdb":
        p = p.parent
    if p.is_dir():
        cls = LMDBDataset if (p / "data.mdb").is_file() else ImageFolderDataset
    elif p.suffix.lower() == ".zip" or zipfile.is_zipfile(p):
        cls = ZipDataset
    else:
        raise DatasetError(
            f"unsupported dataset path {p}: expected an image folder, a .zip archive or an LMDB directory"
        )
    return cls(p, resolution, normalize=normalize, xflip=xflip, max_images=max_images, use_labels=use_labels)


def stored_size(path) -> tuple[int, int, str]:
    """(width, height, name) of the data set's first image as stored: the resolution StyleGAN2-ADA trains
    a data set at (``dataset.resolution: auto``). Reads one image."""
    dataset = build_dataset(path, None, normalize=None, max_images=1)
    if dataset.num_images == 0:
        raise DatasetError(f"{path} holds no images")
    height, width = dataset.load_uint8(0).shape[-2:]
    return int(width), int(height), dataset.image_name(0)


def dataset_fingerprint(dataset) -> str:
    """Stable sha256 hex identifying a data set's content and resolution (see ``ImageDataset.fingerprint``)."""
    fp = getattr(dataset, "fingerprint", None)
    if not isinstance(fp, str):
        raise DatasetError(f"cannot fingerprint {type(dataset).__name__}: expected a stylenat ImageDataset")
    return fp


def uint8_batches(
    dataset: ImageDataset, batch_size: int, indices: Sequence[int] | None = None
) -> Iterator[torch.Tensor]:
    """uint8 [B, 3, H, W] batches of the images at ``indices`` (default: all), in order, read in this
    process. Images of another size than the previous one start a new batch, so a data set opened as
    stored may hold images of any size."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pending: list[torch.Tensor] = []
    for i in range(len(dataset)) if indices is None else indices:
        img = dataset.load_uint8(int(i))
        if pending and (img.shape != pending[0].shape or len(pending) == batch_size):
            yield torch.stack(pending)
            pending = []
        pending.append(img)
    if pending:
        yield torch.stack(pending)
