"""One GAN training step, per the reference recipe (the StyleNAT paper, Walton et al., arXiv:2211.05770, and
its released code; the knobs in configs/train/*.yaml, the small-data and long-run behaviour in
docs/small_data.md and docs/long_runs.md): the networks, their optimizers and the four phases of a step,
each on one screen.

- D: logistic loss on ``batch`` reals and as many fakes, plus bCR; the images D sees go through
  ``train.augment`` (ADA / DiffAugment).
- R1: every ``r1_every`` steps, the lazy gradient penalty on the same reals (fp32); its real logits count
  towards ADA's r_t too, as in StyleGAN2-ADA.
- G: non-saturating loss on fresh fakes (style mixing), updating the running w_avg. With
  ``train.reuse_fakes`` G draws its fakes first and the D step trains on them, detached (one G forward a
  step instead of two; every micro-batch's graph is held through the D and R1 steps).
- EMA: G_ema follows G.

Each process works on ``batch_per_gpu`` images per pass and accumulates micro-batches until the step has
seen ``batch`` images over all processes. Every random draw (latents, style-mixing cut-offs,
augmentation) comes from a CPU ``torch.Generator`` seeded by (seed, step, rank, micro-batch, purpose),
so a step is a pure function of the state before it and the step's reals: N steps + resume + M steps
equals N+M steps.

Class-conditional (``model.c_dim > 0``, StyleGAN2-ADA's loop): D sees the reals with their labels, and
every fake is drawn with the label of a random data set item (``label_pool``), from its own generator
(purpose ``..._labels``). An unconditional step draws nothing more and calls G and D as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from stylenat import distributed as dist
from stylenat.ops.precision import autocast
from stylenat.training.augment import AdaptiveAugment, build_augment, diff_augment, to_device
from stylenat.training.config import TrainingConfig
from stylenat.training.ema import ema_beta, make_ema, update_ema
from stylenat.training.losses import bcr_loss, d_logistic_loss, g_nonsaturating_loss, r1_penalty

log = logging.getLogger(__name__)

# The G step's fakes and their one-hot labels (None when unconditional), one pair per micro-batch.
Fakes = list[tuple[torch.Tensor, torch.Tensor | None]]


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


def build_networks(config: TrainingConfig) -> tuple[nn.Module, nn.Module]:
    """G and D from the config, seeded so every rank starts from the same weights."""
    from stylenat.models.build import build_discriminator, build_generator

    torch.manual_seed(config.run.seed)
    G = build_generator(
        config.model,
        na_backend=config.run.na_backend,
        checkpoint_blocks=config.train.checkpoint_blocks,
    )
    D = build_discriminator(
        {"name": config.discriminator.name, **config.discriminator.options},
        config.data.resolution,
        c_dim=config.model.c_dim,
    )
    return G, D


def cpp_compiler_missing() -> str | None:
    """Why torch.compile cannot build CPU code here (inductor compiles C++), or None when it can."""
    try:
        from torch._inductor import exc
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError as err:
        return f"torch.compile's CPU backend is unavailable ({err})"
    try:
        get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        return "no C++ compiler found (inductor compiles the CPU graphs with g++ or $CXX)"
    return None


def compile_or_eager(fn: Callable, device: torch.device) -> Callable:
    """``torch.compile(fn)``; on a CPU without a C++ compiler ``fn`` itself and one warning, instead of an
    error from deep inside the first compiled call."""
    if device.type == "cpu":
        missing = cpp_compiler_missing()
        if missing is not None:
            log.warning("train.compile=true: %s; training runs eagerly", missing)
            return fn
    return torch.compile(fn)


def freeze_d_blocks(D: nn.Module, count: int) -> list[nn.Parameter]:
    """FreezeD: D's first ``count`` blocks (``D.blocks()``, from the image side) lose their gradients and
    go to eval mode (a spectral norm keeps its power-iteration vectors), so they stay bit-identical.
    Returns the parameters that still train: the only ones D's optimizer holds (no state for the rest)."""
    frozen = [module.requires_grad_(False).eval() for block in D.blocks()[:count] for module in block]
    frozen_ids = {id(p) for module in frozen for p in module.parameters()}
    return [p for p in D.parameters() if id(p) not in frozen_ids]


def _no_report(name: str, value) -> None:
    pass


class GanStep:
    """G, D, G_ema, both optimizers and the augmentation; ``run(index, reals)`` is one training step."""

    def __init__(
        self,
        config: TrainingConfig,
        device: torch.device,
        report: Callable[[str, object], None] = _no_report,
        rank: int = 0,
        world_size: int = 1,
    ):
        """``report(name, value)`` receives every figure of the step (``stats.Reporter.report``)."""
        opts = self.opts = config.train
        self.device, self.report = device, report
        self.rounds = opts.accumulation_rounds(world_size)
        self.batch_gpu = opts.per_gpu_batch(world_size)
        self.random = StepRandom(config.run.seed, rank)
        self.index = 0  # the step being run: part of every random draw's seed
        self.c_dim = config.model.c_dim
        # the class of every data set item, fakes' labels are drawn from (set_label_pool; default uniform)
        self.label_pool = torch.arange(self.c_dim)

        self.G, self.D = build_networks(config)
        self.G.to(device).train()
        self.D.to(device).train()
        self.d_trainable = freeze_d_blocks(self.D, opts.freeze_d)
        self.G_ema = make_ema(self.G)
        self.ema_beta = ema_beta(opts.ema_decay, opts.ema_halflife_kimg, opts.batch)
        lr, c = opts.learning_rates(0), opts.lazy_r1_ratio
        # Adam's fused kernel (one pass over all parameters) on CUDA. On the CPU the foreach form: it runs
        # the per-tensor loop's arithmetic op by op over all tensors at once, so it rounds exactly like it
        # (runs reproduce earlier ones bit for bit) at ~2/3 of its time; the fused CPU kernel rounds
        # differently and does not bump the parameters' versions (docs/performance.md).
        fused = {"fused": True} if device.type == "cuda" else {"foreach": True}
        self.opt_G = torch.optim.Adam(
            self.G.parameters(), lr=lr["g"], betas=tuple(opts.betas), eps=opts.adam_eps, **fused
        )
        d_betas = (opts.betas[0] ** c, opts.betas[1] ** c)
        self.opt_D = torch.optim.Adam(self.d_trainable, lr=lr["d"], betas=d_betas, eps=opts.adam_eps, **fused)
        # train.compile compiles G's synthesis (most of the cost). D stays eager: compiled graphs save the
        # legacy spectral norm's in-place-updated weight_u for backward, which breaks the D step's several
        # forwards before one backward; R1's double backward is not supported by torch.compile either.
        self.G_fwd = compile_or_eager(self.G.synthesis, device) if opts.compile else self.G.synthesis
        # The D step's no-grad fakes: on the CPU always the eager synthesis, whose fused inference kernels
        # beat a compiled graph (traced, their shape-dependent chunk loops recompiled past dynamo's limit
        # and ran slower: docs/performance.md, "The training step of small models on the CPU").
        self.G_fakes = self.G.synthesis if device.type == "cpu" else self.G_fwd
        self.D_fwd = self.D
        self.augment = build_augment(opts, config.model.output_normalization)
        # ADA's running sum of sign(D(real)) and its count since p last moved (on the device: no sync)
        self.ada_sums = torch.zeros(2, dtype=torch.float64, device=device)

    # ------------------------------------------------------------------------------------ one step

    def run(self, index: int, reals: list[torch.Tensor], labels: list[torch.Tensor] | None = None) -> None:
        """One D step (+ lazy R1) and one G step on the step's reals (and, when conditional, their class
        indices), then the G_ema update."""
        self.index = index
        labels = self.real_labels(labels)
        fakes = self.g_fakes() if self.opts.reuse_fakes else None
        self.d_step(reals, labels, fakes)
        if self.opts.r1_gamma > 0 and index % self.opts.r1_every == 0:
            self.r1_step(reals, labels)
        self.g_step(fakes)
        dist.sync_buffers(self.G)
        update_ema(self.G_ema, self.G, self.ema_beta)
        if self.augment is not None:
            self.report("augment_p", self.augment.p)

    def d_step(
        self,
        reals: list[torch.Tensor],
        labels: list[torch.Tensor] | None = None,
        fakes: Fakes | None = None,
    ) -> None:
        """Logistic loss on reals and fakes plus bCR; gradients averaged over micro-batches and ranks.
        ``labels``: the reals' one-hot labels (conditional); ``fakes``: the G step's (image, label) per
        micro-batch (``train.reuse_fakes``), else D draws its own."""
        opts, step = self.opts, self.index
        if fakes is None:
            self.G.requires_grad_(False)
        self._d_requires_grad(True)
        for r, real in enumerate(reals):
            c_real = None if labels is None else labels[r]
            if fakes is None:
                z, g = self._latents(r, "d_latent")
                c_fake = self.fake_labels(r, "d_latent")
                with torch.no_grad(), self._fakes_precision():
                    fake = self.G_fakes(self._mapping(z, g, update_w_avg=False, c=c_fake))
            else:
                fake, c_fake = fakes[r][0].detach(), fakes[r][1]
            with self._autocast():
                fake = self._augmented(fake, r, "augment_fake")
                real = self._augmented(real, r, "augment_real")
                fake_logits = self._d(fake, c_fake)
                real_logits = self._d(real, c_real)
                loss = total = d_logistic_loss(real_logits, fake_logits)
                if opts.bcr_real > 0 or opts.bcr_fake > 0:
                    g_aug = self.random(step, r, "bcr_augment")
                    bcr = opts.bcr_real * bcr_loss(
                        real_logits, self._d(diff_augment(real, opts.bcr_augment, g_aug), c_real)
                    )
                    bcr = bcr + opts.bcr_fake * bcr_loss(
                        fake_logits, self._d(diff_augment(fake, opts.bcr_augment, g_aug), c_fake)
                    )
                    total = total + bcr
                    self.report("bcr", bcr)
            (total / len(reals)).backward()
            self.report("d_loss", loss)
            self.report("d_real", real_logits.float().mean())
            self.report("d_fake", fake_logits.float().mean())
            self.report("ada_rt", self._count_signs(real_logits))
        self._optimizer_step(self.D, self.opt_D, opts.d_clip_grad)

    def r1_step(self, reals: list[torch.Tensor], labels: list[torch.Tensor] | None = None) -> None:
        """Lazy R1 on the step's reals, weighted gamma/2 * r1_every (in fp32: D is eager here)."""
        self._d_requires_grad(True)
        for r, real in enumerate(reals):
            real = real.detach().requires_grad_(True)
            c = None if labels is None else labels[r]
            real_logits = self._d(self._augmented(real, r, "augment_r1"), c)
            penalty = r1_penalty(real_logits, real)
            (self.opts.r1_gamma / 2 * penalty * self.opts.r1_every / len(reals)).backward()
            self.report("r1", penalty)
            self._count_signs(real_logits)
        self._optimizer_step(self.D, self.opt_D, None)

    def g_fake(self, r: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Micro-batch ``r`` of the G step's fakes and their labels, with G's graph (updates w_avg; the
        callers switch G's gradients on)."""
        z, g = self._latents(r, "g_latent")
        c = self.fake_labels(r, "g_latent")
        with self._autocast():
            return self.G_fwd(self._mapping(z, g, update_w_avg=True, c=c)), c

    def g_fakes(self) -> Fakes:
        """Every micro-batch's ``g_fake``, drawn before the D step (``train.reuse_fakes``)."""
        self.G.requires_grad_(True)
        return [self.g_fake(r) for r in range(self.rounds)]

    def g_step(self, fakes: Fakes | None = None) -> None:
        """Non-saturating G loss on fresh fakes (drawn one micro-batch at a time), or on ``fakes``."""
        self.G.requires_grad_(True)
        self._d_requires_grad(False)
        for r in range(self.rounds):
            fake, c = self.g_fake(r) if fakes is None else fakes[r]
            with self._autocast():
                loss = g_nonsaturating_loss(self._d(self._augmented(fake, r, "augment_g"), c))
            (loss / self.rounds).backward()
            self.report("g_loss", loss)
        self._optimizer_step(self.G, self.opt_G, self.opts.g_clip_grad)
        self._d_requires_grad(True)

    # ------------------------------------------------------------------------------------ the parts

    def _d_requires_grad(self, on: bool) -> None:
        """Switch D's gradients on or off; its frozen blocks (``train.freeze_d``) stay off."""
        for p in self.d_trainable:
            p.requires_grad_(on)

    def _latents(self, r: int, purpose: str) -> tuple[torch.Tensor, torch.Generator]:
        g = self.random(self.index, r, purpose)
        z = to_device(torch.randn(self.batch_gpu, self.G.z_dim, generator=g), self.device)
        return z, g

    def _mapping(
        self, z: torch.Tensor, g: torch.Generator, update_w_avg: bool, c: torch.Tensor | None = None
    ) -> torch.Tensor:
        """z (and c) -> per-layer ws, with style mixing (one random cut-off per batch, the same labels) at
        ``train.style_mixing``."""
        ws = self.G.mapping(z, c, update_w_avg=update_w_avg, w_avg_beta=self.opts.w_avg_beta)
        if self.opts.style_mixing > 0:
            cutoff = int(torch.randint(1, ws.shape[1], (), generator=g))
            mix = float(torch.rand((), generator=g)) < self.opts.style_mixing
            z2 = to_device(torch.randn(z.shape, generator=g), z.device)
            if mix:
                ws2 = self.G.mapping(z2, c)
                ws = torch.cat([ws[:, :cutoff], ws2[:, cutoff:]], dim=1)
        return ws

    def _d(self, images: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """D's logits (``D_fwd``: the eager D, so R1's double backward works too), with the labels when
        conditional (an unconditional D is called as before)."""
        return self.D_fwd(images) if c is None else self.D_fwd(images, c)

    # ------------------------------------------------------------------------------------ labels

    def set_label_pool(self, labels) -> None:
        """The class of every data set item: fakes' labels are drawn from it (StyleGAN2-ADA draws the
        label of a random data set item), so G learns the classes in the data's proportions."""
        pool = torch.as_tensor(labels, dtype=torch.int64).flatten()
        if self.c_dim and (pool.numel() == 0 or pool.min() < 0 or pool.max() >= self.c_dim):
            raise ValueError(
                f"label pool: expected class indices in [0, {self.c_dim}), got {pool.unique().tolist()}"
            )
        self.label_pool = pool

    def fake_labels(self, r: int, purpose: str) -> torch.Tensor | None:
        """One-hot labels of a micro-batch of fakes (None when unconditional: nothing is drawn)."""
        if not self.c_dim:
            return None
        g = self.random(self.index, r, f"{purpose}_labels")
        picks = self.label_pool[torch.randint(len(self.label_pool), (self.batch_gpu,), generator=g)]
        return to_device(F.one_hot(picks, self.c_dim).float(), self.device)

    def real_labels(self, labels: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
        """The reals' class indices as one-hot [B, c_dim] on the device (None when unconditional)."""
        if not self.c_dim:
            return None
        if labels is None:
            raise ValueError(f"a class-conditional step (c_dim={self.c_dim}) needs the reals' labels")
        return [
            to_device(F.one_hot(torch.as_tensor(l).long().cpu(), self.c_dim).float(), self.device)
            for l in labels
        ]

    def _augmented(self, images: torch.Tensor, r: int, purpose: str) -> torch.Tensor:
        """``images`` as D sees them: through ``train.augment`` (ADA / DiffAugment), differentiably."""
        if self.augment is None:
            return images
        return self.augment(images, self.random(self.index, r, purpose))

    def _count_signs(self, real_logits: torch.Tensor) -> torch.Tensor:
        """ADA's r_t counts sign(D(real)) of the D step and of R1 alike (both are real logits there);
        returns this batch's mean sign."""
        signs = real_logits.detach().float().sign()
        self.ada_sums[0] += signs.sum()
        self.ada_sums[1] += signs.numel()
        return signs.mean()

    def _autocast(self):
        return autocast(self.device, torch.bfloat16 if self.opts.amp == "bf16" else torch.float32)

    @contextlib.contextmanager
    def _fakes_precision(self):
        """The precision of the D step's no-grad fakes: with amp=bf16 on the CPU, G's own bf16 compute
        dtype (its fused inference path, bf16 products on weights cast once per step; autocast would
        switch that path off), else the step's autocast."""
        if self.opts.amp != "bf16" or self.device.type != "cpu":
            with self._autocast():
                yield
            return
        self.G.set_compute_dtype(torch.bfloat16)
        try:
            yield
        finally:
            self.G.set_compute_dtype(torch.float32)

    def _optimizer_step(self, module: nn.Module, opt: torch.optim.Optimizer, clip: float | None) -> None:
        params = [p for p in module.parameters() if p.requires_grad]
        dist.all_reduce_grads(params)
        if clip is not None:
            nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------------------- between steps

    def set_learning_rates(self, lr: dict) -> None:
        for opt, key in ((self.opt_G, "g"), (self.opt_D, "d")):
            for group in opt.param_groups:
                group["lr"] = lr[key]

    def adjust_augment(self, index: int, world_size: int) -> None:
        """ADA: every ``ada_interval`` steps move p by the mean sign(D(real)) since the last move.

        Called before a step's rollback point is captured, so undoing a step never has to undo p; one
        host sync per interval.
        """
        if not isinstance(self.augment, AdaptiveAugment) or index % self.opts.ada_interval:
            return
        total, count = dist.all_reduce_mean(self.ada_sums).tolist()
        if count > 0:
            self.augment.adjust(total / count, images=round(count * world_size))
        self.ada_sums.zero_()

    def share_initial_weights(self) -> None:
        """A fresh run: every rank takes rank 0's weights, and G_ema starts as G."""
        dist.broadcast_module(self.G)
        dist.broadcast_module(self.D)
        self.G_ema.load_state_dict(self.G.state_dict())

    def state_dict(self) -> dict:
        augment = None
        if isinstance(self.augment, AdaptiveAugment):
            augment = {**self.augment.state_dict(), "sums": self.ada_sums.tolist()}
        return {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "augment": augment,
        }

    def load_state_dict(self, state: dict, source: str) -> None:
        """Networks, optimizers and ADA from a training state; ``source`` names it in errors."""
        from stylenat.snapshot import load_state_dict_strict

        load_state_dict_strict(self.G, state["G"], f"{source} (G)")
        load_state_dict_strict(self.D, state["D"], f"{source} (D)")
        load_state_dict_strict(self.G_ema, state["G_ema"], f"{source} (G_ema)")
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        if state.get("augment") is not None and isinstance(self.augment, AdaptiveAugment):
            self.augment.load_state_dict(state["augment"])
            self.ada_sums.copy_(torch.tensor(state["augment"]["sums"], dtype=torch.float64))
