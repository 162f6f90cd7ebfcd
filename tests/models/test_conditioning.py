"""Class conditioning (SPEC "Conditioning and transfer"): G embeds c and concatenates it with z in the
mapping network, both Ds condition by projection; the unconditional networks are exactly what they were."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from stylenat.models.build import build_discriminator, build_generator
from stylenat.models.conditioning import normalize_2nd_moment
from tests.tiny import TINY_G16

# Pinned from the code before conditioning existed (commit 07d9d3f): the key/shape digest and count of the
# state dicts, and outputs for fixed seeds (G: TINY_G16 after torch.manual_seed(0), z from seed 5, psi 0.7;
# D: channel_max 32 at 16 px after torch.manual_seed(0), input from seed 6).
BEFORE = {
    "G": ("2921cce0471f365a", 103, -1.6679736794903874, 10.853060011693742),
    "wavelet": (
        "f4256896854f85aa",
        43,
        [0.0026140958070755005, 0.01868617534637451, 0.07736663520336151, -0.00990082323551178],
    ),
    "stylegan2": (
        "504c09791dda7b8f",
        22,
        [0.5259274244308472, 0.4715193510055542, 0.3696898818016052, 0.3748496472835541],
    ),
}


def keys_digest(module):
    text = ";".join(f"{k}:{list(v.shape)}" for k, v in sorted(module.state_dict().items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16], len(module.state_dict())


def onehot(classes, c_dim):
    return torch.nn.functional.one_hot(torch.tensor(classes), c_dim).float()


def conditional_g(c_dim=3):
    torch.manual_seed(0)
    return build_generator({**TINY_G16, "c_dim": c_dim}).eval()


def test_the_unconditional_generator_is_unchanged():
    torch.manual_seed(0)
    G = build_generator(TINY_G16).eval()
    digest, count, img_sum, img_abs = BEFORE["G"]
    assert keys_digest(G) == (digest, count)
    assert G.c_dim == 0 and G.class_names is None and "c_dim" not in G.model_config
    z = torch.randn(3, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        img = G(z, truncation_psi=0.7).double()
    assert img.sum().item() == pytest.approx(img_sum, rel=1e-5, abs=1e-5)
    assert img.abs().sum().item() == pytest.approx(img_abs, rel=1e-5)


@pytest.mark.parametrize("name", ["wavelet", "stylegan2"])
def test_the_unconditional_discriminators_are_unchanged(name):
    torch.manual_seed(0)
    D = build_discriminator({"name": name, "channel_max": 32}, 16)
    digest, count, logits = BEFORE[name]
    assert keys_digest(D) == (digest, count) and not hasattr(D, "mapping")
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(D(x).flatten(), torch.tensor(logits), rtol=1e-4, atol=1e-6)


def test_conditional_generator_maps_normalised_z_and_embedded_c():
    G = conditional_g()
    assert G.c_dim == 3 and G.model_config["c_dim"] == 3
    net = G.mapping_net
    assert tuple(net.embed.weight.shape) == (16, 3)  # c_dim -> w_dim
    assert tuple(net.layers[0].weight.shape) == (16, 16 + 16)  # z_dim + w_dim wide
    z = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    c = onehot([0, 1, 2, 1], 3)
    with torch.no_grad():
        # the reference maths, written out: normalise z and embed(c) by their 2nd moment, concatenate
        e = c @ (net.embed.weight * net.embed.scale).T + net.embed.bias * net.embed.lr_mul
        x = torch.cat(
            [
                z / (z.square().mean(1, keepdim=True) + 1e-8).sqrt(),
                e / (e.square().mean(1, keepdim=True) + 1e-8).sqrt(),
            ],
            1,
        )
        torch.testing.assert_close(G.mapping(z, c)[:, 0], net.layers(x))
        torch.testing.assert_close(normalize_2nd_moment(e), x[:, 16:])
        images = G(z, c)
        assert images.shape == (4, 3, 16, 16)
        # the class changes the image, the same class gives the same image
        other = G(z, onehot([1, 2, 0, 1], 3))
        assert not torch.allclose(images[:3], other[:3])
        torch.testing.assert_close(images[3], other[3])


def test_labels_missing_foreign_or_misshapen_are_one_line():
    G = conditional_g()
    z = torch.randn(2, 16)
    with pytest.raises(
        ValueError, match=r"class-conditional \(c_dim=3\): pass c, a one-hot \[batch, 3\] tensor"
    ):
        G(z)
    with pytest.raises(ValueError, match=r"expected c of shape \[2, 3\] \(one-hot\), got \[2, 2\]"):
        G.mapping(z, torch.zeros(2, 2))
    torch.manual_seed(0)
    U = build_generator(TINY_G16)
    with pytest.raises(ValueError, match=r"unconditional \(c_dim=0\): call it without c"):
        U(z, onehot([0, 1], 3))
    D = build_discriminator({"name": "stylegan2", "channel_max": 32}, 16)
    with pytest.raises(ValueError, match="this discriminator is unconditional"):
        D(torch.zeros(2, 3, 16, 16), onehot([0, 1], 3))
    with pytest.raises(ValueError, match="c_dim=-1: expected an integer >= 0"):
        build_generator({**TINY_G16, "c_dim": -1})


@pytest.mark.parametrize("name", ["wavelet", "stylegan2"])
def test_projection_discriminator_logit_is_its_formula(name):
    torch.manual_seed(0)
    D = build_discriminator({"name": name, "channel_max": 32}, 16, c_dim=3).eval()
    torch.manual_seed(0)
    plain = build_discriminator({"name": name, "channel_max": 32}, 16)
    # the conditional D adds the cmap mapping and widens the last layer to cmap_dim = channels at 4x4 (32)
    extra = set(D.state_dict()) - set(plain.state_dict())
    assert (
        extra
        and all(k.startswith("mapping.") for k in extra)
        and set(plain.state_dict()) <= set(D.state_dict())
    )
    assert D.mapping.embed.weight.shape == (32, 3) and len(D.mapping.layers) == 8
    last = D.final_linear[-1]
    assert (last.weight_orig if hasattr(last, "weight_orig") else last.weight).shape[0] == 32
    seen = {}
    D.final_linear.register_forward_hook(lambda m, i, o: seen.__setitem__("x", o))
    D.mapping.register_forward_hook(lambda m, i, o: seen.__setitem__("cmap", o))
    img = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    c = onehot([0, 2, 1, 2], 3)
    with torch.no_grad():
        logits = D(img, c)
    assert logits.shape == (4, 1)
    x, cmap = seen["x"], seen["cmap"]
    assert x.shape == cmap.shape == (4, 32)
    torch.testing.assert_close(logits, (x * cmap).sum(1, keepdim=True) / math.sqrt(32))
    with torch.no_grad():  # the label matters: another class, another logit for the same image
        assert not torch.allclose(D(img, onehot([1, 0, 0, 1], 3)), logits)
        with pytest.raises(ValueError, match=r"this discriminator is class-conditional \(c_dim=3\)"):
            D(img)
