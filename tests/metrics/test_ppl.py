"""Perceptual path length (stylenat.metrics.ppl) against closed forms and numpy, with stand-in networks
(NVIDIA's vgg16.pt is not available offline): a generator linear in w and a linear LPIPS embedding."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stylenat.metrics.ppl import (
    PPL_METRICS,
    box_downsample,
    check_ppl_dtype,
    compute_ppl,
    face_crop,
    slerp,
    trimmed_mean,
)

Z_DIM, RES = 6, 16


class LinearG(torch.nn.Module):
    """w = z M; image = reshape(A w) + b (float64): the ws of every layer are the same w."""

    def __init__(self, seed=0, scale=1.0, constant=False, nonlinear=False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.z_dim, self.resolution, self.compute_dtype = Z_DIM, RES, torch.float32
        self.M = torch.randn(Z_DIM, Z_DIM, generator=g, dtype=torch.float64)
        self.A = torch.randn(3 * RES * RES, Z_DIM, generator=g, dtype=torch.float64) * 0.1
        self.b = torch.randn(3 * RES * RES, generator=g, dtype=torch.float64) * 0.1
        self.register_buffer("w_avg", torch.zeros(Z_DIM, dtype=torch.float64))
        self.scale, self.constant, self.nonlinear = scale, constant, nonlinear

    def mapping(self, z):
        w = z @ self.M
        return (torch.tanh(w) if self.nonlinear else w).unsqueeze(1).repeat(1, 2, 1)

    def synthesis(self, ws):
        w = ws[:, 0] * (0 if self.constant else 1)
        img = (w @ self.A.T + self.b).view(-1, 3, RES, RES)
        return torch.tanh(img) if self.nonlinear else img

    def to_minus_one_one(self, img):
        return img * self.scale


class LinearEmbedding:
    """A linear stand-in for the LPIPS embedding of [0, 255] images; records the TF32 switches it ran under."""

    sha256 = "stand-in"

    def __init__(self, size, dim=5, seed=1):
        self.B = torch.randn(
            3 * size * size, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
        )
        self.flags = []

    def lpips_features(self, pixels):
        self.flags.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return pixels.flatten(1) @ self.B.to(pixels.dtype)


def _latents(seeds):
    """The documented draw, written out: RandomState(seed) gives z0, then z1 (then t for full paths)."""
    z = [np.random.RandomState(s).randn(2, Z_DIM) for s in seeds]
    return np.stack([a[0] for a in z]), np.stack([a[1] for a in z])


def _numpy_trimmed_mean(d):
    s = np.sort(d)
    lo, hi = s[math.floor(0.01 * (len(d) - 1))], s[math.ceil(0.99 * (len(d) - 1))]
    return d[(d >= lo) & (d <= hi)].mean()


def test_ppl_wend_of_a_linear_generator_is_its_closed_form():
    """At t = 0 in W: d = |E crop(A (w1 - w0)) x 127.5|^2 (the epsilon cancels), then the trimmed mean."""
    G, n = LinearG(), 300
    embed = LinearEmbedding(RES // 2)
    record = compute_ppl("ppl_wend", G, vgg16=embed, num_gen=n, batch_size=64, seed_start=10, progress=False)
    z0, z1 = _latents(range(10, 10 + n))
    A, M, B = G.A.numpy(), G.M.numpy(), embed.B.numpy()
    diff = ((z1 - z0) @ M @ A.T).reshape(n, 3, RES, RES)  # A (w1 - w0), image-shaped
    c = RES // 8
    crop = diff[:, :, 3 * c : 7 * c, 2 * c : 6 * c].reshape(n, -1)
    d = ((crop * 127.5) @ B) ** 2
    expected = _numpy_trimmed_mean(d.sum(1))
    assert record["value"] == pytest.approx(expected, rel=1e-6)
    assert record["num_gen"] == n and "published: 50000" in record["label"]
    assert record["tf32"] is False and record["weights_sha256"] == "stand-in"


def test_a_constant_generator_has_zero_path_length():
    record = compute_ppl(
        "ppl_zfull", LinearG(constant=True), vgg16=LinearEmbedding(8), num_gen=20, progress=False
    )
    assert record["value"] == 0.0


@pytest.mark.parametrize("name", ["ppl_zfull", "ppl2_wend"])
def test_scaling_the_output_by_s_scales_ppl_by_s_squared(name):
    size = RES // 2 if PPL_METRICS[name].crop else RES
    embed = LinearEmbedding(size)
    base = compute_ppl(name, LinearG(nonlinear=True), vgg16=embed, num_gen=40, progress=False)["value"]
    scaled = compute_ppl(name, LinearG(nonlinear=True, scale=3.0), vgg16=embed, num_gen=40, progress=False)
    assert base > 0 and scaled["value"] == pytest.approx(9.0 * base, rel=1e-6)


def test_face_crop_on_a_ramp_image():
    size = 64
    ramp = (torch.arange(size).view(-1, 1) * 1000 + torch.arange(size).view(1, -1)).expand(1, 3, size, size)
    crop = face_crop(ramp)
    c = size // 8
    assert crop.shape == (1, 3, 4 * c, 4 * c)
    assert crop[0, 0, 0, 0] == 3 * c * 1000 + 2 * c  # top-left: row 3c, column 2c
    assert crop[0, 0, -1, -1] == (7 * c - 1) * 1000 + 6 * c - 1  # bottom-right: row 7c - 1, column 6c - 1


def test_box_downsampling_above_256():
    x = torch.randn(2, 3, 256, 256, dtype=torch.float64)
    assert torch.allclose(box_downsample(x, 1024), F.avg_pool2d(x, 4))  # a 1024 model's face crop (256 px)
    assert box_downsample(x, 256) is x


def test_trimming_keeps_what_lies_between_numpys_percentiles():
    rng = np.random.RandomState(0)
    d = np.concatenate([rng.exponential(size=997), [1e6, 2e6, -5.0]])  # outliers at both ends
    assert trimmed_mean(d) == pytest.approx(_numpy_trimmed_mean(d), rel=1e-12)
    assert trimmed_mean(d) < 2  # the outliers are gone
    ties = np.array([1.0] * 50 + [2.0] * 50)
    assert trimmed_mean(ties) == pytest.approx(1.5)  # ties at the cut-offs are kept


def test_slerp_is_the_great_circle_formula():
    rng = np.random.RandomState(1)
    a, b = rng.randn(4, 7), rng.randn(4, 7)
    t = rng.rand(4, 1)
    ua, ub = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    omega = np.arccos((ua * ub).sum(1, keepdims=True))
    expected = (np.sin((1 - t) * omega) * ua + np.sin(t * omega) * ub) / np.sin(omega)
    ours = slerp(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(t)).numpy()
    assert np.allclose(ours, expected, atol=1e-12)


def test_tf32_is_off_while_ppl_measures_and_restored_after(restore_tf32):
    from stylenat.ops.precision import set_tf32

    set_tf32(True)
    embed = LinearEmbedding(RES // 2)
    compute_ppl("ppl_wend", LinearG(), vgg16=embed, num_gen=4, progress=False)
    assert embed.flags and all(f == (False, False) for f in embed.flags)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)


def test_bf16_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"^ppl_wend runs in fp32 only.*dtype=bf16") as err:
        check_ppl_dtype("ppl_wend", "bf16")
    assert "\n" not in str(err.value)
    G = LinearG()
    G.compute_dtype = torch.bfloat16
    with pytest.raises(ValueError, match="dtype=bf16"):
        compute_ppl("ppl2_wend", G, vgg16=LinearEmbedding(RES), num_gen=4, progress=False)


def test_evaluate_refuses_ppl_in_bf16_before_any_work():
    from omegaconf import OmegaConf

    from stylenat.evaluation import run_metrics

    cfg = OmegaConf.create({"metrics": ["ppl_wend"], "dtype": "bf16"})
    with pytest.raises(ValueError, match="dtype=bf16"):
        run_metrics(cfg, G=None, device="cpu")


def test_evaluate_runs_ppl_on_the_generator_and_records_it(tmp_path, monkeypatch):
    """evaluate.py's body: PPL needs no real data; the record names the LPIPS weights, the sample count (a
    labelled small run), fp32, TF32 off, and no truncation."""
    import json

    from omegaconf import OmegaConf

    import stylenat.metrics.vgg16 as vgg16
    from stylenat.evaluation import run_metrics
    from stylenat.models.build import build_generator
    from tests.tiny import TINY_G16

    loaded = []
    monkeypatch.setattr(vgg16, "load_vgg16", lambda path, device: loaded.append(path) or LinearEmbedding(16))
    G = build_generator(TINY_G16).eval()
    cfg = OmegaConf.create(
        {
            "metrics": ["ppl2_wend"],
            "dtype": "fp32",
            "num_gen": 6,
            "batch": 4,
            "seed_start": 0,
            "truncation_psi": 0.7,
            "checkpoint": str(tmp_path / "G.pt"),
            "results": str(tmp_path / "ppl.jsonl"),
            "vgg16_weights": "/weights/vgg16.pt",
            "inception_weights": None,
        }
    )
    (record,) = run_metrics(cfg, G, device="cpu")
    saved = json.loads((tmp_path / "ppl.jsonl").read_text())
    assert loaded == ["/weights/vgg16.pt"]
    assert saved["metric"] == "ppl2_wend" and saved["value"] > 0 and saved["num_gen"] == 6
    assert "published: 50000" in saved["label"] and saved["weights_sha256"] == "stand-in"
    assert (saved["tf32"], saved["dtype"], saved["truncation_psi"]) == (False, "fp32", 1.0)


class ConditionalLinearG(LinearG):
    """LinearG with a class offset in w: w = z M + c C (before the optional tanh)."""

    c_dim = 2

    def __init__(self, **kw):
        super().__init__(**kw)
        self.C = torch.randn(2, Z_DIM, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 3

    def mapping(self, z, c=None):
        if c is None:
            raise ValueError("c missing")
        w = z @ self.M + c.to(z.dtype) @ self.C
        return (torch.tanh(w) if self.nonlinear else w).unsqueeze(1).repeat(1, 2, 1)


def _class_labels(class_idx):
    return lambda seeds: F.one_hot(torch.full((len(seeds),), class_idx), 2).double()


def test_a_conditional_generator_keeps_each_samples_label_at_both_ends_of_its_path():
    """w_end - w_start cancels the class offset only when both ends carry the same label: a linear G's
    ppl_wend then equals the unconditional closed form, whatever the class."""
    n, embed = 100, LinearEmbedding(RES // 2)
    plain = compute_ppl("ppl_wend", LinearG(), vgg16=embed, num_gen=n, progress=False)["value"]
    for k in (0, 1):
        cond = compute_ppl(
            "ppl_wend", ConditionalLinearG(), vgg16=embed, num_gen=n, progress=False, labels=_class_labels(k)
        )
        assert cond["value"] == pytest.approx(plain, rel=1e-9)
    nonlinear = [
        compute_ppl(
            "ppl_wend",
            ConditionalLinearG(nonlinear=True),
            vgg16=embed,
            num_gen=n,
            progress=False,
            labels=_class_labels(k),
        )["value"]
        for k in (0, 1)
    ]
    assert nonlinear[0] != pytest.approx(nonlinear[1], rel=1e-3)  # the label reaches the mapping
    with pytest.raises(ValueError, match="class-conditional"):
        compute_ppl("ppl_wend", ConditionalLinearG(), vgg16=embed, num_gen=n, progress=False)
