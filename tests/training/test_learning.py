"""The training loop learns: on a data set of flat-colour images, the colours G_ema draws move from their
initial values to the data's within a few dozen real steps, and they do not when the loop is broken.

Each mutation below breaks one part of the GAN step the way a bug would (G's loss sign, D's real/fake
labels, G's gradient, the EMA update); each must make ``learns`` fail. This is what keeps the learning
check honest: it is not a smoke test that any run passes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from stylenat.cli import compose_config
from stylenat.training import run, step
from tests.training.helpers import CONFIG_DIR
from tests.training.runs import CPU, LEARNING

COLOURS = [(230, 200, 30)]  # one flat yellow: (0.80, 0.57, -0.76) in [-1, 1], far from an untrained G's greys
STEPS = 30


@pytest.fixture(scope="module")
def flat_colours(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flat_colours")
    for i in range(16):
        colour = np.array(COLOURS[i % len(COLOURS)], dtype=np.uint8)
        Image.fromarray(np.broadcast_to(colour, (16, 16, 3)).copy()).save(folder / f"{i:02d}.png")
    return folder


def data_colours() -> torch.Tensor:
    return torch.tensor(COLOURS, dtype=torch.float64) / 127.5 - 1


@torch.no_grad()
def colour_distance(G) -> float:
    """Mean distance of each sample's mean colour to the nearest data colour (0 when G draws the data)."""
    z = torch.randn(64, G.z_dim, generator=torch.Generator().manual_seed(1))
    colours = G(z).double().mean((2, 3))
    return torch.cdist(colours, data_colours()).min(1).values.mean().item()


def train_distances(folder, tmp_path, *extra: str) -> tuple[float, float]:
    """G_ema's colour distance from the data before and after STEPS steps of the real loop."""
    cfg = compose_config(
        CONFIG_DIR, [*LEARNING, f"dataset.path={folder}", f"run_dir={tmp_path / 'run'}", *extra]
    )
    trainer = run.Trainer(run.prepare_run(cfg, CPU))
    before = colour_distance(trainer.gan.G_ema)
    for _ in range(STEPS):
        trainer.step()
    return before, colour_distance(trainer.gan.G_ema)


def learns(before: float, after: float) -> bool:
    """G_ema covered at least 60% of the way to the data's mean colour."""
    return after < 0.4 * before


@pytest.mark.parametrize("reuse_fakes", ["false", "true"])
def test_the_loop_learns_a_flat_colour(flat_colours, tmp_path, reuse_fakes):
    """The paper's step and the demo's (the D step on the G step's fakes) both learn."""
    before, after = train_distances(flat_colours, tmp_path, f"train.reuse_fakes={reuse_fakes}")
    assert before > 0.5  # the untrained G is far from the data
    assert learns(before, after), (before, after)


def _g_loss_sign_flipped(monkeypatch):
    original = step.g_nonsaturating_loss
    monkeypatch.setattr(step, "g_nonsaturating_loss", lambda logits: original(-logits))


def _d_real_fake_swapped(monkeypatch):
    original = step.d_logistic_loss
    monkeypatch.setattr(step, "d_logistic_loss", lambda real, fake: original(fake, real))


def _g_gradient_detached(monkeypatch):
    original = step.GanStep._augmented

    def detached(self, images, r, purpose):
        out = original(self, images, r, purpose)
        return out.detach() + 0 * out if purpose == "augment_g" else out  # zero gradient into G

    monkeypatch.setattr(step.GanStep, "_augmented", detached)


def _ema_never_updated(monkeypatch):
    monkeypatch.setattr(step, "update_ema", lambda ema, model, beta: None)


@pytest.mark.parametrize(
    "mutation",
    [_g_loss_sign_flipped, _d_real_fake_swapped, _g_gradient_detached, _ema_never_updated],
    ids=lambda m: m.__name__.strip("_"),
)
def test_a_broken_loop_does_not_learn(mutation, flat_colours, tmp_path, monkeypatch):
    mutation(monkeypatch)
    before, after = train_distances(flat_colours, tmp_path)
    assert not learns(before, after), (before, after)
