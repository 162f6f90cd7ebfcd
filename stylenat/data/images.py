"""PIL-only image handling shared by every data set format and by ``prepare_dataset`` (no torch, so
the prepare script starts fast). One code path for "decode -> RGB 8-bit -> square -> resolution" is
what makes a folder, the zip prepared from it and an LMDB of the same images give identical tensors.

Conversion policy (``to_rgb8``):
  * 8-bit RGB passes through; L, 1, CMYK, YCbCr, LA, P (palette), RGBA become RGB via Pillow's
    ``convert("RGB")``, what StyleGAN2-ADA's dataset_tool (``--img-format=RGB``) and rosinality's
    prepare_data (the reference's LMDB) run. Grayscale is replicated to three equal channels.
  * Alpha is dropped, not composited: a transparent pixel keeps the colour stored under it (often
    black), for RGBA, LA and palette transparency alike.
  * 16-bit / 32-bit integer grayscale (modes I;16*, I) is scaled to 8 bits (round(v / 257)); Pillow's
    own ``convert`` would clip everything above 255 to white. (16-bit RGB PNGs already open as 8-bit.)
  * A mode outside ``CONVERTIBLE_MODES`` is skipped at indexing like an unreadable file.
  * EXIF orientation is not applied (as dataset_tool and the reference code).

Geometry policy (``fit_square``): a non-square image is center-cropped to its short side, then a
square of another size is resized to the resolution with the chosen filter (LANCZOS by default).
Smaller images are upscaled the same way; ``index_image_folder`` warns about them once, naming how many
and the first one. Resolution ``None`` keeps every image as stored (no crop, no resize): what the
metrics read, since the Inception protocols do their own resize to 299.

Indexing (``index_image_folder``, the full policy table is in ``datasets``): every candidate is opened
and checked once, in sorted order; failures are skipped with a ``DatasetWarning`` naming the file. The
resulting index is fixed before any sample is drawn, identical in every rank and worker, and shared by
the folder data set and ``prepare_dataset`` (so both hold the same images in the same order).
"""

from __future__ import annotations

import logging
import operator
import os
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from stylenat.data.errors import DatasetError, DatasetWarning

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
MANIFEST_NAME = "manifest.json"
FILTERS = {"lanczos": Image.Resampling.LANCZOS, "box": Image.Resampling.BOX}

# What Pillow raises on a broken or unidentifiable file (UnidentifiedImageError is an OSError).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# Modes ``to_rgb8`` converts; anything else (e.g. "La") is skipped at indexing with a warning.
CONVERTIBLE_MODES = frozenset(
    ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "F")
    + _SIXTEEN_BIT_MODES
)
_JPEG_EOI = b"\xff\xd9"
# Expected beside the images (our manifest, dataset_tool's labels): neither images nor counted as foreign.
_COMPANION_FILES = frozenset((MANIFEST_NAME, "dataset.json"))


def check_resolution(resolution) -> int:
    """Validate a requested resolution (a positive int)."""
    try:
        r = operator.index(resolution)
    except TypeError:
        raise DatasetError(f"resolution must be a positive integer, got {resolution!r}") from None
    if isinstance(resolution, bool) or r < 1:
        raise DatasetError(f"resolution must be a positive integer, got {resolution!r}")
    return r


def check_max_images(max_images) -> int | None:
    """Validate an optional image limit (None or a positive int)."""
    if max_images is None:
        return None
    try:
        n = operator.index(max_images)
    except TypeError:
        n = 0
    if isinstance(max_images, bool) or n < 1:
        raise DatasetError(f"max_images must be a positive integer or None, got {max_images!r}")
    return n


def resample_filter(name: str) -> Image.Resampling:
    """Map a filter name ('lanczos' | 'box') to Pillow's constant."""
    try:
        return FILTERS[name]
    except (KeyError, TypeError):
        raise DatasetError(f"unknown resize filter {name!r}: expected one of {', '.join(FILTERS)}") from None


def is_image_name(name: str) -> bool:
    """True for an image suffix in a path with no hidden component (``.x``, ``__MACOSX``)."""
    parts = name.replace("\\", "/").split("/")
    if any(p.startswith(".") or p == "__MACOSX" for p in parts if p):
        return False
    return name.lower().endswith(IMAGE_EXTENSIONS)


def to_rgb8(img: Image.Image) -> Image.Image:
    """Return ``img`` as 8-bit RGB following the module's conversion policy."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if img.mode == "F":
        arr = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if img.mode in ("P", "PA"):
        # Through RGBA so palette transparency does not trigger Pillow's warning; alpha is then dropped.
        img = img.convert("RGBA")
    return img.convert("RGB")


def fit_square(
    img: Image.Image, resolution: int, resample: Image.Resampling = Image.Resampling.LANCZOS
) -> Image.Image:
    """Center-crop to a square, then resize to ``resolution`` (no-op when already that size)."""
    w, h = img.size
    if w != h:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), resample=resample)
    return img


def load_image_file(
    path, resolution: int | None, resample: Image.Resampling = Image.Resampling.LANCZOS
) -> Image.Image:
    """Decode an image file to 8-bit RGB at ``resolution`` (None: as stored); a failure names the file."""
    try:
        with Image.open(path) as im:
            im.load()
            img = to_rgb8(im)
    except DECODE_ERRORS as e:
        raise DatasetError(f"cannot decode image {path}: {e}") from e
    return img if resolution is None else fit_square(img, resolution, resample)


def _walk_folder(root: Path) -> tuple[list[str], list[str]]:
    """(image files, other files) below ``root`` as sorted relative POSIX paths.

    Symlinks are followed (cycles cut); hidden files and directories (``.x``, ``__MACOSX``) and the
    companion files ``manifest.json`` / ``dataset.json`` are in neither list. A directory is walked whatever its name (``x.png/`` is a folder, not an image). A
    directory that cannot be listed is warned about, naming it, and skipped.
    """
    images, others = [], []
    seen = set()

    def unlistable(err: OSError) -> None:
        msg = f"skipping unreadable directory {err.filename}: {err.strerror or err}"
        warnings.warn(msg, DatasetWarning, stacklevel=3)

    for dirpath, dirnames, filenames in os.walk(root, onerror=unlistable, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__MACOSX"]
        rel_dir = Path(dirpath).relative_to(root)
        for rel in ((rel_dir / f).as_posix() for f in filenames):
            if is_image_name(rel):
                images.append(rel)
            elif not (Path(rel).name.startswith(".") or Path(rel).name in _COMPANION_FILES):
                others.append(rel)
    return sorted(images), sorted(others)


def scan_folder(root: Path) -> list[str]:
    """Sorted relative POSIX paths of image files below ``root`` (symlinks followed, cycles cut)."""
    return _walk_folder(Path(root))[0]


def _jpeg_is_complete(path: Path) -> bool:
    """True when a JPEG file ends with its end-of-image marker (a cheap truncation test)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 2))
        return f.read(2) == _JPEG_EOI


def _check_image(path: Path, verify: bool) -> tuple[tuple[int, int], str]:
    """(size, mode) of an image file after the indexing check; raises a DECODE_ERRORS exception.

    ``verify``: the file is ``verify()``-ed (for PNG: every chunk CRC, the whole file read; a truncated
    WebP already fails to open). Pillow cannot verify JPEG, so a JPEG that does not end with its
    end-of-image marker is decoded in full instead (only those: a complete JPEG costs two bytes of
    reading, a truncated one fails here, not in training).
    """
    with Image.open(path) as im:
        size, mode, fmt = im.size, im.mode, im.format
        if verify:
            if fmt in ("JPEG", "MPO") and not _jpeg_is_complete(path):
                im.load()
            else:
                im.verify()
    if mode not in CONVERTIBLE_MODES:
        raise ValueError(f"image mode {mode!r} cannot be converted to RGB")
    return size, mode


def index_image_folder(root, resolution: int | None, max_images: int | None = None, verify: bool = True):
    """The usable images of a folder as ``(names, sizes, file_bytes)`` (see the module docstring);
    ``resolution`` only decides which images are reported as upscaled (None: none are).

    ``verify=False`` only reads headers (much cheaper on a huge folder, but a truncated file then
    fails at load time with a ``DatasetError`` instead of being skipped)."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"dataset path {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"dataset path {root} is not a directory")
    max_images = check_max_images(max_images)
    candidates, others = _walk_folder(root)
    if others:
        log.info(
            "ignored %d non-image file(s) under %s (e.g. %s): images are %s",
            len(others),
            root,
            others[0],
            " ".join(IMAGE_EXTENSIONS),
        )
    names, sizes, nbytes = [], [], []
    small, skipped = [], 0
    for rel in candidates:
        if max_images is not None and len(names) >= max_images:
            break
        path = root / rel
        try:
            size, _ = _check_image(path, verify)
            file_size = path.stat().st_size
        except DECODE_ERRORS as e:
            warnings.warn(f"skipping unreadable image {path}: {e}", DatasetWarning, stacklevel=2)
            skipped += 1
            continue
        names.append(rel)
        sizes.append(size)
        nbytes.append(file_size)
        if resolution is not None and min(size) < resolution:
            small.append((rel, size))
    if not names:
        detail = []
        if skipped:
            detail.append(f"{skipped} unreadable image(s) skipped")
        if others:
            detail.append(f"{len(others)} non-image file(s) ignored, e.g. {others[0]}")
        detail.append(f"images are {' '.join(IMAGE_EXTENSIONS)}")
        raise DatasetError(f"no images found under {root} ({'; '.join(detail)})")
    if skipped:
        log.warning("skipped %d unreadable image(s) under %s; %d remain", skipped, root, len(names))
    if small:
        rel, (w, h) = small[0]
        warnings.warn(
            f"{len(small)} of {len(names)} images under {root} are smaller than {resolution}x{resolution} "
            f"(e.g. {rel} is {w}x{h}); they are upscaled",
            DatasetWarning,
            stacklevel=2,
        )
    return names, sizes, nbytes
