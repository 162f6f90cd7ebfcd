"""Discriminators: reference parameter count and key layout, shapes, gradients, errors (tiny configs)."""

import pytest
import torch

from stylenat.models.build import build_discriminator
from stylenat.models.discriminator import (
    StyleGAN2Discriminator,
    WaveletDiscriminator,
    channel_table,
    check_discriminator_config,
    minibatch_stddev,
)

TINY = {"channel_max": 16, "channel_multiplier": 1}
CONFIGS = [
    ("wavelet", 32, True),
    ("wavelet", 64, False),
    ("stylegan2", 32, False),
    ("stylegan2", 64, True),
]


def _build(name, res, sn, seed=0):
    torch.manual_seed(seed)
    return build_discriminator(
        {"name": name, "sn": sn, **{k: v for k, v in TINY.items() if k != "channel_multiplier"}}, res
    )


def test_wavelet_parameter_count_256():
    d = WaveletDiscriminator(256, channel_multiplier=2, sn=True)
    assert sum(p.numel() for p in d.parameters()) == 26_211_585


def test_stylegan2_parameter_count_256():
    d = StyleGAN2Discriminator(256, channel_multiplier=2)
    assert sum(p.numel() for p in d.parameters()) == 28_864_129  # rosinality's D at 256


def test_channel_table_reference():
    assert channel_table(1024, 2) == {
        4: 512,
        8: 512,
        16: 512,
        32: 512,
        64: 512,
        128: 256,
        256: 128,
        512: 64,
        1024: 32,
    }
    assert channel_table(64, 1, channel_max=16) == {4: 16, 8: 16, 16: 16, 32: 16, 64: 16}


@pytest.mark.parametrize("name,res,sn", CONFIGS)
def test_forward_shape_dtype_finite_deterministic(name, res, sn):
    d = _build(name, res, sn).eval()
    x = torch.randn(4, 3, res, res)
    out = d(x)
    assert out.shape == (4, 1) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert torch.equal(d(x), out)
    # Same seed -> same weights (and same spectral-norm vectors) -> same logits.
    assert torch.equal(_build(name, res, sn).eval()(x), out)


@pytest.mark.parametrize("name,res,sn", CONFIGS)
def test_gradients_reach_every_parameter(name, res, sn):
    d = _build(name, res, sn).train()
    out = d(torch.randn(4, 3, res, res))
    out.sum().backward()
    names = [n for n, _ in d.named_parameters()]
    if sn:
        assert any(n.endswith("weight_orig") for n in names)
    for n, p in d.named_parameters():
        assert p.grad is not None, n
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("name", ["wavelet", "stylegan2"])
def test_double_backward_r1(name):
    d = _build(name, 32, True)
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    (g,) = torch.autograd.grad(d(x).sum(), x, create_graph=True)
    g.pow(2).sum().backward()
    # Biases of the final layer cannot influence d(logit)/d(input); every weight must.
    for n, p in d.named_parameters():
        if "weight" in n:
            assert p.grad is not None and torch.isfinite(p.grad).all(), n


@pytest.mark.parametrize("batch", [1, 3, 6])
def test_odd_batch_sizes(batch):
    d = _build("wavelet", 32, True)
    assert d(torch.randn(batch, 3, 32, 32)).shape == (batch, 1)


def test_minibatch_stddev_matches_definition():
    x = torch.randn(8, 6, 3, 3, dtype=torch.float64)
    out = minibatch_stddev(x, group_size=4, num_features=1)
    assert out.shape == (8, 7, 3, 3) and torch.equal(out[:, :6], x)
    for b in range(8):
        members = x[b % 2 :: 2]  # sample b is grouped with b + k * (B / G)
        expected = torch.sqrt(members.var(0, unbiased=False) + 1e-8).mean()
        assert torch.allclose(out[b, 6], expected.expand(3, 3))


def test_wavelet_state_dict_layout():
    sd = WaveletDiscriminator(32, **TINY).state_dict()
    assert "from_rgbs.0.conv.0.weight_orig" in sd and "from_rgbs.0.conv.1.bias" in sd
    assert "from_rgbs.0.conv.0.bias" not in sd  # bias lives in the fused activation
    assert {"convs.0.conv2.0.kernel", "convs.0.conv2.1.weight_u", "convs.0.conv2.1.weight_v"} <= set(sd)
    assert {"final_linear.0.bias", "final_linear.1.bias", "final_linear.2.weight_orig"} <= set(sd)
    assert not any(k.endswith(".weight") for k in sd)
    assert torch.equal(sd["dwt.ll"], torch.full((2, 2), 0.49999997))
    assert torch.equal(sd["from_rgbs.1.iwt.lh"], torch.tensor([[0.49999997] * 2, [-0.49999997] * 2]))
    WaveletDiscriminator(32, **TINY).load_state_dict(sd)


def test_stylegan2_state_dict_layout():
    sd = StyleGAN2Discriminator(32, **TINY).state_dict()
    assert {"convs.0.0.weight", "convs.0.1.bias", "convs.1.skip.1.weight", "convs.1.conv2.0.kernel"} <= set(
        sd
    )
    assert "convs.1.skip.1.bias" not in sd
    assert {"final_linear.0.weight", "final_linear.0.bias", "final_linear.1.weight"} <= set(sd)


def test_unknown_name():
    with pytest.raises(ValueError, match="'nope'.*'stylegan2', 'wavelet'"):
        build_discriminator({"name": "nope"}, 32)


@pytest.mark.parametrize("name,res", [("wavelet", 48), ("stylegan2", 4), ("wavelet", 8), ("stylegan2", 100)])
def test_bad_resolution(name, res):
    with pytest.raises(ValueError, match=str(res)):
        build_discriminator({"name": name}, res)


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (2, 1, 32, 32), (3, 32, 32)])
def test_wrong_input_shape(shape):
    d = _build("stylegan2", 32, False)
    with pytest.raises(ValueError, match=r"\[B, 3, 32, 32\].*" + ", ".join(map(str, shape))):
        d(torch.randn(*shape))


@pytest.mark.parametrize(
    "cfg,resolution,match",
    [
        ({"depth": 3}, 32, r"^depth=3: unknown key \(known: name, "),
        ({"name": "nope"}, 32, "^name='nope': expected one of stylegan2, wavelet$"),
        ({"name": "wavelet"}, 8, "^name='wavelet': needs a power-of-two image resolution >= 16, got 8$"),
        ({"channel_multiplier": 0}, 32, "^channel_multiplier=0: expected an integer >= 1$"),
        ({"sn": "yes"}, 32, "^sn='yes': expected true or false$"),
        ({"channel_max": 0}, 32, "^channel_max=0: expected an integer >= 1 or null$"),
        ({"channels": {64: 8}}, 32, "^channels=.*: key 64 is not a power-of-two resolution in 4..32$"),
        ({"channels": {16: 0}}, 32, r"^channels=\{16: 0\}: entry 16: 0 is not an integer >= 1$"),
        ({"blur_kernel": []}, 32, r"^blur_kernel=\[\]: expected a non-empty list of numbers$"),
        ({"stddev_group": 0}, 32, "^stddev_group=0: expected an integer >= 1$"),
        ({"channel_max": 6, "stddev_feat": 4}, 32, "^stddev_feat=4: must divide the 6 channels at 4x4$"),
    ],
)
def test_config_errors_start_with_the_key(cfg, resolution, match):
    # One line per error that starts with the key as written in the config (the training config parser
    # prefixes its group), never a Hydra path of its own.
    with pytest.raises(ValueError, match=match) as err:
        check_discriminator_config(cfg, resolution)
    assert (
        "\n" not in str(err.value)
        and "discriminator." not in str(err.value)
        and "model." not in str(err.value)
    )


def test_config_check_accepts_the_defaults_and_needs_a_mapping():
    check_discriminator_config({}, 32)
    check_discriminator_config({"name": "stylegan2", "sn": True, "channels": {"16": 64}}, 16)
    with pytest.raises(TypeError, match="mapping"):
        check_discriminator_config([("name", "wavelet")], 32)
