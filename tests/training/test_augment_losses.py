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
