"""Training: the loop, losses (non-saturating, R1, bCR), DiffAugment, EMA, checkpoints, distributed, sinks."""

from stylenat.training.checkpoint import ResumeError
from stylenat.training.loop import Trainer, prepare_run, train
from stylenat.training.options import TrainOptions

__all__ = ["ResumeError", "TrainOptions", "Trainer", "prepare_run", "train"]
