import json
import threading

import numpy as np
import pytest
from PIL import Image

from stylenat.data import DatasetError, build_dataset, demo_dataset_path
from stylenat.data import demo as demo_module


def test_demo_builds_100_rgb_32px_images_and_reuses_the_cache(tmp_path, monkeypatch):
    path = demo_dataset_path(tmp_path)
    assert path == tmp_path / "demo32"
    pngs = sorted(path.glob("*.png"))
    assert len(pngs) == 100
    with Image.open(pngs[0]) as im:
        assert im.mode == "RGB" and im.size == (32, 32)
        arr = np.asarray(im)
    assert (arr[..., 0] == arr[..., 1]).all() and arr.std() > 10  # grayscale faces, not blank
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["count"] == 100 and manifest["resolution"] == 32
    assert len(build_dataset(path, 32)) == 100

    def boom():
        raise AssertionError("rebuilt instead of reusing the cache")

    monkeypatch.setattr(demo_module, "_demo_images", boom)
    mtime = pngs[0].stat().st_mtime_ns
    assert demo_dataset_path(tmp_path) == path
    assert pngs[0].stat().st_mtime_ns == mtime


def test_demo_respects_env_and_concurrent_builders(tmp_path, monkeypatch):
    monkeypatch.setenv("STYLENAT_CACHE", str(tmp_path / "env"))
    results = []
    threads = [threading.Thread(target=lambda: results.append(demo_dataset_path())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [tmp_path / "env" / "demo32"] * 3
    assert len(list((tmp_path / "env" / "demo32").glob("*.png"))) == 100
    assert [p.name for p in (tmp_path / "env").iterdir()] == ["demo32"]  # no temporary folder left


def test_demo_refuses_an_incomplete_folder(tmp_path):
    (tmp_path / "demo32").mkdir()
    with pytest.raises(DatasetError, match="demo32 exists but is not a complete demo data set"):
        demo_dataset_path(tmp_path)
