"""Training: the loop, losses (non-saturating, R1, bCR), DiffAugment, EMA, checkpoints, distributed, sinks.

Exports load lazily so that `train.py --help` and config errors answer without importing torch.
"""

import importlib

_EXPORTS = {
    "ResumeError": "stylenat.training.checkpoint",
    "TrainOptions": "stylenat.training.options",
    "Trainer": "stylenat.training.loop",
    "prepare_run": "stylenat.training.loop",
    "train": "stylenat.training.loop",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'stylenat.training' has no attribute {name!r}")
