"""Class labels: StyleGAN2-ADA's ``dataset.json`` beside the images of a folder or at the root of a zip.

Format: ``{"labels": [[relative_path, class_index], ...], "class_names": [...]}``. ``labels`` may be null
(an unlabelled set, as dataset_tool writes it); ``class_names`` is ours (``prepare_dataset`` writes the
sorted sub-folder names) and optional: without it the classes are 0 .. max(class_index). Paths are relative
POSIX paths (zip member names); backslashes are read as slashes. An LMDB holds no labels.

Faults, each a one-line ``DatasetError`` naming the file and the entry:

  =========================================  ===================================================
  the json is not valid, or not an object     "dataset.json in P is not valid JSON: ..."
  an entry that is not [path, class]          "... entry 3 ['a.png']: expected [relative_path, class]"
  an image without a label (class null)       "... entry 3 ['a.png', None]: a.png has no class"
  a non-integer or negative class             "... entry 3 ['a.png', 1.5]: class must be an integer >= 0"
  a class beyond class_names                  "... entry 3 ['a.png', 4]: class 4 >= 2 class_names"
  a listed file missing                       "... entry 3 ['a.png', 1]: a.png does not exist in P"
  a file listed twice                         "... entry 7 ['a.png', 0]: a.png is listed twice"
  labels on some images only                  "... labels 98 of 100 images: b.png has no entry"
  =========================================  ===================================================

A listed file that exists but is not one of the data set's images (skipped as unreadable, or past
``max_images``) is ignored.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from stylenat.data.errors import DatasetError

LABELS_NAME = "dataset.json"
USE_LABELS = ("auto", True, False)


def check_use_labels(use_labels):
    """auto | true | false (the ``dataset.use_labels`` values)."""
    if isinstance(use_labels, str) and use_labels == "auto" or isinstance(use_labels, bool):
        return use_labels
    raise DatasetError(f"use_labels={use_labels!r}: expected auto, true or false")


def read_labels_json(path) -> tuple[dict | None, str]:
    """(the parsed dataset.json of a folder or zip, or None when it has none; where it is, for messages)."""
    path = Path(path)
    if path.is_dir():
        where = path / LABELS_NAME
        if not where.is_file():
            return None, str(where)
        text = where.read_bytes()
    elif path.is_file() and zipfile.is_zipfile(path):
        where = f"{LABELS_NAME} in {path}"
        with zipfile.ZipFile(path) as zf:
            if LABELS_NAME not in zf.namelist():
                return None, where
            text = zf.read(LABELS_NAME)
    else:
        return None, str(path)
    try:
        data = json.loads(text)
    except ValueError as e:
        raise DatasetError(f"{where} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise DatasetError(f'{where}: expected an object {{"labels": [[path, class], ...]}}')
    return data, str(where)


def parse_entries(data: dict | None, where: str) -> tuple[dict[str, int], list[str] | None] | None:
    """{relative path: class} and the class names of a parsed dataset.json; None when it has no labels."""
    if data is None or data.get("labels") is None:
        return None
    entries = data["labels"]
    if not isinstance(entries, list):
        raise DatasetError(
            f"{where}: labels={type(entries).__name__}: expected a list of [relative_path, class]"
        )
    names = data.get("class_names")
    if names is not None and (
        not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names)
    ):
        raise DatasetError(f"{where}: class_names={names!r}: expected a non-empty list of names")
    labels: dict[str, int] = {}
    for i, entry in enumerate(entries):
        head = f"{where}: entry {i} {entry!r}"
        if not isinstance(entry, (list, tuple)) or not 1 <= len(entry) <= 2 or not isinstance(entry[0], str):
            raise DatasetError(f"{head}: expected [relative_path, class]")
        name = entry[0].replace("\\", "/")
        cls = entry[1] if len(entry) == 2 else None
        if cls is None:
            raise DatasetError(f"{head}: {name} has no class")
        if isinstance(cls, bool) or not isinstance(cls, int) or cls < 0:
            raise DatasetError(f"{head}: class must be an integer >= 0")
        if names is not None and cls >= len(names):
            raise DatasetError(f"{head}: class {cls} >= {len(names)} class_names")
        if name in labels:
            raise DatasetError(f"{head}: {name} is listed twice")
        labels[name] = cls
    if not labels:
        raise DatasetError(f"{where}: labels is empty: list [relative_path, class] per image, or null")
    return labels, names


def match_labels(
    parsed: tuple[dict[str, int], list[str] | None],
    images: list[str],
    where: str,
    root: str,
    exists: Callable[[str], bool],
) -> tuple[np.ndarray, int, list[str] | None]:
    """(class per image of ``images``, c_dim, class names or None); every image must have an entry and every entry a file."""
    labels, names = parsed
    for i, (name, cls) in enumerate(labels.items()):
        if not exists(name):
            raise DatasetError(f"{where}: entry {i} {[name, cls]!r}: {name} does not exist in {root}")
    missing = [name for name in images if name not in labels]
    if missing:
        raise DatasetError(
            f"{where} labels {len(images) - len(missing)} of {len(images)} images: {missing[0]} has no entry "
            f"({len(missing)} unlabelled); label every image, or set dataset.use_labels=false"
        )
    per_image = np.array([labels[name] for name in images], dtype=np.int64)
    return per_image, _c_dim(per_image, names), names


def label_pool(path) -> tuple[np.ndarray, int, list[str] | None] | None:
    """(the class of every labelled image, c_dim, class names or None) of a folder or zip's dataset.json, without opening
    the images (what the metrics draw labels from); None when it has no labels."""
    data, where = read_labels_json(Path(path).expanduser())
    parsed = parse_entries(data, where)
    if parsed is None:
        return None
    labels, names = parsed
    pool = np.array(list(labels.values()), dtype=np.int64)
    return pool, _c_dim(pool, names), names


def _c_dim(labels: np.ndarray, names: list[str] | None) -> int:
    """The number of classes: len(class_names), else the largest class + 1."""
    return len(names) if names is not None else int(labels.max()) + 1


def class_folder_labels(images: list[str], root) -> tuple[list[list], list[str]]:
    """Labels from one sub-folder per class: ([[path, class], ...], sorted sub-folder names)."""
    at_root = [name for name in images if "/" not in name]
    if at_root:
        raise DatasetError(
            f"{root}: {at_root[0]} is not in a class sub-folder ({len(at_root)} images at the top level); "
            "class labels need one sub-folder per class"
        )
    names = sorted({name.split("/", 1)[0] for name in images})
    index = {n: i for i, n in enumerate(names)}
    return [[name, index[name.split("/", 1)[0]]] for name in images], names


def labels_text(entries: list[list], class_names: list[str] | None) -> str:
    """dataset.json's text: ``labels`` and (when known) ``class_names``."""
    data = {"labels": entries}
    if class_names is not None:
        data["class_names"] = class_names
    return json.dumps(data, indent=1) + "\n"
