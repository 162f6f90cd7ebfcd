import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from stylenat.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetError,
    denormalize,
    denormalize_to_uint8,
    from_minus_one_one,
    minus_one_one_to_uint8,
    normalize,
)
from stylenat.data.images import fit_square, to_rgb8


@pytest.mark.parametrize("mode", ["imagenet", "minus_one_one", None])
def test_normalize_round_trip_is_exact_on_uint8(mode):
    x = torch.arange(256, dtype=torch.uint8).repeat(3, 4, 1).reshape(2, 3, 16, 32)
    y = normalize(x, mode)
    assert y.dtype == (torch.uint8 if mode is None else torch.float32)
    assert torch.equal(denormalize_to_uint8(y, mode), x)
    assert torch.equal(denormalize_to_uint8(y[0], mode), x[0])  # CHW as well as NCHW
    z = denormalize(y, mode)
    assert z.min() >= 0 and z.max() <= 1
    assert (z - x.float() / 255).abs().max() < 1e-6  # torch.testing imports slowly


def test_normalize_values():
    white = torch.full((3, 1, 1), 255, dtype=torch.uint8)
    black = torch.zeros((3, 1, 1), dtype=torch.uint8)
    assert normalize(white, "minus_one_one").flatten().tolist() == [1.0, 1.0, 1.0]
    assert normalize(black, "minus_one_one").flatten().tolist() == [-1.0, -1.0, -1.0]
    expected = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert (normalize(white, "imagenet").flatten() - torch.tensor(expected)).abs().max() < 1e-6


def test_generator_output_conversions():
    """[-1, 1] -> uint8 rounds half up and clamps (StyleGAN2-ADA's); -> a normalisation space is exact."""
    x = torch.tensor([-1.5, -1.0, 0.0, 1 / 255, 1.0, 2.0]).view(1, 1, 1, 6).expand(1, 3, 1, 6)
    assert minus_one_one_to_uint8(x)[0, 0, 0].tolist() == [0, 0, 128, 128, 255, 255]
    assert minus_one_one_to_uint8(x.double()).dtype == torch.uint8
    assert torch.equal(
        denormalize_to_uint8(x, "minus_one_one"), minus_one_one_to_uint8(x)
    )  # one quantisation
    u = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    y = normalize(u, "minus_one_one")
    assert from_minus_one_one(y, "minus_one_one") is y
    assert torch.allclose(from_minus_one_one(y, "imagenet"), normalize(u, "imagenet"), atol=1e-5)
    with pytest.raises(DatasetError, match="unknown normalize"):
        from_minus_one_one(y, "zero_one")


def test_denormalize_clamps_unless_asked():
    x = torch.full((1, 3, 2, 2), 3.0)
    assert denormalize(x, "minus_one_one").max() == 1
    assert denormalize(x, "minus_one_one", clamp=False).max() == 2


def test_unknown_normalization_is_named():
    with pytest.raises(DatasetError, match="unknown normalize 'zero_one'"):
        normalize(torch.zeros(3, 2, 2), "zero_one")


def test_to_rgb8_conversions():
    gray = Image.fromarray(np.array([[0, 128], [200, 255]], dtype=np.uint8), mode="L")
    out = np.asarray(to_rgb8(gray))
    assert out.shape == (2, 2, 3) and (out == np.asarray(gray)[..., None]).all()

    rgba = Image.fromarray(np.array([[[10, 20, 30, 0]]], dtype=np.uint8), mode="RGBA")
    assert np.asarray(to_rgb8(rgba)).tolist() == [[[10, 20, 30]]]  # alpha dropped, not composited

    sixteen = Image.fromarray(np.array([[0, 257 * 100, 65535, 300]], dtype=np.uint16))
    assert sixteen.mode.startswith("I")
    assert np.asarray(to_rgb8(sixteen))[..., 0].tolist() == [[0, 100, 255, 1]]  # scaled, not clipped

    pal = Image.fromarray(np.array([[[1, 2, 3], [4, 5, 6]]], dtype=np.uint8)).quantize(2)
    pal.info["transparency"] = 0
    with warnings.catch_warnings(record=True) as with_warnings:
        warnings.simplefilter("always")
        out = to_rgb8(pal)
    assert out.mode == "RGB" and not with_warnings


def test_fit_square_center_crops_then_resizes():
    arr = np.zeros((10, 30, 3), dtype=np.uint8)
    arr[:, 10:20] = 255  # the central square is white, the sides black
    out = fit_square(Image.fromarray(arr), 10)
    assert out.size == (10, 10) and (np.asarray(out) == 255).all()
    big = fit_square(Image.fromarray(arr), 20)
    assert big.size == (20, 20)
    same = Image.fromarray(arr[:, 10:20])
    assert np.array_equal(np.asarray(fit_square(same, 10)), np.asarray(same))
