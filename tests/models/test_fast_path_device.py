"""The generator's hand-fused no-grad paths are a CPU optimisation (issue 14, defect 4): their cache-sized
chunk loops would be hundreds of tiny kernel launches per block on a GPU, so only CPU maps take them."""

import torch

from stylenat.models import layers
from tests.fakes import fake_cuda


def test_fast_path_only_on_the_cpu():
    x = torch.randn(2, 8, 8, 16)
    with torch.no_grad():
        assert layers.fast_path(x)
        assert not layers.fast_path(fake_cuda(x))  # a CUDA map (reported device cuda:0)
        assert not layers.fast_path(torch.empty(2, 8, 8, 16, device="meta"))


def test_chunk_budget_is_a_cpu_notion():
    assert layers.CPU_CHUNK_ELEMS == 1 << 20
    assert not hasattr(layers, "CHUNK_ELEMS")
