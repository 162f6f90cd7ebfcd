"""Every data fault of the policy in ``stylenat.data.datasets`` is injected and gets its documented outcome,
with the offending file named."""

import io
import logging
import os
import warnings
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data._utils import ExceptionWrapper

from stylenat.data import (
    DatasetError,
    DatasetWarning,
    ImageFolderDataset,
    build_dataset,
    build_loader,
)
from stylenat.data import images as images_module
from stylenat.data.images import to_rgb8

from .conftest import RES, png_bytes, write_lmdb

RNG = np.random.default_rng(123)


def _rgb(h=RES, w=RES):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encoded(arr_or_img, fmt, **kw) -> bytes:
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _folder(tmp_path, files: dict) -> os.PathLike:
    """A folder holding ``files`` (name -> bytes) and one good image, ``good.png``."""
    root = tmp_path / "imgs"
    root.mkdir()
    (root / "good.png").write_bytes(png_bytes(_rgb()))
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _index(root, resolution=RES, **kw):
    """(data set, warning messages) of a folder."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ds = ImageFolderDataset(root, resolution, normalize=None, **kw)
    return ds, [str(w.message) for w in record if issubclass(w.category, DatasetWarning)]


def _skipped(messages, name):
    return [m for m in messages if m.startswith("skipping unreadable image") and name in m]


# ----------------------------------------------------------------------------- unreadable and corrupt files


def test_broken_symlink_is_skipped_and_a_directory_named_like_an_image_is_walked(tmp_path):
    root = _folder(tmp_path, {"dir.png/inner.png": png_bytes(_rgb())})
    os.symlink(tmp_path / "nowhere.png", root / "gone.png")
    ds, messages = _index(root)
    assert ds.names == ["dir.png/inner.png", "good.png"]
    assert len(_skipped(messages, str(root / "gone.png"))) == 1, messages


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_file_without_read_permission_is_skipped(tmp_path):
    root = _folder(tmp_path, {"locked.png": png_bytes(_rgb())})
    (root / "locked.png").chmod(0)
    try:
        ds, messages = _index(root)
    finally:
        (root / "locked.png").chmod(0o644)
    assert ds.names == ["good.png"] and _skipped(messages, "locked.png"), messages


def test_permission_error_while_indexing_is_skipped(tmp_path, monkeypatch):
    """The same path as above, forced even as root."""
    root = _folder(tmp_path, {"locked.png": png_bytes(_rgb())})
    real_open = Image.open

    def deny(path, *args, **kwargs):
        if str(path).endswith("locked.png"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(images_module.Image, "open", deny)
    ds, messages = _index(root)
    assert ds.names == ["good.png"]
    assert any("locked.png" in m and "Permission denied" in m for m in _skipped(messages, "locked.png"))


def test_corrupt_bytes_are_skipped(tmp_path):
    png = bytearray(png_bytes(_rgb()))
    png[len(png) // 2] ^= 0xFF  # inside IDAT: the chunk CRC no longer matches
    root = _folder(
        tmp_path,
        {
            "flipped.png": bytes(png),
            "noise.jpg": RNG.integers(0, 256, 500, dtype=np.uint8).tobytes(),
            "empty.webp": b"",
            "text.png": b"not a png at all",
        },
    )
    ds, messages = _index(root)
    assert ds.names == ["good.png"]
    for name in ("flipped.png", "noise.jpg", "empty.webp", "text.png"):
        assert len(_skipped(messages, name)) == 1, (name, messages)


@pytest.mark.parametrize("fmt, suffix", [("png", "png"), ("jpeg", "jpg"), ("webp", "webp")])
@pytest.mark.parametrize("cut", [2, 100, 0.5])
def test_truncated_files_are_skipped_at_indexing(tmp_path, fmt, suffix, cut):
    data = _encoded(_rgb(64, 64), fmt)
    n = int(len(data) * cut) if isinstance(cut, float) else cut
    root = _folder(tmp_path, {f"cut.{suffix}": data[:-n]})
    ds, messages = _index(root)
    if fmt == "png" and cut == 2:  # only the end of the IEND chunk is gone: every pixel decodes, kept
        assert ds.names == [f"cut.{suffix}", "good.png"] and not messages
        assert ds[0].shape == (3, RES, RES)
        return
    assert ds.names == ["good.png"], messages
    assert len(_skipped(messages, f"cut.{suffix}")) == 1, messages


def test_jpeg_with_trailing_bytes_is_kept(tmp_path):
    """The end-of-image check only triggers a full decode; a decodable JPEG is never dropped."""
    data = _encoded(_rgb(32, 32), "jpeg") + b"\x00" * 16
    root = _folder(tmp_path, {"tail.jpg": data})
    ds, messages = _index(root)
    assert ds.names == ["good.png", "tail.jpg"] and not messages
    assert ds[1].shape == (3, RES, RES)


def test_header_only_index_keeps_a_truncated_jpeg_until_it_is_read(tmp_path):
    root = _folder(tmp_path, {"cut.jpg": _encoded(_rgb(64, 64), "jpeg")[:-100]})
    ds, messages = _index(root, verify=False)
    assert ds.names == ["cut.jpg", "good.png"] and not messages
    with pytest.raises(DatasetError, match=r"^cannot decode image .*cut\.jpg: image file is truncated"):
        ds[0]


# ----------------------------------------------------------------------------- modes


def _load_one(tmp_path, name, data):
    root = tmp_path / "one"
    root.mkdir(parents=True)
    (root / name).write_bytes(data)
    ds, messages = _index(root)
    assert ds.names == [name] and not messages, messages
    x = ds[0]
    assert x.dtype == torch.uint8 and x.shape == (3, RES, RES)
    return x.numpy().transpose(1, 2, 0)


def test_grayscale_and_one_bit_become_three_equal_channels(tmp_path):
    gray = RNG.integers(0, 256, (RES, RES), dtype=np.uint8)
    out = _load_one(tmp_path, "l.png", _encoded(Image.fromarray(gray), "png"))
    assert (out == gray[..., None]).all()
    bits = Image.fromarray(gray > 127).convert("1")
    out = _load_one(tmp_path / "b", "bits.png", _encoded(bits, "png"))
    assert set(np.unique(out)) <= {0, 255} and (out[..., 0] == np.where(gray > 127, 255, 0)).all()


def test_alpha_is_dropped_not_composited(tmp_path):
    rgb = _rgb()
    alpha = np.zeros((RES, RES), dtype=np.uint8)  # fully transparent everywhere
    rgba = Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA")
    assert (_load_one(tmp_path, "rgba.png", _encoded(rgba, "png")) == rgb).all()
    la = Image.fromarray(np.dstack([rgb[..., 0], alpha]), mode="LA")
    assert (_load_one(tmp_path / "la", "la.png", _encoded(la, "png")) == rgb[..., :1]).all()


def test_palette_with_transparency_keeps_the_palette_colours(tmp_path):
    pal = Image.fromarray(_rgb()).quantize(8)
    pal.info["transparency"] = 0  # palette entry 0 is transparent
    expected = np.asarray(pal.convert("RGBA"))[..., :3]
    out = _load_one(tmp_path, "p.png", _encoded(pal, "png", transparency=0))
    assert (out == expected).all()


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    v = RNG.integers(0, 65536, (RES, RES), dtype=np.uint16)
    out = _load_one(tmp_path, "i16.png", _encoded(Image.fromarray(v), "png"))
    assert (out == np.rint(v / 257.0)[..., None]).all()
    assert out.max() > 200  # Pillow's own convert would have clipped nearly every pixel to 255
    # Mode "I" (32-bit int; Pillow cannot write it to PNG) goes through the same scaling.
    img = Image.fromarray(v.astype(np.int32))
    assert img.mode == "I"
    assert (np.asarray(to_rgb8(img)) == np.rint(v / 257.0)[..., None]).all()


def test_cmyk_jpeg_converts_as_pillow_does(tmp_path):
    cmyk = Image.fromarray(_rgb()).convert("CMYK")
    data = _encoded(cmyk, "jpeg", quality=95)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    assert (_load_one(tmp_path, "cmyk.jpg", data) == expected).all()


def test_a_mode_that_cannot_become_rgb_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(images_module, "CONVERTIBLE_MODES", images_module.CONVERTIBLE_MODES - {"L"})
    root = _folder(tmp_path, {"gray.png": _encoded(Image.new("L", (RES, RES)), "png")})
    ds, messages = _index(root)
    assert ds.names == ["good.png"]
    assert any("mode 'L' cannot be converted" in m for m in _skipped(messages, "gray.png")), messages


# ----------------------------------------------------------------------------- sizes, foreign files, empty


def test_tiny_images_are_upscaled_with_one_warning_naming_the_first(tmp_path):
    root = _folder(tmp_path, {"a_one.png": png_bytes(_rgb(1, 1)), "b_wide.png": png_bytes(_rgb(4, 9))})
    ds, messages = _index(root)
    assert messages == [
        f"2 of 3 images under {root} are smaller than {RES}x{RES} (e.g. a_one.png is 1x1); they are upscaled"
    ]
    one = ds[0].numpy()
    assert one.shape == (3, RES, RES) and (one == one[:, :1, :1]).all()  # one pixel, everywhere
    assert ds[1].shape == (3, RES, RES)


def test_non_image_files_are_ignored_and_counted_in_one_log_line(tmp_path, caplog):
    root = _folder(
        tmp_path,
        {
            "a.gif": _encoded(_rgb(), "gif"),
            "notes.txt": b"x",
            "sub/labels.json": b"{}",
            ".DS_Store": b"hidden: not counted",
            "manifest.json": b"{}",  # companions of a data set: not counted either
            "dataset.json": b"{}",
        },
    )
    with caplog.at_level(logging.INFO, logger="stylenat.data.images"):
        ds, messages = _index(root)
    assert ds.names == ["good.png"] and not messages
    lines = [r.getMessage() for r in caplog.records if "non-image" in r.getMessage()]
    assert lines == [
        f"ignored 3 non-image file(s) under {root} (e.g. a.gif): images are .png .jpg .jpeg .webp"
    ]


def test_empty_folder_is_one_line_naming_the_path(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError) as info:
        build_dataset(empty, RES)
    assert str(info.value) == f"no images found under {empty} (images are .png .jpg .jpeg .webp)"
    (empty / "readme.md").write_text("x")
    (empty / "bad.png").write_bytes(b"x")
    with pytest.warns(DatasetWarning, match="bad.png"), pytest.raises(DatasetError) as info:
        build_dataset(empty, RES)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"no images found under {empty} (")
    assert (
        "1 unreadable image(s) skipped" in message
        and "1 non-image file(s) ignored, e.g. readme.md" in message
    )


# ----------------------------------------------------------------------------- small data sets


def test_data_set_smaller_than_the_batch_repeats_images_with_a_warning(tmp_path):
    root = _folder(tmp_path, {"b.png": png_bytes(_rgb())})
    ds, _ = _index(root, xflip=True)  # 2 images, 4 items
    with pytest.warns(DatasetWarning) as record:
        stream = build_loader(ds, 3, world_size=2, seed=0)
    assert [str(w.message) for w in record] == [
        f"the data set {root} holds 4 items (2 images x 2 with x-flip), fewer than one batch of 6 "
        "(3 per process x 2): images repeat within every batch"
    ]
    batches = [next(stream) for _ in range(3)]
    assert all(b.shape == (3, 3, RES, RES) for b in batches)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_loader(ds, 3, rank=1, world_size=2)  # only rank 0 warns
        build_loader(ds, 4)  # exactly one batch: fine


# ----------------------------------------------------------------------------- faults after indexing


@pytest.mark.parametrize("fault", ["garbage", "truncated", "deleted"])
def test_a_file_broken_after_indexing_raises_naming_it(tmp_path, fault):
    root = _folder(tmp_path, {"late.png": png_bytes(_rgb())})
    ds, _ = _index(root)
    late = root / "late.png"
    if fault == "garbage":
        late.write_bytes(b"garbage")
    elif fault == "truncated":
        late.write_bytes(late.read_bytes()[:100])
    else:
        late.unlink()
    assert ds[0].shape == (3, RES, RES)  # good.png still loads
    with pytest.raises(DatasetError, match=f"^cannot decode image {late}: ") as info:
        ds[1]
    assert "\n" not in str(info.value)


def test_a_worker_error_stays_one_line_naming_the_file():
    try:
        raise DatasetError("cannot decode image /d/late.png: image file is truncated")
    except DatasetError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 3")
    with pytest.raises(DatasetError) as info:
        wrapped.reraise()
    assert str(info.value) == (
        "cannot decode image /d/late.png: image file is truncated (in DataLoader worker process 3)"
    )
    assert str(DatasetError("Caught DatasetError in x.\nno message line")) == "Caught DatasetError in x."


def test_a_file_broken_after_indexing_fails_in_a_real_worker(tmp_path):
    root = _folder(tmp_path, {"late.png": png_bytes(_rgb())})
    ds, _ = _index(root)
    (root / "late.png").write_bytes(b"garbage")
    stream = build_loader(ds, 2, num_workers=1, shuffle=False)
    with pytest.raises(DatasetError) as info:
        next(stream)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"cannot decode image {root / 'late.png'}: ")
    assert message.endswith("(in DataLoader worker process 0)")
    del stream


# ----------------------------------------------------------------------------- zip and LMDB


def test_zip_member_corrupt_inside_the_archive_raises_naming_it(tmp_path):
    good, bad = png_bytes(_rgb()), png_bytes(_rgb())
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w") as zf:  # stored, so the member bytes are verbatim in the file
        zf.writestr("00000/img00000000.png", good)
        zf.writestr("00000/img00000001.png", bad)
        zf.writestr("dataset.json", "{}")
    raw = bytearray(path.read_bytes())
    at = raw.index(bad) + len(bad) // 2
    raw[at] ^= 0xFF  # the zip CRC no longer matches
    path.write_bytes(bytes(raw))
    ds = build_dataset(path, RES)  # only the first member is checked up front
    assert ds.names == ["00000/img00000000.png", "00000/img00000001.png"]
    assert ds[0].shape == (3, RES, RES)
    with pytest.raises(DatasetError, match=r"^cannot decode image 00000/img00000001\.png in .*data\.zip: "):
        ds[1]
    ds.close()


def test_lmdb_value_corrupt_raises_naming_the_key(tmp_path):
    path = write_lmdb(tmp_path / "lmdb", [png_bytes(_rgb()), b"not an image"], RES)
    ds = build_dataset(path, RES)
    assert ds[0].shape == (3, RES, RES)
    with pytest.raises(DatasetError, match=f"^cannot decode image {RES}-00001 in "):
        ds[1]
    ds.close()
