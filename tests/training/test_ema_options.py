import pytest
import torch
from torch import nn

from stylenat.training.ema import ema_beta, make_ema, update_ema
from stylenat.training.options import TrainOptions
from tests.training.helpers import CONFIG_DIR


def _paper_options(**changes):
    from stylenat.cli import compose_config
    from stylenat.training.config import resolve_config

    cfg = resolve_config(compose_config(CONFIG_DIR, ["dataset=ffhq256", "dataset.path=/x", "run_dir=/tmp/x"]))
    return TrainOptions.from_dict({**cfg["train"], **changes})


def test_ema_beta_reference_and_halflife_forms():
    assert ema_beta(0.5 ** (32 / 10000), None, 64) == 0.5 ** (32 / 10000)
    assert ema_beta(0.9, 10.0, 64) == pytest.approx(0.5 ** (64 / 10000))
    with pytest.raises(ValueError, match="ema_decay"):
        ema_beta(1.0, None, 64)


def test_update_ema_averages_parameters_and_copies_buffers():
    model = nn.BatchNorm1d(3)
    ema = make_ema(model)
    with torch.no_grad():
        model.weight.fill_(3.0)
        model.running_mean.fill_(7.0)
    update_ema(ema, model, 0.75)
    assert torch.allclose(ema.weight, torch.full((3,), 0.75 * 1 + 0.25 * 3))
    assert torch.equal(ema.running_mean, model.running_mean)
    assert not any(p.requires_grad for p in ema.parameters())


def test_paper_recipe_values():
    o = _paper_options()
    assert (o.batch, o.per_gpu_batch(8), o.accumulation_rounds(8)) == (64, 8, 1)
    assert o.d_lr == 2e-4 and o.generator_lr == pytest.approx(5e-5)
    assert o.lazy_r1_ratio == pytest.approx(16 / 17)
    assert tuple(o.betas) == (0.0, 0.99)
    assert (o.r1_gamma, o.r1_every, o.bcr_real, o.bcr_fake, o.d_clip_grad) == (10.0, 16, 10.0, 10.0, 5.0)
    assert o.ema_decay == 0.5 ** (32 / 10000) and o.ema_halflife_kimg is None
    assert o.style_mixing == 0.0
    # constant to 775k iterations of 64 images, then linear to 0 at 1M
    assert o.lr_factor(775_000 * 64) == 1.0
    assert o.lr_factor(int(887_500 * 64)) == pytest.approx(0.5)
    assert o.lr_factor(1_000_000 * 64) == 0.0
    # D = 2e-4 x 16/17 while constant; in the decay D = 4x G exactly (the reference drops the 16/17)
    assert o.learning_rates(0) == {"g": 5e-5, "d": pytest.approx(2e-4 * 16 / 17)}
    assert o.learning_rates(int(887_500 * 64)) == {"g": pytest.approx(2.5e-5), "d": pytest.approx(1e-4)}
    corrected = _paper_options(d_lr_decay_uncorrected=False)
    assert corrected.learning_rates(int(887_500 * 64))["d"] == pytest.approx(1e-4 * 16 / 17)


def test_accumulation_rounds_and_bad_batch():
    o = _paper_options(batch=64, batch_per_gpu=8)
    assert o.accumulation_rounds(1) == 8 and o.accumulation_rounds(4) == 2
    with pytest.raises(ValueError, match=r"train.batch=64 is not a multiple of train.batch_per_gpu=8 x 3"):
        o.accumulation_rounds(3)
    assert _paper_options(batch_per_gpu=None).per_gpu_batch(4) == 16


@pytest.mark.parametrize(
    "change, message",
    [
        ({"batch": 0}, "train.batch=0"),
        ({"betas": [0.0, 1.5]}, "train.betas"),
        ({"amp": "fp16"}, "train.amp='fp16'"),
        ({"bcr_augment": ["flip", "zoom"]}, "'zoom'"),
        ({"lr_decay_start_kimg": 10, "lr_decay_end_kimg": 5}, "train.lr_decay_end_kimg=5"),
        ({"bogus": 1}, "unknown key train.bogus"),
        ({"metrics": ["fid0"]}, "train.metrics"),
    ],
)
def test_option_errors_name_the_key(change, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")) as info:
        _paper_options(**change)
    assert "\n" not in str(info.value)
