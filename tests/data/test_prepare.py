import hashlib
import json
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stylenat.data import DatasetError, DatasetWarning, prepare_dataset

from .conftest import RES, zip_image_bytes

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "prepare_dataset.py"


def run_script(*args):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=60
    )


def test_script_writes_the_dataset_tool_layout_and_manifest(mixed_folder, tmp_path):
    root, names = mixed_folder
    dst = tmp_path / "out.zip"
    proc = run_script(root, dst, "--resolution", RES, "--filter", "box", "--max-images", 6)
    assert proc.returncode == 0, proc.stderr
    with zipfile.ZipFile(dst) as zf:
        members = zf.namelist()
        inside = json.loads(zf.read("manifest.json"))
    assert members == [f"00000/img{i:08d}.png" for i in range(6)] + ["manifest.json"]
    digest = hashlib.sha256(b"".join(zip_image_bytes(dst))).hexdigest()
    assert inside == {
        "format": "stylenat-zip/1",
        "count": 6,
        "resolution": RES,
        "filter": "box",
        "sha256": digest,
    }
    assert json.loads((tmp_path / "out.manifest.json").read_text()) == inside
    assert json.loads(proc.stdout) == inside


def test_script_reports_a_missing_source_in_one_line(tmp_path):
    proc = run_script(tmp_path / "missing", tmp_path / "out.zip", "--resolution", 8)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: source folder {tmp_path / 'missing'} does not exist"
    assert not (tmp_path / "out.zip").exists()


def test_prepare_is_deterministic_and_guards_its_inputs(mixed_folder, tmp_path):
    root, _ = mixed_folder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        a = prepare_dataset(root, tmp_path / "a.zip", 8)
        b = prepare_dataset(root, tmp_path / "b.zip", 8, filter="lanczos")
        box = prepare_dataset(root, tmp_path / "box.zip", 8, filter="box")
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    assert a == b and a["count"] == 7 and box["sha256"] != a["sha256"]
    with pytest.raises(DatasetError, match="a.zip already exists .*overwrite"):
        prepare_dataset(root, tmp_path / "a.zip", 8)
    prepare_dataset(root, tmp_path / "a.zip", 8, max_images=2, overwrite=True)
    assert json.loads((tmp_path / "a.manifest.json").read_text())["count"] == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match=f"no images found under {empty}"):
        prepare_dataset(empty, tmp_path / "e.zip", 8)
    with pytest.raises(DatasetError, match="unknown resize filter 'bicubic'"):
        prepare_dataset(root, tmp_path / "f.zip", 8, filter="bicubic")
    with pytest.raises(DatasetError, match="must end in .zip"):
        prepare_dataset(root, tmp_path / "f.tar", 8)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left


def test_prepare_center_crops_non_square_images(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    arr = np.zeros((10, 30, 3), dtype=np.uint8)
    arr[:, 10:20] = 200
    Image.fromarray(arr).save(src / "wide.png")
    prepare_dataset(src, tmp_path / "w.zip", 5)
    with zipfile.ZipFile(tmp_path / "w.zip") as zf, zf.open("00000/img00000000.png") as f:
        out = np.asarray(Image.open(f))
    assert out.shape == (5, 5, 3) and (out == 200).all()
