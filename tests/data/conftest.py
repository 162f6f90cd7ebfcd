"""Small image folders and an LMDB writer in the reference layout, shared by the data tests."""

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

RES = 16


def write_mixed_folder(root: Path) -> list[str]:
    """Seven images of different modes, sizes and formats (plus files that must be ignored); returns
    the relative paths in the order the folder data set must use."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir()

    def rgb(h, w):
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)

    Image.fromarray(rgb(RES, RES)).save(root / "a_rgb.png")
    Image.fromarray(rgb(RES, RES)[..., 0], mode="L").save(root / "b_gray.png")
    Image.fromarray(rng.integers(0, 256, (RES, RES, 4), dtype=np.uint8), mode="RGBA").save(
        root / "c_rgba.png"
    )
    Image.fromarray(rng.integers(0, 65536, (RES, RES), dtype=np.uint16)).save(root / "d_16bit.png")
    Image.fromarray(rgb(RES, RES)).quantize(16).save(root / "e_palette.png")
    Image.fromarray(rgb(20, 24)).save(root / "f_wide.JPG", quality=95)
    Image.fromarray(rgb(40, 40)).save(root / "sub" / "g_big.webp", lossless=True)
    (root / "notes.txt").write_text("not an image")
    Image.fromarray(rgb(RES, RES)).save(root / ".hidden.png")
    return [
        "a_rgb.png",
        "b_gray.png",
        "c_rgba.png",
        "d_16bit.png",
        "e_palette.png",
        "f_wide.JPG",
        "sub/g_big.webp",
    ]


def write_lmdb(path: Path, images: list[bytes], resolution: int, length: int | None = None) -> Path:
    """An LMDB in the rosinality / StyleNAT reference layout."""
    lmdb = pytest.importorskip("lmdb")
    with lmdb.open(str(path), map_size=64 << 20) as env, env.begin(write=True) as txn:
        for i, data in enumerate(images):
            txn.put(f"{resolution}-{str(i).zfill(5)}".encode(), data)
        txn.put(b"length", str(len(images) if length is None else length).encode())
    return path


def zip_image_bytes(path: Path) -> list[bytes]:
    """The image members of a zip in name order."""
    with zipfile.ZipFile(path) as zf:
        return [zf.read(n) for n in sorted(zf.namelist()) if n.endswith(".png")]


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="png")
    return buf.getvalue()


@pytest.fixture
def mixed_folder(tmp_path):
    root = tmp_path / "images"
    names = write_mixed_folder(root)
    return root, names
