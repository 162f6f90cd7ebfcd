"""Training: the config (typed, checked once), the GAN step, the run, losses, augmentation, EMA,
checkpoints and sinks.

Exports load lazily so that `train.py --help` and config errors answer without importing torch.
"""

import importlib

_EXPORTS = {
    "ResumeError": "stylenat.training.checkpoint",
    "TrainOptions": "stylenat.training.options",
    "TrainingConfig": "stylenat.training.config",
    "parse_config": "stylenat.training.config",
    "GanStep": "stylenat.training.step",
    "Trainer": "stylenat.training.run",
    "prepare_run": "stylenat.training.setup",
    "train": "stylenat.training.run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'stylenat.training' has no attribute {name!r}")
