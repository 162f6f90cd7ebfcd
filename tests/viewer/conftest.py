"""Shared fixtures of the viewer tests: the tiny 16x16 generator (tests/tiny.py) as a snapshot, a renderer
over it, and a class-conditional one (3 named classes)."""

import pytest
import torch

import stylenat
from stylenat.models.build import build_generator
from stylenat.snapshot import save_snapshot
from tests.tiny import TINY_G16


@pytest.fixture(scope="session")
def tiny_snapshot(tmp_path_factory):
    torch.manual_seed(0)
    G = build_generator(TINY_G16)
    path = tmp_path_factory.mktemp("viewer-snap") / "network-snapshot-000002.500.pt"
    save_snapshot(path, G, {"kimg": 2.5, "step": 10})
    return path


@pytest.fixture(scope="session")
def tiny_G(tiny_snapshot):
    return stylenat.load_generator(tiny_snapshot)


@pytest.fixture(scope="session")
def conditional_G(tmp_path_factory):
    """A real class-conditional tiny generator (3 classes, named in its snapshot), loaded as the viewer does."""
    torch.manual_seed(1)
    G = build_generator({**TINY_G16, "c_dim": 3})
    path = tmp_path_factory.mktemp("viewer-cond") / "network-snapshot-000001.000.pt"
    save_snapshot(path, G, {"kimg": 1.0, "class_names": [f"class {i}" for i in range(3)]})
    return stylenat.load_generator(path)
