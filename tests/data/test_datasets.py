import io
import pickle
import warnings
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from stylenat.data import (
    DatasetError,
    DatasetWarning,
    ImageFolderDataset,
    LMDBDataset,
    ZipDataset,
    build_dataset,
    dataset_fingerprint,
    prepare_dataset,
    uint8_batches,
)

from .conftest import RES, png_bytes, write_lmdb, zip_image_bytes


@pytest.fixture
def three_formats(mixed_folder, tmp_path):
    """The mixed folder, the zip prepared from it, and an LMDB holding the zip's PNGs."""
    root, names = mixed_folder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        prepare_dataset(root, tmp_path / "data.zip", RES)
    write_lmdb(tmp_path / "lmdb", zip_image_bytes(tmp_path / "data.zip"), RES)
    return root, tmp_path / "data.zip", tmp_path / "lmdb", names


@pytest.mark.parametrize("normalize", ["imagenet", "minus_one_one", None])
def test_three_formats_read_identical_tensors(three_formats, normalize):
    root, zpath, lpath, names = three_formats
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        folder = build_dataset(root, RES, normalize=normalize, xflip=True)
    zipped = build_dataset(zpath, RES, normalize=normalize, xflip=True)
    lmdb_ds = build_dataset(lpath, RES, normalize=normalize, xflip=True)
    assert (type(folder), type(zipped), type(lmdb_ds)) == (ImageFolderDataset, ZipDataset, LMDBDataset)
    assert folder.names == names
    assert len(folder) == len(zipped) == len(lmdb_ds) == 2 * len(names)
    for i in range(len(folder)):
        x = folder[i]
        assert x.shape == (3, RES, RES)
        assert x.dtype == (torch.uint8 if normalize is None else torch.float32)
        assert torch.equal(x, zipped[i]) and torch.equal(x, lmdb_ds[i]), i


def test_xflip_doubles_with_mirrored_second_half(mixed_folder):
    root, names = mixed_folder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        plain = ImageFolderDataset(root, RES, normalize=None)
        flipped = ImageFolderDataset(root, RES, normalize=None, xflip=True)
    n = len(names)
    assert len(plain) == n and len(flipped) == 2 * n
    for i in range(n):
        assert torch.equal(flipped[i], plain[i])
        assert torch.equal(flipped[n + i], plain[i].flip(-1))
    assert torch.equal(flipped[-1], flipped[2 * n - 1])
    with pytest.raises(IndexError):
        flipped[2 * n]


def test_conversions_in_the_folder(mixed_folder):
    root, _ = mixed_folder
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = ImageFolderDataset(root, RES, normalize=None)
    by_name = {n: ds[i] for i, n in enumerate(ds.names)}
    gray = np.asarray(Image.open(root / "b_gray.png"))
    assert (by_name["b_gray.png"].numpy() == gray[None]).all()
    rgba = np.asarray(Image.open(root / "c_rgba.png"))
    assert (by_name["c_rgba.png"].numpy() == rgba[..., :3].transpose(2, 0, 1)).all()
    sixteen = np.asarray(Image.open(root / "d_16bit.png")).astype(np.float64)
    assert (by_name["d_16bit.png"].numpy() == np.rint(sixteen / 257)[None]).all()
    assert by_name["sub/g_big.webp"].shape == (3, RES, RES)


def test_small_images_are_upscaled_with_one_warning(mixed_folder):
    root, names = mixed_folder
    with pytest.warns(
        DatasetWarning, match=r"^5 of 7 images .* smaller than 20x20 \(e.g. a_rgb.png is 16x16\)"
    ):
        ds = ImageFolderDataset(root, 20)
    assert ds[0].shape == (3, 20, 20)


def test_corrupt_and_foreign_files_are_skipped_with_a_warning(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    good = png_bytes(np.full((RES, RES, 3), 7, dtype=np.uint8))
    (root / "good.png").write_bytes(good)
    (root / "truncated.png").write_bytes(
        png_bytes(np.arange(RES * RES * 3, dtype=np.uint8).reshape(RES, RES, 3))[:60]
    )
    (root / "x.png").write_text("I am text, not a PNG")
    (root / "readme.md").write_text("ignored silently")
    with pytest.warns(DatasetWarning) as record:
        ds = build_dataset(root, RES)
    messages = [str(w.message) for w in record]
    assert any("x.png" in m and "skipping" in m for m in messages)
    assert any("truncated.png" in m and "skipping" in m for m in messages)
    assert not any("readme.md" in m for m in messages)
    assert ds.names == ["good.png"] and len(ds) == 1


def test_decode_failure_after_indexing_names_the_file(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    buf = io.BytesIO()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="jpeg")
    (root / "cut.jpg").write_bytes(buf.getvalue())
    ds = ImageFolderDataset(root, 64)
    (root / "cut.jpg").write_bytes(buf.getvalue()[:-400])  # truncated after the index was built
    with pytest.raises(DatasetError, match="cannot decode image .*cut.jpg"):
        ds[0]


def test_path_errors(tmp_path):
    with pytest.raises(DatasetError, match=f"dataset path {tmp_path / 'nope'} does not exist"):
        build_dataset(tmp_path / "nope", RES)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("x")
    with pytest.raises(DatasetError, match=f"no images found under {empty}"):
        build_dataset(empty, RES)
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as zf:
        zf.writestr("dataset.json", "{}")
    with pytest.raises(DatasetError, match="no images found under .*empty.zip"):
        build_dataset(tmp_path / "empty.zip", RES)
    (tmp_path / "f.bin").write_bytes(b"123")
    with pytest.raises(DatasetError, match="unsupported dataset path .*f.bin"):
        build_dataset(tmp_path / "f.bin", RES)
    with pytest.raises(DatasetError, match="unknown normalize 'bogus'"):
        build_dataset(empty, RES, normalize="bogus")
    with pytest.raises(DatasetError, match="resolution must be a positive integer, got 0"):
        build_dataset(empty, 0)


def test_resolution_mismatch_names_both(three_formats, tmp_path):
    _, zpath, lpath, _ = three_formats
    with pytest.raises(DatasetError, match="holds 16x16 images .* resolution 32 was requested"):
        build_dataset(zpath, 32)
    with pytest.raises(DatasetError, match=r"no images at resolution 32 .*stored resolutions: \[16\]"):
        build_dataset(lpath, 32)
    # A zip without manifest, and an LMDB whose keys claim 32 but hold 16x16 images.
    with zipfile.ZipFile(tmp_path / "plain.zip", "w") as zf:
        zf.writestr("00000/img00000000.png", png_bytes(np.zeros((RES, RES, 3), dtype=np.uint8)))
    with pytest.raises(
        DatasetError, match="holds 16x16 images .*img00000000.png.* resolution 8 was requested"
    ):
        build_dataset(tmp_path / "plain.zip", 8)
    write_lmdb(tmp_path / "liar", zip_image_bytes(zpath), 32)
    with pytest.raises(DatasetError, match="holds 16x16 images .*32-00000.* resolution 32 was requested"):
        build_dataset(tmp_path / "liar", 32)


def test_lmdb_layout_errors(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    with lmdb.open(str(tmp_path / "nolen")) as env, env.begin(write=True) as txn:
        txn.put(b"16-00000", png_bytes(np.zeros((RES, RES, 3), dtype=np.uint8)))
    with pytest.raises(DatasetError, match="no b'length' key"):
        build_dataset(tmp_path / "nolen", RES)
    write_lmdb(tmp_path / "zero", [], RES)
    with pytest.raises(DatasetError, match="no images found under .*zero"):
        build_dataset(tmp_path / "zero", RES)


def test_zip_pickles_without_its_handle(three_formats):
    _, zpath, _, _ = three_formats
    ds = build_dataset(zpath, RES)
    ds[0]  # opens the handle in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._handle is None and ds._handle is not None
    assert torch.equal(clone[1], ds[1])
    ds.close()
    clone.close()


def test_lmdb_datasets_on_one_path_share_the_environment(three_formats):
    _, _, lpath, _ = three_formats
    a = build_dataset(lpath, RES)
    b = build_dataset(lpath, RES, normalize=None)  # py-lmdb refuses a second open of one environment
    assert torch.equal(a[2], build_dataset(lpath, RES)[2])
    assert b[2].dtype == torch.uint8
    clone = pickle.loads(pickle.dumps(a))
    assert torch.equal(clone[3], a[3])
    a.close()
    assert torch.equal(b[4], clone.load_uint8(4))  # re-opens after close


def test_fingerprint_is_stable_and_sensitive(three_formats, tmp_path):
    root, zpath, lpath, _ = three_formats
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        a = dataset_fingerprint(build_dataset(root, RES))
        assert a == dataset_fingerprint(build_dataset(root, RES, normalize="minus_one_one"))
        assert a != dataset_fingerprint(build_dataset(root, 8))
        assert a != dataset_fingerprint(build_dataset(root, RES, xflip=True))
        assert a != dataset_fingerprint(build_dataset(root, RES, max_images=3))
    z = build_dataset(zpath, RES)
    assert z.manifest["sha256"] in repr(z._fingerprint_payload())
    assert dataset_fingerprint(z) == dataset_fingerprint(build_dataset(zpath, RES))
    assert len({a, dataset_fingerprint(z), dataset_fingerprint(build_dataset(lpath, RES))}) == 3
    with pytest.raises(DatasetError, match="cannot fingerprint list"):
        dataset_fingerprint([1, 2])


def test_header_only_index_defers_truncation_to_load_time(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    data = png_bytes(np.arange(RES * RES * 3, dtype=np.uint8).reshape(RES, RES, 3))
    (root / "cut.png").write_bytes(data[:-30])
    (root / "x.png").write_text("text")
    with pytest.warns(DatasetWarning, match="x.png"):
        ds = ImageFolderDataset(root, RES, verify=False)
    assert ds.names == ["cut.png"]
    with pytest.raises(DatasetError, match="cannot decode image .*cut.png"):
        ds[0]


def test_resolution_none_reads_every_format_as_stored(mixed_folder, tmp_path):
    """What the metrics read: no crop, no resize, no size check; an LMDB uses its one stored resolution."""
    root, names = mixed_folder
    folder = build_dataset(root, None, normalize=None)
    assert folder.names == names  # the same index as training's
    assert tuple(folder[names.index("f_wide.JPG")].shape) == (3, 20, 24)
    assert tuple(folder[names.index("sub/g_big.webp")].shape) == (3, 40, 40)
    images = [
        np.random.default_rng(i).integers(0, 256, (8 + 4 * i, 8 + 4 * i, 3), dtype=np.uint8) for i in range(2)
    ]
    archive = tmp_path / "mixed.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, img in enumerate(images):
            zf.writestr(f"{i}.png", png_bytes(img))
    stored = build_dataset(archive, None, normalize=None)
    assert [tuple(stored[i].shape) for i in range(2)] == [(3, 8, 8), (3, 12, 12)]
    assert torch.equal(stored[1], torch.from_numpy(images[1]).permute(2, 0, 1))
    db = write_lmdb(tmp_path / "db", [png_bytes(img) for img in images[:1]] * 3, resolution=8)
    lmdb_set = build_dataset(db, None, normalize=None)
    assert lmdb_set.resolution == 8 and len(lmdb_set) == 3


def test_uint8_batches_break_at_size_changes():
    class Sizes:
        shapes = [(4, 4), (4, 4), (4, 4), (6, 4), (4, 4)]

        def __len__(self):
            return len(self.shapes)

        def load_uint8(self, i):
            return torch.full((3, *self.shapes[i]), i, dtype=torch.uint8)

    batches = list(uint8_batches(Sizes(), 2))
    assert [tuple(b.shape) for b in batches] == [(2, 3, 4, 4), (1, 3, 4, 4), (1, 3, 6, 4), (1, 3, 4, 4)]
    assert [int(b[0, 0, 0, 0]) for b in batches] == [0, 2, 3, 4]
    assert [int(b[0, 0, 0, 0]) for b in uint8_batches(Sizes(), 8, indices=[4, 1])] == [4]
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        next(uint8_batches(Sizes(), 0))
