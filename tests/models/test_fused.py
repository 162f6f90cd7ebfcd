"""The fused no-grad CPU inference kernels against the modules' plain forwards; where the path applies and
the generator's switch between it and the modules. It is a CPU optimisation (issue 14, defect 4): its
cache-sized chunk loops would be hundreds of tiny kernel launches per block on a GPU, so only CPU maps
take it."""

import pytest
import torch

from stylenat.models import fused
from stylenat.models.layers import AdaptiveInstanceNorm
from stylenat.ops import buffers
from tests.fakes import fake_cuda
from tests.tiny import tiny_g32 as tiny


def test_fast_path_only_on_the_cpu():
    x = torch.randn(2, 8, 8, 16)
    with torch.no_grad():
        assert fused.applies(x)
        assert not fused.applies(fake_cuda(x))  # a CUDA map (reported device cuda:0)
        assert not fused.applies(torch.empty(2, 8, 8, 16, device="meta"))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not fused.applies(x)
    assert not fused.applies(x)  # grad mode on


def test_stages_take_the_fused_path_exactly_for_cpu_inference(monkeypatch):
    G = tiny().eval()
    calls = []
    real = fused.stage
    monkeypatch.setattr(fused, "stage", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    z = torch.randn(2, 32)
    with torch.no_grad():
        G(z)
    assert len(calls) == len(G.stages)
    calls.clear()
    G(z)  # autograd: the plain module ops
    assert calls == []
    with torch.no_grad(), G.using_inference_path("modules"):  # asked for: the modules, even for CPU inference
        G(z)
    assert calls == []


def test_the_inference_path_is_an_explicit_switch():
    G = tiny().eval()
    assert G.inference_path == "fused" and all(s.inference_path == "fused" for s in G.stages)
    with pytest.raises(ValueError, match=r"inference_path='flex': expected one of fused, modules"):
        G.set_inference_path("flex")
    assert G.set_inference_path("modules") == "fused"
    assert all(s.inference_path == "modules" for s in G.stages)
    with G.using_inference_path("fused"):
        assert all(s.inference_path == "fused" for s in G.stages)
    assert G.inference_path == "modules" and all(s.inference_path == "modules" for s in G.stages)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_fused_and_module_paths_draw_the_same_images(dtype):
    G = tiny().eval()
    G.set_compute_dtype(dtype)
    z = torch.randn(3, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        default = G(z, truncation_psi=0.7)
        with G.using_inference_path("fused"):
            fast = G(z, truncation_psi=0.7)
        with G.using_inference_path("modules"):
            plain = G(z, truncation_psi=0.7)
    assert torch.equal(default, fast)  # the default for no-grad CPU sampling is the fused path
    tol = 1e-5 if dtype == "fp32" else 3e-2
    torch.testing.assert_close(fast, plain, rtol=tol, atol=tol)


def test_fast_block_leaves_its_input_alone():
    G = tiny().eval()
    block = G.stages[2].blocks[0]
    x = torch.randn(2, 16, 16, 32)
    w = torch.randn(2, 32)
    before = x.clone()
    with torch.no_grad():
        fast = fused.transformer_block(block, x, w)
    assert torch.equal(x, before)
    plain = block(x, w.requires_grad_())
    torch.testing.assert_close(fast, plain.detach(), rtol=1e-5, atol=1e-5)
    owned = x.clone()
    with torch.no_grad():
        again = fused.transformer_block(block, owned, w, inplace=True)
    assert again.data_ptr() == owned.data_ptr()  # the caller owns x: the residual adds went into it
    torch.testing.assert_close(again, fast, rtol=0, atol=0)


def test_token_stats_and_adain_coefficients():
    x = 3 + 2 * torch.randn(2, 33, 20, 8, dtype=torch.float64)  # rows not a multiple of the chunk
    mean, var = fused.token_stats(x)
    want_var, want_mean = torch.var_mean(x, dim=(1, 2), correction=0)
    torch.testing.assert_close(mean, want_mean.float())
    torch.testing.assert_close(var, want_var.float())
    norm = AdaptiveInstanceNorm(8, 16)
    norm.affine.bias.data.normal_()
    w = torch.randn(2, 16)
    xf = x.float()
    with torch.no_grad():
        scale, shift = fused.adain_coefficients(norm, xf, w)
        fast = fused.affine(xf, scale, shift)
    plain = norm(xf, w.requires_grad_())
    torch.testing.assert_close(fast, plain.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xf * scale[:, None, None] + shift[:, None, None], fast, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("budget", [1 << 12, 1 << 20], ids=["row_chunks", "whole_samples"])
def test_chunked_mlp_and_upsample_match_plain(monkeypatch, budget):
    monkeypatch.setattr(buffers, "CPU_CHUNK_ELEMS", budget)  # many chunks with a partial last one, or one
    G = tiny().eval()
    mlp, up = G.stages[3].blocks[1].mlp, G.stages[2].upsample
    up.alpha.data.fill_(0.3)
    x = torch.randn(2, 15, 13, 32)
    scale, shift = torch.randn(2, 32), torch.randn(2, 32)
    want = x + mlp(x * scale[:, None, None] + shift[:, None, None])
    got = x.clone()
    fused.mlp_add_(mlp, got, scale, shift)
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-5)
    y = torch.randn(2, 16, 16, 32)
    fast = fused.upsample(up, y)
    torch.testing.assert_close(fast, up(y.requires_grad_()).detach(), rtol=1e-5, atol=1e-5)
