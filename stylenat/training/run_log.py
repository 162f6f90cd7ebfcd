"""A run's logging (rank 0): the log file handler, the sinks (log.jsonl, W&B), the progress bar, the tick
and event records, metric records, and at the end the learning curves and the run's last line.

The collective parts of a tick (loss reduction, sync check) stay with the caller (``RunOutputs``): this
class only writes what rank 0 was given.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from stylenat import perf
from stylenat.training import checkpoint as ckpt
from stylenat.training.sinks import JsonlSink, Progress, WandbSink, file_log_handler, metric_record

log = logging.getLogger(__name__)


class RunLog:
    """Ticks, sinks, events and curves of one run. ``sinks`` is a list from the start (the artefacts send
    their images to it); ``open`` fills it on rank 0."""

    def __init__(self, setup, counters):
        self.config, self.env, self.run_dir, self.counters = setup.config, setup.env, setup.run_dir, counters
        self.wandb_id = ((setup.state or {}).get("logger") or {}).get("wandb_id")
        self.sinks: list = []
        self.progress = None
        self._handler = None
        self.tick_start = None

    def state(self) -> dict:
        """What a training state keeps of the logger (to continue the same W&B run)."""
        return {"wandb_id": self.wandb_id}

    # start and end -----------------------------------------------------------------------------------

    def open(self) -> None:
        """Rank 0: the file handler, the sinks and the progress bar."""
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
        opts = self.config.train
        self.progress = Progress(
            opts.end_images(self.counters.images_seen) / 1000,
            self.counters.images_seen / 1000,
            self.config.logger.progress,
        )

    def start_tick(self) -> None:
        """Every rank: the next tick's timing and peak memory start now."""
        self.tick_start = (time.perf_counter(), self.counters.images_seen, self.counters.step)
        perf.reset_peak_memory(self.env.device)

    def close(self, failed: bool, stopped: bool, main: bool) -> None:
        """The curves (a run that did not fail, rank 0), the sinks and the bar closed, the last line."""
        curves = self._plot_curves() if main and not failed else None
        for sink in self.sinks:
            sink.close(failed=failed)
        if self.progress is not None:
            self.progress.close()
        if main and not failed:
            self._log_where(curves, stopped)
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

    def _log_where(self, curves: Path | None, stopped: bool) -> None:
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
            "stopped" if stopped else "finished",
            self.counters.images_seen / 1000,
            self.run_dir,
            grids[-1][1] if grids else "none",
            curves_text,
        )

    # records -----------------------------------------------------------------------------------------

    def advance(self, kimg: float) -> None:
        """The progress bar between ticks."""
        if self.progress is not None:
            self.progress.update(kimg)

    def tick(self, stats: dict, digests) -> None:
        """Rank 0: one training record (the reduced ``stats``, rates, memory, ``digests``) to every sink."""
        c, opts = self.counters, self.config.train
        start_time, start_images, start_step = self.tick_start
        elapsed = time.perf_counter() - start_time
        kimg_done = (c.images_seen - start_images) / 1000
        lr = opts.learning_rates(c.images_seen)
        record = {
            "kimg": c.images_seen / 1000,
            "step": c.step,
            "images_seen": c.images_seen,
            **stats,
            "lr_g": lr["g"],
            "lr_d": lr["d"],
            "sec_per_kimg": elapsed / kimg_done if kimg_done > 0 else None,
            "sec_per_step": elapsed / max(1, c.step - start_step),
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

    def event(self, fields: dict) -> None:
        """Rank 0: an event record (rollback, stop) in log.jsonl, at the current position."""
        c = self.counters
        record = {"kimg": c.images_seen / 1000, "step": c.step, "images_seen": c.images_seen, **fields}
        record["timestamp"] = time.time()
        for sink in self.sinks:
            if isinstance(sink, JsonlSink):
                sink.log(record)

    def metric(self, name: str, result: dict) -> None:
        """Rank 0: a metric's result as its own record."""
        record = metric_record(name, result, self.counters.images_seen, self.counters.step)
        for sink in self.sinks:
            sink.log(record)
        log.info("%s = %.4f at %.3f kimg", name, result["value"], record["kimg"])


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4g}"
