"""A run's artefacts: the run directory's preparation, sample grids (and the reals), inference snapshots,
training states (with every rank's RNG) and their pruning.

Rank 0 writes every file; a training state is collective (every rank gives its RNG states, and a failed
write stops every rank with one error).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from stylenat import distributed as dist
from stylenat.files import atomic_write_text
from stylenat.training import checkpoint as ckpt
from stylenat.training.guard import CheckpointWriteError, check_run_dir, clean_stale_temp_files, state_bytes

log = logging.getLogger(__name__)


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


class Artefacts:
    """What a run leaves in its directory. ``sinks`` (the run log's list) also get each sample grid;
    ``training_state()`` is the run's state without RNG and logger, ``logger_state()`` the logger's."""

    def __init__(
        self,
        setup,
        counters,
        gan,
        training_state: Callable[[], dict],
        logger_state: Callable[[], dict],
        sinks: list,
    ):
        self.setup, self.config, self.env, self.run_dir = setup, setup.config, setup.env, setup.run_dir
        self.opts, self.counters, self.gan = setup.config.train, counters, gan
        self.training_state, self.logger_state, self.sinks = training_state, logger_state, sinks
        self.main = setup.env.is_main
        self.grid_z = self.grid_c = None
        self.saved_state_at: int | None = None

    # start -------------------------------------------------------------------------------------------

    def check_room(self) -> None:
        """Collective: stop every rank (not only the one that writes) when the run dir cannot take the
        next training state (twice its size: the new one is written beside the old one)."""
        problem = None
        if self.main:
            try:
                check_run_dir(self.run_dir, 2 * state_bytes([self.gan.G, self.gan.D, self.gan.G_ema]))
            except CheckpointWriteError as err:
                problem = str(err)
        problem = dist.broadcast_object(problem)
        if problem is not None:
            raise CheckpointWriteError(problem)

    def prepare_run_dir(self) -> None:
        """Rank 0: stale temp files removed, unreadable states quarantined, the resolved config written."""
        clean_stale_temp_files(self.run_dir)
        if self.setup.state is not None:
            self.saved_state_at = self.counters.images_seen
        ckpt.quarantine([p for p in self.setup.unreadable_states if p.parent == self.run_dir])
        _write_config(self.config.resolved, self.run_dir / "config.yaml")

    def first_grids(self) -> None:
        """Rank 0: the grid's fixed latents (and labels); a fresh run's reals and first samples."""
        cols, rows = self.opts.sample_grid
        self.grid_z = grid_latents(self.config.run.seed, cols * rows, self.gan.G.z_dim)
        self.grid_c = grid_labels(cols, rows, self.gan.c_dim)
        if self.setup.state is None:
            self.save_reals()
            self.save_samples()

    # images ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def save_samples(self) -> None:
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

    def save_reals(self) -> None:
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

    # networks ----------------------------------------------------------------------------------------

    def save_snapshot(self) -> None:
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
                    **self.config.class_meta(),
                },
            )
        except OSError as err:
            raise CheckpointWriteError(
                f"{err.strerror or err}; earlier snapshots and states are intact: free space in {self.run_dir} and resume"
            ) from None
        log.info("saved %s", path.name)

    def save_state(self) -> Path | None:
        """Collective: every rank contributes its RNG states; rank 0 writes and prunes. A failed write
        (disk full) stops every rank with one error; the previous state stays as it was."""
        rng = dist.all_gather_object(ckpt.capture_rng(self.env.device))
        path, problem = ckpt.artifact_path(self.run_dir, ckpt.STATE_PREFIX, self.counters.images_seen), None
        if self.main:
            previous = ckpt.find_latest_state(self.run_dir)
            try:
                ckpt.save_state({**self.training_state(), "logger": self.logger_state(), "rng": rng}, path)
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
        return self.save_state()


def _write_config(config: dict, path: Path) -> None:
    from omegaconf import OmegaConf

    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(config)))
