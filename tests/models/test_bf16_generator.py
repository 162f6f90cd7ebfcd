"""bf16 inference (issue 16): the generator in bf16 against itself in fp32 on the same latents, for each
model config, both output normalisations, truncation and style mixing, and a converted reference file;
the cached bf16 weights follow the weights; the errors and the fallback of the dtype dispatcher."""

import logging
from pathlib import Path

import pytest
import torch

import stylenat
from stylenat.models.build import build_generator
from stylenat.ops import buffers, precision
from tests.reference_model import TINY, make_reference_g

# The accuracy target: relative L2 error of bf16 images against fp32 on the same latents.
TOLERANCE = 2e-2

needs_bf16 = pytest.mark.skipif(
    not precision.cpu_bf16_supported(), reason="this CPU has no native bf16 (the dispatcher falls back)"
)


def model_config(name, **overrides):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[2] / "configs" / "model"), version_base=None):
        cfg = OmegaConf.to_container(compose(config_name=name), resolve=True)
    return {**cfg, **overrides}


def generator(name, seed=0, **overrides):
    torch.manual_seed(seed)
    return build_generator(model_config(name, **overrides)).eval().requires_grad_(False)


def relative_error(images, reference):
    return float((images - reference).norm() / reference.norm())


def images_in(G, dtype, fn):
    """fn(G) with G's compute dtype set to dtype (restored after), under no_grad."""
    previous = G.compute_dtype
    G.set_compute_dtype(dtype)
    try:
        with torch.no_grad():
            return fn(G)
    finally:
        G.set_compute_dtype(previous)


def mixed_images(G, z, psi):
    """Style mixing with truncation: the first half of the ws from z, the rest from z reversed."""
    ws = G.mapping(z, truncation_psi=psi)
    mixed = ws.clone()
    cut = G.n_latent // 2
    mixed[:, cut:] = ws.flip(0)[:, cut:]
    return G.to_minus_one_one(G.synthesis(mixed))


@needs_bf16
@pytest.mark.parametrize("normalization", ["imagenet", "minus_one_one"])
def test_tiny_bf16_matches_fp32(normalization):
    G = generator("tiny", output_normalization=normalization)
    G.w_avg.normal_()  # so that truncation moves the images
    z = torch.randn(3, G.z_dim, generator=torch.Generator().manual_seed(1))
    cases = {
        "plain": lambda g: g(z),
        "truncated": lambda g: g(z, truncation_psi=0.5, truncation_cutoff=4),
        "mixed": lambda g: mixed_images(g, z, 0.7),
    }
    for name, fn in cases.items():
        reference, images = images_in(G, "fp32", fn), images_in(G, "bf16", fn)
        assert images.dtype == torch.float32 and images.shape == reference.shape
        error = relative_error(images, reference)
        assert 0 < error <= TOLERANCE, (name, error)  # > 0: the bf16 path really ran


@needs_bf16
@pytest.mark.slow
def test_256_bf16_matches_fp32():
    G = generator("stylenat_256")
    z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(2))
    reference = images_in(G, "fp32", lambda g: g(z, truncation_psi=0.7))
    images = images_in(G, "bf16", lambda g: g(z, truncation_psi=0.7))
    assert 0 < relative_error(images, reference) <= TOLERANCE


@needs_bf16
def test_converted_reference_checkpoint_in_bf16(tmp_path):
    raw = tmp_path / "FFHQ_tiny.pt"
    sd = make_reference_g(TINY, "legacy", seed=3)
    torch.save({"g": sd, "d": {}, "g_ema": sd}, raw)
    z = torch.randn(2, TINY["style_dim"], generator=torch.Generator().manual_seed(4))
    G32 = stylenat.load_generator(raw)
    G16 = stylenat.load_generator(raw, dtype="bf16")
    assert G16.compute_dtype == torch.bfloat16 and G32.compute_dtype == torch.float32
    with torch.no_grad():
        reference = G32(z, truncation_psi=0.7)
        images = G16(z, truncation_psi=0.7)
    assert images.dtype == torch.float32
    assert 0 < relative_error(images, reference) <= TOLERANCE


@needs_bf16
def test_cached_bf16_weights_follow_load_state_dict_and_optimizer_steps():
    G, other = generator("tiny", seed=0), generator("tiny", seed=1)
    z = torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(5))
    before = images_in(G, "bf16", lambda g: g(z))
    G.load_state_dict(other.state_dict())
    after = images_in(G, "bf16", lambda g: g(z))
    expect = images_in(other, "fp32", lambda g: g(z))
    assert relative_error(after, expect) <= TOLERANCE
    assert relative_error(after, before) > 0.1  # not the stale casts of the old weights

    # An in-place update (what an optimizer step does) is seen too, and an unchanged weight is cast once.
    weight = G.stages[1].blocks[0].mlp.fc1.weight
    first = buffers.cast_weight(weight, torch.bfloat16)
    assert buffers.cast_weight(weight, torch.bfloat16) is first
    with torch.no_grad():
        weight.mul_(2)
    second = buffers.cast_weight(weight, torch.bfloat16)
    assert second is not first
    torch.testing.assert_close(second.float(), weight, rtol=1e-2, atol=0)


def test_unknown_dtype_is_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"^unknown dtype 'fp8'; expected one of fp32, bf16, fp16$"):
        stylenat.load_generator(tmp_path / "missing.pt", dtype="fp8")  # before the file is read
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        generator("tiny").set_compute_dtype("int8")


def test_fp16_on_the_cpu_is_refused_in_one_line(tmp_path):
    with pytest.raises(precision.DtypeUnavailable, match=r"^dtype=fp16 needs a CUDA device \(got cpu\)"):
        stylenat.load_generator(tmp_path / "missing.pt", dtype="fp16")


def test_bf16_without_cpu_support_falls_back_with_one_log_line(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: False)
    monkeypatch.setattr(precision, "_fallback_logged", set())
    with caplog.at_level(logging.WARNING, logger=precision.__name__):
        assert precision.inference_dtype("bf16", "cpu") == torch.float32
        assert precision.inference_dtype("bfloat16", torch.device("cpu")) == torch.float32
    lines = [r.getMessage() for r in caplog.records if r.name == precision.__name__]
    assert lines == ["dtype=bf16: this CPU has no native bf16 matrix products; running fp32"]


def test_dtype_names():
    assert [precision.dtype_name(d) for d in ("fp32", "bfloat16", torch.float16)] == ["fp32", "bf16", "fp16"]
    assert precision.inference_dtype("fp32", "cpu") == torch.float32


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_cuda_autocast_matches_fp32(dtype):
    """CUDA: the stages run under autocast (natten / flex / torch backends as auto picks); fp32 with TF32."""
    G = generator("tiny").cuda()
    z = torch.randn(2, G.z_dim, device="cuda", generator=torch.Generator("cuda").manual_seed(6))
    assert precision.inference_dtype("fp32", "cuda") == torch.float32
    reference = images_in(G, "fp32", lambda g: g(z))
    images = images_in(G, precision.inference_dtype(dtype, "cuda"), lambda g: g(z))
    assert images.dtype == torch.float32
    assert 0 < relative_error(images, reference) <= TOLERANCE
