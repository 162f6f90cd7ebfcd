"""The one sharded generate-and-extract loop every seeds -> images metric runs on, and its real side.

:func:`generated_features` splits seeds ``seed_start .. seed_start + num_gen - 1`` in contiguous slices
across ranks, extracts each batch's features and all_gathers them batch by batch
(:func:`stylenat.distributed.all_gather`); :func:`real_statistics` checks given statistics or computes (and
caches) them from the real data. The metrics themselves are small functions in
:mod:`stylenat.metrics.registry`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from stylenat.data.datasets import ImageDataset
from stylenat.distributed import all_gather
from stylenat.distributed import barrier as distributed_barrier
from stylenat.metrics.statistics import (
    FeatureAccumulator,
    FeatureStatistics,
    InceptionRate,
    check_statistics,
    compute_statistics,
    extract_features,
    reference_statistics,
)


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


def real_statistics(
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
    need_features,
) -> FeatureStatistics:
    """The real side of ``spec``: ``ref_stats`` checked against the protocol, the weights and the spec, or
    statistics of ``real_data`` (rank 0 computes and caches first); ``need_features`` keeps the features."""
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
            distributed_barrier()  # rank 0 computes and caches first; the others then read the cache
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
                distributed_barrier()  # also on failure, so the other ranks fail the same way
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


def feature_network(spec, extractor, vgg16_weights, device):
    """The network ``spec`` measures with: ``extractor`` when it is that network, else VGG16 loaded here
    (from ``vgg16_weights``, env ``STYLENAT_VGG16`` or the cache root) so one call can mix FID and pr50k3_full."""
    given = getattr(extractor, "feature_network", "inception") if extractor is not None else None
    if given == spec.network:
        return extractor
    if spec.network == "vgg16":
        from stylenat.metrics.vgg16 import load_vgg16

        return load_vgg16(vgg16_weights, device=device if device is not None else "cpu")
    raise ValueError(f"{spec.name} measures {spec.network} features, extractor is {given or 'missing'}")


def generated_features(
    name: str,
    generator_fn: Callable[[torch.Tensor], torch.Tensor],
    extractor,
    proto,
    *,
    num_gen: int,
    batch_size: int,
    device,
    seed_start: int,
    keep_features: bool,
    progress: bool,
    rank: int,
    world_size: int,
    distributed: bool,
) -> tuple[FeatureAccumulator, np.ndarray | None]:
    """Features of ``num_gen`` generated images over every rank: their running statistics and (with
    ``keep_features``) the features themselves in seed order, whatever the ranks' interleaving."""
    per_rank = math.ceil(num_gen / world_size)
    first = rank * per_rank  # index of this rank's first seed; slices past num_gen are padding
    acc = FeatureAccumulator()
    kept: list[tuple[np.ndarray, np.ndarray]] = []
    rate = InceptionRate()
    with tqdm(
        total=num_gen,
        desc=f"{name} generated",
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
            parts = all_gather(feats) if distributed else [feats]
            for r, part in enumerate(parts):
                src = r if distributed else rank
                idx = np.arange(src * per_rank + offset, src * per_rank + offset + count)
                valid = idx < num_gen
                if not valid.any():
                    continue
                part = part.numpy()[valid]
                acc.update(part)
                if keep_features:
                    kept.append((idx[valid], part))
                bar.update(int(valid.sum()))
    if acc.count != num_gen:
        raise RuntimeError(f"internal error: gathered {acc.count} generated features, expected {num_gen}")
    if not kept:
        return acc, None
    order = np.argsort(np.concatenate([i for i, _ in kept]), kind="stable")
    return acc, np.concatenate([f for _, f in kept])[order]
