"""Folder -> zip in the StyleGAN2-ADA ``dataset_tool`` layout, with a content manifest.

Images are taken in the folder data set's order with its unreadable-file policy (skipped with a
warning), converted to 8-bit RGB, center-cropped to a square and resized with the chosen filter (the
same code the folder data set runs, so with LANCZOS the zip reads back identical tensors). They are
stored as ``00000/img00000000.png`` (1000 per directory), PNG compress level 0 in an uncompressed zip
by default as dataset_tool does (fastest to decode while training), with fixed timestamps so the same
input and Pillow give the same bytes. ``manifest.json`` goes inside the zip and beside it
(``DST.manifest.json``): count, resolution, filter, and sha256 over the stored PNG bytes in order.
Both are written atomically (``stylenat.files``): a failed run leaves no half zip.

Class labels (``dataset.json`` at the zip root, StyleGAN2-ADA's format, see ``labels``): with
``class_folders`` every image's class is its top-level sub-folder (one per class, classes numbered in
sorted folder-name order, the names stored as ``class_names``); otherwise a ``dataset.json`` in ``src``
is carried over (checked as training checks it) with its paths renamed to the archive's.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

from tqdm import tqdm

from stylenat.data.errors import DatasetError
from stylenat.data.images import (
    MANIFEST_NAME,
    check_max_images,
    check_resolution,
    index_image_folder,
    load_image_file,
    resample_filter,
)
from stylenat.data.labels import (
    LABELS_NAME,
    class_folder_labels,
    labels_text,
    match_labels,
    parse_entries,
    read_labels_json,
)
from stylenat.files import atomic_write, atomic_write_text

MANIFEST_FORMAT = "stylenat-zip/1"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def archive_name(index: int) -> str:
    """dataset_tool's member name for image ``index``."""
    s = f"{index:08d}"
    return f"{s[:5]}/img{s}.png"


def manifest_path(dst) -> Path:
    """Where the copy of the manifest beside a zip goes: ``x.zip`` -> ``x.manifest.json``."""
    dst = Path(dst)
    return dst.with_name(dst.stem + ".manifest.json")


def _manifest_text(manifest: dict) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def prepare_dataset(
    src,
    dst,
    resolution: int,
    filter: str = "lanczos",
    max_images: int | None = None,
    overwrite: bool = False,
    compress_level: int = 0,
    progress: bool = False,
    class_folders: bool = False,
) -> dict:
    """Write the images of folder ``src`` to zip ``dst`` at ``resolution``; return the manifest (with
    ``classes``, the number of classes, when it writes labels)."""
    resolution = check_resolution(resolution)
    resample = resample_filter(filter)
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    max_images = check_max_images(max_images)
    if (
        isinstance(compress_level, bool)
        or not isinstance(compress_level, int)
        or not 0 <= compress_level <= 9
    ):
        raise DatasetError(f"compress_level must be within 0..9, got {compress_level!r}")
    if not src.exists():
        raise DatasetError(f"source folder {src} does not exist")
    if not src.is_dir():
        raise DatasetError(f"source {src} is not a folder of images")
    if dst.suffix.lower() != ".zip":
        raise DatasetError(f"destination {dst} must end in .zip")
    if dst.exists() and not overwrite:
        raise DatasetError(
            f"destination {dst} already exists (pass --overwrite / overwrite=True to replace it)"
        )
    if not dst.parent.is_dir():
        raise DatasetError(f"destination folder {dst.parent} does not exist")
    names, _, _ = index_image_folder(src, resolution, max_images)
    labels, class_names = _source_labels(src, names, class_folders)

    digest = hashlib.sha256()
    manifest = {}

    def write_zip(f) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
            for i, rel in enumerate(
                tqdm(names, desc=f"prepare {dst.name}", unit="img", disable=not progress)
            ):
                img = load_image_file(src / rel, resolution, resample)
                buf = io.BytesIO()
                img.save(buf, format="png", compress_level=compress_level, optimize=False)
                data = buf.getvalue()
                digest.update(data)
                zf.writestr(zipfile.ZipInfo(archive_name(i), date_time=_ZIP_DATE), data)
            manifest.update(
                format=MANIFEST_FORMAT,
                count=len(names),
                resolution=resolution,
                filter=filter,
                sha256=digest.hexdigest(),
            )
            if labels is not None:
                entries = [[archive_name(i), int(c)] for i, c in enumerate(labels)]
                zf.writestr(
                    zipfile.ZipInfo(LABELS_NAME, date_time=_ZIP_DATE), labels_text(entries, class_names)
                )
                manifest["classes"] = len(class_names) if class_names else int(max(labels)) + 1
            zf.writestr(zipfile.ZipInfo(MANIFEST_NAME, date_time=_ZIP_DATE), _manifest_text(manifest))

    atomic_write(dst, write_zip)
    atomic_write_text(manifest_path(dst), _manifest_text(manifest))
    return manifest


def _source_labels(src: Path, names: list[str], class_folders: bool):
    """(class per image or None, class names or None): from the sub-folders, or src's own dataset.json."""
    if class_folders:
        entries, class_names = class_folder_labels(names, src)
        return [c for _, c in entries], class_names
    data, where = read_labels_json(src)
    parsed = parse_entries(data, where)
    if parsed is None:
        return None, None
    labels, _, class_names = match_labels(parsed, names, where, str(src), lambda n: (src / n).is_file())
    return labels.tolist(), class_names
