"""ADA (train.augment=ada): the augmentation pipeline's invariants and the p controller."""

import math

import pytest
import torch

from stylenat.ops.constants import IMAGENET_MEAN, IMAGENET_STD
from stylenat.training.augment import (
    ADA_OPS,
    AdaptiveAugment,
    FixedDiffAugment,
    ada_augment,
    check_ada_ops,
)
from stylenat.training.options import auto_r1_gamma


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _images(n=16, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=_gen(seed)) * 2 - 1


def _luma(x):
    return x.mean(1, keepdim=True)


def test_p_zero_is_the_identity():
    x = _images()
    assert ada_augment(x, 0.0, ADA_OPS, _gen()) is x
    assert AdaptiveAugment(ADA_OPS, "minus_one_one", p=0.0)(x, _gen()) is x


def test_unknown_op_is_named():
    with pytest.raises(ValueError, match="'blur'"):
        check_ada_ops(["xflip", "blur"])
    assert check_ada_ops(["hue", "xflip"]) == ("xflip", "hue")


def test_a_function_of_the_generator_state():
    x = _images()
    a = ada_augment(x, 0.7, ADA_OPS, _gen(1))
    assert torch.equal(a, ada_augment(x, 0.7, ADA_OPS, _gen(1)))
    assert not torch.equal(a, ada_augment(x, 0.7, ADA_OPS, _gen(2)))


def test_xflip_mirrors_whole_images():
    x = _images(32)
    y = ada_augment(x, 1.0, ["xflip"], _gen())
    flipped = [torch.allclose(y[i], x[i].flip(2), atol=1e-5) for i in range(32)]
    kept = [torch.allclose(y[i], x[i], atol=1e-5) for i in range(32)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 5 < sum(flipped) < 27


def test_rotate90_gives_quarter_turns():
    x = _images(32)
    y = ada_augment(x, 1.0, ["rotate90"], _gen())
    turns = []
    for i in range(32):
        match = [k for k in range(4) if torch.allclose(y[i], torch.rot90(x[i], k, (1, 2)), atol=1e-5)]
        assert len(match) == 1, i
        turns.append(match[0])
    assert set(turns) == {0, 1, 2, 3}


def test_xint_shifts_by_whole_pixels_within_an_eighth():
    x = _images(16, size=32)
    y = ada_augment(x, 1.0, ["xint"], _gen())
    shifts = []
    for i in range(16):
        best = min(
            ((dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)),
            key=lambda s: (torch.roll(x[i], s, (1, 2)) - y[i])[:, 4:-4, 4:-4].abs().max().item(),
        )
        err = (torch.roll(x[i], best, (1, 2)) - y[i])[:, 4:-4, 4:-4].abs().max().item()
        assert err < 1e-5, (i, best, err)  # the interior is the image moved by whole pixels
        shifts.append(best)
    assert len(set(shifts)) > 4


@pytest.mark.parametrize("op", ["scale", "rotate", "aniso", "xfrac"])
def test_general_geometric_ops_move_pixels_without_border_artefacts(op):
    x = _images(16)
    y = ada_augment(x, 1.0, [op], _gen())
    assert (y - x).abs().max() > 0.1  # it moved pixels
    flat = torch.full((4, 3, 16, 16), 0.3)
    assert torch.allclose(
        ada_augment(flat, 1.0, [op], _gen()), flat, atol=1e-5
    )  # reflection: no dark borders


def _band_limited_noise(n, size, fmax=0.45, seed=0):
    """White noise with every frequency above ``fmax`` cycles/pixel (on either axis) removed."""
    x = torch.randn(n, 3, size, size, generator=_gen(seed), dtype=torch.float64)
    f = torch.fft.fftfreq(size, dtype=torch.float64).abs()
    keep = torch.maximum(f.view(-1, 1), f.view(1, -1)) <= fmax
    return torch.fft.ifft2(torch.fft.fft2(x) * keep).real.float()


def _high_band_power(x, lo=0.25, hi=0.45):
    f = torch.fft.fftfreq(x.shape[-1], dtype=torch.float64)
    radius = (f.view(-1, 1) ** 2 + f.view(1, -1) ** 2).sqrt()
    power = torch.fft.fft2(x.double()).abs().square()
    return power[..., (radius >= lo) & (radius <= hi)].sum().item()


@pytest.mark.parametrize("op", ["xfrac", "scale", "rotate", "aniso"])
def test_fractional_ops_keep_the_high_band(op):
    """ADA's 2x filtered resampling keeps most of the power between 0.25 and 0.45 cycles/pixel of
    band-limited noise (0.68-0.72 here); one bilinear resampling at 1x kept 0.43-0.46 and blurred what D sees."""
    x = _band_limited_noise(64, 64)
    kept = _high_band_power(ada_augment(x, 1.0, [op], _gen(1))) / _high_band_power(x)
    assert kept >= 0.65, kept


def test_brightness_adds_one_offset_per_image():
    x = _images()
    d = ada_augment(x, 1.0, ["brightness"], _gen()) - x
    per_image = d.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-5)
    assert per_image[:, 0].std() > 0.05  # the offsets differ between images (std 0.2)


def test_contrast_scales_about_zero():
    x = _images()
    y = ada_augment(x, 1.0, ["contrast"], _gen())
    ratio = (y / x).flatten(1)
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-4)
    assert (ratio[:, 0] > 0).all() and ratio[:, 0].std() > 0.05


def test_lumaflip_negates_luma_and_keeps_chroma():
    x = _images(32)
    y = ada_augment(x, 1.0, ["lumaflip"], _gen())
    assert torch.allclose(y - _luma(y), x - _luma(x), atol=1e-5)
    flipped = [torch.allclose(_luma(y[i : i + 1]), -_luma(x[i : i + 1]), atol=1e-5) for i in range(32)]
    kept = [torch.allclose(y[i], x[i], atol=1e-5) for i in range(32)]
    assert all(f or k for f, k in zip(flipped, kept)) and 5 < sum(flipped) < 27


def test_hue_rotates_chroma_about_the_luma_axis():
    x = _images()
    y = ada_augment(x, 1.0, ["hue"], _gen())
    assert torch.allclose(_luma(y), _luma(x), atol=1e-5)
    norm = lambda t: (t - _luma(t)).norm(dim=1)  # noqa: E731
    assert torch.allclose(norm(y), norm(x), atol=1e-5)
    assert (y - x).abs().max() > 0.1


def test_saturation_scales_chroma_per_image():
    x = _images()
    y = ada_augment(x, 1.0, ["saturation"], _gen())
    assert torch.allclose(_luma(y), _luma(x), atol=1e-5)
    scale = ((y - _luma(y)) / (x - _luma(x))).flatten(1)
    assert torch.allclose(scale, scale[:, :1].expand_as(scale), rtol=1e-3, atol=1e-3)


def test_colour_ops_act_on_minus_one_one_rgb_whatever_the_normalization():
    """In ImageNet-normalised space the same draws give the same picture as in [-1, 1]."""
    x11 = _images()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    to_imagenet = lambda t: ((t + 1) / 2 - mean) / std  # noqa: E731
    a = ada_augment(to_imagenet(x11), 1.0, ADA_OPS, _gen(3), "imagenet")
    b = to_imagenet(ada_augment(x11, 1.0, ADA_OPS, _gen(3), "minus_one_one"))
    assert torch.allclose(a, b, atol=1e-4)


def test_differentiable_in_the_images():
    """The pipeline is affine in x for fixed draws: the gradient predicts a finite difference exactly."""
    x = _images().double().float().requires_grad_(True)
    direction = torch.randn(x.shape, generator=_gen(5))
    weights = torch.randn(x.shape, generator=_gen(6))
    out = (ada_augment(x, 0.9, ADA_OPS, _gen(7)) * weights).sum()
    (grad,) = torch.autograd.grad(out, x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with torch.no_grad():
        plus = (ada_augment(x + direction, 0.9, ADA_OPS, _gen(7)) * weights).sum()
    assert math.isclose((plus - out).item(), (grad * direction).sum().item(), rel_tol=1e-3)


def _brightest_quadrant(y):
    h = y.shape[-1] // 2
    q = [y[..., :h, :h], y[..., :h, h:], y[..., h:, :h], y[..., h:, h:]]
    return torch.stack([t.mean((1, 2, 3)) for t in q], 1).argmax(1)


@pytest.mark.parametrize("ops", [("xflip", "rotate90"), ADA_OPS[:7]], ids=["blit", "geometric"])
def test_non_leaking_below_p_08_and_leaking_at_1(ops):
    """A statistic of the data (which quadrant is bright) stays most often the original one at p < 0.8,
    so D can still tell the true orientation; at p = 1 every orientation is equally likely for the blit
    ops (the augmentation would leak into G)."""
    x = torch.full((4000, 3, 16, 16), -1.0)
    x[..., :8, :8] = 1.0
    for p in (0.5, 0.7):
        counts = torch.bincount(_brightest_quadrant(ada_augment(x, p, ops, _gen(int(p * 10)))), minlength=4)
        assert counts[0] > counts[1:].max() + 3 * math.sqrt(len(x) / 4), (p, counts.tolist())
    if ops == ("xflip", "rotate90"):
        counts = torch.bincount(_brightest_quadrant(ada_augment(x, 1.0, ops, _gen(1))), minlength=4)
        assert counts.max() - counts.min() < 4 * math.sqrt(len(x) / 4), counts.tolist()


def test_mean_brightness_is_kept_on_average():
    x = _images(1, size=8).expand(4000, 3, 8, 8)
    y = ada_augment(x, 0.7, ["brightness"], _gen())
    assert abs(y.mean().item() - x.mean().item()) < 0.02  # zero-mean offsets (std 0.2 x 0.7 of images)


# --------------------------------------------------------------------------------- the p controller


def test_p_rises_when_d_overfits_and_falls_when_it_does_not():
    ada = AdaptiveAugment(ADA_OPS, "minus_one_one", p=0.1, target=0.6, kimg=1.0)
    assert ada.adjust(1.0, images=64) == pytest.approx(0.1 + 64 / 1000)  # D calls every real real
    assert ada.adjust(0.6, images=64) == pytest.approx(0.164)  # at the target: p stays
    assert ada.adjust(0.2, images=64) == pytest.approx(0.1)
    assert ada.adjust(-1.0, images=1000) == 0.0  # clamped at 0
    ada.p = 0.99
    assert ada.adjust(1.0, images=1000) == 1.0  # and at 1
    fixed = AdaptiveAugment(ADA_OPS, "minus_one_one", p=0.3, kimg=None)
    assert fixed.adjust(1.0, images=10_000) == 0.3


def test_controller_state_round_trip():
    a = AdaptiveAugment(ADA_OPS, "minus_one_one", p=0.25)
    a.adjust(0.9, images=64)
    b = AdaptiveAugment(ADA_OPS, "minus_one_one")
    b.load_state_dict(a.state_dict())
    assert (b.p, b.last_rt) == (a.p, a.last_rt)


def test_fixed_diffaugment_changes_every_image():
    x = _images(8)
    y = FixedDiffAugment(["color", "cutout"])(x, _gen())
    assert all((y[i] - x[i]).abs().max() > 0 for i in range(8))


def test_auto_r1_gamma_is_the_stylegan2_ada_heuristic():
    assert auto_r1_gamma(32, 16) == pytest.approx(0.0128)
    assert auto_r1_gamma(256, 64) == pytest.approx(0.2048)


@pytest.mark.parametrize("offset, direction", [(10.0, 1), (-10.0, -1)], ids=["overfits", "underfits"])
def test_the_training_loop_moves_p_from_d_real_logits(tmp_path, offset, direction):
    """In the real loop: a D that calls every real image real (logits shifted up) raises p by
    (real images D judged in the interval) / (ada_kimg x 1000) per interval; one that calls them fake lowers
    it. As in StyleGAN2-ADA, R1's real logits count too: step 0 runs R1 (r1_every=16) on its 4 reals."""
    from stylenat.cli import compose_config
    from stylenat.distributed import DistEnv
    from stylenat.training.run import Trainer, prepare_run
    from tests.training.helpers import CONFIG_DIR, TINY

    cpu = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    ada = ["train.augment=ada", "train.augment_p=0.5", "train.ada_interval=2", "train.ada_kimg=0.1"]
    cfg = compose_config(CONFIG_DIR, [*TINY, *ada, f"run_dir={tmp_path}", "train.total_kimg=1"])
    trainer = Trainer(prepare_run(cfg, cpu))
    d = trainer.gan.D_fwd
    trainer.gan.D_fwd = lambda x: d(x) + offset
    for _ in range(5):  # p moves at the starts of steps 2 and 4
        trainer.step()
    assert trainer.gan.opts.r1_every == 16 and trainer.gan.opts.batch == 4
    images = (4 * 2 + 4) + 4 * 2  # steps 0-1 (D step reals + step 0's R1 reals), steps 2-3
    assert trainer.gan.augment.p == pytest.approx(0.5 + direction * images / 100)
    assert trainer.gan.augment.last_rt == direction
