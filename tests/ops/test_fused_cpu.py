"""The fused no-grad CPU inference kernels against the modules' plain forwards; where the path applies; the
one buffer pool. It is a CPU optimisation (issue 14, defect 4): its cache-sized chunk loops would be
hundreds of tiny kernel launches per block on a GPU, so only CPU maps take it."""

import pytest
import torch

from stylenat.models.layers import AdaptiveInstanceNorm
from stylenat.ops import fused_cpu, na2d
from tests.fakes import fake_cuda
from tests.tiny import tiny_g32 as tiny


def test_fast_path_only_on_the_cpu():
    x = torch.randn(2, 8, 8, 16)
    with torch.no_grad():
        assert fused_cpu.applies(x)
        assert not fused_cpu.applies(fake_cuda(x))  # a CUDA map (reported device cuda:0)
        assert not fused_cpu.applies(torch.empty(2, 8, 8, 16, device="meta"))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not fused_cpu.applies(x)
    assert not fused_cpu.applies(x)  # grad mode on


def test_chunk_budget_is_a_cpu_notion():
    assert fused_cpu.CPU_CHUNK_ELEMS == 1 << 20
    assert not hasattr(fused_cpu, "CHUNK_ELEMS")


def test_stages_take_the_fused_path_exactly_for_cpu_inference(monkeypatch):
    G = tiny().eval()
    calls = []
    real = fused_cpu.stage
    monkeypatch.setattr(fused_cpu, "stage", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    z = torch.randn(2, 32)
    with torch.no_grad():
        G(z)
    assert len(calls) == len(G.stages)
    calls.clear()
    G(z)  # autograd: the plain module ops
    assert calls == []


def test_fast_block_leaves_its_input_alone():
    G = tiny().eval()
    block = G.stages[2].blocks[0]
    x = torch.randn(2, 16, 16, 32)
    w = torch.randn(2, 32)
    before = x.clone()
    with torch.no_grad():
        fast = fused_cpu.transformer_block(block, x, w)
    assert torch.equal(x, before)
    plain = block(x, w.requires_grad_())
    torch.testing.assert_close(fast, plain.detach(), rtol=1e-5, atol=1e-5)
    owned = x.clone()
    with torch.no_grad():
        again = fused_cpu.transformer_block(block, owned, w, inplace=True)
    assert again.data_ptr() == owned.data_ptr()  # the caller owns x: the residual adds went into it
    torch.testing.assert_close(again, fast, rtol=0, atol=0)


def test_token_stats_and_adain_coefficients():
    x = 3 + 2 * torch.randn(2, 33, 20, 8, dtype=torch.float64)  # rows not a multiple of the chunk
    mean, var = fused_cpu.token_stats(x)
    want_var, want_mean = torch.var_mean(x, dim=(1, 2), correction=0)
    torch.testing.assert_close(mean, want_mean.float())
    torch.testing.assert_close(var, want_var.float())
    norm = AdaptiveInstanceNorm(8, 16)
    norm.affine.bias.data.normal_()
    w = torch.randn(2, 16)
    xf = x.float()
    with torch.no_grad():
        scale, shift = fused_cpu.adain_coefficients(norm, xf, w)
        fast = fused_cpu.affine(xf, scale, shift)
    plain = norm(xf, w.requires_grad_())
    torch.testing.assert_close(fast, plain.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xf * scale[:, None, None] + shift[:, None, None], fast, rtol=1e-6, atol=1e-6)


def test_sample_chunks_cover_every_row_once():
    for batch, rows, width, budget in ((3, 1000, 64, 1 << 12), (5, 10, 8, 1 << 10), (2, 195, 128, 1 << 20)):
        seen = torch.zeros(batch, rows, dtype=torch.long)
        for samples, part in fused_cpu.sample_chunks(batch, rows, width, budget):
            assert samples.stop - samples.start == 1 or (part.start, part.stop) == (0, rows)
            seen[samples, part] += 1
        assert bool((seen == 1).all())
    assert len(fused_cpu.sample_chunks(5, 10, 8, 1 << 10)) == 1  # small maps: whole samples in one product


@pytest.mark.parametrize("budget", [1 << 12, 1 << 20], ids=["row_chunks", "whole_samples"])
def test_chunked_mlp_and_upsample_match_plain(monkeypatch, budget):
    monkeypatch.setattr(fused_cpu, "CPU_CHUNK_ELEMS", budget)  # many chunks with a partial last one, or one
    G = tiny().eval()
    mlp, up = G.stages[3].blocks[1].mlp, G.stages[2].upsample
    up.alpha.data.fill_(0.3)
    x = torch.randn(2, 15, 13, 32)
    scale, shift = torch.randn(2, 32), torch.randn(2, 32)
    want = x + mlp(x * scale[:, None, None] + shift[:, None, None])
    got = x.clone()
    fused_cpu.mlp_add_(mlp, got, scale, shift)
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-5)
    y = torch.randn(2, 16, 16, 32)
    fast = fused_cpu.upsample(up, y)
    torch.testing.assert_close(fast, up(y.requires_grad_()).detach(), rtol=1e-5, atol=1e-5)


def test_one_buffer_pool_for_the_layers_and_neighborhood_attention():
    fused_cpu.release_buffers()
    x = torch.randn(1, 2, 16, 16, 4)
    pool = fused_cpu.pool_for(x)
    assert fused_cpu.pool_for(x) is pool  # per thread, kept between calls
    with torch.no_grad():
        na2d(x, x, x, 5)  # the torch backend's scratch space
    names = {name for name, _ in pool._buffers}
    assert names and all(name.startswith("na.") for name in names)
    heads = fused_cpu.buffer("heads", (2, 3), x)
    assert ("heads", torch.float32) in pool._buffers and heads.shape == (2, 3)
    with torch.inference_mode():  # made under inference_mode, still writable afterwards
        fused_cpu.buffer("late", (8,), x)
    fused_cpu.buffer("late", (8,), x).fill_(1.0)
    fused_cpu.release_buffers()
    assert fused_cpu.pool_for(x) is not pool
    assert fused_cpu.pool_for(fake_cuda(x)) is not fused_cpu.pool_for(fake_cuda(x))  # per call off the CPU
