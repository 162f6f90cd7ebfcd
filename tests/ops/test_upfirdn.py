"""upfirdn2d against an independent NumPy/SciPy reference (zero insertion, pad/crop, true conv, stride)."""

import numpy as np
import pytest
import torch
from scipy.signal import convolve2d

from stylenat.ops.upfirdn import Blur, Downsample, downsample2d, make_kernel, upfirdn2d, upsample2d


def reference_upfirdn(x, k, up, down, pad):
    """Literal definition on one [H, W] plane; pad = (x0, x1, y0, y1), negatives crop."""
    x0, x1, y0, y1 = pad
    h, w = x.shape
    u = np.zeros((h * up, w * up), dtype=np.float64)
    u[::up, ::up] = x
    p = np.zeros((h * up + max(y0, 0) + max(y1, 0), w * up + max(x0, 0) + max(x1, 0)))
    p[max(y0, 0) : max(y0, 0) + h * up, max(x0, 0) : max(x0, 0) + w * up] = u
    p = p[max(-y0, 0) : p.shape[0] - max(-y1, 0), max(-x0, 0) : p.shape[1] - max(-x1, 0)]
    out = convolve2d(p, k, mode="valid")  # true convolution: the kernel is flipped
    return out[::down, ::down]


def loop_conv_valid(p, k):
    """Explicit loops for the flipped-kernel convolution, to pin convolve2d's convention."""
    kh, kw = k.shape
    out = np.zeros((p.shape[0] - kh + 1, p.shape[1] - kw + 1))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            for a in range(kh):
                for b in range(kw):
                    out[i, j] += p[i + a, j + b] * k[kh - 1 - a, kw - 1 - b]
    return out


CASES = [
    (1, 1, (0, 0)),
    (1, 1, (1, 2)),
    (2, 1, (2, 1)),
    (1, 2, (1, 1)),
    (2, 2, (1, 2)),
    (3, 1, (1, 1)),
    (1, 3, (0, 2)),
    (2, 1, (1, 0, 1, 0)),
    (1, 1, (2, 0, 1, 3)),
    (2, 1, (-1, 2)),
    (1, 2, (3, -1, 0, 1)),
]


@pytest.mark.parametrize("up,down,pad", CASES)
def test_matches_reference(up, down, pad):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6))
    k = rng.standard_normal((4, 3))  # asymmetric and non-square: flipping and axis order matter
    out = upfirdn2d(torch.from_numpy(x), torch.from_numpy(k), up=up, down=down, pad=pad)
    pad4 = pad if len(pad) == 4 else (pad[0], pad[1], pad[0], pad[1])
    for n in range(2):
        for c in range(3):
            ref = reference_upfirdn(x[n, c], k, up, down, pad4)
            assert out.shape[2:] == ref.shape
            np.testing.assert_allclose(out[n, c].numpy(), ref, rtol=1e-10, atol=1e-10)


def test_convolve2d_is_true_convolution():
    rng = np.random.default_rng(1)
    p, k = rng.standard_normal((6, 5)), rng.standard_normal((3, 2))
    np.testing.assert_allclose(convolve2d(p, k, mode="valid"), loop_conv_valid(p, k), atol=1e-12)


def test_output_size_formula_and_float32():
    x = torch.randn(1, 2, 9, 9)
    k = make_kernel([1, 3, 3, 1])
    out = upfirdn2d(x, k, up=2, down=3, pad=(2, 1))
    assert out.shape[-1] == (9 * 2 + 2 + 1 - 4) // 3 + 1
    assert out.dtype == torch.float32


def test_gradcheck():
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: upfirdn2d(a, b, up=2, down=2, pad=(1, 2)), (x, k))


def test_make_kernel():
    k = make_kernel([1, 3, 3, 1])
    assert k.shape == (4, 4) and k.dtype == torch.float32
    assert torch.allclose(k.sum(), torch.tensor(1.0))
    expected = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64
    assert torch.allclose(k, expected)
    assert torch.allclose(make_kernel(k), k)  # idempotent
    assert torch.allclose(make_kernel([[1, 2], [3, 4]]).sum(), torch.tensor(1.0))


def test_upsample_constant_interior_and_shape():
    x = torch.full((1, 3, 8, 8), 0.7)
    out = upsample2d(x, [1, 3, 3, 1])
    assert out.shape == (1, 3, 16, 16)
    assert torch.allclose(out[..., 2:-2, 2:-2], torch.full_like(out[..., 2:-2, 2:-2], 0.7), atol=1e-6)


def test_upsample_pads_match_reference_rule():
    x = torch.randn(1, 1, 5, 5)
    k = make_kernel([1, 3, 3, 1]) * 4  # p = 2 -> pad0 = (p + 1) // 2 + 1 = 2, pad1 = 1
    assert torch.allclose(upsample2d(x, [1, 3, 3, 1]), upfirdn2d(x, k, up=2, pad=(2, 1)))


def test_downsample_constant_and_modules():
    x = torch.full((2, 1, 8, 8), -1.5)
    out = downsample2d(x, [1, 3, 3, 1])
    assert out.shape == (2, 1, 4, 4)
    assert torch.allclose(out[..., 1:-1, 1:-1], torch.full((2, 1, 2, 2), -1.5))
    d = Downsample([1, 3, 3, 1])
    assert "kernel" in d.state_dict() and torch.allclose(d(x), out)
    b = Blur([1, 3, 3, 1], pad=(2, 1), upsample_factor=2)
    assert torch.allclose(b.kernel.sum(), torch.tensor(4.0))
    assert b(x).shape == (2, 1, 8, 8)
