"""ADA's resampling (stylenat.ops.warp) against independent references: upfirdn2d with the 2-D kernel, exact
shifts, the wavelet's orthogonality, and a fractional shift of a sampled cosine."""

import math

import numpy as np
import pytest
import torch

from stylenat.ops.upfirdn import upfirdn2d
from stylenat.ops.warp import SYM6, _fir_separable, blit, resample_2x


def _x(n=2, size=16, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _eye(n):
    return torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)


def test_sym6_is_an_orthogonal_low_pass():
    h = np.array(SYM6)
    assert h.sum() == pytest.approx(math.sqrt(2))
    auto = np.convolve(h, h[::-1])
    centre = len(h) - 1
    assert auto[centre] == pytest.approx(1.0)
    assert np.abs(auto[centre % 2 :: 2][np.arange(len(auto[centre % 2 :: 2])) != centre // 2]).max() < 1e-9


@pytest.mark.parametrize("up, down, pad", [(2, 1, (6, 5)), (1, 2, (5, 5)), (1, 2, (-1, -1))])
def test_separable_fir_equals_upfirdn2d_with_the_outer_kernel(up, down, pad):
    taps = torch.tensor(SYM6, dtype=torch.float64) / math.sqrt(2)
    x = _x(size=20)
    ours = _fir_separable(x, taps.tolist(), up, down, pad)
    ref = upfirdn2d(x, torch.outer(taps, taps), up=up, down=down, pad=pad)
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, atol=1e-12)


def test_identity_and_integer_shifts_are_exact():
    x = _x()
    assert torch.allclose(resample_2x(x, _eye(2)), x, atol=1e-10)
    m = _eye(2)
    m[:, 0, 2], m[:, 1, 2] = 2.0, -1.0  # output (i, j) takes input (i - 1, j + 2)
    y = resample_2x(x, m)
    assert torch.allclose(y[..., 2:-2, 2:-4], x[..., 1:-3, 4:-2], atol=1e-10)


def test_a_fractional_shift_of_a_cosine_is_the_shifted_cosine():
    """0.3 cycles/pixel moved by 0.37 pixels: away from the borders the 2x path is within 0.15 of the exact
    shift, several times closer than one bilinear interpolation at 1x."""
    size, f, shift = 48, 0.3, 0.37
    cols = torch.arange(size, dtype=torch.float64)
    x = torch.cos(2 * math.pi * f * cols).expand(1, 3, size, size).contiguous()
    m = _eye(1)
    m[:, 0, 2] = shift
    y = resample_2x(x, m)[0, 0, size // 2, 12:-12]
    expected = torch.cos(2 * math.pi * f * (cols + shift))[12:-12]
    row = x[0, 0, 0]
    bilinear = ((1 - shift) * row[:-1] + shift * row[1:])[12:-11]
    err, err_1x = (y - expected).abs().max().item(), (bilinear - expected).abs().max().item()
    assert err < 0.15 and err < err_1x / 3, (err, err_1x)


def test_blit_moves_whole_pixels_and_mirrors_the_uncovered_border():
    x = _x(n=1, size=8)
    flip = _eye(1)
    flip[:, 0, 0] = -1
    assert torch.equal(blit(x, flip), x.flip(3))
    quarter = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    y = blit(x, quarter)
    assert any(torch.equal(y, torch.rot90(x, k, (2, 3))) for k in range(1, 4))
    shift = _eye(1)
    shift[:, 0, 2] = -2.0  # output column j takes input column j - 2; columns 0, 1 mirror columns 2, 1
    y = blit(x, shift)
    assert torch.equal(y[..., 2:], x[..., :-2])
    assert torch.equal(y[..., 0], x[..., 2]) and torch.equal(y[..., 1], x[..., 1])


def test_differentiable_with_a_second_derivative():
    """R1 differentiates D(aug(x)) twice: the path must support a gradient of a gradient."""
    x = _x(n=1, size=8).requires_grad_(True)
    m = _eye(1)
    m[:, 0, 0] = m[:, 1, 1] = 1.2
    m[:, 0, 2] = 0.4
    y = resample_2x(x, m)
    (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.square().sum(), x)
    assert torch.isfinite(gg).all() and gg.abs().sum() > 0


def test_host_maps_reach_cuda_pinned_and_non_blocking(monkeypatch):
    """The maps and indices are made on the host: they travel without a blocking copy (no host sync)."""
    from stylenat.ops import warp

    calls = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: calls.append("pin") or self)
    real_to = torch.Tensor.to
    monkeypatch.setattr(
        torch.Tensor, "to", lambda self, *a, **k: calls.append(k.get("non_blocking")) or real_to(self, "cpu")
    )
    fake_cuda = type("Like", (), {"device": torch.device("cuda", 0)})()
    warp._to_device(torch.zeros(2), fake_cuda)
    assert calls == ["pin", True]
