"""Shared fixtures of the viewer tests: the tiny 16x16 generator (tests/tiny.py) as a snapshot, a renderer
over it, and a conditional stand-in (the API the fine-tuning branch adds: c_dim, class_names, c=one-hot)."""

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


class ConditionalStandIn(torch.nn.Module):
    """A conditional generator with the fine-tuning branch's interface over an unconditional one: the
    one-hot class is embedded and added to z before the mapping. Enough to drive the class selector."""

    def __init__(self, G, c_dim=3):
        super().__init__()
        self.G, self.c_dim, self.class_names = G, c_dim, [f"class {i}" for i in range(c_dim)]
        self.embed = torch.nn.Linear(c_dim, G.z_dim, bias=False)
        torch.nn.init.normal_(self.embed.weight, std=3.0)
        self.requires_grad_(False)
        self.resolution, self.z_dim, self.w_dim, self.n_latent = G.resolution, G.z_dim, G.w_dim, G.n_latent
        self.model_config, self.stages = G.model_config, G.stages  # stages: the attention panel's layers

    def mapping(self, z, c=None, truncation_psi=1.0, truncation_cutoff=None):
        assert c is not None and c.shape == (z.shape[0], self.c_dim), "c must be a one-hot [B, c_dim]"
        return self.G.mapping(z + self.embed(c), truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)

    def synthesis(self, ws):
        return self.G.synthesis(ws)

    def to_minus_one_one(self, img):
        return self.G.to_minus_one_one(img)

    def using_inference_path(self, path):
        return self.G.using_inference_path(path)

    def forward(self, z, c=None, truncation_psi=1.0, truncation_cutoff=None):
        return self.to_minus_one_one(self.synthesis(self.mapping(z, c, truncation_psi, truncation_cutoff)))


@pytest.fixture(scope="session")
def conditional_G(tiny_G):
    torch.manual_seed(1)
    return ConditionalStandIn(tiny_G)
