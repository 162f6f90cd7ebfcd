"""The periodic work around the training steps, all in one place: log records, sample grids,
inference snapshots, training states (with every rank's RNG) and metrics.

Rank 0 writes every file; the collective parts (loss reduction, sync check, RNG gathering, metrics)
run on all ranks, which is why every rank calls ``after_step``. The outputs see the run through what they
need: its setup, its counters, the networks of the GAN step, the reported figures and a function that
returns the training state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from stylenat import distributed as dist
from stylenat import perf
from stylenat.files import atomic_write_text
from stylenat.training import checkpoint as ckpt
from stylenat.training.guard import CheckpointWriteError, check_run_dir, clean_stale_temp_files, state_bytes
from stylenat.training.sinks import JsonlSink, Progress, WandbSink, file_log_handler, metric_record
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


def grid_latents(seed: int, count: int, z_dim: int) -> torch.Tensor:
    """Fixed latents of the sample grids (the same after a resume)."""
    g = torch.Generator().manual_seed(int(seed) + 123_456_789)
    return torch.randn(count, z_dim, generator=g)


def grid_labels(cols: int, rows: int, c_dim: int) -> torch.Tensor | None:
    """One-hot labels of a conditional run's sample grid: row r shows class r mod c_dim (None: unconditional)."""
    if not c_dim:
        return None
    classes = (torch.arange(cols * rows) // cols) % c_dim
    return torch.nn.functional.one_hot(classes, c_dim).float()


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
        self.setup, self.config, self.env, self.run_dir = setup, setup.config, setup.env, setup.run_dir
        self.opts, self.counters, self.gan, self.stats = setup.config.train, counters, gan, stats
        self.training_state = training_state
        self.main = setup.env.is_main
        self.wandb_id = ((setup.state or {}).get("logger") or {}).get("wandb_id")
        self.sinks: list = []
        self.progress = None
        self._handler = None
        self.grid_z = self.grid_c = None
        self.saved_state_at: int | None = None
        self.stopped = False  # a stop signal ended the run early

    # context ---------------------------------------------------------------------------------------

    def __enter__(self):
        problem = self._check_run_dir() if self.main else None
        problem = dist.broadcast_object(problem)  # every rank stops, not only the one that writes
        if problem is not None:
            raise CheckpointWriteError(problem)
        if self.main:
            clean_stale_temp_files(self.run_dir)
            if self.setup.state is not None:
                self.saved_state_at = self.counters.images_seen
            ckpt.quarantine([p for p in self.setup.unreadable_states if p.parent == self.run_dir])
            _write_config(self.config.resolved, self.run_dir / "config.yaml")
            self._handler = file_log_handler(self.run_dir)
            logging.getLogger().addHandler(self._handler)
            self.sinks.append(
                JsonlSink(self.run_dir / "log.jsonl", keep_through_images=self.counters.images_seen)
            )
            wandb_cfg = self.config.logger.wandb
            if wandb_cfg:
                sink = WandbSink(wandb_cfg, self.run_dir, self.config.resolved, run_id=self.wandb_id)
                self.wandb_id = sink.run_id
                self.sinks.append(sink)
            self.progress = Progress(
                self.opts.end_images(self.counters.images_seen) / 1000,
                self.counters.images_seen / 1000,
                self.config.logger.progress,
            )
            cols, rows = self.opts.sample_grid
            self.grid_z = grid_latents(self.config.run.seed, cols * rows, self.gan.G.z_dim)
            self.grid_c = grid_labels(cols, rows, self.gan.c_dim)
            if self.setup.state is None:
                self._save_reals()
                self._save_samples()
        dist.barrier()
        self.tick_start = (time.perf_counter(), self.counters.images_seen, self.counters.step)
        perf.reset_peak_memory(self.env.device)
        return self

    def _check_run_dir(self) -> str | None:
        """Why the run dir cannot take the next training state (twice its size: the new one is written
        beside the old one), or None."""
        try:
            check_run_dir(self.run_dir, 2 * state_bytes([self.gan.G, self.gan.D, self.gan.G_ema]))
        except CheckpointWriteError as err:
            return str(err)
        return None

    def __exit__(self, exc_type, *exc) -> None:
        curves = self._plot_curves() if self.main and exc_type is None else None
        for sink in self.sinks:
            sink.close(failed=exc_type is not None)
        if self.progress is not None:
            self.progress.close()
        if self.main and exc_type is None:
            self._log_where(curves)
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
            self._handler.close()

    def _plot_curves(self) -> Path | None:
        """curves.png from log.jsonl at the end of a run (``logger.plots``), also sent to the sinks. A
        failure costs only the figure: it is logged and the run ends normally."""
        if not self.config.logger.plots:
            return None
        try:
            from stylenat.training.curves import plot_run

            path = plot_run(self.run_dir)
            for sink in self.sinks:
                sink.log_figure(path, self.counters.step)
        except Exception as err:  # a figure must never fail the run
            log.warning("could not plot the learning curves: %s: %s", type(err).__name__, err)
            return None
        return path

    def _log_where(self, curves: Path | None) -> None:
        """The last line of a run: where its directory, latest sample grid and curves are."""
        grids = ckpt.list_artifacts(self.run_dir, ckpt.SAMPLES_PREFIX)
        if curves is not None:
            curves_text = str(curves)
        elif self.config.logger.plots:
            curves_text = "not plotted (see the warning above)"
        else:
            curves_text = f"off (logger.plots=false; python scripts/plot_run.py {self.run_dir})"
        log.info(
            "%s at %.3f kimg: run dir %s; final grid %s; curves %s",
            "stopped" if self.stopped else "finished",
            self.counters.images_seen / 1000,
            self.run_dir,
            grids[-1][1] if grids else "none",
            curves_text,
        )

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
        elif self.progress is not None:
            self.progress.update(now / 1000)
        if self.main and due(o.image_every_kimg):
            self._save_samples()
        if due(o.state_every_kimg):  # first: the state is what a resume needs
            self._save_state()
        if self.main and due(o.snapshot_every_kimg):
            self._save_snapshot()
        if o.metrics and (done or (o.metric_every_kimg and due(o.metric_every_kimg))):
            self._run_metrics()

    def _log_tick(self) -> None:
        stats = self.stats.reduce()
        digests = dist.check_in_sync(self.gan.G, self.gan.D, self.gan.G_ema) if self.opts.sync_check else None
        if not self.main:
            return
        start_time, start_images, start_step = self.tick_start
        elapsed = time.perf_counter() - start_time
        kimg_done = (self.counters.images_seen - start_images) / 1000
        lr = self.opts.learning_rates(self.counters.images_seen)
        record = {
            "kimg": self.counters.images_seen / 1000,
            "step": self.counters.step,
            "images_seen": self.counters.images_seen,
            **stats,
            "lr_g": lr["g"],
            "lr_d": lr["d"],
            "sec_per_kimg": elapsed / kimg_done if kimg_done > 0 else None,
            "sec_per_step": elapsed / max(1, self.counters.step - start_step),
            "peak_mem_mb": perf.peak_memory_mb(self.env.device),
            "world_size": self.env.world_size,
            "timestamp": time.time(),
        }
        if digests is not None:
            record["param_digests"] = digests
        for sink in self.sinks:
            sink.log(record)
        log.info(
            "kimg %.3f step %d d_loss %.4f g_loss %.4f r1 %s sec/kimg %s",
            record["kimg"],
            record["step"],
            stats.get("d_loss") or float("nan"),
            stats.get("g_loss") or float("nan"),
            _fmt(stats.get("r1")),
            _fmt(record["sec_per_kimg"]),
        )
        self.progress.update(record["kimg"], {k: stats.get(k) for k in ("d_loss", "g_loss", "r1")})
        self.tick_start = (time.perf_counter(), self.counters.images_seen, self.counters.step)
        perf.reset_peak_memory(self.env.device)

    # artefacts (rank 0 unless noted) -------------------------------------------------------------------

    @torch.no_grad()
    def _save_samples(self) -> None:
        from torchvision.utils import save_image

        from stylenat.data import denormalize

        images, device = [], self.env.device
        labels = [None] * len(self.grid_z) if self.grid_c is None else self.grid_c.split(self.gan.batch_gpu)
        for z, c in zip(self.grid_z.split(self.gan.batch_gpu), labels):
            c = None if c is None else c.to(device)
            images.append(self.gan.G_ema(z.to(device), c).float().cpu())
        path = ckpt.artifact_path(self.run_dir, ckpt.SAMPLES_PREFIX, self.counters.images_seen, "png")
        save_image(
            denormalize(torch.cat(images), "minus_one_one"), path, nrow=self.opts.sample_grid[0], padding=0
        )
        for sink in self.sinks:
            sink.log_image(path, self.counters.step)

    def _save_reals(self) -> None:
        from torchvision.utils import save_image

        from stylenat.data import denormalize

        if self.setup.dataset is None:
            return
        cols, rows = self.opts.sample_grid
        n = min(cols * rows, len(self.setup.dataset))
        items = [self.setup.dataset[i] for i in range(n)]
        reals = torch.stack([x[0] if isinstance(x, tuple) else x for x in items])
        save_image(
            denormalize(reals, self.config.model.output_normalization),
            self.run_dir / "reals.png",
            nrow=cols,
            padding=0,
        )

    def _save_snapshot(self) -> None:
        from stylenat.snapshot import save_snapshot

        path = ckpt.artifact_path(self.run_dir, ckpt.SNAPSHOT_PREFIX, self.counters.images_seen)
        try:
            save_snapshot(
                path,
                self.gan.G_ema,
                extra={
                    "kimg": self.counters.images_seen / 1000,
                    "step": self.counters.step,
                    "run_dir": str(self.run_dir),
                    "init": self.config.resolved.get("init"),  # the pretrained weights' path and sha256
                    **self._class_meta(),
                },
            )
        except OSError as err:
            raise CheckpointWriteError(
                f"{err.strerror or err}; earlier snapshots and states are intact: free space in {self.run_dir} and resume"
            ) from None
        log.info("saved %s", path.name)

    def _class_meta(self) -> dict:
        """A conditional run's snapshot meta: the class names (from the data), so samplers can name them."""
        if not self.gan.c_dim:
            return {}
        names = self.config.data.class_names
        return {"class_names": list(names) if names is not None else None}

    def _save_state(self) -> Path | None:
        """Collective: every rank contributes its RNG states; rank 0 writes and prunes. A failed write
        (disk full) stops every rank with one error; the previous state stays as it was."""
        rng = dist.all_gather_object(ckpt.capture_rng(self.env.device))
        path, problem = ckpt.artifact_path(self.run_dir, ckpt.STATE_PREFIX, self.counters.images_seen), None
        if self.main:
            previous = ckpt.find_latest_state(self.run_dir)
            try:
                ckpt.save_state(
                    {**self.training_state(), "logger": {"wandb_id": self.wandb_id}, "rng": rng}, path
                )
            except OSError as err:
                kept = (
                    f"the previous state {previous.name} is intact" if previous else "no earlier state exists"
                )
                problem = f"{err.strerror or err}; {kept}: free space in {self.run_dir} and resume"
            else:
                ckpt.prune(self.run_dir, ckpt.STATE_PREFIX, self.opts.keep_states)
                log.info("saved %s", path.name)
        problem = dist.broadcast_object(problem)
        if problem is not None:
            raise CheckpointWriteError(problem)
        self.saved_state_at = self.counters.images_seen
        return path

    def save_state_now(self) -> Path | None:
        """A training state at the current position unless one was just written there (collective)."""
        if self.saved_state_at == self.counters.images_seen:
            return ckpt.artifact_path(self.run_dir, ckpt.STATE_PREFIX, self.counters.images_seen)
        return self._save_state()

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
        if not self.main:
            return
        record = {
            "kimg": self.counters.images_seen / 1000,
            "step": self.counters.step,
            "images_seen": self.counters.images_seen,
            **fields,
        }
        record["timestamp"] = time.time()
        for sink in self.sinks:
            if isinstance(sink, JsonlSink):
                sink.log(record)

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
                record = metric_record(name, result, self.counters.images_seen, self.counters.step)
                for sink in self.sinks:
                    sink.log(record)
                log.info("%s = %.4f at %.3f kimg", name, result["value"], record["kimg"])


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _write_config(config: dict, path: Path) -> None:
    from omegaconf import OmegaConf

    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(config)))
