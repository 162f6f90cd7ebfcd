"""Haar DWT/IDWT: reference filter values and layout, hand-computed bands, perfect reconstruction."""

import torch

from stylenat.ops.upfirdn import upfirdn2d
from stylenat.ops.wavelet import HaarTransform, InverseHaarTransform, haar_filters

HALF = torch.tensor(0.49999997, dtype=torch.float32)  # float32(1/sqrt 2) ** 2, as stored by the reference


def test_filter_values_and_buffers():
    dwt, iwt = HaarTransform(3), InverseHaarTransform(3)
    assert list(dwt.state_dict()) == ["ll", "lh", "hl", "hh"]
    assert list(iwt.state_dict()) == ["ll", "lh", "hl", "hh"]
    for t in list(dwt.state_dict().values()) + list(iwt.state_dict().values()):
        assert t.dtype == torch.float32 and torch.equal(t.abs(), HALF.expand(2, 2))
    s = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    assert torch.equal(torch.sign(dwt.ll), s)
    assert torch.equal(torch.sign(dwt.lh), torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
    assert torch.equal(torch.sign(dwt.hl), torch.tensor([[-1.0, 1.0], [-1.0, 1.0]]))
    assert torch.equal(torch.sign(dwt.hh), torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
    assert torch.equal(iwt.lh, -dwt.lh) and torch.equal(iwt.hl, -dwt.hl) and torch.equal(iwt.hh, dwt.hh)


def test_known_input_hand_computed():
    # One 2x2 block [[a, b], [c, d]] per channel; channel blocks come out as LL | LH | HL | HH.
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[5.0, -1.0], [0.0, 2.0]]]]).reshape(1, 2, 2, 2)
    out = HaarTransform(2)(x).flatten()
    expected = []
    for band in ("ll", "lh", "hl", "hh"):
        for (a, b), (c, d) in x[0].tolist():
            expected.append(
                {
                    "ll": a + b + c + d,
                    "lh": a + b - c - d,
                    "hl": a - b + c - d,
                    "hh": a - b - c + d,
                }[band]
                * 0.5
            )
    assert torch.allclose(out, torch.tensor(expected), rtol=1e-6)


def test_matches_upfirdn_definition():
    x = torch.randn(2, 3, 8, 6)
    ll, lh, hl, hh = haar_filters()
    ref = torch.cat([upfirdn2d(x, f, down=2) for f in (ll, lh, hl, hh)], 1)
    assert torch.allclose(HaarTransform(3)(x), ref, atol=1e-6)
    y = torch.randn(2, 12, 4, 3)
    ref = sum(upfirdn2d(b, f, up=2, pad=(1, 0, 1, 0)) for b, f in zip(y.chunk(4, 1), (ll, -lh, -hl, hh)))
    assert torch.allclose(InverseHaarTransform(3)(y), ref, atol=1e-6)


def test_roundtrip_identity():
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    dwt, iwt = HaarTransform(3).double(), InverseHaarTransform(3).double()
    coeffs = dwt(x)
    assert coeffs.shape == (3, 12, 8, 8)
    # Exact up to the float32 filter value (4 * 0.49999997**2 = 1 - 1.2e-7).
    assert torch.allclose(iwt(coeffs), x, rtol=1e-6, atol=1e-6)
    assert torch.allclose(dwt(iwt(coeffs)), coeffs, rtol=1e-6, atol=1e-6)
