"""The periodic work around the training steps: when each output is due, over two pieces that do it.

:mod:`stylenat.training.artefacts` writes the run's files (grids, snapshots, states, pruning) and
:mod:`stylenat.training.run_log` its logging (ticks, sinks, events, curves); metrics run from here.
Rank 0 writes every file; the collective parts (loss reduction, sync check, RNG gathering, metrics)
run on all ranks, which is why every rank calls ``after_step``. The outputs see the run through what they
need: its setup, its counters, the networks of the GAN step, the reported figures and a function that
returns the training state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stylenat import distributed as dist
from stylenat.training.artefacts import Artefacts
from stylenat.training.run_log import RunLog
from stylenat.training.stats import Reporter

if TYPE_CHECKING:
    from stylenat.training.setup import RunSetup
    from stylenat.training.step import GanStep

log = logging.getLogger(__name__)


@dataclass
class Counters:
    """Where a run stands: optimisation steps done, images shown to D, images of skipped batches."""

    step: int = 0
    images_seen: int = 0
    skipped_images: int = 0  # batches the divergence guard skipped (the stream moved on)

    @property
    def data_position(self) -> int:
        """Images the data stream has delivered (skipped batches included): where a resume continues."""
        return self.images_seen + self.skipped_images


class RunOutputs:
    """The periodic work between steps: log records, sample grids, snapshots, training states, metrics."""

    def __init__(
        self,
        setup: RunSetup,
        counters: Counters,
        gan: GanStep,
        stats: Reporter,
        training_state: Callable[[], dict],
    ):
        """``training_state()`` returns the run's state without RNG and logger (``Trainer.state_dict``)."""
        self.setup, self.config, self.env = setup, setup.config, setup.env
        self.opts, self.counters, self.gan, self.stats = setup.config.train, counters, gan, stats
        self.main = setup.env.is_main
        self.log = RunLog(setup, counters)
        self.artefacts = Artefacts(setup, counters, gan, training_state, self.log.state, self.log.sinks)
        self.stopped = False  # a stop signal ended the run early

    @property
    def sinks(self) -> list:
        return self.log.sinks

    # context ---------------------------------------------------------------------------------------

    def __enter__(self):
        self.artefacts.check_room()
        if self.main:
            self.artefacts.prepare_run_dir()
            self.log.open()
            self.artefacts.first_grids()
        dist.barrier()
        self.log.start_tick()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.log.close(failed=exc_type is not None, stopped=self.stopped, main=self.main)

    # per step --------------------------------------------------------------------------------------

    def after_step(self, before: int, done: bool) -> None:
        """Run whatever is due after the step that moved the count from ``before`` (all ranks call it)."""
        o, now = self.opts, self.counters.images_seen

        def due(every_kimg) -> bool:
            if done:
                return True
            if not every_kimg:
                return False
            every = max(1, int(round(every_kimg * 1000)))
            return before // every != now // every

        if due(o.log_every_kimg):
            self._log_tick()
        else:
            self.log.advance(now / 1000)
        if self.main and due(o.image_every_kimg):
            self.artefacts.save_samples()
        if due(o.state_every_kimg):  # first: the state is what a resume needs
            self.artefacts.save_state()
        if self.main and due(o.snapshot_every_kimg):
            self.artefacts.save_snapshot()
        if o.metrics and (done or (o.metric_every_kimg and due(o.metric_every_kimg))):
            self._run_metrics()

    def _log_tick(self) -> None:
        """Collective: the figures reduced over ranks (and the sync check); rank 0 logs them."""
        stats = self.stats.reduce()
        digests = dist.check_in_sync(self.gan.G, self.gan.D, self.gan.G_ema) if self.opts.sync_check else None
        if self.main:
            self.log.tick(stats, digests)
            self.log.start_tick()

    def save_state_now(self) -> Path | None:
        """A training state at the current position unless one was just written there (collective)."""
        return self.artefacts.save_state_now()

    def stop(self, reason: str) -> None:
        """A stop signal: save a state at this step boundary (collective) and say how to continue."""
        path = self.save_state_now()
        self.stopped = True
        self.log_event({"event": "stop", "reason": reason})
        log.warning(
            "stopped by %s at %.3f kimg; saved %s: run the same command to resume",
            reason,
            self.counters.images_seen / 1000,
            path.name if path else "the state",
        )

    def log_event(self, fields: dict) -> None:
        """An event record (rollback, stop) in the log, at the current position (rank 0)."""
        if self.main:
            self.log.event(fields)

    def _run_metrics(self) -> None:
        """``train.metrics`` on G_ema against the training data (collective: every rank generates a share).

        Real statistics are cached by ``stylenat.metrics``; each result goes to the sinks as its own record.
        """
        from stylenat import metrics
        from stylenat.data import dataset_path_or_demo
        from stylenat.sampling import seeded_images_fn

        if getattr(self, "_extractor", None) is None:
            self._extractor = metrics.load_inception(device=self.env.device)
        real = dataset_path_or_demo(self.config.data.path, self.config.data.name)
        pool = (
            self.gan.label_pool if self.gan.c_dim else None
        )  # a conditional G: the data's label distribution
        generate = seeded_images_fn(self.gan.G_ema, self.env.device, label_pool=pool)
        for name in self.opts.metrics:
            result = metrics.compute_metric(
                name,
                generate,
                extractor=self._extractor,
                real_data=real,
                batch_size=self.gan.batch_gpu,
                device=self.env.device,
                rank=self.env.rank,
                world_size=self.env.world_size,
                progress=False,
            )
            if self.main:
                self.log.metric(name, result)
