"""A training run: the loop with its schedule, stop signals and divergence rollback (``Trainer.fit``)
around the GAN step (``step.GanStep``). What is checked before it starts is in ``setup``; the periodic logs,
grids, snapshots, states and metrics are in ``outputs``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from stylenat import distributed as dist
from stylenat.ops.precision import set_tf32
from stylenat.training import checkpoint as ckpt
from stylenat.training.config import TrainingConfig, parse_config
from stylenat.training.guard import DivergenceError, RollbackPoint, StopSignals, all_finite, nonfinite_report
from stylenat.training.outputs import Counters, RunOutputs
from stylenat.training.setup import RunSetup, prepare_run
from stylenat.training.stats import Reporter
from stylenat.training.step import GanStep

log = logging.getLogger(__name__)

STOP_CHECK_EVERY = 8  # with train.nonfinite=off and several processes: steps between stop-flag agreements


def build_stream(dataset, config: TrainingConfig, env: dist.DistEnv, start_index: int):
    """This rank's endless, resumable batch stream, starting at global position ``start_index``."""
    from stylenat.data import build_loader

    return build_loader(
        dataset,
        config.train.per_gpu_batch(env.world_size),
        rank=env.rank,
        world_size=env.world_size,
        seed=config.run.seed,
        start_index=start_index,
        num_workers=config.train.workers,
    )


# ------------------------------------------------------------------------------------------- the run


class Trainer:
    """The run: counters, schedule, data stream, stop signals and rollback around ``GanStep``.

    ``step()`` is one optimisation step, ``fit()`` the whole run.
    """

    def __init__(self, setup: RunSetup, stream=None):
        """``stream`` replaces the data set's batch stream (an iterator of image batches; benchmarks)."""
        self.setup, self.config, self.env = setup, setup.config, setup.env
        self.opts, self.device, self.run_dir = setup.config.train, setup.env.device, setup.run_dir
        if self.device.type == "cuda":
            set_tf32(self.opts.tf32)
            torch.backends.cudnn.benchmark = True
        self.stats = Reporter(self.device)
        self.gan = GanStep(self.config, self.device, self.stats.report, self.env.rank, self.env.world_size)
        if self.gan.c_dim and getattr(setup.dataset, "labels", None) is not None:
            self.gan.set_label_pool(setup.dataset.labels)
        self.counters = Counters()
        if setup.state is not None:
            self.load_state_dict(setup.state)
        elif self.config.init is not None:
            from stylenat.training.init import load_init_weights

            load_init_weights(self.gan, self.config.init)
        else:
            self.gan.share_initial_weights()
        if stream is None:
            if setup.dataset is None:
                raise ValueError("Trainer needs a data set (prepare_run(with_data=True)) or a stream")
            stream = build_stream(setup.dataset, self.config, self.env, self.counters.data_position)
        self.stream = stream
        self.rollback = None
        if self.opts.nonfinite != "off":
            gan = self.gan
            self.rollback = RollbackPoint(
                [gan.G, gan.D, gan.G_ema],
                [gan.opt_G, gan.opt_D],
                [self.stats.sums, self.stats.counts, gan.ada_sums],
            )
        self.rollbacks_in_a_row = 0

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Everything but the RNG states and the logger's (``RunOutputs`` adds those)."""
        c = self.counters
        return {
            **self.gan.state_dict(),
            "lr": self.opts.learning_rates(c.images_seen),
            "counters": {"step": c.step, "images_seen": c.images_seen, "skipped_images": c.skipped_images},
            "sampler": {"position": c.data_position},
            "world_size": self.env.world_size,
            "model_config": self.gan.G.model_config,
            "config": self.config.resolved,
            **self.config.class_meta(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore networks, optimizers, counters and (same world size) this rank's RNG."""
        source = str(self.setup.resume_path)
        self.gan.load_state_dict(state, source)
        c = self.counters
        c.step = int(state["counters"]["step"])
        c.images_seen = int(state["counters"]["images_seen"])
        c.skipped_images = int(state["counters"].get("skipped_images", 0))
        self.gan.random.retry = c.skipped_images // self.opts.batch
        rng = state.get("rng") or []
        if len(rng) == self.env.world_size:
            ckpt.restore_rng(rng[self.env.rank], self.device)
        else:
            log.warning(
                "state from %d process(es), now %d: global RNG states not restored",
                len(rng),
                self.env.world_size,
            )
        log.info("resumed from %s at %.3f kimg (step %d)", source, c.images_seen / 1000, c.step)

    # ------------------------------------------------------------------ one step

    def next_reals(self) -> torch.Tensor:
        return self.next_batch()[0]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(images on the device, their class indices or None): a labelled data set yields both."""
        batch, labels = next(self.stream), None
        if isinstance(batch, (list, tuple)):
            batch, labels = batch[0], (batch[1] if len(batch) > 1 else None)
        return batch.to(self.device, non_blocking=True), labels

    def step(self) -> None:
        """One optimisation step on ``batch`` images (the schedule's lr, ADA's p), then the counters."""
        c = self.counters
        self.gan.adjust_augment(c.step, self.env.world_size)
        if self.rollback is not None:
            self.rollback.capture()
        self.gan.set_learning_rates(self.opts.learning_rates(c.images_seen))
        batches = [self.next_batch() for _ in range(self.gan.rounds)]
        labels = [b[1] for b in batches] if self.gan.c_dim else None
        self.gan.run(c.step, [b[0] for b in batches], labels)
        c.step += 1
        c.images_seen += self.opts.batch

    # ------------------------------------------------------------------ the run

    def fit(self) -> Path:
        """Train until ``train.total_kimg`` or a stop signal; rank 0 writes every artefact. Returns the run dir."""
        total, c = self.opts.total_images, self.counters
        if c.images_seen >= total:
            log.info(
                "nothing to do: the state is at %.3f kimg >= train.total_kimg=%s",
                c.images_seen / 1000,
                self.opts.total_kimg,
            )
            return self.run_dir
        outputs = RunOutputs(self.setup, c, self.gan, self.stats, self.state_dict)
        with outputs as out, StopSignals() as signals:
            while c.images_seen < total:
                before = c.images_seen
                self.step()
                nonfinite, stop = self._step_flags(signals)
                if nonfinite:
                    self._undo_nonfinite_step(out)
                    continue
                self.rollbacks_in_a_row = 0
                out.after_step(before, done=c.images_seen >= total)
                if stop and c.images_seen < total:
                    out.stop(signals.requested or "a stop request on another rank")
                    break
        return self.run_dir

    def _step_flags(self, signals: StopSignals) -> tuple[bool, bool]:
        """(the step left a non-finite loss or weight, a stop signal arrived), agreed by every rank.

        With ``train.nonfinite=off`` nothing is checked on the device: one process reads its own signal
        flag (no host sync); several agree on it every ``STOP_CHECK_EVERY`` steps (a schedule every rank
        shares, so the collective always matches), which delays a stop by at most that many steps.
        """
        if self.rollback is None:
            if not self.env.distributed:
                return False, signals.requested is not None
            if self.counters.step % STOP_CHECK_EVERY:
                return False, False
        flags = torch.zeros(2, device=self.device)
        if self.rollback is not None:
            params = [p for m in (self.gan.G, self.gan.D) for p in m.parameters()]
            flags[0] = (~all_finite([*params, self.stats.sums])).float()
        flags[1] = float(signals.requested is not None)
        if self.env.distributed:
            flags = dist.all_reduce_max(flags)
        nonfinite, stop = flags.tolist()
        return nonfinite > 0, stop > 0

    def _undo_nonfinite_step(self, out: RunOutputs) -> None:
        """Restore the state from before the step; then skip its batch and go on, or save and stop."""
        c, batch = self.counters, self.opts.batch
        what = nonfinite_report(self.stats.named_sums(), {"G": self.gan.G, "D": self.gan.D})
        failed_step, failed_kimg = c.step - 1, (c.images_seen - batch) / 1000
        self.rollback.restore()
        c.step -= 1
        c.images_seen -= batch
        c.skipped_images += batch  # the stream already delivered the step's batch
        self.gan.random.retry += 1
        self.rollbacks_in_a_row += 1
        limit = self.opts.nonfinite_max_rollbacks
        stop = self.opts.nonfinite == "stop" or self.rollbacks_in_a_row > limit
        out.log_event(
            {
                "event": "nonfinite",
                "what": what,
                "action": "stop" if stop else "rollback",
                "failed_step": failed_step,
            }
        )
        if not stop:
            log.warning(
                "non-finite %s in step %d (%.3f kimg): rolled back and skipped its batch (%d in a row, limit %d)",
                what,
                failed_step,
                failed_kimg,
                self.rollbacks_in_a_row,
                limit,
            )
            return
        path = out.save_state_now()
        why = (
            "train.nonfinite=stop"
            if self.opts.nonfinite == "stop"
            else f"{self.rollbacks_in_a_row} rollbacks in a row"
        )
        raise DivergenceError(
            f"training diverged: non-finite {what} in step {failed_step} ({failed_kimg:.3f} kimg; {why}); "
            f"saved {path.name if path else 'the state'} from before that step: resume it with a lower "
            "learning rate, or with train.nonfinite=rollback to skip such batches"
        )


def train(config) -> Path:
    """Train (or resume) from a ``TrainingConfig`` (or a composed config): the library entry point behind
    ``train.py``. Returns the run dir."""
    if not isinstance(config, TrainingConfig):
        config = parse_config(config)
    env = dist.init(config.run.device)
    try:
        result = Trainer(prepare_run(config, env)).fit()
    except BaseException as err:
        dist.report_failure(err)  # and no shutdown(): see there
        raise
    dist.shutdown()
    return result
