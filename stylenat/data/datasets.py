"""Image data sets for training and metrics: a folder, a StyleGAN2-ADA zip, a reference-layout LMDB.

All three decode with the same code path (``images``), so the same images give identical tensors.
``dataset[i]`` is a float32 tensor (3, R, R) in the chosen normalisation (``normalize=None``: uint8).

Formats
  * folder: every ``.png .jpg .jpeg .webp`` file below the directory (recursive, case-insensitive suffix,
    hidden files and directories skipped), ordered by relative POSIX path; other files are ignored.
  * zip: the StyleGAN2-ADA ``dataset_tool`` layout (images at any path inside, ordered by member name;
    ``dataset.json`` labels and our ``manifest.json`` are not images and are not returned).
  * LMDB: rosinality / StyleNAT reference layout, keys ``f"{R}-{i:05d}"`` -> encoded image bytes and
    ``b"length"`` -> ascii count.
  Zip and LMDB handles are opened lazily in the process that reads (each DataLoader worker), and
  re-opened after a fork, because neither is fork-safe.

Data faults (the policy; every message names the offending file, member or key)
  The folder index is built once, in sorted order, before any sample is drawn, so it is identical in
  every rank and worker; nothing is ever silently substituted at training time.

  ==================================  =========================================================
  fault                               outcome
  ==================================  =========================================================
  missing path                        ``DatasetError``: "dataset path P does not exist"
  no usable image (empty folder,      ``DatasetError``, one line: "no images found under P (...)"
  only foreign or broken files)       with the counts of skipped / ignored files
  non-image file (.txt, .gif, ...)    ignored; one INFO log line with their count and an example
  hidden file or directory,           ignored silently (``.x``, ``__MACOSX``)
  manifest.json, dataset.json
  directory named like an image       walked like any directory (it is not an image)
  unreadable file (permissions,       skipped at indexing, one ``DatasetWarning`` per file naming
  broken symlink), corrupt bytes,     it, plus one log line with the number skipped
  truncated PNG / WebP / JPEG,
  mode that cannot become RGB
  L, LA, RGBA, P, I;16, I, CMYK ...   converted to 8-bit RGB (``images.to_rgb8``): alpha dropped,
                                      not composited; 16-bit scaled by 1/257
  image smaller than the resolution   upscaled (LANCZOS), one ``DatasetWarning`` at construction
                                      with their count and the first one's name and size
  non-square image                    center-cropped to the short side, then resized
  file broken after indexing          ``DatasetError`` "cannot decode image P: ..." when it is
  (changed, truncated, deleted)       read, also from a DataLoader worker (kept one line);
                                      the run stops: fix the file and resume (removing it
                                      changes the index, hence the order of later images)
  data set smaller than one batch     allowed: the infinite sampler repeats images within a
                                      batch; ``build_loader`` warns once naming both sizes
  zip / LMDB: bad member or value,    not verified up front (prepared formats): ``DatasetError``
  missing key                         naming the member / key when it is read
  zip / LMDB: wrong image size        ``DatasetError`` naming both sizes (checked on the first
                                      image at construction and on every load)
  ==================================  =========================================================

  Truncation checks: PNGs are ``verify()``-ed (the whole file is read once, chunk CRCs checked); a
  truncated WebP already fails to open; Pillow cannot verify JPEG, so a JPEG not ending with its
  end-of-image marker is decoded in full at indexing (only those). ``verify=False`` reads headers
  only: broken files then fail when read, as above.

Sizes
  * folder: non-square images are center-cropped to their short side, then resized to R with LANCZOS;
    images smaller than R are upscaled the same way, with one ``DatasetWarning`` at construction.
  * zip / LMDB must hold R x R images already (checked on the first image at construction and on every
    load); another size is a ``DatasetError`` naming both, e.g. prepare a new zip with ``prepare_dataset``.
  * R = ``None`` (the metrics): every image as stored, no crop, no resize, no size check; an LMDB then
    uses its one stored resolution (several: a ``DatasetError`` asking for one).

Labels (``use_labels``: auto | True | False, default False): StyleGAN2-ADA's ``dataset.json`` of a folder
or zip (format and faults: ``labels``). With labels in use, ``dataset[i]`` is ``(image, class)`` and
``labels`` / ``c_dim`` / ``class_names`` describe them; ``auto`` uses them when the data has any, ``True``
without labels (an LMDB, or no dataset.json) is a ``DatasetError``.

x-flip (StyleGAN2-ADA style, no RNG): with ``xflip=True`` the data set has 2N items and item i >= N is
the mirror image of item i - N. A shuffling sampler then draws random flips deterministically, which is
what keeps resumed runs bit-identical.
"""

from __future__ import annotations

import hashlib
import io
import json
import operator
import os
import zipfile
from pathlib import Path

import torch
from PIL import Image

from stylenat.data.errors import DatasetError
from stylenat.data.images import (
    DECODE_ERRORS,
    MANIFEST_NAME,
    check_max_images,
    check_resolution,
    index_image_folder,
    is_image_name,
    load_image_file,
    to_rgb8,
)
from stylenat.data.labels import LABELS_NAME, check_use_labels, match_labels, parse_entries, read_labels_json
from stylenat.data.transforms import check_normalize, pil_to_uint8_tensor
from stylenat.data.transforms import normalize as normalize_images


def _hash_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class ImageDataset(torch.utils.data.Dataset):
    """Shared behaviour: raw index -> decoded RGB image, x-flip doubling, normalisation."""

    format = "abstract"

    def __init__(
        self,
        path,
        resolution: int | None,
        normalize: str | None = "imagenet",
        xflip: bool = False,
        use_labels=False,
    ):
        self.path = Path(path)
        self.resolution = None if resolution is None else check_resolution(resolution)
        self.normalize = check_normalize(normalize)
        self.xflip = bool(xflip)
        self.use_labels = check_use_labels(use_labels)
        self.labels = None  # np.int64 class per stored image, when labels are in use
        self.c_dim = 0  # number of classes (0: unlabelled)
        self.class_names = None

    def _open_labels(self) -> None:
        """Read and check the labels (subclasses call it once their images are indexed)."""
        if self.use_labels is False:
            return
        data, where = self._labels_json()
        parsed = parse_entries(data, where)
        if parsed is None:
            if self.use_labels is True:
                raise DatasetError(
                    f"use_labels=true but {self.path} has no class labels (a {LABELS_NAME} with a labels "
                    "list, e.g. from scripts/prepare_dataset.py --class-folders)"
                )
            return
        self.labels, self.c_dim, self.class_names = match_labels(
            parsed, self.names, where, str(self.path), self._label_file_exists
        )

    def _labels_json(self) -> tuple[dict | None, str]:
        return read_labels_json(self.path)

    def _label_file_exists(self, name: str) -> bool:
        return (self.path / name).is_file()

    # -- subclass interface -------------------------------------------------------------------
    @property
    def num_images(self) -> int:
        """Number of distinct stored images (len() is twice that with x-flip)."""
        raise NotImplementedError

    def image_name(self, raw_index: int) -> str:
        """A human-readable name of a stored image (relative path, member name or key)."""
        raise NotImplementedError

    def _load_raw(self, raw_index: int) -> Image.Image:
        """Decode stored image ``raw_index`` to 8-bit RGB at the data set resolution."""
        raise NotImplementedError

    def _fingerprint_payload(self) -> dict:
        raise NotImplementedError

    # -- public ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.num_images * (2 if self.xflip else 1)

    def _resolve(self, index: int) -> tuple[int, bool]:
        n = len(self)
        index = operator.index(index)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for a data set of {n} items")
        return index % self.num_images, index >= self.num_images

    def load_uint8(self, index: int) -> torch.Tensor:
        """Item ``index`` as a uint8 tensor (3, R, R), mirrored for the x-flip half."""
        raw, flip = self._resolve(index)
        x = pil_to_uint8_tensor(self._load_raw(raw))
        return x.flip(-1) if flip else x

    def __getitem__(self, index: int):
        image = normalize_images(self.load_uint8(index), self.normalize)
        if self.labels is None:
            return image
        return image, int(self.labels[self._resolve(index)[0]])

    @property
    def fingerprint(self) -> str:
        """A stable sha256 hex of the content identity, resolution and x-flip (not the normalisation,
        which is invertible), cheap enough to key cached reference statistics."""
        payload = {"format": self.format, "resolution": self.resolution, "xflip": self.xflip}
        payload.update(self._fingerprint_payload())
        return _hash_json(payload)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(path={str(self.path)!r}, images={self.num_images}, "
            f"resolution={self.resolution}, normalize={self.normalize!r}, xflip={self.xflip})"
        )


class ImageFolderDataset(ImageDataset):
    """Images below a directory, center-cropped and LANCZOS-resized to the resolution on load (resolution
    None: as stored)."""

    format = "folder"

    def __init__(
        self,
        path,
        resolution: int | None,
        normalize: str | None = "imagenet",
        xflip: bool = False,
        max_images: int | None = None,
        verify: bool = True,
        use_labels=False,
    ):
        super().__init__(path, resolution, normalize, xflip, use_labels)
        self.names, self.sizes, self._nbytes = index_image_folder(
            self.path, self.resolution, check_max_images(max_images), verify
        )
        self._open_labels()

    @property
    def num_images(self) -> int:
        return len(self.names)

    def image_name(self, raw_index: int) -> str:
        return self.names[raw_index]

    def _load_raw(self, raw_index: int) -> Image.Image:
        return load_image_file(self.path / self.names[raw_index], self.resolution)

    def _fingerprint_payload(self) -> dict:
        return {"files": [[n, s] for n, s in zip(self.names, self._nbytes)]}


class _EncodedImageDataset(ImageDataset):
    """Formats that store encoded R x R images (zip, LMDB): index at construction (``_index``),
    check the first image, then release the handle; decode, check the size, convert on load."""

    def __init__(
        self,
        path,
        resolution: int | None,
        normalize: str | None = "imagenet",
        xflip: bool = False,
        max_images: int | None = None,
        use_labels=False,
    ):
        super().__init__(path, resolution, normalize, xflip, use_labels)
        if not self.path.exists():
            raise DatasetError(f"dataset path {self.path} does not exist")
        try:
            self._index(max_images)
            self._decode(0, check_only=True)
            self._open_labels()
        finally:
            self.close()

    def _index(self, max_images: int | None) -> None:
        raise NotImplementedError

    def _read_bytes(self, raw_index: int) -> bytes:
        raise NotImplementedError

    def _decode(self, raw_index: int, check_only: bool = False) -> Image.Image | None:
        name = self.image_name(raw_index)
        img = None
        want = None if self.resolution is None else (self.resolution, self.resolution)
        try:
            with Image.open(io.BytesIO(self._read_bytes(raw_index))) as im:
                size = im.size
                if want in (None, size) and not check_only:
                    im.load()
                    img = to_rgb8(im)
        except (*DECODE_ERRORS, zipfile.BadZipFile) as e:
            raise DatasetError(f"cannot decode image {name} in {self.path}: {e}") from e
        if want not in (None, size):
            raise DatasetError(
                f"{self.path} holds {size[0]}x{size[1]} images (e.g. {name}) but resolution "
                f"{self.resolution} was requested; prepare a {self.resolution}x{self.resolution} "
                f"copy with scripts/prepare_dataset.py"
            )
        return img

    def _load_raw(self, raw_index: int) -> Image.Image:
        return self._decode(raw_index)


class ZipDataset(_EncodedImageDataset):
    """A StyleGAN2-ADA ``dataset_tool`` zip of R x R images (opened lazily per process)."""

    format = "zip"
    _handle, _handle_pid = None, None

    def _index(self, max_images: int | None) -> None:
        try:
            with zipfile.ZipFile(self.path) as zf:
                infos = sorted(
                    (i for i in zf.infolist() if not i.is_dir() and is_image_name(i.filename)),
                    key=lambda i: i.filename,
                )
                self.manifest = self._read_manifest(zf)
        except (zipfile.BadZipFile, OSError) as e:
            raise DatasetError(f"{self.path} is not a readable zip archive: {e}") from e
        max_images = check_max_images(max_images)
        if max_images is not None:
            infos = infos[:max_images]
        if not infos:
            raise DatasetError(f"no images found under {self.path}")
        self.names = [i.filename for i in infos]
        self._crc = [[i.filename, i.file_size, i.CRC] for i in infos]
        stored = self.manifest.get("resolution") if self.manifest else None
        if stored is not None and self.resolution is not None and stored != self.resolution:
            raise DatasetError(
                f"{self.path} holds {stored}x{stored} images (manifest) but resolution {self.resolution} "
                f"was requested; prepare a {self.resolution}x{self.resolution} copy with scripts/prepare_dataset.py"
            )

    def _read_manifest(self, zf: zipfile.ZipFile) -> dict | None:
        if MANIFEST_NAME not in zf.namelist():
            return None
        try:
            manifest = json.loads(zf.read(MANIFEST_NAME))
        except ValueError as e:
            raise DatasetError(f"{self.path}: {MANIFEST_NAME} is not valid JSON: {e}") from e
        return manifest if isinstance(manifest, dict) else None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handle"], state["_handle_pid"] = None, None
        return state

    def _zip(self) -> zipfile.ZipFile:
        if self._handle is None or self._handle_pid != os.getpid():
            self._handle, self._handle_pid = zipfile.ZipFile(self.path), os.getpid()
        return self._handle

    def _label_file_exists(self, name: str) -> bool:
        try:
            self._zip().getinfo(name)
        except KeyError:
            return False
        return True

    def close(self) -> None:
        """Close this process's zip handle (it re-opens on the next read)."""
        if self._handle is not None and self._handle_pid == os.getpid():
            self._handle.close()
        self._handle, self._handle_pid = None, None

    @property
    def num_images(self) -> int:
        return len(self.names)

    def image_name(self, raw_index: int) -> str:
        return self.names[raw_index]

    def _read_bytes(self, raw_index: int) -> bytes:
        return self._zip().read(self.names[raw_index])

    def _fingerprint_payload(self) -> dict:
        full = (
            self.manifest is not None
            and "sha256" in self.manifest
            and self.manifest.get("count") == len(self.names)
        )
        if full:
            return {"content_sha256": self.manifest["sha256"]}
        return {"members": self._crc}
