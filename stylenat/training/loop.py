"""The training loop: setup and validation (``prepare_run``), one optimisation step (``Trainer.step``)
and the run (``Trainer.fit``; the periodic logs, grids, snapshots and states are in ``outputs``).

One step, per the reference recipe: a D step on ``batch`` reals and as many fakes (logistic loss + bCR),
every ``r1_every`` steps a lazy R1 step on the same reals, a G step (non-saturating loss), the G_ema
update. Each process works on ``batch_per_gpu`` images per pass and accumulates micro-batches until the
step has seen ``batch`` images over all processes.

Reproducibility: every random draw of a step (latents, style-mixing cut-offs, augmentation) comes from a
CPU ``torch.Generator`` seeded by (seed, step, rank, micro-batch, purpose), and the data stream is a
function of the global image count. So the state saved after step N (weights, optimizers, counters)
fully determines step N+1, and N steps + resume + M steps equals N+M steps.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from stylenat.ops.precision import set_tf32
from stylenat.training import checkpoint as ckpt
from stylenat import distributed as dist
from stylenat.training.augment import AdaptiveAugment, FixedDiffAugment, diff_augment, to_device
from stylenat.training.config import check_config, resolve_config
from stylenat.training.ema import ema_beta, make_ema, update_ema
from stylenat.training.guard import DivergenceError, RollbackPoint, StopSignals, all_finite, nonfinite_report
from stylenat.training.losses import bcr_loss, d_logistic_loss, g_nonsaturating_loss, r1_penalty
from stylenat.training.options import TrainOptions

log = logging.getLogger(__name__)

STOP_CHECK_EVERY = 8  # with train.nonfinite=off and several processes: steps between stop-flag agreements
LOSS_KEYS = ("d_loss", "g_loss", "bcr", "d_real", "d_fake", "ada_rt")


# ------------------------------------------------------------------------------------------- setup


@dataclass
class RunSetup:
    """Everything validated before the first file is written."""

    config: dict
    opts: TrainOptions
    env: dist.DistEnv
    run_dir: Path
    resume_path: Path | None
    state: dict | None
    dataset: object | None
    unreadable_states: list[Path] = field(default_factory=list)  # newer states skipped as unreadable


def prepare_run(cfg, env: dist.DistEnv, with_data: bool = True) -> RunSetup:
    """Validate the config, open the data set, find and check the state to resume; writes nothing.

    ``with_data=False`` skips the data set (benchmarks that feed their own batches).
    """
    config = resolve_config(cfg)
    check_config(config, env.world_size)
    opts = TrainOptions.from_dict(config["train"])
    opts.accumulation_rounds(env.world_size)
    run_dir = dist.broadcast_object(config.get("run_dir"))  # ${now:...} may differ between ranks
    if not run_dir:
        raise ValueError("run_dir is required: pass run_dir=<directory>")
    config["run_dir"] = str(run_dir)
    run_dir = Path(run_dir).expanduser()
    resume_path, state, unreadable = ckpt.load_resume_state(config.get("resume"), run_dir)
    if state is not None:
        ckpt.check_compatible(state, config, resume_path)
    dataset = build_training_dataset(config) if with_data else None
    opts = resolve_auto_options(opts, config, dataset)
    return RunSetup(config, opts, env, run_dir, resume_path, state, dataset, unreadable)


def resolve_auto_options(opts: TrainOptions, config: dict, dataset) -> TrainOptions:
    """Replace ``auto`` train values (R1 gamma, augmentation) once the data set's size is known; the
    resolved values go into the run's config (config.yaml, the training state) and the log."""
    num_images = getattr(dataset, "num_images", None)
    resolved = opts.resolve_auto(int(config["model"]["resolution"]), num_images)
    for key in ("r1_gamma", "augment"):
        before, after = getattr(opts, key), getattr(resolved, key)
        if before != after:
            config["train"][key] = after
            log.info(
                "train.%s=auto -> %s (%s images at %d px)",
                key,
                after,
                num_images,
                config["model"]["resolution"],
            )
    return resolved


def build_augment(opts: TrainOptions, normalization: str):
    """The augmentation of every image D sees (``train.augment``), or None."""
    if opts.augment == "ada":
        return AdaptiveAugment(
            opts.ada_ops,
            normalization,
            p=opts.augment_p,
            target=opts.ada_target,
            interval=opts.ada_interval,
            kimg=opts.ada_kimg,
        )
    if opts.augment == "diffaugment":
        return FixedDiffAugment(opts.diffaugment_ops)
    return None


def build_training_dataset(config: dict):
    """The data set of ``dataset.*`` (the demo faces when dataset.path is null), in G's pixel space."""
    from stylenat.data import build_dataset, dataset_path_or_demo

    data_cfg = config["dataset"]
    dataset = build_dataset(
        dataset_path_or_demo(data_cfg.get("path")),  # the demo is built concurrency-safely by every rank
        data_cfg["resolution"],
        normalize=config["model"].get("output_normalization", "imagenet"),
        xflip=bool(data_cfg.get("xflip", False)),
    )
    return dataset


def build_stream(dataset, config: dict, opts: TrainOptions, env: dist.DistEnv, start_index: int):
    """This rank's endless, resumable batch stream, starting at global position ``start_index``."""
    from stylenat.data import build_loader

    return build_loader(
        dataset,
        opts.per_gpu_batch(env.world_size),
        rank=env.rank,
        world_size=env.world_size,
        seed=int(config.get("seed", 0)),
        start_index=start_index,
        num_workers=opts.workers,
    )


def build_networks(config: dict) -> tuple[nn.Module, nn.Module]:
    """G and D from their config groups, seeded so every rank starts from the same weights."""
    from stylenat.models.build import build_discriminator, build_generator

    torch.manual_seed(int(config.get("seed", 0)))
    G = build_generator(config["model"])
    D = build_discriminator(config["discriminator"], config["model"]["resolution"])
    return G, D


# ------------------------------------------------------------------------------------ randomness


class StepRandom:
    """Per-step CPU generators: a pure function of (seed, step, rank, micro-batch, purpose)."""

    def __init__(self, seed: int, rank: int):
        self.seed, self.rank = int(seed), int(rank)
        self.retry = 0  # > 0 after the divergence guard skipped a step: the retried step draws afresh

    def __call__(self, step: int, round_index: int, purpose: str) -> torch.Generator:
        retry = f"/retry{self.retry}" if self.retry else ""
        key = f"{self.seed}/{step}/{self.rank}/{round_index}/{purpose}{retry}".encode()
        g = torch.Generator()
        g.manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2**63 - 1))
        return g


# ------------------------------------------------------------------------------------------ trainer


class Trainer:
    """Holds the networks, optimizers and counters; ``step()`` is one optimisation step, ``fit()`` the run."""

    def __init__(self, setup: RunSetup, stream=None):
        """``stream`` replaces the data set's batch stream (an iterator of image batches; benchmarks)."""
        self.setup, self.config, self.opts, self.env = setup, setup.config, setup.opts, setup.env
        self.device = setup.env.device
        self.run_dir = setup.run_dir
        opts, world = self.opts, self.env.world_size
        self.rounds = opts.accumulation_rounds(world)
        self.batch_gpu = opts.per_gpu_batch(world)
        self.seed = int(self.config.get("seed", 0))
        self.random = StepRandom(self.seed, self.env.rank)
        self.step_index, self.images_seen = 0, 0
        self.skipped_images = 0  # images of batches the divergence guard skipped (the stream moved on)
        self._configure_backends()

        self.G, self.D = build_networks(self.config)
        self.G.to(self.device).train()
        self.D.to(self.device).train()
        self.G_ema = make_ema(self.G)
        self.ema_beta = ema_beta(opts.ema_decay, opts.ema_halflife_kimg, opts.batch)
        c = opts.lazy_r1_ratio
        lr = opts.learning_rates(0)
        # Fused Adam (one kernel for all parameters) on CUDA; the CPU's default foreach path is as fast.
        fused = {"fused": True} if self.device.type == "cuda" else {}
        self.opt_G = torch.optim.Adam(
            self.G.parameters(), lr=lr["g"], betas=tuple(opts.betas), eps=opts.adam_eps, **fused
        )
        d_betas = (opts.betas[0] ** c, opts.betas[1] ** c)
        self.opt_D = torch.optim.Adam(
            self.D.parameters(), lr=lr["d"], betas=d_betas, eps=opts.adam_eps, **fused
        )
        self.wandb_id = None
        if setup.state is not None:
            self.load_state_dict(setup.state)
        else:
            dist.broadcast_module(self.G)
            dist.broadcast_module(self.D)
            self.G_ema.load_state_dict(self.G.state_dict())
        self.G_fwd, self.D_fwd = self._maybe_compile()
        self.augment = build_augment(opts, self.config["model"].get("output_normalization", "imagenet"))
        # ADA's running sum of sign(D(real)) and its count since p last moved (on the device: no sync)
        self.ada_sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        if setup.state is not None:
            self._load_augment_state(setup.state.get("augment"))
        self.dataset = setup.dataset
        if stream is None:
            if self.dataset is None:
                raise ValueError("Trainer needs a data set (prepare_run(with_data=True)) or a stream")
            stream = build_stream(self.dataset, self.config, opts, self.env, self.data_position)
        self.stream = stream
        self.stats = StatAccumulator(self.device)
        self.rollback = None
        if opts.nonfinite != "off":
            self.rollback = RollbackPoint(
                [self.G, self.D, self.G_ema],
                [self.opt_G, self.opt_D],
                [self.stats.sums, self.stats.counts, self.ada_sums],
            )
        self.rollbacks_in_a_row = 0

    # ------------------------------------------------------------------ backends

    def _configure_backends(self) -> None:
        if self.device.type == "cuda":
            set_tf32(self.opts.tf32)
            torch.backends.cudnn.benchmark = True

    def _maybe_compile(self):
        """With ``train.compile`` the G synthesis (the transformer, most of the cost) is compiled.

        D stays eager: compiled graphs save the legacy spectral norm's in-place-updated ``weight_u`` for
        backward, which breaks the D step's several forwards before one backward; R1's double backward
        is not supported by torch.compile either.
        """
        if not self.opts.compile:
            return self.G.synthesis, self.D
        return torch.compile(self.G.synthesis), self.D

    def _autocast(self):
        if self.opts.amp == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Everything but the RNG states (``RunOutputs._save_state`` gathers those from every rank)."""
        return {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "lr": self.current_lr(),
            "counters": {
                "step": self.step_index,
                "images_seen": self.images_seen,
                "skipped_images": self.skipped_images,
            },
            "sampler": {"position": self.data_position},
            "world_size": self.env.world_size,
            "model_config": self.G.model_config,
            "config": self.config,
            "logger": {"wandb_id": self.wandb_id},
            "augment": self._augment_state(),
        }

    def _augment_state(self) -> dict | None:
        if not isinstance(self.augment, AdaptiveAugment):
            return None
        return {**self.augment.state_dict(), "sums": self.ada_sums.tolist()}

    def _load_augment_state(self, state: dict | None) -> None:
        if state is None or not isinstance(self.augment, AdaptiveAugment):
            return
        self.augment.load_state_dict(state)
        self.ada_sums.copy_(torch.tensor(state["sums"], dtype=torch.float64))

    def load_state_dict(self, state: dict) -> None:
        """Restore networks, optimizers, counters and (same world size) this rank's RNG."""
        from stylenat.snapshot import load_state_dict_strict

        source = str(self.setup.resume_path)
        load_state_dict_strict(self.G, state["G"], f"{source} (G)")
        load_state_dict_strict(self.D, state["D"], f"{source} (D)")
        load_state_dict_strict(self.G_ema, state["G_ema"], f"{source} (G_ema)")
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.step_index = int(state["counters"]["step"])
        self.images_seen = int(state["counters"]["images_seen"])
        self.skipped_images = int(state["counters"].get("skipped_images", 0))
        self.random.retry = self.skipped_images // self.opts.batch
        self.wandb_id = (state.get("logger") or {}).get("wandb_id")
        rng = state.get("rng") or []
        if len(rng) == self.env.world_size:
            ckpt.restore_rng(rng[self.env.rank], self.device)
        else:
            log.warning(
                "state from %d process(es), now %d: global RNG states not restored",
                len(rng),
                self.env.world_size,
            )
        log.info("resumed from %s at %.3f kimg (step %d)", source, self.images_seen / 1000, self.step_index)

    @property
    def data_position(self) -> int:
        """Images the data stream has delivered (skipped batches included): where a resume continues."""
        return self.images_seen + self.skipped_images

    def current_lr(self) -> dict:
        return self.opts.learning_rates(self.images_seen)

    def _apply_lr(self) -> None:
        lr = self.current_lr()
        for opt, key in ((self.opt_G, "g"), (self.opt_D, "d")):
            for group in opt.param_groups:
                group["lr"] = lr[key]

    # ------------------------------------------------------------------ one step

    def next_reals(self) -> torch.Tensor:
        batch = next(self.stream)
        if isinstance(batch, (list, tuple)):
            batch = batch[0]
        return batch.to(self.device, non_blocking=True)

    def _latents(self, step: int, r: int, purpose: str) -> tuple[torch.Tensor, torch.Generator]:
        g = self.random(step, r, purpose)
        z = to_device(torch.randn(self.batch_gpu, self.G.z_dim, generator=g), self.device)
        return z, g

    def _mapping(self, z: torch.Tensor, g: torch.Generator, update_w_avg: bool) -> torch.Tensor:
        """z -> per-layer ws, with style mixing (one random cut-off per batch) at ``train.style_mixing``."""
        ws = self.G.mapping(z, update_w_avg=update_w_avg, w_avg_beta=self.opts.w_avg_beta)
        if self.opts.style_mixing > 0:
            cutoff = int(torch.randint(1, ws.shape[1], (), generator=g))
            mix = float(torch.rand((), generator=g)) < self.opts.style_mixing
            z2 = to_device(torch.randn(z.shape, generator=g), z.device)
            if mix:
                ws2 = self.G.mapping(z2)
                ws = torch.cat([ws[:, :cutoff], ws2[:, cutoff:]], dim=1)
        return ws

    def _augmented(self, images: torch.Tensor, r: int, purpose: str) -> torch.Tensor:
        """``images`` as D sees them: through ``train.augment`` (ADA / DiffAugment), differentiably."""
        if self.augment is None:
            return images
        return self.augment(images, self.random(self.step_index, r, purpose))

    def d_step(self, reals: list[torch.Tensor]) -> None:
        """Logistic loss on reals and fakes plus bCR; gradients averaged over micro-batches and ranks."""
        opts, step = self.opts, self.step_index
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        for r, real in enumerate(reals):
            z, g = self._latents(step, r, "d_latent")
            with torch.no_grad(), self._autocast():
                fake = self.G_fwd(self._mapping(z, g, update_w_avg=False))
            with self._autocast():
                fake = self._augmented(fake, r, "augment_fake")
                real = self._augmented(real, r, "augment_real")
                fake_logits = self.D_fwd(fake)
                real_logits = self.D_fwd(real)
                loss = d_logistic_loss(real_logits, fake_logits)
                total = loss
                if opts.bcr_real > 0 or opts.bcr_fake > 0:
                    g_aug = self.random(step, r, "bcr_augment")
                    bcr = opts.bcr_real * bcr_loss(
                        real_logits, self.D_fwd(diff_augment(real, opts.bcr_augment, g_aug))
                    )
                    bcr = bcr + opts.bcr_fake * bcr_loss(
                        fake_logits, self.D_fwd(diff_augment(fake, opts.bcr_augment, g_aug))
                    )
                    total = total + bcr
                    self.stats.add("bcr", bcr)
            (total / len(reals)).backward()
            self.stats.add("d_loss", loss)
            self.stats.add("d_real", real_logits.float().mean())
            self.stats.add("d_fake", fake_logits.float().mean())
            signs = real_logits.detach().float().sign()
            self.stats.add("ada_rt", signs.mean())
            self.ada_sums[0] += signs.sum()
            self.ada_sums[1] += signs.numel()
        self._optimizer_step(self.D, self.opt_D, opts.d_clip_grad)

    def r1_step(self, reals: list[torch.Tensor]) -> None:
        """Lazy R1 on the step's reals, weighted gamma/2 * r1_every (in fp32: D is eager here)."""
        self.D.requires_grad_(True)
        for r, real in enumerate(reals):
            real = real.detach().requires_grad_(True)
            penalty = r1_penalty(self.D(self._augmented(real, r, "augment_r1")), real)
            (self.opts.r1_gamma / 2 * penalty * self.opts.r1_every / len(reals)).backward()
            self.stats.add("r1", penalty)
        self._optimizer_step(self.D, self.opt_D, None)

    def g_step(self) -> None:
        """Non-saturating G loss on fresh fakes; updates the running w_avg."""
        step = self.step_index
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        for r in range(self.rounds):
            z, g = self._latents(step, r, "g_latent")
            with self._autocast():
                ws = self._mapping(z, g, update_w_avg=True)
                loss = g_nonsaturating_loss(self.D_fwd(self._augmented(self.G_fwd(ws), r, "augment_g")))
            (loss / self.rounds).backward()
            self.stats.add("g_loss", loss)
        self._optimizer_step(self.G, self.opt_G, self.opts.g_clip_grad)
        self.D.requires_grad_(True)

    def _optimizer_step(self, module: nn.Module, opt: torch.optim.Optimizer, clip: float | None) -> None:
        params = [p for p in module.parameters() if p.requires_grad]
        dist.all_reduce_grads(params)
        if clip is not None:
            nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def _adjust_augment(self) -> None:
        """ADA: every ``ada_interval`` steps move p by the mean sign(D(real)) since the last move.

        Runs at the start of a step, before the rollback point is captured, so undoing a step never
        has to undo p; one host sync per interval.
        """
        if not isinstance(self.augment, AdaptiveAugment) or self.step_index % self.opts.ada_interval:
            return
        total, count = dist.all_reduce_mean(self.ada_sums).tolist()
        if count > 0:
            self.augment.adjust(total / count, images=round(count * self.env.world_size))
        self.ada_sums.zero_()

    def step(self) -> None:
        """One D step (+ lazy R1) and one G step on ``batch`` images, then G_ema; advances the counters."""
        self._adjust_augment()
        if self.rollback is not None:
            self.rollback.capture()
        self._apply_lr()
        reals = [self.next_reals() for _ in range(self.rounds)]
        self.d_step(reals)
        if self.opts.r1_gamma > 0 and self.step_index % self.opts.r1_every == 0:
            self.r1_step(reals)
        self.g_step()
        dist.sync_buffers(self.G)
        update_ema(self.G_ema, self.G, self.ema_beta)
        self.step_index += 1
        self.images_seen += self.opts.batch

    # ------------------------------------------------------------------ run

    def fit(self) -> Path:
        """Train until ``train.total_kimg`` or a stop signal; rank 0 writes every artefact. Returns the run dir."""
        total = self.opts.total_images
        if self.images_seen >= total:
            log.info(
                "nothing to do: the state is at %.3f kimg >= train.total_kimg=%s",
                self.images_seen / 1000,
                self.opts.total_kimg,
            )
            return self.run_dir
        from stylenat.training.outputs import RunOutputs

        with RunOutputs(self) as out, StopSignals() as signals:
            while self.images_seen < total:
                before = self.images_seen
                self.step()
                nonfinite, stop = self._step_flags(signals)
                if nonfinite:
                    self._undo_nonfinite_step(out)
                    continue
                self.rollbacks_in_a_row = 0
                out.after_step(before, done=self.images_seen >= total)
                if stop and self.images_seen < total:
                    out.stop(signals.requested or "a stop request on another rank")
                    break
        return self.run_dir

    # ------------------------------------------------------------------ faults

    def _step_flags(self, signals: StopSignals) -> tuple[bool, bool]:
        """(the step left a non-finite loss or weight, a stop signal arrived), agreed by every rank.

        With ``train.nonfinite=off`` nothing is checked on the device: one process reads its own signal
        flag (no host sync); several agree on it every ``STOP_CHECK_EVERY`` steps (a schedule every rank
        shares, so the collective always matches), which delays a stop by at most that many steps.
        """
        if self.rollback is None:
            if not self.env.distributed:
                return False, signals.requested is not None
            if self.step_index % STOP_CHECK_EVERY:
                return False, False
        flags = torch.zeros(2, device=self.device)
        if self.rollback is not None:
            params = [p for m in (self.G, self.D) for p in m.parameters()]
            flags[0] = (~all_finite([*params, self.stats.sums])).float()
        flags[1] = float(signals.requested is not None)
        if self.env.distributed:
            flags = dist.all_reduce_max(flags)
        nonfinite, stop = flags.tolist()
        return nonfinite > 0, stop > 0

    def _undo_nonfinite_step(self, out) -> None:
        """Restore the state from before the step; then skip its batch and go on, or save and stop."""
        what = nonfinite_report(
            {k: self.stats.sums[i] for i, k in enumerate(self.stats.KEYS)}, {"G": self.G, "D": self.D}
        )
        failed_step, failed_kimg = self.step_index - 1, (self.images_seen - self.opts.batch) / 1000
        self.rollback.restore()
        self.step_index -= 1
        self.images_seen -= self.opts.batch
        self.skipped_images += self.opts.batch  # the stream already delivered the step's batch
        self.random.retry += 1
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


class StatAccumulator:
    """Sums of per-step figures kept on the device (no host sync per step), reduced over ranks per tick."""

    KEYS = LOSS_KEYS + ("r1",)

    def __init__(self, device: torch.device):
        self.device = device
        self.last_r1 = float("nan")
        self.reset()

    def reset(self) -> None:
        """Zero in place (the divergence guard's rollback point holds these tensors)."""
        if not hasattr(self, "sums"):
            self.sums = torch.zeros(len(self.KEYS), dtype=torch.float64, device=self.device)
            self.counts = torch.zeros(len(self.KEYS), dtype=torch.float64, device=self.device)
        self.sums.zero_()
        self.counts.zero_()

    def add(self, key: str, value: torch.Tensor) -> None:
        i = self.KEYS.index(key)
        self.sums[i] += value.detach().to(torch.float64)
        self.counts[i] += 1

    def reduce(self) -> dict:
        """Means over the tick and the ranks (collective: every rank must call it)."""
        both = dist.all_reduce_mean(torch.cat([self.sums, self.counts])).tolist()
        n = len(self.KEYS)
        out = {}
        for i, key in enumerate(self.KEYS):
            out[key] = both[i] / both[n + i] if both[n + i] > 0 else None
        if out["r1"] is None:
            out["r1"] = self.last_r1 if math.isfinite(self.last_r1) else None
        else:
            self.last_r1 = out["r1"]
        self.reset()
        return out


# ------------------------------------------------------------------------------------------ helpers


def train(cfg) -> Path:
    """Train (or resume) from a composed config; the library entry point behind ``train.py``."""
    env = dist.init(resolve_config_device(cfg))
    try:
        setup = prepare_run(cfg, env)
        trainer = Trainer(setup)
        result = trainer.fit()
    except BaseException as err:
        dist.report_failure(err)  # and no shutdown(): see there
        raise
    dist.shutdown()
    return result


def resolve_config_device(cfg) -> str:
    """The ``device`` key without resolving the rest of the config (rank/device come first)."""
    device = cfg.get("device", "auto") if hasattr(cfg, "get") else "auto"
    return str(device or "auto")
