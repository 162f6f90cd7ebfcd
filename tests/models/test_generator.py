import math

import pytest
import torch

from stylenat.models.build import build_generator
from stylenat.models.generator import Generator, GeneratorConfig, paper_channels
from stylenat.ops.upfirdn import upfirdn2d
from tests.tiny import TINY_G32 as TINY
from tests.tiny import tiny_g32 as tiny


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("resolution, millions", [(256, 48.92), (1024, 49.45)])
def test_paper_parameter_counts(resolution, millions):
    with torch.device("meta"):
        G = Generator(GeneratorConfig(resolution=resolution, dilations=GeneratorConfig().dilations))
    assert round(count(G) / 1e6, 2) == millions


def test_256_per_stage_counts_match_reference():
    with torch.device("meta"):
        G = Generator(GeneratorConfig(resolution=256))
    assert count(G) == 48_921_000
    assert round(count(G.mapping_net) / 1e6, 2) == 2.10
    per_stage = [round((count(s) + count(r)) / 1e6, 2) for s, r in zip(G.stages, G.to_rgbs)]
    assert per_stage == [8.67, 8.67, 8.67, 8.67, 8.54, 2.66, 0.92]
    heads = [s.blocks[0].attn.num_heads for s in G.stages]
    assert [c // h for c, h in zip(paper_channels(256), heads)] == [32] * 7


def test_shapes_dtype_and_determinism():
    G = tiny().eval()
    z = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = G(z), G(z.clone())
    assert a.shape == (3, 3, 32, 32) and a.dtype == torch.float32
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert G.n_latent == 8
    assert not torch.allclose(a[0], a[1])


def test_truncation_psi_zero_gives_w_avg_image():
    G = tiny().eval()
    G.w_avg.copy_(torch.randn(32))
    z = torch.randn(4, 32)
    with torch.no_grad():
        img = G(z, truncation_psi=0.0)
        ref = G.to_minus_one_one(G.synthesis(G.w_avg.expand(1, -1)))
    torch.testing.assert_close(img, ref.expand_as(img), rtol=0, atol=1e-5)


def test_truncation_cutoff_only_touches_early_layers():
    G = tiny().eval()
    G.w_avg.copy_(torch.randn(32))
    z = torch.randn(2, 32)
    full = G.mapping(z)
    cut = G.mapping(z, truncation_psi=0.5, truncation_cutoff=3)
    torch.testing.assert_close(cut[:, 3:], full[:, 3:])
    torch.testing.assert_close(cut[:, :3], G.w_avg.lerp(full[:, :3], 0.5))


def stage_outputs(G, ws):
    outs = []
    hooks = [s.register_forward_hook(lambda m, i, o: outs.append(o.clone())) for s in G.stages]
    with torch.no_grad():
        G.synthesis(ws)
    for h in hooks:
        h.remove()
    return outs


def test_style_mixing_changes_only_later_layers():
    G = tiny().eval()
    ws = G.mapping(torch.randn(2, 32))
    mixed = ws.clone()
    crossover = 4  # layers 4.. belong to stages 2 and 3
    mixed[:, crossover:] = G.mapping(torch.randn(2, 32))[:, crossover:]
    before, after = stage_outputs(G, ws), stage_outputs(G, mixed)
    for s in range(2):
        assert torch.equal(before[s], after[s])
    for s in range(2, 4):
        assert not torch.allclose(before[s], after[s])


def test_w_avg_tracks_mapping_output():
    G = tiny()
    z = torch.randn(16, 32)
    G.mapping(z, update_w_avg=True, w_avg_beta=0.0)
    torch.testing.assert_close(G.w_avg, G.mapping_net(z).mean(0))


def test_imagenet_output_space_maps_to_minus_one_one():
    G = tiny(output_normalization="imagenet").eval()
    z = torch.randn(2, 32)
    with torch.no_grad():
        raw = G.synthesis(G.mapping(z))
        public = G(z)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(public, (raw * std + mean) * 2 - 1)


def test_synthesis_matches_hand_written_forward():
    """Re-derive the image from the parameters: const -> blocks -> upsample(+PE) -> ToRGB skip sum."""
    G = tiny().eval()
    for p in G.parameters():  # make alpha and biases non-trivial so every path matters
        p.data.add_(0.01 * torch.randn_like(p))
    ws = G.mapping(torch.randn(2, 32))
    with torch.no_grad():
        expected = G.synthesis(ws)
        x = G.const.expand(2, -1, -1, -1)
        rgb = None
        blur = torch.tensor([1.0, 3, 3, 1])
        blur = torch.outer(blur, blur) / 64 * 4
        for s, (stage, to_rgb) in enumerate(zip(G.stages, G.to_rgbs)):
            for j, block in enumerate(stage.blocks):
                w = ws[:, 2 * s + j]
                x = x + block.attn(block.norm1(x, w))
                x = x + block.mlp(block.norm2(x, w))
            if stage.upsample is not None:
                up = stage.upsample
                x = torch.nn.functional.interpolate(x.permute(0, 3, 1, 2), scale_factor=2, mode="bilinear")
                x = up.proj(up.norm(x.permute(0, 2, 3, 1)))
                h = x.shape[1]
                x = x + up.alpha * sinusoidal_reference(h, x.shape[-1])
            out = torch.einsum("bhwc,oc->bohw", x, to_rgb.conv.weight[:, :, 0, 0])
            out = out + (to_rgb.conv.bias + to_rgb.bias).view(1, 3, 1, 1)
            if rgb is not None:
                rgb = out + (upfirdn2d(rgb, blur, up=2, pad=(2, 1)) if to_rgb.upsample_skip else rgb)
            else:
                rgb = out
    torch.testing.assert_close(expected, rgb, rtol=1e-5, atol=1e-5)


def sinusoidal_reference(size, channels):
    """Independent 2-D SPE: x features then y features, positions 1..size, sin then cos halves."""
    dim = channels // 2
    half = dim // 2
    pe = torch.zeros(size, size, channels)
    for pos in range(1, size + 1):
        for i in range(half):
            f = math.exp(-i * math.log(10000) / (half - 1))
            pe[:, pos - 1, i] = math.sin(pos * f)
            pe[:, pos - 1, half + i] = math.cos(pos * f)
            pe[pos - 1, :, dim + i] = math.sin(pos * f)
            pe[pos - 1, :, dim + half + i] = math.cos(pos * f)
    return pe


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(resolution=48), "^resolution=48: expected a power of two >= 8$"),
        (dict(resolution=33), "^resolution=33: expected a power of two >= 8$"),
        (
            dict(dilations=[[1], [1], [1, 4], [1, 4]]),
            r"^kernels\[2\]=\[5\] x dilations\[2\]=\[1, 4\]: stage 16x16: kernel_size 5 \* dilation 4 = 20 exceeds",
        ),
        (dict(kernels=[[3], [4], [5], [3]]), r"^kernels\[1\]=\[4\]: stage 8x8: kernel_size 4 must be odd$"),
        (dict(output_normalization="zero_one"), "^output_normalization='zero_one': expected one of imagenet"),
        (dict(channels=[64, 64, 32]), r"^channels=\[64, 64, 32\]: expected 4 entries"),
        (
            dict(channels=[64, 64, 30, 32]),
            r"^channels\[2\]=30: stage 16x16: 30 channels are not divisible by 4 heads",
        ),
        (dict(z_dim=0), "^z_dim=0: expected an integer >= 1$"),
        (dict(use_rpb="yes"), "^use_rpb='yes': expected true or false$"),
        (dict(bogus_key=1), r"^bogus_key=1: unknown key \(known: "),
    ],
)
def test_bad_config_errors(overrides, match):
    # One line that starts with the field as written in the config (a config parser adds its own prefix).
    with pytest.raises(ValueError, match=match) as err:
        build_generator({**TINY, **overrides})
    assert "\n" not in str(err.value) and "model." not in str(err.value)


def test_runtime_settings_are_arguments_not_config():
    G = tiny(na_backend="torch", checkpoint_blocks=True)
    attn = [m for m in G.modules() if hasattr(m, "backend")]
    assert attn and all(m.backend == "torch" for m in attn)
    assert all(stage.checkpoint_blocks for stage in G.stages)
    assert not {"na_backend", "checkpoint_blocks"} & set(G.model_config)  # snapshots do not store them
    G.set_na_backend("flex")
    assert G.na_backend == "flex" and all(m.backend == "flex" for m in attn)
    with pytest.raises(
        ValueError, match="^na_backend='cuda-magic': expected one of auto, torch, natten, flex$"
    ):
        tiny(na_backend="cuda-magic")
    with pytest.raises(ValueError, match="^na_backend='cuda-magic': expected one of"):
        G.set_na_backend("cuda-magic")
    with pytest.raises(ValueError, match="^checkpoint_blocks='yes': expected true or false$"):
        tiny(checkpoint_blocks="yes")


def test_old_snapshot_configs_with_runtime_keys_still_load():
    legacy = {**TINY, "na_backend": "natten", "checkpoint_blocks": True}
    cfg = GeneratorConfig.from_dict(legacy)
    assert cfg.to_dict() == GeneratorConfig.from_dict(TINY).to_dict()
    G = build_generator(legacy)
    assert all(m.backend == "auto" for m in G.modules() if hasattr(m, "backend"))
    assert not any(stage.checkpoint_blocks for stage in G.stages)


def test_wrong_latent_size_error():
    G = tiny()
    with pytest.raises(ValueError, match=r"expected z of shape \[batch, 32\], got \[2, 64\]"):
        G(torch.randn(2, 64))
    with pytest.raises(ValueError, match=r"expected ws of shape \[batch, 8, 32\]"):
        G.synthesis(torch.randn(2, 5, 32))


# ----------------------------------------------------------------------------------------------------
# The hand-fused no-autograd paths (chunked AdaIN/projections, in-place residuals) against the plain ops
# ----------------------------------------------------------------------------------------------------


def test_no_grad_fast_path_matches_the_autograd_path():
    G = tiny().eval()
    for p in G.parameters():  # non-trivial alpha, biases and AdaIN betas
        p.data.add_(0.05 * torch.randn_like(p))
    ws = G.mapping(torch.randn(3, 32, generator=torch.Generator().manual_seed(2))).detach()
    with torch.no_grad():
        fast = G.synthesis(ws)
    plain = G.synthesis(ws)  # grad mode: the plain module ops
    assert plain.requires_grad and not fast.requires_grad
    torch.testing.assert_close(fast, plain.detach(), rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(G.synthesis(ws), fast, rtol=0, atol=0)


def test_autocast_keeps_the_plain_path():
    G = tiny().eval()
    z = torch.randn(2, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        img = G(z)
    with torch.no_grad():
        ref = G(z)
    assert torch.isfinite(img).all()
    torch.testing.assert_close(img.float(), ref, rtol=0.1, atol=0.1)
