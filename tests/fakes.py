"""Stand-ins for what this CPU machine lacks: a tensor that reports a CUDA device, and stub ``natten``
packages shaped like the real releases (NATTEN is not installed here).

``FakeCudaTensor`` holds CPU memory but answers ``.device`` with cuda:0, so device checks and backend
selection can be driven through their CUDA branches; anything that would allocate on its device fails
(no driver), so use it only where a decision is made, not where kernels run.

``install_natten_stub`` writes a package ``natten`` into a temporary folder, puts the folder first on
sys.path, drops any imported ``natten`` modules and clears the natten backend's cached import, so the
next ``na2d`` call sees the stub. Shapes (from NATTEN's sources):

* 0.17: ``natten.na2d`` is a submodule (the functional ops live in natten.functional); no HAS_LIBNATTEN.
* 0.20 / 0.21: ``natten.na2d`` is a function, ``natten/__init__.py`` re-exports
  ``natten._environment.HAS_LIBNATTEN`` (True when the compiled ``natten.libnatten`` imports); the stub's
  na2d computes neighborhood attention in NATTEN's heads-last layout [B, H, W, heads, D] with the gather
  oracle and records each call in ``natten.calls``.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import torch


class FakeCudaTensor(torch.Tensor):
    """A CPU tensor whose ``device`` reads cuda:0 (results of torch ops keep the subclass)."""

    @property
    def device(self):
        return torch.device("cuda", 0)


def fake_cuda(*tensors: torch.Tensor):
    out = tuple(t.as_subclass(FakeCudaTensor) for t in tensors)
    return out if len(out) > 1 else out[0]


_NA2D_V021 = '''
calls = []


def na2d(query, key, value, kernel_size, stride=1, dilation=1, is_causal=False, scale=None, **kwargs):
    """NATTEN >= 0.20's signature and layout: [B, H, W, heads, D] in and out."""
    import torch

    from stylenat.ops.na.reference import na2d_reference

    calls.append({"shape": tuple(query.shape), "kernel_size": kernel_size, "dilation": dilation,
                  "scale": scale, "dtype": query.dtype})
    q, k, v = (t.as_subclass(torch.Tensor).permute(0, 3, 1, 2, 4) for t in (query, key, value))
    return na2d_reference(q, k, v, kernel_size, dilation, scale=scale).permute(0, 2, 3, 1, 4)
'''


def install_natten_stub(
    monkeypatch, root: Path, version: str, na2d_kind: str = "function", has_libnatten: bool | None = True
):
    """Write and activate a stub natten ``version``. na2d_kind: "function" (>= 0.20) or "module"
    (0.17); has_libnatten: the value of natten.HAS_LIBNATTEN, or None for no such attribute."""
    from stylenat.ops.na import natten_backend

    package = root / f"natten-{version}-{na2d_kind}-{has_libnatten}" / "natten"
    package.mkdir(parents=True)
    lines = [f'__version__ = "{version}"']
    if has_libnatten is not None:
        lines.append(f"HAS_LIBNATTEN = {has_libnatten}")
    if na2d_kind == "module":
        (package / "na2d.py").write_text('"""natten 0.17: a submodule, not the op."""\n')
        (package / "functional.py").write_text("def na2d(*args, **kwargs):\n    raise AssertionError\n")
        lines.append("from . import functional, na2d  # noqa: F401")
    else:
        lines.append(textwrap.dedent(_NA2D_V021))
    (package / "__init__.py").write_text("\n".join(lines) + "\n")
    for name in [m for m in sys.modules if m == "natten" or m.startswith("natten.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(package.parent))
    natten_backend.natten_import.cache_clear()
    import natten

    assert natten.__version__ == version
    return natten
