"""The class-conditional loop learns the classes: on two flat-colour classes (dataset.json labels), the real
training loop moves G_ema(z, c) toward class c's colour, and it does not when the labels are dropped on
either side (G never sees its labels; D never sees the labels), each mutation the way a bug would do it.

The two colours are complementary (their mean is mid-grey, where an untrained G starts), so a G that
ignores its labels (drawing either colour, or the mean) stays as far from "class c's colour" as it began.
Also: the setup reads c_dim and the class names from the data, and snapshots / states carry them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import stylenat
from stylenat.cli import compose_config
from stylenat.training import run, step
from tests.training.helpers import CONFIG_DIR
from tests.training.runs import CPU, LEARNING

CLASS_COLOURS = [(230, 200, 30), (25, 55, 225)]  # yellow (class 0) and its complement, blue (class 1)
STEPS = (
    80  # measured: the classes are 80-90% of the way at 80 steps; with either mutation one class moves away
)


@pytest.fixture(scope="module")
def two_colours(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two_colours")
    labels = []
    for k, colour in enumerate(CLASS_COLOURS):
        for i in range(8):
            name = f"{['yellow', 'blue'][k]}/{i:02d}.png"
            (folder / name).parent.mkdir(exist_ok=True)
            Image.fromarray(np.broadcast_to(np.array(colour, dtype=np.uint8), (16, 16, 3)).copy()).save(
                folder / name
            )
            labels.append([name, k])
    (folder / "dataset.json").write_text(json.dumps({"labels": labels, "class_names": ["yellow", "blue"]}))
    return folder


@torch.no_grad()
def class_distances(G) -> list[float]:
    """Per class c: the mean distance of G(z, c)'s mean colours to class c's colour."""
    z = torch.randn(32, G.z_dim, generator=torch.Generator().manual_seed(1))
    target = torch.tensor(CLASS_COLOURS, dtype=torch.float64) / 127.5 - 1
    out = []
    for k in range(len(CLASS_COLOURS)):
        c = torch.nn.functional.one_hot(torch.full((32,), k), len(CLASS_COLOURS)).float()
        colours = G(z, c).double().mean((2, 3))
        out.append((colours - target[k]).norm(dim=1).mean().item())
    return out


def trainer_for(folder, tmp_path, *extra):
    cfg = compose_config(
        CONFIG_DIR, [*LEARNING, f"dataset.path={folder}", f"run_dir={tmp_path / 'run'}", *extra]
    )
    return run.Trainer(run.prepare_run(cfg, CPU))


def train_distances(folder, tmp_path):
    trainer = trainer_for(folder, tmp_path)
    before = class_distances(trainer.gan.G_ema)
    for _ in range(STEPS):
        trainer.step()
    return before, class_distances(trainer.gan.G_ema)


def learns_classes(before, after) -> bool:
    """Every class's samples covered at least 60% of the way to that class's colour."""
    return all(a < 0.4 * b for a, b in zip(after, before))


def test_the_conditional_loop_learns_each_class_colour(two_colours, tmp_path):
    before, after = train_distances(two_colours, tmp_path)
    assert min(before) > 0.7  # the untrained G is far from both colours
    assert learns_classes(before, after), (before, after)


def _labels_dropped_in_g(monkeypatch):
    original = step.GanStep._mapping

    def dropped(self, z, g, update_w_avg, c=None):
        return original(self, z, g, update_w_avg, c=None if c is None else torch.zeros_like(c))

    monkeypatch.setattr(step.GanStep, "_mapping", dropped)


def _labels_dropped_in_d(monkeypatch):
    original = step.GanStep._d
    monkeypatch.setattr(
        step.GanStep,
        "_d",
        lambda self, x, c: original(self, x, None if c is None else torch.zeros_like(c)),
    )


@pytest.mark.parametrize(
    "mutation", [_labels_dropped_in_g, _labels_dropped_in_d], ids=lambda m: m.__name__.strip("_")
)
def test_dropping_the_labels_on_either_side_does_not_learn_the_classes(
    mutation, two_colours, tmp_path, monkeypatch
):
    mutation(monkeypatch)
    before, after = train_distances(two_colours, tmp_path)
    assert not learns_classes(before, after), (before, after)


def test_labels_set_c_dim_and_snapshots_carry_the_class_names(two_colours, tmp_path):
    trainer = trainer_for(
        two_colours,
        tmp_path,
        "train.total_kimg=0.008",
        "train.snapshot_every_kimg=0.008",
        "train.state_every_kimg=0.008",
        "train.image_every_kimg=null",
        "train.metrics=[]",
        "logger.plots=false",
    )
    config = trainer.config
    assert config.model.c_dim == 2 and config.data.class_names == ("yellow", "blue")
    assert config.resolved["model"]["c_dim"] == 2
    assert sorted(trainer.gan.label_pool.tolist()) == [0] * 8 + [1] * 8
    trainer.fit()
    run_dir = tmp_path / "run"
    snapshot = next(run_dir.glob("network-snapshot-*.pt"))
    G = stylenat.load_generator(snapshot)
    assert (G.c_dim, G.class_names) == (2, ["yellow", "blue"])
    state = next(run_dir.glob("training-state-*.pt"))
    assert stylenat.load_generator(state).class_names == ["yellow", "blue"]
    resumed = trainer_for(
        two_colours, tmp_path
    )  # the same command resumes (model.c_dim checked from the data)
    assert resumed.counters.step == 1 and resumed.gan.c_dim == 2
    for a, b in zip(resumed.gan.G_ema.state_dict().values(), trainer.gan.G_ema.state_dict().values()):
        assert torch.equal(a, b)
    # the same data with use_labels=false is an unconditional run; use_labels=true without labels fails
    plain = trainer_for(two_colours, tmp_path / "plain", "dataset.use_labels=false")
    assert (
        plain.config.model.c_dim == 0
        and plain.gan.G.c_dim == 0
        and "c_dim" not in plain.config.resolved["model"]
    )


def test_a_resumed_conditional_run_equals_an_uninterrupted_one(two_colours, tmp_path):
    quiet = [
        "train.metrics=[]",
        "logger.plots=false",
        "train.image_every_kimg=null",
        "train.state_every_kimg=0.008",
    ]

    def fit(run_dir, kimg):
        cfg = compose_config(
            CONFIG_DIR,
            [
                *LEARNING,
                *quiet,
                f"dataset.path={two_colours}",
                f"run_dir={run_dir}",
                f"train.total_kimg={kimg}",
            ],
        )
        trainer = run.Trainer(run.prepare_run(cfg, CPU))
        trainer.fit()
        return trainer

    straight = fit(tmp_path / "a", 0.024)
    fit(tmp_path / "b", 0.008)
    resumed = fit(tmp_path / "b", 0.024)
    assert resumed.counters.step == straight.counters.step == 3
    for name in ("G", "D", "G_ema"):
        a, b = straight.gan.state_dict()[name], resumed.gan.state_dict()[name]
        assert all(torch.equal(a[k], b[k]) for k in a), name
