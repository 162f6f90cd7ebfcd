"""A minimal reader of real images (a folder or a zip) for reference statistics.

Deliberately small and independent of ``stylenat.data``: sorted image files (recursively), each decoded
with PIL, converted to RGB (grey is replicated, as NVIDIA's loader does), never resized; batches are
uint8 NCHW tensors. Consecutive images of different sizes end a batch early (the feature extractor
resizes each batch to 299 itself).
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".tif", ".tiff")


class ImageFiles:
    """Sorted images of a folder (recursive) or a zip archive."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        self._zip: zipfile.ZipFile | None = None
        if self.path.is_dir():
            self.kind = "folder"
            names = []
            for root, _dirs, files in os.walk(self.path):
                for f in files:
                    if f.lower().endswith(IMAGE_EXTENSIONS):
                        names.append(Path(root, f).relative_to(self.path).as_posix())
        elif self.path.is_file() and zipfile.is_zipfile(self.path):
            self.kind = "zip"
            with zipfile.ZipFile(self.path) as z:
                names = [
                    n for n in z.namelist() if n.lower().endswith(IMAGE_EXTENSIONS) and not n.endswith("/")
                ]
        elif self.path.exists():
            raise ValueError(f"not an image folder or zip archive: {self.path}")
        else:
            raise FileNotFoundError(f"image folder or zip not found: {self.path}")
        self.names = sorted(names)
        if not self.names:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {self.path}")

    def __len__(self) -> int:
        return len(self.names)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_zip"] = None
        return state

    def _open(self, name: str):
        if self.kind == "folder":
            return open(self.path / name, "rb")
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.path)
        return io.BytesIO(self._zip.read(name))

    def read(self, index: int) -> np.ndarray:
        """Image ``index`` as uint8 [H, W, 3]."""
        name = self.names[index]
        try:
            with self._open(name) as f, Image.open(f) as img:
                return np.asarray(img.convert("RGB"), dtype=np.uint8)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot decode image {name} in {self.path}: {exc}") from exc

    def fingerprint(self) -> str:
        """sha256 of the sorted names with their sizes (folder) or sizes and CRC32s (zip)."""
        h = hashlib.sha256()
        h.update(f"{self.kind}:{len(self.names)}\n".encode())
        if self.kind == "zip":
            with zipfile.ZipFile(self.path) as z:
                infos = {i.filename: i for i in z.infolist()}
            for n in self.names:
                h.update(f"{n}\t{infos[n].file_size}\t{infos[n].CRC:08x}\n".encode())
        else:
            for n in self.names:
                h.update(f"{n}\t{(self.path / n).stat().st_size}\n".encode())
        return h.hexdigest()

    def batches(self, batch_size: int, indices: Sequence[int] | None = None) -> Iterator[torch.Tensor]:
        """uint8 [B, 3, H, W] batches of the images at ``indices`` (default: all), in that order."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = range(len(self)) if indices is None else indices
        pending: list[np.ndarray] = []
        for i in order:
            img = self.read(int(i))
            if pending and (img.shape != pending[0].shape or len(pending) == batch_size):
                yield torch.from_numpy(np.stack(pending)).permute(0, 3, 1, 2).contiguous()
                pending = []
            pending.append(img)
        if pending:
            yield torch.from_numpy(np.stack(pending)).permute(0, 3, 1, 2).contiguous()


def select_indices(num_available: int, count: int | None, subset: str = "first", seed: int = 0) -> np.ndarray:
    """Which real images to use: all (``count`` None), the first ``count``, or a seeded random ``count``.

    Asking for more images than there are is an error (the reference statistics would silently differ).
    """
    if count is None:
        return np.arange(num_available)
    if count < 1:
        raise ValueError(f"number of real images must be >= 1, got {count}")
    if count > num_available:
        raise ValueError(f"requested {count} real images but the data set has only {num_available}")
    if subset == "first":
        return np.arange(count)
    if subset == "random":
        return np.sort(np.random.RandomState(seed).choice(num_available, count, replace=False))
    raise ValueError(f"unknown real subset {subset!r}; known: first, random")
