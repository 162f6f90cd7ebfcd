"""Precision/recall (k-NN manifolds) against a brute force, in the registry, and the VGG16 loader."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stylenat.files import sha256_file
from stylenat.metrics import (
    METRICS,
    VGG16WeightsError,
    compute_metric,
    get_metric,
    load_vgg16,
    precision_recall,
)
from stylenat.metrics.vgg16 import VGG16, TorchvisionVGG16
from tests.metrics.helpers import FakeExtractor, seeded_generator


@pytest.fixture(autouse=True)
def _no_vgg16_from_the_environment(monkeypatch):
    monkeypatch.delenv("STYLENAT_VGG16", raising=False)


def brute_force(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """The definition, in float64 with the full distance matrices."""

    def radii(x):
        d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        np.fill_diagonal(d, np.inf)  # a sample is not its own neighbour
        return np.sort(d, axis=1)[:, k - 1]

    def inside(probes, manifold):
        d = np.sqrt(((probes[:, None] - manifold[None]) ** 2).sum(-1))
        return float((d <= radii(manifold)[None]).any(axis=1).mean())

    return inside(fake, real), inside(real, fake)


def gaussians(n_real=200, n_fake=180, dim=16, shift=0.5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_real, dim)), rng.normal(size=(n_fake, dim)) + shift


@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_equals_brute_force(k):
    real, fake = gaussians(seed=k)
    expected = brute_force(real, fake, k)
    assert precision_recall(real, fake, k) == pytest.approx(expected, abs=1e-6)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1  # neither trivially 0 nor 1


@pytest.mark.parametrize("rows, cols", [(2, 3), (7, 13), (64, 5), (1000, 1000)])
def test_chunked_equals_unchunked(rows, cols):
    real, fake = gaussians(seed=3)
    whole = precision_recall(real, fake, 3, row_batch_size=10**6, col_batch_size=10**6)
    assert precision_recall(real, fake, 3, row_batch_size=rows, col_batch_size=cols) == whole


def test_a_set_against_itself_is_perfect():
    real, _ = gaussians()
    assert precision_recall(real, real, 3) == (1.0, 1.0)
    tensor = torch.from_numpy(real).float()
    assert precision_recall(tensor, tensor.clone(), 3, row_batch_size=17, col_batch_size=9) == (1.0, 1.0)


def test_far_from_the_origin_still_matches_brute_force():
    """Post-ReLU features sit far from the origin: centring keeps float32's digits for the distances."""
    real, fake = gaussians(seed=5)
    offset = 1000.0
    assert precision_recall(real + offset, fake + offset, 3) == pytest.approx(
        brute_force(real, fake, 3), abs=1e-6
    )


def test_shifted_and_narrower_sets():
    real, _ = gaussians(n_real=400)
    rng = np.random.default_rng(1)
    near = rng.normal(size=(400, 16)) + 0.25
    far = rng.normal(size=(400, 16)) + 1.0
    p_near, r_near = precision_recall(real, near, 3)
    p_far, r_far = precision_recall(real, far, 3)
    assert p_far < p_near < 1 and r_far < r_near < 1
    # a fake set inside the reals' support, covering only its core: precise, not diverse
    core = rng.normal(size=(400, 16)) * 0.3
    p_core, r_core = precision_recall(real, core, 3)
    assert p_core > 0.97 and r_core < 0.5


def test_numpy_and_torch_inputs_agree_and_bad_inputs_are_refused():
    real, fake = gaussians()
    from_numpy = precision_recall(real.astype(np.float32), fake.astype(np.float32), 3)
    assert precision_recall(torch.from_numpy(real).float(), torch.from_numpy(fake).float(), 3) == from_numpy
    with pytest.raises(ValueError, match="k=3 needs more than 3 fake samples"):
        precision_recall(real, fake[:3], 3)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        precision_recall(real, fake[:, :8], 3)
    with pytest.raises(ValueError, match=r"must be \[N, D\]"):
        precision_recall(real[0], fake, 3)
    with pytest.raises(ValueError, match="NaN or inf"):
        precision_recall(np.where(real > 2.5, np.nan, real), fake, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu():
    real, fake = gaussians(seed=2)
    cpu = precision_recall(real, fake, 3)
    assert precision_recall(real, fake, 3, device="cuda") == pytest.approx(cpu, abs=1e-6)
    on_gpu = precision_recall(torch.from_numpy(real).cuda(), torch.from_numpy(fake).cuda(), 3)
    assert on_gpu == pytest.approx(cpu, abs=1e-6)


# ----------------------------------------------------------------------------------------------------------
# The registry


def _real_uint8(n, seed=100, shift=0.0):
    images = seeded_generator(shift)(torch.arange(seed, seed + n))
    return (images * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def test_registry_specs():
    full, inception = get_metric("pr50k3_full"), get_metric("pr50k3_inception")
    assert (full.kind, full.num_gen, full.k, full.network, full.max_real) == ("pr", 50000, 3, "vgg16", None)
    assert (inception.kind, inception.k, inception.network, inception.protocol) == (
        "pr",
        3,
        "inception",
        "stylegan",
    )
    assert all(METRICS[name].network == "inception" for name in METRICS if not name.startswith("pr"))


def test_compute_metric_pr_equals_precision_recall_of_the_features():
    ext = FakeExtractor()
    real = _real_uint8(24)
    record = compute_metric(
        "pr50k3_inception",
        seeded_generator(shift=0.3),
        extractor=ext,
        real_data=[real[:10], real[10:]],
        num_gen=20,
        batch_size=8,
        progress=False,
    )
    gen = seeded_generator(shift=0.3)(torch.arange(20))
    expected = precision_recall(ext(real), ext((gen * 127.5 + 128).clamp(0, 255).to(torch.uint8)), 3)
    assert (record["precision"], record["recall"]) == pytest.approx(expected, abs=1e-6)
    assert record["value"] == record["precision"] and record["k"] == 3
    assert (record["metric"], record["kind"], record["feature_network"]) == (
        "pr50k3_inception",
        "pr",
        "inception",
    )
    assert (record["num_gen"], record["num_real"], record["weights_sha256"]) == (20, 24, "fake-weights")


def test_pr50k3_inception_end_to_end(real_inception):
    real = _real_uint8(8)
    record = compute_metric(
        "pr50k3_inception",
        seeded_generator(),
        extractor=real_inception,
        real_data=[real],
        num_gen=8,
        batch_size=4,
        progress=False,
    )
    assert record["feature_network"] == "inception" and record["protocol"] == "stylegan"
    assert record["weights_sha256"] == real_inception.weights_sha256
    assert 0 <= record["precision"] <= 1 and 0 <= record["recall"] <= 1


def test_pr50k3_full_without_vgg16_weights_is_one_clear_line(tmp_path):
    with pytest.raises(VGG16WeightsError) as err:
        compute_metric(
            "pr50k3_full",
            seeded_generator(),
            extractor=FakeExtractor(),
            real_data=[_real_uint8(8)],
            num_gen=8,
            progress=False,
        )
    msg = str(err.value)
    assert "\n" not in msg and "STYLENAT_VGG16" in msg and "vgg16.pt" in msg
    assert str(tmp_path / "stylenat-cache" / "vgg16.pt") in msg  # the cache root, isolated by conftest
    assert "nvlabs-fi-cdn.nvidia.com" in msg


# ----------------------------------------------------------------------------------------------------------
# The VGG16 loader, with a stand-in for NVIDIA's TorchScript (no real weights in tests)


class FakeNvidiaVGG16(torch.nn.Module):
    """NVIDIA's vgg16.pt call signature; 4x4-pooled pixels through a fixed projection as 'features'."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Parameter(torch.randn(48, 32, generator=torch.Generator().manual_seed(0)))

    def forward(
        self,
        img: torch.Tensor,
        resize_images: bool = True,
        return_lpips: bool = False,
        return_features: bool = False,
    ) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(img.to(torch.float32) / 255, 4).flatten(1) @ self.proj
        if return_lpips:
            return x / x.square().sum(1, keepdim=True).sqrt()
        assert return_features  # noqa: S101 (TorchScript: the only other call the loader makes)
        return x


@pytest.fixture
def fake_vgg16_file(tmp_path):
    path = tmp_path / "weights" / "vgg16.pt"
    path.parent.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", FutureWarning
        )  # "torch.jit.script is deprecated": NVIDIA's file is one
        torch.jit.save(torch.jit.script(FakeNvidiaVGG16()), str(path))
    return path


def test_load_vgg16_reads_nvidias_torchscript(fake_vgg16_file):
    vgg = load_vgg16(fake_vgg16_file)
    assert (vgg.source, vgg.sha256, vgg.path) == ("nvidia", sha256_file(fake_vgg16_file), fake_vgg16_file)
    images = _real_uint8(6)
    feats = vgg.features(images)
    assert feats.dtype == torch.float32 and feats.shape == (6, 32)
    expected = FakeNvidiaVGG16()(images, return_features=True)
    torch.testing.assert_close(feats, expected)
    distances = vgg.lpips(images, images.flip(0))
    assert distances.shape == (6,) and distances[0] > 0
    assert torch.allclose(vgg.lpips(images, images), torch.zeros(6))


def test_load_vgg16_finds_the_env_then_the_cache(fake_vgg16_file, tmp_path, monkeypatch):
    monkeypatch.setenv("STYLENAT_VGG16", str(tmp_path / "missing.pt"))
    with pytest.raises(VGG16WeightsError, match="STYLENAT_VGG16 points to a missing file"):
        load_vgg16()
    monkeypatch.setenv("STYLENAT_VGG16", str(fake_vgg16_file))
    assert load_vgg16().path == fake_vgg16_file
    monkeypatch.delenv("STYLENAT_VGG16")
    cached = tmp_path / "stylenat-cache" / "vgg16.pt"
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(fake_vgg16_file.read_bytes())
    assert load_vgg16().path == cached
    with pytest.raises(VGG16WeightsError, match="not found"):
        load_vgg16(tmp_path / "nope.pt")


def test_pr50k3_full_records_the_vgg16_file(fake_vgg16_file):
    kw = dict(real_data=[_real_uint8(12)], num_gen=12, batch_size=6, progress=False)
    record = compute_metric(
        "pr50k3_full", seeded_generator(), extractor=FakeExtractor(), vgg16_weights=fake_vgg16_file, **kw
    )
    assert record["feature_network"] == "vgg16" and record["weights_sha256"] == sha256_file(fake_vgg16_file)
    assert 0 <= record["precision"] <= 1 and 0 <= record["recall"] <= 1
    # a loaded VGG16 passed as the extractor is used as is
    again = compute_metric("pr50k3_full", seeded_generator(), extractor=load_vgg16(fake_vgg16_file), **kw)
    assert (again["precision"], again["recall"]) == (record["precision"], record["recall"])


def test_torchvision_layout_and_its_limits(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"weight": torch.zeros(3)}, bad)
    with pytest.raises(VGG16WeightsError, match="neither NVIDIA's TorchScript vgg16.pt nor a torchvision"):
        load_vgg16(bad)
    vgg = VGG16(torch.nn.Identity(), "torchvision", bad, "sha")
    with pytest.raises(VGG16WeightsError, match="LPIPS needs NVIDIA's TorchScript"):
        vgg.lpips(_real_uint8(2), _real_uint8(2))
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):  # shapes only: no 138M random parameters
        theirs = torchvision.models.vgg16().state_dict()
        ours = TorchvisionVGG16().state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
