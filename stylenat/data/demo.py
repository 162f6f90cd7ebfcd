"""The demo data set: 100 LFW faces as 32x32 RGB PNGs, built offline from scikit-image's bundled
``lfw_subset.npy`` (no network, no pooch), for the demo run and the tests. The class-conditional demo
(``dataset=demo_classes``) adds the subset's 100 non-face crops as a second class: ``demo32_classes`` holds
``faces/`` (class 0) and ``nonfaces/`` (class 1) and their ``dataset.json``.

Cache: ``<root>/demo32`` with root = ``stylenat.files.cache_root(cache_dir)``. The folder is written
under a temporary name and renamed into place (a whole folder, so not ``files.atomic_write``), so
concurrent builders (xdist workers) never see a half-written folder; the loser discards its copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from stylenat.data.errors import DatasetError
from stylenat.files import cache_root

log = logging.getLogger(__name__)

DEMO_RESOLUTION = 32
DEMO_COUNT = 100
DEMO_DIRNAME = "demo32"
CLASSES_DIRNAME = "demo32_classes"
CLASS_NAMES = ("faces", "nonfaces")  # lfw_subset()[:100] and [100:200]
_MARKER = "manifest.json"


def _demo_images(first: int = 0) -> list[Image.Image]:
    try:
        from skimage.data import lfw_subset
    except ImportError:
        raise DatasetError("the demo data set needs scikit-image: pip install scikit-image") from None
    faces = np.asarray(lfw_subset()[first : first + DEMO_COUNT])
    if faces.dtype != np.uint8:  # float64 in [0, 1] in the scikit-image releases we know
        faces = np.clip(np.rint(faces * 255.0), 0, 255).astype(np.uint8)
    out = []
    for face in faces:
        img = Image.fromarray(face, mode="L").resize(
            (DEMO_RESOLUTION, DEMO_RESOLUTION), Image.Resampling.LANCZOS
        )
        out.append(img.convert("RGB"))
    return out


def _write(folder: Path) -> None:
    digest = hashlib.sha256()
    for i, img in enumerate(_demo_images()):
        path = folder / f"img{i:05d}.png"
        img.save(path, format="png")
        digest.update(path.read_bytes())
    manifest = {
        "count": DEMO_COUNT,
        "resolution": DEMO_RESOLUTION,
        "source": "skimage.data.lfw_subset()[:100]",
        "sha256": digest.hexdigest(),
    }
    (folder / _MARKER).write_text(json.dumps(manifest, indent=2) + "\n")


def _write_classes(folder: Path) -> None:
    from stylenat.data.labels import labels_text

    entries, digest = [], hashlib.sha256()
    for c, name in enumerate(CLASS_NAMES):
        (folder / name).mkdir()
        for i, img in enumerate(_demo_images(first=c * DEMO_COUNT)):
            rel = f"{name}/img{i:05d}.png"
            img.save(folder / rel, format="png")
            digest.update((folder / rel).read_bytes())
            entries.append([rel, c])
    (folder / "dataset.json").write_text(labels_text(entries, list(CLASS_NAMES)))
    manifest = {
        "count": len(entries),
        "resolution": DEMO_RESOLUTION,
        "source": "skimage.data.lfw_subset(): [:100] faces (class 0), [100:200] non-faces (class 1)",
        "sha256": digest.hexdigest(),
    }
    (folder / _MARKER).write_text(json.dumps(manifest, indent=2) + "\n")


def dataset_path_or_demo(path, name=None) -> Path:
    """A training run's images: ``dataset.path``, or when it is null the demo faces (the two-class demo for
    ``dataset.name`` demo_classes), built on first use."""
    if path is not None:
        return Path(path)
    return demo_classes_dataset_path() if name == "demo_classes" else demo_dataset_path()


def demo_classes_dataset_path(cache_dir=None) -> Path:
    """Path of the two-class demo folder (faces/ and nonfaces/, 100 32x32 PNGs each, and dataset.json)."""
    return _build_cached(cache_root(cache_dir) / CLASSES_DIRNAME, _write_classes)


def demo_dataset_path(cache_dir=None) -> Path:
    """Path of the demo image folder (100 RGB 32x32 PNGs), building it on first use."""
    return _build_cached(cache_root(cache_dir) / DEMO_DIRNAME, _write)


def _build_cached(final: Path, write) -> Path:
    """``final``, written by ``write(tmp folder)`` and renamed into place on first use."""
    if (final / _MARKER).is_file():
        return final
    if final.exists():
        raise DatasetError(
            f"{final} exists but is not a complete demo data set (no {_MARKER}); delete it to rebuild"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        write(tmp)
        try:
            os.rename(tmp, final)
            log.info("built the demo data set at %s", final)
        except OSError:
            if not (final / _MARKER).is_file():  # not a concurrent builder winning the race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
