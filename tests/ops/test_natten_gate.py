"""Which NATTEN installs the natten backend accepts (issue 14, defects 1 and 2), with stub packages.

NATTEN is not installed here: tests.fakes writes stub packages shaped like 0.17 (``natten.na2d`` a
submodule), 0.21 with its CUDA library (``HAS_LIBNATTEN = True``) and 0.21 without it, and a tensor that
reports a CUDA device drives the selection through its CUDA branch.
"""

from __future__ import annotations

import logging
import sys

import pytest
import torch

from stylenat.ops.na import available_backends, dispatch, na2d, natten_backend, resolve_backend, torch_backend
from stylenat.ops.na.reference import na2d_reference
from tests.fakes import fake_cuda, install_natten_stub


@pytest.fixture
def natten_stub(monkeypatch, tmp_path):
    def install(version, na2d_kind="function", has_libnatten=True):
        return install_natten_stub(monkeypatch, tmp_path, version, na2d_kind, has_libnatten)

    yield install
    for name in [m for m in sys.modules if m == "natten" or m.startswith("natten.")]:
        del sys.modules[name]  # monkeypatch then restores whatever was imported before
    natten_backend.natten_import.cache_clear()


def _qkv(dim=8):
    """Plain CPU q, k, v and their fake-CUDA twins; head dim 8 keeps flex out (its CUDA kernels need 16)."""
    gen = torch.Generator().manual_seed(0)
    plain = [torch.randn(1, 2, 12, 12, dim, generator=gen) for _ in range(3)]
    return plain, fake_cuda(*plain)


def test_natten_021_with_libnatten_is_picked_and_called_in_its_layout(natten_stub):
    natten = natten_stub("0.21.0")
    (q, k, v), fakes = _qkv()
    assert "natten" in available_backends("cuda")
    assert resolve_backend("auto", *fakes, None) == "natten"
    out = na2d(*fakes, 5, 2, backend="natten")
    torch.testing.assert_close(out.as_subclass(torch.Tensor), na2d_reference(q, k, v, 5, 2))
    assert natten.calls == [
        {
            "shape": (1, 12, 12, 2, 8),
            "kernel_size": 5,
            "dilation": 2,
            "scale": 8**-0.5,
            "dtype": torch.float32,
        }
    ]
    assert resolve_backend("auto", *fakes, torch.zeros(2, 9, 9)) == "torch"  # RPB: natten >= 0.20 has none


def _refused(version: str) -> str:
    """natten is not offered on CUDA, auto falls back to torch, a forced natten is one line; its message."""
    _, fakes = _qkv()
    assert "natten" not in available_backends("cuda")
    assert resolve_backend("auto", *fakes, None) == "torch"
    with pytest.raises(RuntimeError) as err:
        na2d(*fakes, 5, backend="natten")
    message = str(err.value)
    assert message.startswith(f"na2d backend 'natten' is unavailable: natten {version} ")
    assert "\n" not in message
    return message


def test_natten_017_falls_back_and_a_forced_natten_says_why(natten_stub):
    natten = natten_stub("0.17.5", na2d_kind="module", has_libnatten=None)
    assert hasattr(natten, "na2d") and not callable(natten.na2d)  # what fooled the old hasattr gate
    assert ">= 0.20" in _refused("0.17.5")


@pytest.mark.parametrize("has_libnatten", [False, None], ids=["HAS_LIBNATTEN=False", "no-flag-no-libnatten"])
def test_natten_without_libnatten_is_unavailable(natten_stub, monkeypatch, caplog, has_libnatten):
    natten = natten_stub("0.21.0", has_libnatten=has_libnatten)
    assert "libnatten" in _refused("0.21.0")
    _, fakes = _qkv()
    assert natten.calls == []  # its uncompiled fallback (a dense L x L score matrix) never ran

    # the backend log line names the reason too (the torch backend itself is stubbed: fake CUDA tensors
    # cannot run kernels)
    monkeypatch.setattr(dispatch, "_logged_backends", set())
    monkeypatch.setattr(torch_backend, "na2d_torch", lambda q, *args, **kwargs: q)
    with caplog.at_level(logging.INFO, logger=dispatch.logger.name):
        na2d(*fakes, 5)
    (line,) = [r.getMessage() for r in caplog.records if r.name == dispatch.logger.name]
    assert "using the torch backend" in line and "libnatten" in line


def test_natten_020_and_later_versions_pass_the_version_gate(natten_stub):
    for version in ("0.20.1", "0.21.0+torch2100cu128", "1.0.0"):
        natten_stub(version)
        _, fakes = _qkv()
        assert resolve_backend("auto", *fakes, None) == "natten", version
    natten_stub("0.19.9")
    assert resolve_backend("auto", *fakes, None) == "torch"
