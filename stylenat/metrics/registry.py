"""Named metrics and the one function that computes any of them for a generator: a table of specs, one
small function per kind (``fid``, ``kid``, ``pr``, registered in ``METRIC_KINDS`` by ``register_kind``) over
the one sharded generate-and-extract loop of :mod:`stylenat.metrics.loop`.

================  ====  =======  ===========  ===================================================
name              kind  num_gen  protocol     real images
================  ====  =======  ===========  ===================================================
fid50k_full       fid   50000    stylegan     all (StyleGAN2-ADA convention)
fid50k            fid   50000    pytorch_fid  seeded random 50000 (StyleNAT paper convention)
kid50k_full       kid   50000    stylegan     all; 100 subsets of <= 1000 (StyleGAN2-ADA)
fid10k            fid   10000    stylegan     all (quick check; shares fid50k_full's real stats)
fid1k             fid   1000     stylegan     all (quick check; shares fid50k_full's real stats)
fid500            fid   500      stylegan     all (the demo's curve: biased up by few samples, compare like with like)
pr50k3_full       pr    50000    stylegan     all; VGG16 fc2 features, k = 3 (StyleGAN2-ADA; it caps reals at 200k)
pr50k3_inception  pr    50000    stylegan     all; the Inception pool features instead (no VGG16 weights needed)
================  ====  =======  ===========  ===================================================

PPL (``ppl_zfull``, ``ppl_wfull``, ``ppl_zend``, ``ppl_wend``, ``ppl2_wend``) needs the generator itself, not
seeds -> images: :func:`stylenat.metrics.ppl.compute_ppl` (``get_metric`` knows the names). Every metric runs in
full fp32: TF32 off (``stylenat.ops.precision.full_fp32``), recorded as ``"tf32": false``.

A new kind is a spec's ``kind`` and a ``@register_kind`` function of the measured features (``Measured``)
returning the record's values. FID and KID measure with Inception; precision/recall (``pr``, :mod:`stylenat.metrics.precision_recall`) with
the network its spec names (``network``): a ``pr`` result's ``value`` is the precision, ``recall`` beside it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import numpy as np
import torch

from stylenat.data.datasets import ImageDataset
from stylenat.distributed import rank_world
from stylenat.metrics.fid import frechet_distance
from stylenat.metrics.kid import kernel_inception_distance
from stylenat.metrics.loop import feature_network, generated_features, real_statistics
from stylenat.metrics.ppl import PPL_METRICS
from stylenat.metrics.precision_recall import precision_recall
from stylenat.metrics.protocols import Protocol, get_protocol
from stylenat.metrics.records import append_jsonl  # noqa: F401  (re-exported: its old home)
from stylenat.metrics.statistics import FeatureAccumulator, FeatureStatistics
from stylenat.ops.precision import full_fp32

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # a key of METRIC_KINDS: "fid" | "kid" | "pr"
    num_gen: int
    protocol: str
    max_real: int | None = None  # None: every real image
    real_subset: str = "first"  # how max_real images are picked: "first" or "random" (seeded)
    num_subsets: int = 100  # KID only
    max_subset_size: int = 1000  # KID only
    k: int = 3  # precision/recall only: the neighbourhood size
    network: str = "inception"  # the feature network: "inception" or "vgg16"
    description: str = ""


METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in [
        MetricSpec(
            "fid50k_full", "fid", 50000, "stylegan", None, description="StyleGAN2-ADA: 50k gen vs all reals"
        ),
        MetricSpec(
            "fid50k",
            "fid",
            50000,
            "pytorch_fid",
            50000,
            "random",
            description="StyleNAT paper (pytorch-fid): 50k gen vs a seeded random 50k subset of reals",
        ),
        MetricSpec(
            "kid50k_full",
            "kid",
            50000,
            "stylegan",
            None,
            description="StyleGAN2-ADA KID: 50k gen vs all reals",
        ),
        MetricSpec("fid10k", "fid", 10000, "stylegan", None, description="quick check: 10k gen vs all reals"),
        MetricSpec("fid1k", "fid", 1000, "stylegan", None, description="quick check: 1k gen vs all reals"),
        MetricSpec(
            "fid500",
            "fid",
            500,
            "stylegan",
            None,
            description="small data sets and CPU runs (the demo): 500 gen vs all reals, under a minute at 32 px",
        ),
        MetricSpec(
            "pr50k3_full",
            "pr",
            50000,
            "stylegan",
            network="vgg16",
            description="StyleGAN2-ADA precision/recall: VGG16 fc2 features, k=3, 50k gen vs all reals",
        ),
        MetricSpec(
            "pr50k3_inception",
            "pr",
            50000,
            "stylegan",
            description="precision/recall on Inception pool features (offline): k=3, 50k gen vs all reals",
        ),
    ]
}


def available_metrics() -> list[str]:
    return list(METRICS)


def get_metric(name: str | MetricSpec):
    """A metric's spec by name: the table above, or a PPL (``stylenat.metrics.ppl``, kind "ppl")."""
    if isinstance(name, MetricSpec) or getattr(name, "kind", None) == "ppl":
        return name
    if name in METRICS or name in PPL_METRICS:
        return METRICS.get(name) or PPL_METRICS[name]
    raise ValueError(f"unknown metric {name!r}; known: {', '.join([*METRICS, *PPL_METRICS])}")


# ----------------------------------------------------------------------------------------------------------
# One small function per metric kind, registered like stylegan3's metric_main.py: each gets the measured
# features (real and generated) and returns the record's values (``value`` first).


@dataclass(frozen=True)
class Measured:
    """What a metric function sees: its spec, the protocol, both sides' features, and the knobs it needs."""

    spec: MetricSpec
    proto: Protocol
    real: FeatureStatistics
    gen: FeatureAccumulator
    gen_features: np.ndarray | None  # in seed order; only for kinds registered with features=True
    device: object = None
    kid_seed: int = 0


@dataclass(frozen=True)
class MetricKind:
    fn: Callable[[Measured], dict]
    features: bool  # needs the features themselves (not only their mean and covariance)
    outputs: tuple[str, ...] = ("value",)  # the keys it returns (NaN on ranks other than 0)


METRIC_KINDS: dict[str, MetricKind] = {}


def register_kind(kind: str, *, features: bool = False, outputs: tuple[str, ...] = ("value",)):
    def add(fn: Callable[[Measured], dict]):
        METRIC_KINDS[kind] = MetricKind(fn, features, outputs)
        return fn

    return add


@register_kind("fid")
def fid(m: Measured) -> dict:
    mu, sigma = m.gen.mean_cov(m.proto.cov_ddof)
    return {"value": frechet_distance(mu, sigma, m.real.mu, m.real.sigma)}


@register_kind("kid", features=True)
def kid(m: Measured) -> dict:
    subsets, size = m.spec.num_subsets, m.spec.max_subset_size
    return {
        "value": kernel_inception_distance(m.gen_features, m.real.features, subsets, size, seed=m.kid_seed)
    }


@register_kind("pr", features=True, outputs=("value", "precision", "recall"))
def pr(m: Measured) -> dict:
    precision, recall = precision_recall(m.real.features, m.gen_features, m.spec.k, device=m.device)
    return {"value": precision, "precision": precision, "recall": recall}


# ----------------------------------------------------------------------------------------------------------


@full_fp32()
def compute_metric(
    metric: str | MetricSpec,
    generator_fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    extractor=None,
    ref_stats: str | os.PathLike | FeatureStatistics | None = None,
    real_data: str | os.PathLike | ImageDataset | Iterable[torch.Tensor] | None = None,
    num_gen: int | None = None,
    batch_size: int = 32,
    device=None,
    seed_start: int = 0,
    real_seed: int = 0,
    kid_seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    allow_mismatch: bool = False,
    use_cache: bool = True,
    progress: bool = True,
    vgg16_weights: str | os.PathLike | None = None,
) -> dict:
    """Compute ``metric`` for ``generator_fn`` against real statistics.

    ``generator_fn(seeds)`` gets an int64 CPU tensor of seeds and returns images in [-1, 1], float
    [B, 3, H, W] (it must derive its latents from the seeds, so results are reproducible). Seeds
    ``seed_start .. seed_start + num_gen - 1`` are split in contiguous slices across ranks when
    torch.distributed is initialised; features are all_gathered batch by batch. The real side is either
    ``ref_stats`` (a statistics ``.npz`` or object, checked against the protocol and weights) or
    ``real_data`` (an image folder / zip / LMDB or an opened ``stylenat.data`` data set, read by the
    data package's reader as training reads it, statistics cached; or an iterable of uint8 NCHW batches).
    Returns a JSON-able dict (``value`` is NaN on ranks other than 0). ``extractor`` is the Inception
    network; a VGG16 metric loads VGG16 itself (``vgg16_weights``) unless ``extractor`` is one. Runs in
    full fp32 (TF32 off, restored after; the record's ``tf32``).
    """
    t0 = time.perf_counter()
    spec = get_metric(metric)
    if spec.kind == "ppl":
        raise ValueError(
            f"{spec.name} needs the generator itself: evaluate.py runs it (stylenat.metrics.compute_ppl)"
        )
    if spec.kind not in METRIC_KINDS:
        raise ValueError(f"unknown metric kind {spec.kind!r} in {spec.name}")
    kind, proto = METRIC_KINDS[spec.kind], get_protocol(spec.protocol)
    num_gen = spec.num_gen if num_gen is None else int(num_gen)
    if num_gen < 2:
        raise ValueError(f"num_gen must be >= 2, got {num_gen}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rank, world_size, distributed = rank_world(rank, world_size)
    extractor = feature_network(spec, extractor, vgg16_weights, device)
    shard = dict(progress=progress, rank=rank, distributed=distributed)
    real = real_statistics(
        spec, proto, extractor, ref_stats, real_data, batch_size=batch_size, device=device,
        real_seed=real_seed, allow_mismatch=allow_mismatch, use_cache=use_cache,
        need_features=kind.features, **shard,
    )  # fmt: skip
    t_real = time.perf_counter()
    gen, gen_features = generated_features(
        spec.name, generator_fn, extractor, proto, num_gen=num_gen, batch_size=batch_size, device=device,
        seed_start=seed_start, keep_features=kind.features, world_size=world_size, **shard,
    )  # fmt: skip
    t_gen = time.perf_counter()
    if rank == 0:
        values = kind.fn(Measured(spec, proto, real, gen, gen_features, device, kid_seed))
    else:
        values = dict.fromkeys(kind.outputs, float("nan"))
    t_end = time.perf_counter()
    times = {"time_s": t_end - t0, "time_real_s": t_real - t0, "time_gen_s": t_gen - t_real}
    record = _record(spec, proto, real, extractor, values, num_gen, seed_start, world_size, times)
    logger.info(
        "%s = %.4f (%s, %d gen vs %d real)", spec.name, values["value"], proto.name, num_gen, real.num_images
    )
    return record


def _record(spec, proto, real, extractor, values, num_gen, seed_start, world_size, times) -> dict:
    """The JSON-able record: what was measured, against what, with which weights, how long it took."""
    record = {
        "metric": spec.name,
        "kind": spec.kind,
        "value": values["value"],
        "protocol": proto.name,
        "num_gen": num_gen,
        "num_real": int(real.num_images),
        "real_subset": real.subset,
        "real_fingerprint": real.data_fingerprint,
        "weights_sha256": getattr(extractor, "weights_sha256", ""),
        "weights_digest": getattr(extractor, "weights_digest", ""),
        "seed_start": seed_start,
        "world_size": world_size,
        "tf32": False,
        **{key: round(seconds, 3) for key, seconds in times.items()},
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "spec": asdict(spec),
        "feature_network": spec.network,
    }
    record.update((key, v) for key, v in values.items() if key != "value")  # e.g. pr's precision, recall
    if spec.kind == "pr":
        record["k"] = spec.k
    if real.mismatch:
        record["mismatch"] = real.mismatch
    return record
