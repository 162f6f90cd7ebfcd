"""(d) The two resize steps and the value scalings of the protocols, on known inputs."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stylenat.metrics.protocols import PROTOCOLS, get_protocol, tf_resize_bilinear, torch_resize_bilinear
from tests.metrics.helpers import tf1_resize_bilinear


@pytest.mark.parametrize("h, w", [(256, 256), (512, 512), (64, 96), (299, 299), (32, 32)])
def test_tf_resize_equals_tf1_resize_bilinear(h, w):
    x = np.random.default_rng(h * w).integers(0, 256, (2, 3, h, w)).astype(np.float64)
    ref = np.stack([tf1_resize_bilinear(img, 299) for img in x])
    # float64: exact up to NVIDIA's float32 grid offset (theta is built in float32 before the cast)
    assert np.abs(tf_resize_bilinear(torch.from_numpy(x)).numpy() - ref).max() < 1e-4
    # float32 as in fid50k_full: sampling positions carry float32 rounding (< 0.03 of a grey level here)
    assert np.abs(tf_resize_bilinear(torch.from_numpy(x).float()).double().numpy() - ref).max() < 0.03


def test_tf_resize_known_values_and_difference_from_torch_interpolate():
    # 1-D ramp 0, 10, 20, 30 resized 4 -> 8: TF samples src = dst / 2 (edge clamped), torch (dst + .5) / 2 - .5
    x = torch.tensor([0.0, 10.0, 20.0, 30.0], dtype=torch.float64).view(1, 1, 1, 4).expand(1, 1, 4, 4)
    tf = tf_resize_bilinear(x, 8)[0, 0, 0]
    torch.testing.assert_close(
        tf, torch.tensor([0.0, 5, 10, 15, 20, 25, 30, 30], dtype=torch.float64), atol=1e-4, rtol=0
    )
    th = torch_resize_bilinear(x, 8)[0, 0, 0]
    torch.testing.assert_close(
        th, torch.tensor([0.0, 2.5, 7.5, 12.5, 17.5, 22.5, 27.5, 30], dtype=torch.float64)
    )


def test_pytorch_fid_resize_is_torch_interpolate():
    x = torch.randint(0, 256, (2, 3, 40, 70), dtype=torch.uint8)
    expected = 2 * F.interpolate(x.float() / 255, size=(299, 299), mode="bilinear", align_corners=False) - 1
    assert torch.equal(get_protocol("pytorch_fid").prepare(x), expected)
    assert torch.equal(get_protocol("pytorch_fid").prepare(x.float() / 255), expected)


def test_stylegan_prepare_scaling():
    x = torch.randint(0, 256, (1, 3, 299, 299), dtype=torch.uint8)
    out = get_protocol("stylegan").prepare(x)
    assert out.shape == (1, 3, 299, 299)
    # 299 -> 299 is an identity up to NVIDIA's float32 grid rounding
    assert (out - (x.float() - 128) / 128).abs().max() < 1e-3
    assert out.min() >= -1 and out.max() <= 127 / 128 + 1e-6


def test_generator_output_conversion():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, 1.5]).view(1, 1, 1, 6).expand(1, 3, 1, 6)
    sg = get_protocol("stylegan").from_generator(x)[0, 0, 0].tolist()
    assert sg == [0, 64, 128, 191, 255, 255]  # (x * 127.5 + 128).clamp(0, 255).to(uint8), as StyleGAN2-ADA
    pf = get_protocol("pytorch_fid").from_generator(x)[0, 0, 0].tolist()
    assert pf == [0, 64, 128, 191, 255, 255]  # save_image: ((x + 1) / 2 * 255 + 0.5).clamp.to(uint8)
    y = torch.tensor([-0.999, 0.003]).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    assert get_protocol("stylegan").from_generator(y)[0, 0, 0].tolist() == [0, 128]
    assert get_protocol("pytorch_fid").from_generator(y)[0, 0, 0].tolist() == [0, 128]


def test_protocol_errors():
    with pytest.raises(ValueError, match="unknown protocol 'tf'; known: stylegan, pytorch_fid"):
        get_protocol("tf")
    with pytest.raises(ValueError, match="floats in \\[0, 1\\], got max 255"):
        get_protocol("pytorch_fid").prepare(torch.full((1, 3, 8, 8), 255.0))
    with pytest.raises(ValueError, match="expects images \\[N, 3, H, W\\]"):
        get_protocol("stylegan").prepare(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))
    assert {p.cov_ddof for p in PROTOCOLS.values()} == {0, 1}
