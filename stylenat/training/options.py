"""The validated, typed view of the ``train`` config group (keys are documented in configs/train/ffhq256.yaml).

Validation happens once, before anything is built or written, so a bad value fails in one line that
names it instead of deep inside the loop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from stylenat.ops.checks import is_int, is_number
from stylenat.training.augment import ADA_OPS, AUGMENT_MODES, AUGMENT_OPS, check_ops

AMP_MODES = (False, "bf16")
AUTO = "auto"
# train.augment=auto turns ADA on for data sets with fewer images than this (x-flips not counted): the
# ADA paper's FFHQ subsets gained from ADA up to 70k images and much more below ~30k; above ~50k bCR
# alone (the paper recipe) is the safer default for the transformer G.
ADA_AUTO_BELOW_IMAGES = 50_000
AUTO_KEYS = ("r1_gamma", "augment", "ada_kimg")  # train keys that accept `auto`, resolved by resolve_auto
# train.ada_kimg=auto: StyleGAN2-ADA's rule, 100 kimg when the run starts from pretrained weights (init=...,
# its --resume), else its default 500.
ADA_KIMG_FINE_TUNE, ADA_KIMG_DEFAULT = 100, 500


def auto_r1_gamma(resolution: int, batch: int) -> float:
    """StyleGAN2-ADA's heuristic R1 weight: 0.0002 x resolution^2 / batch (e.g. 0.013 at 32^2, batch 16)."""
    return 0.0002 * resolution**2 / batch


@dataclass(frozen=True)
class TrainOptions:
    """One field per ``train.*`` key."""

    total_kimg: float
    batch: int
    batch_per_gpu: int | None
    d_lr: float
    g_lr: float | None
    ttur_ratio: float
    betas: tuple
    adam_eps: float
    lr_decay_start_kimg: float | None
    lr_decay_end_kimg: float | None
    d_lr_decay_uncorrected: bool
    r1_gamma: float
    r1_every: int
    bcr_real: float
    bcr_fake: float
    bcr_augment: tuple
    augment: str
    augment_p: float
    ada_target: float
    ada_interval: int
    ada_kimg: float | None
    ada_ops: tuple
    diffaugment_ops: tuple
    freeze_d: int
    d_clip_grad: float | None
    g_clip_grad: float | None
    style_mixing: float
    reuse_fakes: bool
    w_avg_beta: float
    ema_decay: float | None
    ema_halflife_kimg: float | None
    amp: str | bool
    tf32: bool
    compile: bool
    checkpoint_blocks: bool
    workers: int
    log_every_kimg: float | None
    image_every_kimg: float | None
    snapshot_every_kimg: float | None
    state_every_kimg: float | None
    keep_states: int | None
    sample_grid: tuple
    metrics: tuple
    metric_every_kimg: float | None
    sync_check: bool
    nonfinite: str
    nonfinite_max_rollbacks: int

    @classmethod
    def from_dict(cls, cfg: Mapping) -> TrainOptions:
        """Build from a plain mapping; unknown or missing keys are errors naming the key."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(cfg) - set(known))
        if unknown:
            raise ValueError(f"unknown key train.{unknown[0]} (known: {', '.join(known)})")
        missing = [k for k in known if k not in cfg]
        if missing:
            raise ValueError(f"missing key train.{missing[0]}")
        values = dict(cfg)
        for key in ("betas", "bcr_augment", "ada_ops", "diffaugment_ops", "sample_grid", "metrics"):
            v = values[key]
            if v is not None and (isinstance(v, (str, bytes, Mapping)) or not hasattr(v, "__iter__")):
                raise ValueError(f"train.{key}={v!r}: expected a list")
            values[key] = tuple(v or ())
        opts = cls(**values)
        opts.validate()
        return opts

    def validate(self) -> None:
        """Range checks; each error names the key and its value."""

        def need(ok: bool, key: str, what: str) -> None:
            if not ok:
                raise ValueError(f"train.{key}={getattr(self, key)!r}: {what}")

        def number(key: str, lo: float = 0.0, allow_none: bool = False, strict: bool = False) -> None:
            v = getattr(self, key)
            if v is None and allow_none:
                return
            ok = is_number(v) and (v > lo if strict else v >= lo)
            need(
                ok,
                key,
                f"expected a number {'>' if strict else '>='} {lo}" + (" or null" if allow_none else ""),
            )

        def integer(key: str, lo: int, allow_none: bool = False) -> None:
            v = getattr(self, key)
            if v is None and allow_none:
                return
            need(
                is_int(v) and v >= lo,
                key,
                f"expected an integer >= {lo}",
            )

        number("total_kimg", strict=True)
        integer("batch", 1)
        integer("batch_per_gpu", 1, allow_none=True)
        number("d_lr", strict=True)
        number("g_lr", strict=True, allow_none=True)
        number("ttur_ratio", strict=True)
        need(
            len(self.betas) == 2 and all(is_number(b) and 0.0 <= b < 1.0 for b in self.betas),
            "betas",
            "expected [beta1, beta2] in [0, 1)",
        )
        number("adam_eps", strict=True)
        number("lr_decay_start_kimg", allow_none=True)
        number("lr_decay_end_kimg", allow_none=True)
        if self.lr_decay_start_kimg is not None or self.lr_decay_end_kimg is not None:
            need(
                self.lr_decay_start_kimg is not None
                and self.lr_decay_end_kimg is not None
                and self.lr_decay_end_kimg > self.lr_decay_start_kimg,
                "lr_decay_end_kimg",
                f"must be above train.lr_decay_start_kimg={self.lr_decay_start_kimg!r} (or both null)",
            )
        need(
            isinstance(self.d_lr_decay_uncorrected, bool), "d_lr_decay_uncorrected", "expected true or false"
        )
        if self.r1_gamma != AUTO:
            number("r1_gamma")
        integer("r1_every", 1)
        number("bcr_real")
        number("bcr_fake")
        unknown_ops = [o for o in self.bcr_augment if o not in AUGMENT_OPS]
        need(
            not unknown_ops,
            "bcr_augment",
            f"unknown op {unknown_ops[:1]}; expected a subset of {list(AUGMENT_OPS)}",
        )
        check_ops(self.bcr_augment)
        need(
            self.augment in (*AUGMENT_MODES, AUTO),
            "augment",
            f"expected one of {', '.join((*AUGMENT_MODES, AUTO))}",
        )
        need(
            is_number(self.augment_p) and 0.0 <= self.augment_p <= 1.0,
            "augment_p",
            "expected a probability in [0, 1]",
        )
        need(
            is_number(self.ada_target) and 0.0 <= self.ada_target <= 1.0,
            "ada_target",
            "expected a value in [0, 1]",
        )
        integer("ada_interval", 1)
        if self.ada_kimg != AUTO:
            number("ada_kimg", strict=True, allow_none=True)
        integer("freeze_d", 0)
        unknown_ada = [o for o in self.ada_ops if o not in ADA_OPS]
        need(
            not unknown_ada, "ada_ops", f"unknown op {unknown_ada[:1]}; expected a subset of {list(ADA_OPS)}"
        )
        unknown_diff = [o for o in self.diffaugment_ops if o not in AUGMENT_OPS]
        need(
            not unknown_diff,
            "diffaugment_ops",
            f"unknown op {unknown_diff[:1]}; expected a subset of {list(AUGMENT_OPS)}",
        )
        number("d_clip_grad", strict=True, allow_none=True)
        number("g_clip_grad", strict=True, allow_none=True)
        need(
            is_number(self.style_mixing) and 0.0 <= self.style_mixing <= 1.0,
            "style_mixing",
            "expected a probability in [0, 1]",
        )
        need(
            is_number(self.w_avg_beta) and 0.0 <= self.w_avg_beta < 1.0,
            "w_avg_beta",
            "expected a value in [0, 1)",
        )
        number("ema_halflife_kimg", strict=True, allow_none=True)
        if self.ema_halflife_kimg is None:
            need(
                is_number(self.ema_decay) and 0.0 <= self.ema_decay < 1.0,
                "ema_decay",
                "expected a value in [0, 1) (or set train.ema_halflife_kimg)",
            )
        elif self.ema_decay is not None:
            number("ema_decay")
        need(self.amp in AMP_MODES, "amp", "expected false or bf16")
        need(isinstance(self.tf32, bool), "tf32", "expected true or false")
        need(isinstance(self.compile, bool), "compile", "expected true or false")
        need(isinstance(self.reuse_fakes, bool), "reuse_fakes", "expected true or false")
        need(isinstance(self.checkpoint_blocks, bool), "checkpoint_blocks", "expected true or false")
        integer("workers", 0)
        for key in (
            "log_every_kimg",
            "image_every_kimg",
            "snapshot_every_kimg",
            "state_every_kimg",
            "metric_every_kimg",
        ):
            number(key, allow_none=True)
        integer("keep_states", 1, allow_none=True)
        need(
            len(self.sample_grid) == 2 and all(is_int(v) and v >= 1 for v in self.sample_grid),
            "sample_grid",
            "expected [columns, rows] of positive integers",
        )
        need(isinstance(self.sync_check, bool), "sync_check", "expected true or false")
        from stylenat.training.guard import NONFINITE_ACTIONS

        need(
            self.nonfinite in NONFINITE_ACTIONS,
            "nonfinite",
            f"expected one of {', '.join(NONFINITE_ACTIONS)}",
        )
        integer("nonfinite_max_rollbacks", 0)
        if self.metrics:
            from stylenat.metrics import available_metrics

            unknown = [m for m in self.metrics if not isinstance(m, str) or m not in available_metrics()]
            need(
                not unknown,
                "metrics",
                f"unknown metric {unknown[:1]}; known: {', '.join(available_metrics())}",
            )

    # ------------------------------------------------------------------ derived quantities

    def resolve_auto(self, resolution: int, num_images: int | None, fine_tune: bool = False) -> TrainOptions:
        """These options with ``auto`` values replaced: ``r1_gamma`` from the resolution and batch
        (``auto_r1_gamma``), ``augment`` from the data set's size (ADA below ``ADA_AUTO_BELOW_IMAGES``
        images; none when the size is unknown), ``ada_kimg`` from whether the run starts from pretrained
        weights (``fine_tune``: ``init`` is set)."""
        changes = {}
        if self.ada_kimg == AUTO:
            changes["ada_kimg"] = ADA_KIMG_FINE_TUNE if fine_tune else ADA_KIMG_DEFAULT
        if self.r1_gamma == AUTO:
            changes["r1_gamma"] = auto_r1_gamma(resolution, self.batch)
        if self.augment == AUTO:
            small = num_images is not None and num_images < ADA_AUTO_BELOW_IMAGES
            changes["augment"] = "ada" if small else "none"
        return replace(self, **changes) if changes else self

    def per_gpu_batch(self, world_size: int) -> int:
        """Images per forward pass per process."""
        return self.batch_per_gpu if self.batch_per_gpu is not None else max(1, self.batch // world_size)

    def accumulation_rounds(self, world_size: int) -> int:
        """Micro-batches per optimizer step per process; the total batch must split evenly."""
        per_gpu = self.per_gpu_batch(world_size)
        if self.batch % (per_gpu * world_size):
            if self.batch_per_gpu is None:
                raise ValueError(
                    f"train.batch={self.batch} is not divisible by the world size {world_size} "
                    "(processes, env WORLD_SIZE)"
                )
            raise ValueError(
                f"train.batch={self.batch} is not a multiple of train.batch_per_gpu={per_gpu} x {world_size} process(es)"
            )
        return self.batch // (per_gpu * world_size)

    @property
    def lazy_r1_ratio(self) -> float:
        """c = r1_every / (r1_every + 1): the lazy-regularisation correction of D's lr and betas."""
        return self.r1_every / (self.r1_every + 1) if self.r1_gamma != 0 else 1.0

    @property
    def generator_lr(self) -> float:
        """G lr: explicit, or D lr x ttur_ratio (TTUR)."""
        return self.g_lr if self.g_lr is not None else self.d_lr * self.ttur_ratio

    def lr_factor(self, images_seen: int) -> float:
        """Schedule multiplier: 1 until lr_decay_start_kimg, then linear to 0 at lr_decay_end_kimg."""
        if self.lr_decay_start_kimg is None:
            return 1.0
        kimg = images_seen / 1000.0
        if kimg <= self.lr_decay_start_kimg:
            return 1.0
        span = self.lr_decay_end_kimg - self.lr_decay_start_kimg
        return max(0.0, (self.lr_decay_end_kimg - kimg) / span)

    def learning_rates(self, images_seen: int) -> dict:
        """{"g": G lr, "d": D lr} at a position: base lrs (D's x c for lazy R1) times the schedule factor.

        With ``d_lr_decay_uncorrected`` (the reference's behaviour) D's lr in the decay phase is
        ``d_lr x factor`` without c, i.e. exactly 4x G's under TTUR.
        """
        f = self.lr_factor(images_seen)
        d_base = self.d_lr if (f < 1.0 and self.d_lr_decay_uncorrected) else self.d_lr * self.lazy_r1_ratio
        return {"g": self.generator_lr * f, "d": d_base * f}

    @property
    def total_images(self) -> int:
        return int(round(self.total_kimg * 1000))

    def end_images(self, images_seen: int = 0) -> int:
        """Where a run from ``images_seen`` really stops: it takes whole steps of ``batch`` images until
        ``total_images`` is reached, so it ends at the first step boundary at or past it."""
        remaining = max(0, self.total_images - images_seen)
        return images_seen + math.ceil(remaining / self.batch) * self.batch
