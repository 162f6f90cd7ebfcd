"""Statistics: accumulation, npz round trip and compatibility, protocol / weights checks, cache, real data."""

import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from stylenat.data import DatasetError, build_dataset, uint8_batches
from stylenat.metrics import statistics as st
from stylenat.metrics.statistics import (
    FeatureAccumulator,
    FeatureStatistics,
    InceptionRate,
    StatisticsMismatchError,
    check_statistics,
    compute_statistics,
    open_real_images,
    reference_statistics,
    select_indices,
)
from tests.data.conftest import png_bytes, write_lmdb
from tests.metrics.helpers import FakeExtractor


def _folder(path, n=6, size=20, seed=0):
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path / f"{i:03d}.png")
    return path


def _stats(protocol="stylegan", sha="a" * 64, digest="", n=5):
    rng = np.random.default_rng(0)
    return FeatureStatistics(
        mu=rng.random(3),
        sigma=np.eye(3),
        num_images=n,
        protocol=protocol,
        weights_sha256=sha,
        weights_digest=digest,
    )


def test_accumulator_in_many_batches_matches_numpy():
    x = np.random.default_rng(2).standard_normal((70, 2048)).astype(np.float32) * 2 + 1
    acc = FeatureAccumulator()
    for part in np.array_split(x, [32, 33, 64]):
        acc.update(torch.from_numpy(part))
    mu, sigma = acc.mean_cov(1)
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10, atol=1e-12)


def test_inception_rate_postfix():
    rate = InceptionRate()
    assert rate.text() == ""
    with rate.timing(4):
        sum(range(10000))
    assert rate.images == 4 and rate.seconds > 0
    assert rate.text().startswith("inception ") and rate.text().endswith(" img/s")


@pytest.mark.parametrize("ddof", [0, 1])
def test_accumulator_matches_numpy(ddof):
    x = np.random.default_rng(1).standard_normal((103, 7)) * 3 + 10
    acc = FeatureAccumulator(keep_features=True)
    for chunk in np.array_split(x, [1, 17, 60]):
        acc.update(torch.from_numpy(chunk).float() if len(chunk) == 1 else chunk)
    mu, sigma = acc.mean_cov(ddof)
    x32 = np.concatenate([x[:1].astype(np.float32), x[1:]])
    np.testing.assert_allclose(mu, x32.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x32, rowvar=False, ddof=ddof), rtol=1e-10, atol=1e-12)
    assert acc.features().shape == (103, 7)


def test_npz_roundtrip_with_metadata_and_features(tmp_path):
    s = _stats()
    s.features = np.ones((5, 3), np.float32)
    s.data_fingerprint, s.subset, s.seed = "fp", "random", 7
    loaded = FeatureStatistics.load(s.save(tmp_path / "s.npz"))
    assert loaded.metadata() == s.metadata()
    np.testing.assert_array_equal(loaded.mu, s.mu)
    np.testing.assert_array_equal(loaded.features, s.features)
    with np.load(tmp_path / "s.npz") as f:  # what pytorch-fid / clean-fid read
        assert {
            "mu",
            "sigma",
            "protocol",
            "num_images",
            "weights_sha256",
            "data_fingerprint",
            "version",
        } <= set(f.files)


def test_plain_mu_sigma_npz_is_accepted_as_unknown_and_refused_by_default(tmp_path):
    np.savez(tmp_path / "pytorch_fid.npz", mu=np.zeros(3), sigma=np.eye(3))
    with pytest.warns(UserWarning, match="only mu/sigma"):
        s = FeatureStatistics.load(tmp_path / "pytorch_fid.npz")
    assert s.protocol == "unknown" and s.weights_sha256 == "unknown"
    with pytest.raises(StatisticsMismatchError, match="protocol 'unknown' but 'pytorch_fid' was requested"):
        check_statistics(s, "pytorch_fid", "b" * 64)
    with pytest.warns(UserWarning, match="USING MISMATCHED STATISTICS"):
        used = check_statistics(s, "pytorch_fid", "b" * 64, allow_mismatch=True)
    assert "protocol 'unknown'" in used.mismatch


def test_check_refuses_other_protocol_or_weights():
    s = _stats("stylegan", "a" * 64, digest="d1")
    assert check_statistics(s, "stylegan", "a" * 64) is s
    with pytest.raises(StatisticsMismatchError) as err:
        check_statistics(s, "pytorch_fid", "a" * 64)
    assert "'stylegan'" in str(err.value) and "'pytorch_fid'" in str(err.value)
    with pytest.raises(
        StatisticsMismatchError, match="weights sha256 'aaaaaaaaaaaaaaaa' but 'bbbbbbbbbbbbbbbb'"
    ):
        check_statistics(s, "stylegan", "b" * 64, "d2")
    # same tensors read from another container (equal digests) are the same weights
    assert check_statistics(s, "stylegan", "b" * 64, "d1") is s


def test_compute_statistics_records_provenance():
    batches = [torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8) for _ in range(3)]
    s = compute_statistics(batches, "pytorch_fid", FakeExtractor(), progress=False, data_fingerprint="fp")
    assert (s.num_images, s.protocol, s.cov_ddof, s.weights_sha256) == (12, "pytorch_fid", 1, "fake-weights")
    assert s.mu.shape == (48,) and s.sigma.shape == (48, 48) and s.features is None
    with pytest.raises(ValueError, match="empty input"):
        compute_statistics([], "stylegan", FakeExtractor(), progress=False)


def test_reference_statistics_folder_zip_cache_and_subsets(tmp_path, monkeypatch):
    folder = _folder(tmp_path / "imgs")
    ext = FakeExtractor()
    first = reference_statistics(folder, "stylegan", ext, batch_size=4, progress=False)
    assert first.num_images == 6 and first.subset == "all" and first.cov_ddof == 0
    assert len(list(st.stats_cache_dir().glob("*.npz"))) == 1

    def boom(*a, **k):
        raise AssertionError("should have been served from the cache")

    with monkeypatch.context() as m:
        m.setattr(st, "compute_statistics", boom)
        cached = reference_statistics(folder, "stylegan", ext, batch_size=4, progress=False)
    np.testing.assert_array_equal(cached.mu, first.mu)
    # another protocol / count / seed -> other cache entries
    reference_statistics(folder, "pytorch_fid", ext, progress=False)
    sub = reference_statistics(folder, "stylegan", ext, max_images=3, subset="random", seed=1, progress=False)
    assert sub.num_images == 3 and sub.subset == "random" and sub.seed == 1
    assert len(list(st.stats_cache_dir().glob("*.npz"))) == 3
    # the same images in a zip give the same statistics
    archive = tmp_path / "imgs.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(folder.iterdir()):
            z.write(p, f"sub/{p.name}")
    from_zip = reference_statistics(archive, "stylegan", ext, batch_size=4, use_cache=False, progress=False)
    np.testing.assert_allclose(from_zip.mu, first.mu)
    np.testing.assert_allclose(from_zip.sigma, first.sigma)


def test_fewer_real_images_than_requested_is_an_error(tmp_path):
    folder = _folder(tmp_path / "imgs", n=4)
    with pytest.raises(ValueError, match="requested 10 real images but the data set has only 4"):
        reference_statistics(folder, "stylegan", FakeExtractor(), max_images=10, progress=False)


def test_real_images_are_read_as_stored_by_the_data_reader(tmp_path):
    folder = _folder(tmp_path / "imgs", n=3, size=12)
    Image.fromarray(np.zeros((8, 10), np.uint8)).save(folder / "gray.png")  # grey, other size
    (folder / "notes.txt").write_text("not an image")
    files = open_real_images(folder)
    assert files.names == ["000.png", "001.png", "002.png", "gray.png"]
    batches = list(uint8_batches(files, 8))
    assert [tuple(b.shape) for b in batches] == [(3, 3, 12, 12), (1, 3, 8, 10)]  # no crop, no resize
    assert batches[0].dtype == torch.uint8
    np.testing.assert_array_equal(
        batches[0][1].permute(1, 2, 0).numpy(), np.asarray(Image.open(folder / "001.png"))
    )
    assert files.fingerprint == open_real_images(folder).fingerprint
    assert open_real_images(files) is files
    with pytest.raises(DatasetError, match="does not exist"):
        open_real_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        open_real_images(tmp_path / "empty")
    a = select_indices(100, 10, "random", seed=5)
    assert np.array_equal(a, select_indices(100, 10, "random", seed=5)) and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, select_indices(100, 10, "random", seed=6))


def test_training_and_metrics_list_the_same_files(tmp_path):
    """Hidden files, foreign files and mixed extensions: the metrics read exactly what training reads."""
    folder = _folder(tmp_path / "imgs", n=3, size=16)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / "d.JPG", quality=95)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / "e.webp", lossless=True)
    for hidden in (".hidden.png", "x.bmp", "y.tif", "z.ppm"):  # hidden, or not a training extension
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / hidden)
    (folder / ".cache").mkdir()
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / ".cache" / "k.png")
    training = build_dataset(folder, 16)
    metrics = open_real_images(folder)
    assert metrics.names == training.names == ["000.png", "001.png", "002.png", "d.JPG", "e.webp"]
    stats = reference_statistics(folder, "stylegan", FakeExtractor(), use_cache=False, progress=False)
    assert stats.num_images == 5
    # at the training resolution the metrics' images are the training images (no resize needed here)
    reals = torch.stack([training.load_uint8(i) for i in range(len(training))])
    torch.testing.assert_close(torch.cat(list(uint8_batches(metrics, 2))), reals)


def test_an_lmdb_set_can_be_scored(tmp_path):
    """An LMDB in the reference layout gives the same statistics as the folder of the same images."""
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(5)]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    db = write_lmdb(tmp_path / "db", [png_bytes(img) for img in images], resolution=16)
    ext = FakeExtractor()
    from_lmdb = reference_statistics(db, "stylegan", ext, batch_size=2, progress=False)
    from_folder = reference_statistics(folder, "stylegan", ext, batch_size=2, progress=False)
    assert from_lmdb.num_images == 5 and len(from_lmdb.data_fingerprint) == 64
    assert from_lmdb.data_fingerprint != from_folder.data_fingerprint  # cached apart
    np.testing.assert_allclose(from_lmdb.mu, from_folder.mu)
    np.testing.assert_allclose(from_lmdb.sigma, from_folder.sigma)
    sub = reference_statistics(db, "stylegan", ext, max_images=3, use_cache=False, progress=False)
    assert sub.num_images == 3


def test_an_lmdb_with_several_resolutions_needs_one_chosen(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    rng = np.random.default_rng(3)
    db = tmp_path / "db"
    with lmdb.open(str(db), map_size=16 << 20) as env, env.begin(write=True) as txn:
        for res in (8, 16):
            for i in range(2):
                txn.put(
                    f"{res}-{i:05d}".encode(), png_bytes(rng.integers(0, 256, (res, res, 3), dtype=np.uint8))
                )
        txn.put(b"length", b"2")
    with pytest.raises(DatasetError, match=r"resolutions \[8, 16\]: choose one"):
        open_real_images(db)
    chosen = reference_statistics(
        db, "stylegan", FakeExtractor(), resolution=8, use_cache=False, progress=False
    )
    assert chosen.num_images == 2


def test_throughput_measurement_reports_images_per_second():
    from stylenat.bench.inception import measure_inception_throughput

    r = measure_inception_throughput(FakeExtractor(), "pytorch_fid", batch_size=2, resolution=32, iters=1)
    assert r["images_per_s"] > 0 and (r["protocol"], r["batch_size"], r["resolution"]) == (
        "pytorch_fid",
        2,
        32,
    )
