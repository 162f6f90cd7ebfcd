"""``report(name, value)``: the figures of the training steps, summed on the device, averaged per log tick.

The EDM2 / StyleGAN3 ``training_stats`` idea: a step reports any figure by name (a loss, a logit mean,
an augmentation probability) and the log record of the tick holds the mean of each name over the tick and
every rank. A new figure is one ``report`` line. The sums live in two preallocated device tensors, so a
step never waits for the device, and the divergence guard can snapshot and restore them with the weights.

Every rank must report the same names in the same order (they run the same code); ``reduce`` is a
collective over those names.
"""

from __future__ import annotations

import math

import torch

from stylenat import distributed as dist


class Reporter:
    """Per-name sums and counts on the device; ``reduce()`` gives the tick's means (last value held)."""

    CAPACITY = 64

    def __init__(self, device: torch.device):
        self.names: list[str] = []
        self._index: dict[str, int] = {}
        self.sums = torch.zeros(self.CAPACITY, dtype=torch.float64, device=device)
        self.counts = torch.zeros(self.CAPACITY, dtype=torch.float64, device=device)
        self._last: dict[str, float] = {}

    def report(self, name: str, value) -> None:
        """Add ``value`` (a tensor, reduced to its mean, or a number) to this tick's mean of ``name``."""
        i = self._index.get(name)
        if i is None:
            if len(self.names) == self.CAPACITY:
                raise ValueError(f"more than {self.CAPACITY} reported names; cannot add {name!r}")
            i = self._index[name] = len(self.names)
            self.names.append(name)
        if isinstance(value, torch.Tensor):
            value = value.detach().to(torch.float64).mean()
        self.sums[i] += value
        self.counts[i] += 1

    def named_sums(self) -> dict[str, torch.Tensor]:
        """Each name's running sum (for the message of the divergence guard)."""
        return {name: self.sums[i] for i, name in enumerate(self.names)}

    def reduce(self) -> dict[str, float | None]:
        """Means over the tick and the ranks (collective), then zero. A name not reported in this tick
        (lazy R1 between its steps) keeps its last mean; one never reported is None."""
        n = len(self.names)
        both = dist.all_reduce_mean(torch.cat([self.sums[:n], self.counts[:n]])).tolist()
        out: dict[str, float | None] = {}
        for i, name in enumerate(self.names):
            if both[n + i] > 0:
                out[name] = both[i] / both[n + i]
                if math.isfinite(out[name]):
                    self._last[name] = out[name]
            else:
                out[name] = self._last.get(name)
        self.sums.zero_()
        self.counts.zero_()
        return out
