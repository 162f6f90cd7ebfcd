import math

import pytest
import torch

from stylenat.training.augment import (
    AUGMENT_OPS,
    check_ops,
    diff_augment,
    random_cutout,
    random_flip,
    random_translation,
)
from stylenat.training.losses import bcr_loss, d_logistic_loss, g_nonsaturating_loss, r1_penalty


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_diff_augment_is_a_function_of_the_generator_state():
    x = torch.randn(6, 3, 16, 16)
    a = diff_augment(x, AUGMENT_OPS, _gen(1))
    b = diff_augment(x, AUGMENT_OPS, _gen(1))
    c = diff_augment(x, AUGMENT_OPS, _gen(2))
    assert a.shape == x.shape
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_ops_apply_in_canonical_order_and_reject_unknown_names():
    assert check_ops(["cutout", "flip"]) == ("flip", "cutout")
    with pytest.raises(ValueError, match="'blur'"):
        check_ops(["flip", "blur"])


def test_flip_mirrors_whole_images_only():
    x = torch.randn(32, 3, 4, 4)
    y = random_flip(x, _gen(0))
    flipped = [torch.equal(y[i], x[i].flip(2)) for i in range(32)]
    kept = [torch.equal(y[i], x[i]) for i in range(32)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 0 < sum(flipped) < 32


def test_translation_shifts_with_zero_fill():
    x = torch.ones(16, 1, 8, 8)
    y = random_translation(x, _gen(0), ratio=0.25)
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    # each image keeps a rectangle of (8 - |ty|) x (8 - |tx|) ones, shifts at most 2 pixels
    ones = y.sum(dim=(1, 2, 3))
    assert (ones >= 36).all() and (ones <= 64).all()
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(4, 1, 8, 8).contiguous()
    shifted = random_translation(ramp, _gen(3), ratio=0.25)
    for img in shifted[:, 0]:
        row = img[4]
        nz = row[row != 0]
        assert torch.all(nz[1:] - nz[:-1] == 1)  # content moved as a block


def test_cutout_zeroes_a_square_of_half_the_size():
    x = torch.ones(64, 1, 8, 8)
    y = random_cutout(x, _gen(0), ratio=0.5)
    zeros = (y == 0).sum(dim=(1, 2, 3))
    assert (zeros >= 4).all() and (zeros <= 16).all()  # clipped at the border, never larger than 4x4
    assert (zeros == 16).any()


def test_augment_is_differentiable():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    diff_augment(x, AUGMENT_OPS, _gen(0)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_logistic_losses_at_zero_logits():
    zeros = torch.zeros(4, 1)
    assert d_logistic_loss(zeros, zeros).item() == pytest.approx(2 * math.log(2))
    assert g_nonsaturating_loss(zeros).item() == pytest.approx(math.log(2))
    assert bcr_loss(zeros, zeros + 1).item() == pytest.approx(1.0)


def test_r1_penalty_of_a_linear_critic():
    w = torch.tensor([1.0, 2.0, 2.0], requires_grad=True)
    x = torch.randn(5, 3, requires_grad=True)
    penalty = r1_penalty(x @ w, x)
    assert penalty.item() == pytest.approx(9.0)
    assert penalty.requires_grad  # create_graph: the penalty can be back-propagated


# ------------------------------------------------------------- train.augment=diffaugment: the published policy


def _reference_diffaugment(x, policy, g):
    """Zhao et al.'s DiffAugment_pytorch.py written out directly (the same draws, from ``g``, in its order):
    the policy's ops in the order given, on [-1, 1] images, translation and cutout filling with 0."""
    n, _, h, w = x.shape
    for op in policy:
        if op == "color":
            x = x + (torch.rand(n, 1, 1, 1, generator=g) - 0.5)  # brightness: +U(-0.5, 0.5)
            mean = x.mean(dim=1, keepdim=True)
            x = (x - mean) * (torch.rand(n, 1, 1, 1, generator=g) * 2) + mean
            mean = x.mean(dim=[1, 2, 3], keepdim=True)
            x = (x - mean) * (torch.rand(n, 1, 1, 1, generator=g) + 0.5) + mean
        elif op == "translation":
            sh, sw = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
            ty = torch.randint(-sh, sh + 1, (n, 1), generator=g)
            tx = torch.randint(-sw, sw + 1, (n, 1), generator=g)
            padded = torch.nn.functional.pad(x, [1, 1, 1, 1])
            out = torch.empty_like(x)
            for i in range(n):
                rows = (torch.arange(h) + ty[i] + 1).clamp(0, h + 1)
                cols = (torch.arange(w) + tx[i] + 1).clamp(0, w + 1)
                out[i] = padded[i][:, rows][:, :, cols]
            x = out
        elif op == "cutout":
            ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
            oy = torch.randint(0, h + (1 - ch % 2), (n, 1), generator=g)
            ox = torch.randint(0, w + (1 - cw % 2), (n, 1), generator=g)
            mask = torch.ones(n, h, w)
            for i in range(n):
                rows = (torch.arange(ch) + oy[i] - ch // 2).clamp(0, h - 1)
                cols = (torch.arange(cw) + ox[i] - cw // 2).clamp(0, w - 1)
                mask[i, rows.view(-1, 1), cols.view(1, -1)] = 0
            x = x * mask.unsqueeze(1)
    return x


@pytest.mark.parametrize(
    "policy",
    [("color", "translation", "cutout"), ("translation", "color"), ("cutout", "color", "translation")],
)
def test_diffaugment_policy_is_the_published_one_in_the_order_given(policy):
    from stylenat.training.augment import FixedDiffAugment

    x = torch.rand(12, 3, 16, 16, generator=_gen(0)) * 2 - 1
    ours = FixedDiffAugment(policy, "minus_one_one")(x, _gen(5))
    assert torch.allclose(ours, _reference_diffaugment(x, policy, _gen(5)), atol=1e-6)


def test_diffaugment_acts_on_minus_one_one_rgb_under_imagenet_normalisation():
    """D sees ImageNet-normalised images: the policy converts to [-1, 1], so brightness is +U(-0.5, 0.5) in
    [-1, 1] units (not in ImageNet units, ~2x stronger there) and the fill is [-1, 1]'s 0, mid grey."""
    from stylenat.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from stylenat.training.augment import FixedDiffAugment

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    to_imagenet = lambda t: ((t + 1) / 2 - mean) / std  # noqa: E731
    x = torch.rand(12, 3, 16, 16, generator=_gen(1)) * 2 - 1
    policy = ("color", "translation", "cutout")
    ours = FixedDiffAugment(policy, "imagenet")(to_imagenet(x), _gen(7))
    assert torch.allclose(ours, to_imagenet(_reference_diffaugment(x, policy, _gen(7))), atol=1e-5)
    # brightness alone: the offset per image, in [-1, 1] units, is the reference's U(-0.5, 0.5) draw
    flat = torch.zeros(4000, 3, 2, 2)
    offsets = (_reference_diffaugment(flat, ("color",), _gen(2)) - flat).mean((1, 2, 3))
    ours_flat = FixedDiffAugment(("color",), "imagenet")(to_imagenet(flat), _gen(2))
    ours_offsets = (((ours_flat * std + mean) * 2 - 1) - flat).mean((1, 2, 3))
    assert torch.allclose(ours_offsets, offsets, atol=1e-5)
    assert 0.45 < offsets.abs().max() <= 0.5


def test_bcr_keeps_the_reference_order_and_pixel_space():
    """bCR (diff_augment) still applies its ops in the canonical order on the pixel space it is given."""
    x = torch.rand(8, 3, 16, 16, generator=_gen(3)) * 2 - 1
    g = _gen(4)
    canonical = random_cutout(random_translation(x, g), g)  # translation before cutout, whatever is asked
    assert torch.equal(diff_augment(x, ("cutout", "translation"), _gen(4)), canonical)
