"""train.reuse_fakes: the D step trains on the G step's fakes (one G forward a step instead of two)."""

import pytest
import torch

from stylenat.cli import compose_config
from stylenat.ops.precision import cpu_bf16_supported
from stylenat.training.config import parse_config
from stylenat.training.step import GanStep
from tests.training.helpers import CONFIG_DIR, TINY, max_diff
from tests.training.runs import resume_train

CPU = torch.device("cpu")


def _gan(*extra: str, classes: int = 0) -> GanStep:
    config = parse_config(compose_config(CONFIG_DIR, [*TINY, "train.bcr_real=0", "train.bcr_fake=0", *extra]))
    if classes:
        config = config.with_labels(classes, tuple(f"class{i}" for i in range(classes)))
    return GanStep(config, CPU)


def _record(gan: GanStep) -> tuple[dict, list[str]]:
    """Each optimizer step's gradients (by module), and the synthesis network's calls."""
    grads, calls = {}, []
    step = gan._optimizer_step

    def recording_step(module, opt, clip):
        name = "G" if module is gan.G else "D"
        grads.setdefault(name, [p.grad.clone() for p in module.parameters() if p.requires_grad])
        step(module, opt, clip)

    def counting(name, synthesis):
        def call(ws):
            calls.append(name)
            return synthesis(ws)

        return call

    gan._optimizer_step = recording_step
    gan.G_fwd, gan.G_fakes = counting("G step", gan.G_fwd), counting("D step", gan.G_fakes)
    return grads, calls


def _rel_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max() / y.abs().max().clamp_min(1e-12)) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    "batch_per_gpu, classes", [("null", 0), (2, 2)], ids=["one micro-batch", "two micro-batches, conditional"]
)
def test_reuse_fakes_trains_d_on_the_g_steps_fakes(batch_per_gpu, classes):
    """One step with reuse_fakes equals a plain step whose D draws the G step's latents and labels (up to
    the plain D step's no-grad synthesis path, which rounds differently), with one synthesis call per
    micro-batch instead of two."""
    setup = dict(classes=classes)
    micro = f"train.batch_per_gpu={batch_per_gpu}"
    reuse, same_latents, plain = (
        _gan(micro, *extra, **setup) for extra in (["train.reuse_fakes=true"], [], [])
    )
    assert max_diff(reuse.G.state_dict(), plain.G.state_dict()) == 0.0  # TINY: reuse off
    as_g = {"d_latent": "g_latent"}
    draw, labels = same_latents._latents, same_latents.fake_labels
    same_latents._latents = lambda r, purpose: draw(r, as_g.get(purpose, purpose))
    same_latents.fake_labels = lambda r, purpose: labels(r, as_g.get(purpose, purpose))
    records = {
        name: _record(gan) for name, gan in (("reuse", reuse), ("same", same_latents), ("plain", plain))
    }
    reals = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    real_labels = torch.tensor([0, 1, 1, 0]) if classes else None
    rounds = reuse.rounds
    assert rounds == (1 if batch_per_gpu == "null" else 2) and reuse.c_dim == classes
    for gan in (reuse, same_latents, plain):  # step 1: no R1 (r1_every 16)
        gan.run(
            1, list(reals.chunk(rounds)), None if real_labels is None else list(real_labels.chunk(rounds))
        )

    (grads, calls), (same, same_calls), (own, _) = records["reuse"], records["same"], records["plain"]
    assert calls == ["G step"] * rounds and same_calls == ["D step"] * rounds + ["G step"] * rounds
    assert _rel_diff(grads["D"], same["D"]) < 1e-5
    assert _rel_diff(grads["G"], same["G"]) < 1e-4  # through D after its (near-identical) update
    assert _rel_diff(own["D"], same["D"]) > 1e-2  # D's own latents give another step: the check can fail
    assert reuse.G.w_avg.abs().sum() > 0 and torch.equal(reuse.G.w_avg, same_latents.G.w_avg)  # moved once


@pytest.mark.slow
@pytest.mark.parametrize(
    "amp",
    [
        "false",
        pytest.param(
            "bf16", marks=pytest.mark.skipif(not cpu_bf16_supported(), reason="no native bf16 on this CPU")
        ),
    ],
)
def test_reuse_fakes_resumes_bit_for_bit(tmp_path, amp):
    """With two micro-batches (every graph held through the D and R1 steps), style mixing, R1 and bCR; in
    fp32 and in bf16 (the fakes drawn under autocast)."""
    extra = ("train.reuse_fakes=true", f"train.amp={amp}")
    full = resume_train(tmp_path / "full", 4, *extra)
    resume_train(tmp_path / "split", 2, *extra)
    resumed = resume_train(tmp_path / "split", 4, *extra)
    assert full.gan.rounds == 2 and full.gan.opts.reuse_fakes and full.gan.opts.bcr_real > 0
    for name in ("G", "D", "G_ema", "opt_G", "opt_D"):
        a, b = getattr(full.gan, name).state_dict(), getattr(resumed.gan, name).state_dict()
        assert max_diff(a, b) == 0.0, name
