"""Named metrics and the one function that computes any of them for a generator.

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

FID and KID measure with Inception; precision/recall (``pr``, :mod:`stylenat.metrics.precision_recall`) with
the network its spec names (``network``): a ``pr`` result's ``value`` is the precision, ``recall`` beside it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import numpy as np
import torch
from tqdm.auto import tqdm

from stylenat.data.datasets import ImageDataset
from stylenat.metrics.fid import frechet_distance
from stylenat.metrics.kid import kernel_inception_distance
from stylenat.metrics.ppl import PPL_METRICS
from stylenat.metrics.precision_recall import precision_recall
from stylenat.metrics.protocols import get_protocol
from stylenat.metrics.records import append_jsonl  # noqa: F401  (re-exported: its old home)
from stylenat.metrics.statistics import (
    FeatureAccumulator,
    FeatureStatistics,
    InceptionRate,
    check_statistics,
    compute_statistics,
    extract_features,
    reference_statistics,
)
from stylenat.ops.precision import full_fp32

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # "fid" | "kid" | "pr"
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
# Distributed helpers (kept local and tiny: rank / world come from torch.distributed when initialised)


def _dist_context(rank: int | None, world_size: int | None) -> tuple[int, int, bool]:
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    if initialised:
        rank = torch.distributed.get_rank() if rank is None else rank
        world_size = torch.distributed.get_world_size() if world_size is None else world_size
    else:
        rank = 0 if rank is None else rank
        world_size = 1 if world_size is None else world_size
        if world_size != 1:
            raise ValueError(f"world_size={world_size} needs an initialised torch.distributed process group")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    return rank, world_size, initialised and world_size > 1


def _all_gather(t: torch.Tensor) -> list[torch.Tensor]:
    dist = torch.distributed
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else t.device
    t = t.to(device).contiguous()
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [o.cpu() for o in out]


# ----------------------------------------------------------------------------------------------------------


def _take(batches: Iterable[torch.Tensor], limit: int | None) -> Iterator[torch.Tensor]:
    seen = 0
    for b in batches:
        if limit is not None and seen + b.shape[0] > limit:
            b = b[: limit - seen]
        if b.shape[0]:
            yield b
        seen += b.shape[0]
        if limit is not None and seen >= limit:
            return


def _real_statistics(
    spec,
    proto,
    extractor,
    ref_stats,
    real_data,
    *,
    batch_size,
    device,
    real_seed,
    allow_mismatch,
    use_cache,
    progress,
    rank,
    distributed,
) -> FeatureStatistics:
    need_features = spec.kind in ("kid", "pr")
    sha = getattr(extractor, "weights_sha256", "")
    digest = getattr(extractor, "weights_digest", "")
    if (ref_stats is None) == (real_data is None):
        raise ValueError("compute_metric needs exactly one of ref_stats or real_data")
    if ref_stats is not None:
        origin = str(ref_stats) if not isinstance(ref_stats, FeatureStatistics) else "reference statistics"
        stats = ref_stats if isinstance(ref_stats, FeatureStatistics) else FeatureStatistics.load(ref_stats)
        stats = check_statistics(stats, proto.name, sha, digest, allow_mismatch=allow_mismatch, origin=origin)
        if spec.max_real is not None and stats.num_images and stats.num_images != spec.max_real:
            raise ValueError(
                f"{spec.name} needs statistics of {spec.max_real} real images, {origin} has {stats.num_images}"
            )
        if spec.max_real is None and stats.subset not in ("", "all"):
            raise ValueError(
                f"{spec.name} needs statistics of all real images, {origin} holds a {stats.subset!r} subset "
                f"of {stats.num_images}"
            )
        if need_features and stats.features is None:
            raise ValueError(
                f"{spec.name} needs real features; {origin} holds only mu/sigma (save with features)"
            )
        return stats
    if isinstance(real_data, (str, os.PathLike, ImageDataset)):
        leader_first = distributed and use_cache
        if leader_first and rank != 0:
            torch.distributed.barrier()  # rank 0 computes and caches first; the others then read the cache
        try:
            return reference_statistics(
                real_data,
                proto.name,
                extractor,
                max_images=spec.max_real,
                subset=spec.real_subset,
                seed=real_seed,
                batch_size=batch_size,
                device=device,
                keep_features=need_features,
                use_cache=use_cache,
                progress=progress and rank == 0,
            )
        finally:
            if leader_first and rank == 0:
                torch.distributed.barrier()  # also on failure, so the other ranks fail the same way
    stats = compute_statistics(
        _take(real_data, spec.max_real),
        proto.name,
        extractor,
        device=device,
        keep_features=need_features,
        progress=progress and rank == 0,
        desc="real images",
    )
    if spec.max_real is not None and stats.num_images < spec.max_real:
        raise ValueError(
            f"{spec.name} needs {spec.max_real} real images, the real data gave only {stats.num_images}"
        )
    return stats


def _feature_network(spec: MetricSpec, extractor, vgg16_weights, device):
    """The network ``spec`` measures with: ``extractor`` when it is that network, else VGG16 loaded here
    (from ``vgg16_weights``, env ``STYLENAT_VGG16`` or the cache root) so one call can mix FID and pr50k3_full."""
    given = getattr(extractor, "feature_network", "inception") if extractor is not None else None
    if given == spec.network:
        return extractor
    if spec.network == "vgg16":
        from stylenat.metrics.vgg16 import load_vgg16

        return load_vgg16(vgg16_weights, device=device if device is not None else "cpu")
    raise ValueError(f"{spec.name} measures {spec.network} features, extractor is {given or 'missing'}")


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
    proto = get_protocol(spec.protocol)
    num_gen = spec.num_gen if num_gen is None else int(num_gen)
    if num_gen < 2:
        raise ValueError(f"num_gen must be >= 2, got {num_gen}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rank, world_size, distributed = _dist_context(rank, world_size)
    extractor = _feature_network(spec, extractor, vgg16_weights, device)

    real = _real_statistics(
        spec,
        proto,
        extractor,
        ref_stats,
        real_data,
        batch_size=batch_size,
        device=device,
        real_seed=real_seed,
        allow_mismatch=allow_mismatch,
        use_cache=use_cache,
        progress=progress,
        rank=rank,
        distributed=distributed,
    )
    t_real = time.perf_counter()

    per_rank = math.ceil(num_gen / world_size)
    first = rank * per_rank  # index of this rank's first seed; slices past num_gen are padding
    acc = FeatureAccumulator()
    kept: list[tuple[np.ndarray, np.ndarray]] = []
    rate = InceptionRate()
    with tqdm(
        total=num_gen,
        desc=f"{spec.name} generated",
        unit="img",
        disable=not (progress and rank == 0),
        leave=False,
        smoothing=0,  # the average img/s since the start, like the postfix
    ) as bar:
        for offset in range(0, per_rank, batch_size):
            count = min(batch_size, per_rank - offset)
            seeds = torch.arange(
                seed_start + first + offset, seed_start + first + offset + count, dtype=torch.int64
            )
            with torch.no_grad():
                images = generator_fn(seeds)
            if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] != count:
                shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
                raise ValueError(
                    f"generator_fn returned {shape} for {count} seeds; expected [{count}, 3, H, W]"
                )
            with rate.timing(count):
                feats = extract_features(extractor, proto.from_generator(images), proto.name, device)
            bar.set_postfix_str(rate.text(), refresh=False)  # the bar's own rate includes generation
            parts = _all_gather(feats) if distributed else [feats]
            for r, part in enumerate(parts):
                src = r if distributed else rank
                idx = np.arange(src * per_rank + offset, src * per_rank + offset + count)
                valid = idx < num_gen
                if not valid.any():
                    continue
                part = part.numpy()[valid]
                acc.update(part)
                if spec.kind in ("kid", "pr"):
                    kept.append((idx[valid], part))
                bar.update(int(valid.sum()))
    if acc.count != num_gen:
        raise RuntimeError(f"internal error: gathered {acc.count} generated features, expected {num_gen}")
    t_gen = time.perf_counter()

    value = recall = float("nan")
    if rank == 0:
        if kept:  # in seed order, whatever the ranks' interleaving
            order = np.argsort(np.concatenate([i for i, _ in kept]), kind="stable")
            gen_feats = np.concatenate([f for _, f in kept])[order]
        if spec.kind == "fid":
            mu, sigma = acc.mean_cov(proto.cov_ddof)
            value = frechet_distance(mu, sigma, real.mu, real.sigma)
        elif spec.kind == "kid":
            value = kernel_inception_distance(
                gen_feats, real.features, spec.num_subsets, spec.max_subset_size, seed=kid_seed
            )
        elif spec.kind == "pr":
            value, recall = precision_recall(real.features, gen_feats, spec.k, device=device)
        else:
            raise ValueError(f"unknown metric kind {spec.kind!r} in {spec.name}")
    t_end = time.perf_counter()

    record = {
        "metric": spec.name,
        "kind": spec.kind,
        "value": value,
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
        "time_s": round(t_end - t0, 3),
        "time_real_s": round(t_real - t0, 3),
        "time_gen_s": round(t_gen - t_real, 3),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "spec": asdict(spec),
    }
    record["feature_network"] = spec.network
    if spec.kind == "pr":
        record.update(precision=value, recall=recall, k=spec.k)
    if real.mismatch:
        record["mismatch"] = real.mismatch
    logger.info("%s = %.4f (%s, %d gen vs %d real)", spec.name, value, proto.name, num_gen, real.num_images)
    return record
