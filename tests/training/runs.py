"""Short CPU training runs the resume, fault and bf16 tests share (tests/training/test_resume.py,
test_faults.py, test_bf16_training.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from stylenat.cli import compose_config
from stylenat.distributed import DistEnv
from stylenat.training import step
from stylenat.training.run import Trainer, prepare_run
from tests.training.helpers import CONFIG_DIR, TINY, steps_kimg

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
# Exercise every source of per-step randomness and schedule: R1 every 2 steps, style mixing, bCR,
# halflife EMA, lr decay inside the run, gradient accumulation (2 micro-batches of 2).
RESUME_EXTRA = [
    "train.r1_every=2",
    "train.style_mixing=0.5",
    "train.ema_decay=null",
    "train.ema_halflife_kimg=0.01",
    "train.lr_decay_start_kimg=0.008",
    "train.lr_decay_end_kimg=0.028",
    "train.batch_per_gpu=2",
    "train.bcr_real=1",
    "train.bcr_fake=1",
]

# The learning tests' recipe (tests/training/test_learning.py, test_conditional_learning.py):
# A 16x16 StyleNAT (MHSA-RPB at 4x4, NA at 8x8, dilated Hydra-NA at 16x16) and a small D, tuned to move fast.
LEARNING = [
    "dataset.resolution=16",
    "dataset.xflip=false",
    "model.resolution=16",
    "model.channels=[32,32,32]",
    "model.min_heads=2",
    "model.z_dim=16",
    "model.w_dim=16",
    "model.n_mlp=2",
    "model.kernels=[[3],[3],[3]]",
    "model.dilations=[[1],[1],[1,2]]",
    "discriminator.channel_max=32",
    "discriminator.sn=true",
    "train.batch=8",
    "train.batch_per_gpu=null",
    "train.reuse_fakes=false",  # the paper's step; test_learning.py also runs the demo's reuse
    "train.workers=0",
    "train.d_lr=0.005",
    "train.ttur_ratio=1.0",
    "train.r1_gamma=0.01",
    "train.bcr_real=0",
    "train.bcr_fake=0",
    "train.augment=none",
    "train.ema_decay=null",
    "train.ema_halflife_kimg=0.02",
    "train.nonfinite=off",
    "logger.progress=false",
]

FAULT_BATCH = 4
# A state and a log record after every step: every kill lands next to a save.
EVERY_STEP = [f"train.state_every_kimg={FAULT_BATCH / 1000}", f"train.log_every_kimg={FAULT_BATCH / 1000}"]


def resume_train(run_dir, steps, *extra):
    cfg = compose_config(
        CONFIG_DIR, [*TINY, *RESUME_EXTRA, f"run_dir={run_dir}", f"train.total_kimg={steps_kimg(steps)}", *extra]
    )
    trainer = Trainer(prepare_run(cfg, CPU))
    trainer.fit()
    return trainer


def fault_config(run_dir, steps, *extra):
    return compose_config(
        CONFIG_DIR,
        [*TINY, *EVERY_STEP, f"run_dir={run_dir}", f"train.total_kimg={steps_kimg(steps)}", *extra],
    )


def fault_train(run_dir, steps, *extra) -> Trainer:
    trainer = Trainer(prepare_run(fault_config(run_dir, steps, *extra), CPU))
    trainer.fit()
    return trainer


def fault_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def poison(monkeypatch, at_steps: set[int], where: str, retries_too: bool = False) -> None:
    """Make the G step of the given steps produce a NaN weight or a NaN loss (the first attempt only,
    unless ``retries_too``)."""
    real_g_step = step.GanStep.g_step
    real_loss = step.g_nonsaturating_loss
    poisoned: set[int] = set()

    def g_step(self, fakes=None):
        bad = self.index in at_steps and (retries_too or self.index not in poisoned)
        poisoned.add(self.index)
        if bad and where == "loss":
            monkeypatch.setattr(step, "g_nonsaturating_loss", lambda logits: real_loss(logits) * float("nan"))
        real_g_step(self, fakes)
        monkeypatch.setattr(step, "g_nonsaturating_loss", real_loss)
        if bad and where == "weight":
            with torch.no_grad():
                next(self.G.parameters()).view(-1)[0] = float("inf")

    monkeypatch.setattr(step.GanStep, "g_step", g_step)
