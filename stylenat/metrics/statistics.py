"""Feature statistics (mu, sigma): accumulation, ``.npz`` files with provenance, a cache, checks.

A statistics file is an ``.npz`` with ``mu`` and ``sigma`` (what pytorch-fid, clean-fid and TTUR read)
plus metadata: ``protocol``, ``num_images``, ``weights_sha256``, ``weights_digest``,
``data_fingerprint``, ``cov_ddof``, ``subset``, ``seed``, ``version`` and optionally ``features``
(float32, for KID). Files with only ``mu``/``sigma`` load with protocol and weights "unknown" (and a
warning); :func:`check_statistics` then refuses them unless ``allow_mismatch=True``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from stylenat.data.datasets import ImageDataset
from stylenat.data.reader import build_dataset, uint8_batches
from stylenat.files import atomic_write, cache_root
from stylenat.metrics.protocols import get_protocol
from stylenat.ops.precision import full_fp32

logger = logging.getLogger(__name__)

STATS_VERSION = 1
UNKNOWN = "unknown"
_META_STR = ("protocol", "weights_sha256", "weights_digest", "data_fingerprint", "subset", "mismatch")
_META_INT = ("num_images", "cov_ddof", "seed", "version")


class StatisticsMismatchError(ValueError):
    """Reference statistics computed under another protocol or with other Inception weights."""


@dataclass
class FeatureStatistics:
    mu: np.ndarray
    sigma: np.ndarray
    num_images: int
    protocol: str
    weights_sha256: str
    weights_digest: str = ""
    data_fingerprint: str = ""
    cov_ddof: int = 1
    subset: str = ""
    seed: int = 0
    version: int = STATS_VERSION
    features: np.ndarray | None = field(default=None, repr=False)
    mismatch: str = ""  # set when used despite a protocol / weights mismatch (allow_mismatch=True)

    def metadata(self) -> dict:
        return {k: getattr(self, k) for k in _META_STR + _META_INT}

    def save(self, path: str | os.PathLike) -> Path:
        arrays = {"mu": np.asarray(self.mu, np.float64), "sigma": np.asarray(self.sigma, np.float64)}
        arrays.update({k: np.array(str(getattr(self, k))) for k in _META_STR})
        arrays.update({k: np.array(int(getattr(self, k)), dtype=np.int64) for k in _META_INT})
        if self.features is not None:
            arrays["features"] = np.asarray(self.features, np.float32)
        return atomic_write(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStatistics:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"statistics file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as f:
                data = {k: f[k] for k in f.files}
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read statistics file {path}: {exc}") from exc
        if "mu" not in data or "sigma" not in data:
            raise ValueError(f"{path} has no 'mu'/'sigma' arrays (keys: {sorted(data)})")
        mu = np.asarray(data["mu"], np.float64)
        sigma = np.asarray(data["sigma"], np.float64)
        if "protocol" not in data:
            warnings.warn(
                f"{path} holds only mu/sigma (pytorch-fid / clean-fid style): protocol and Inception "
                "weights are unknown, so it is refused unless allow_mismatch=True",
                UserWarning,
                stacklevel=2,
            )
            return cls(mu=mu, sigma=sigma, num_images=0, protocol=UNKNOWN, weights_sha256=UNKNOWN, version=0)
        kwargs = {k: str(data[k]) for k in _META_STR if k in data}
        kwargs.update({k: int(data[k]) for k in _META_INT if k in data})
        if "features" in data:
            kwargs["features"] = data["features"]
        return cls(mu=mu, sigma=sigma, **kwargs)


class FeatureAccumulator:
    """Running mean and scatter matrix in float64 (Chan et al.'s pairwise update, numerically stable)."""

    def __init__(self, keep_features: bool = False):
        self.count = 0
        self.mean: np.ndarray | None = None
        self.scatter: np.ndarray | None = None
        self.keep_features = keep_features
        self._features: list[np.ndarray] = []

    def update(self, features) -> None:
        if isinstance(features, torch.Tensor):
            features = features.detach().to("cpu", torch.float32).numpy()
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"features must be [N, D], got shape {x.shape}")
        if len(x) == 0:
            return
        if self.keep_features:
            self._features.append(x.astype(np.float32))
        nb, mb = len(x), x.mean(0)
        # The [D, D] float64 products in place through torch (MKL): numpy's matmul and its [D, D]
        # temporaries took ~100 ms per batch for D = 2048 here, torch's addmm_ / addr_ ~15 ms.
        xc = torch.from_numpy(x - mb)
        if self.count == 0:
            self.count, self.mean, self.scatter = nb, mb, (xc.T @ xc).numpy()
            return
        if mb.shape != self.mean.shape:
            raise ValueError(f"feature dimension changed from {self.mean.shape[0]} to {mb.shape[0]}")
        n = self.count + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        scatter, d = torch.from_numpy(self.scatter), torch.from_numpy(delta)
        scatter.addmm_(xc.T, xc).addr_(d, d, alpha=self.count * nb / n)  # += scatter of x, + Chan's term
        self.count = n

    def mean_cov(self, ddof: int) -> tuple[np.ndarray, np.ndarray]:
        if self.count - ddof <= 0:
            raise ValueError(f"need more than {ddof} feature vectors for a covariance, got {self.count}")
        return self.mean.copy(), self.scatter / (self.count - ddof)

    def features(self) -> np.ndarray | None:
        if not self.keep_features:
            return None
        return np.concatenate(self._features) if self._features else np.zeros((0, 0), np.float32)


def _extractor_device(extractor) -> torch.device:
    if isinstance(extractor, torch.nn.Module):
        for t in extractor.buffers():
            return t.device
        for t in extractor.parameters():
            return t.device
    return torch.device("cpu")


@torch.inference_mode()
def extract_features(extractor, images: torch.Tensor, protocol: str, device=None) -> torch.Tensor:
    """Features [N, D] (float32, on the CPU) of a uint8 image batch under ``protocol``."""
    device = torch.device(device) if device is not None else _extractor_device(extractor)
    feats = extractor(images.to(device), protocol=get_protocol(protocol).name)
    return feats.detach().to("cpu", torch.float32)


class InceptionRate:
    """Images per second inside feature extraction alone (resize + network), for progress-bar postfixes."""

    def __init__(self):
        self.images = 0
        self.seconds = 0.0

    @contextmanager
    def timing(self, images: int):
        start = time.perf_counter()
        yield
        self.seconds += time.perf_counter() - start
        self.images += images

    def text(self) -> str:
        return f"inception {self.images / self.seconds:.2f} img/s" if self.seconds > 0 else ""


@full_fp32()
def compute_statistics(
    image_batches: Iterable[torch.Tensor],
    protocol: str,
    extractor,
    *,
    device=None,
    total: int | None = None,
    data_fingerprint: str = "",
    keep_features: bool = False,
    subset: str = "",
    seed: int = 0,
    progress: bool = True,
    desc: str = "inception features",
) -> FeatureStatistics:
    """Statistics of the features of ``image_batches`` (uint8 NCHW tensors) under ``protocol`` (TF32 off)."""
    proto = get_protocol(protocol)
    acc = FeatureAccumulator(keep_features=keep_features)
    rate = InceptionRate()
    # smoothing=0: the bar shows the average img/s since the start, like the postfix (not the last batches')
    with tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False, smoothing=0) as bar:
        for batch in image_batches:  # the bar's rate: the whole pipeline (decode included) in img/s
            with rate.timing(int(batch.shape[0])):
                feats = extract_features(extractor, batch, proto.name, device)
            acc.update(feats)
            bar.set_postfix_str(rate.text(), refresh=False)
            bar.update(int(batch.shape[0]))
    if acc.count == 0:
        raise ValueError("no images to compute statistics of (empty input)")
    mu, sigma = acc.mean_cov(proto.cov_ddof)
    return FeatureStatistics(
        mu=mu,
        sigma=sigma,
        num_images=acc.count,
        protocol=proto.name,
        weights_sha256=getattr(extractor, "weights_sha256", "") or UNKNOWN,
        weights_digest=getattr(extractor, "weights_digest", ""),
        data_fingerprint=data_fingerprint,
        cov_ddof=proto.cov_ddof,
        subset=subset,
        seed=seed,
        features=acc.features(),
    )


def stats_cache_dir() -> Path:
    return cache_root() / "stats"


def stats_cache_key(
    data_fingerprint: str,
    protocol: str,
    weights_sha256: str,
    count: int | None,
    seed: int,
    subset: str = "first",
    keep_features: bool = False,
) -> str:
    payload = {
        "data": data_fingerprint,
        "protocol": protocol,
        "weights": weights_sha256,
        "count": count,
        "seed": seed if count is not None and subset == "random" else 0,
        "subset": subset if count is not None else "all",
        "features": bool(keep_features),
        "version": STATS_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def open_real_images(data: str | os.PathLike | ImageDataset, resolution: int | None = None) -> ImageDataset:
    """Real images through the data package's reader (the same files training reads), as stored unless
    ``resolution`` is given (it also picks one of an LMDB's several stored resolutions)."""
    return data if isinstance(data, ImageDataset) else build_dataset(data, resolution, normalize=None)


def select_indices(num_available: int, count: int | None, subset: str = "first", seed: int = 0) -> np.ndarray:
    """Which real images to use: all (``count`` None), the first ``count``, or a seeded random ``count``.

    Asking for more images than there are is an error (the reference statistics would silently differ).
    """
    if count is None:
        return np.arange(num_available)
    if count < 1:
        raise ValueError(f"number of real images must be >= 1, got {count}")
    if count > num_available:
        raise ValueError(f"requested {count} real images but the data set has only {num_available}")
    if subset == "first":
        return np.arange(count)
    if subset == "random":
        return np.sort(np.random.RandomState(seed).choice(num_available, count, replace=False))
    raise ValueError(f"unknown real subset {subset!r}; known: first, random")


def reference_statistics(
    data: str | os.PathLike | ImageDataset,
    protocol: str,
    extractor,
    *,
    max_images: int | None = None,
    subset: str = "first",
    seed: int = 0,
    batch_size: int = 32,
    device=None,
    keep_features: bool = False,
    use_cache: bool = True,
    progress: bool = True,
    resolution: int | None = None,
) -> FeatureStatistics:
    """Statistics of real images (a folder, zip or LMDB, see :func:`open_real_images`), cached under
    ``$STYLENAT_CACHE/stats``.

    ``max_images`` None uses every image; otherwise exactly that many (the first ones, or a random subset
    drawn with ``seed``); asking for more than there are raises.
    """
    files = open_real_images(data, resolution)
    proto = get_protocol(protocol)
    indices = select_indices(len(files), max_images, subset, seed)
    fingerprint = files.fingerprint
    weights = getattr(extractor, "weights_sha256", "") or UNKNOWN
    key = stats_cache_key(fingerprint, proto.name, weights, max_images, seed, subset, keep_features)
    cache_file = stats_cache_dir() / f"{key}.npz"
    if use_cache and cache_file.is_file():
        stats = FeatureStatistics.load(cache_file)
        if (
            stats.protocol == proto.name
            and stats.weights_sha256 == weights
            and stats.num_images == len(indices)
        ):
            logger.info("reference statistics from cache %s", cache_file)
            return stats
        logger.warning("ignoring stale statistics cache entry %s", cache_file)
    stats = compute_statistics(
        uint8_batches(files, batch_size, indices),
        proto.name,
        extractor,
        device=device,
        total=len(indices),
        data_fingerprint=fingerprint,
        keep_features=keep_features,
        subset=subset if max_images is not None else "all",
        seed=seed,
        progress=progress,
        desc=f"real images ({files.path.name})",
    )
    if use_cache:
        try:
            stats.save(cache_file)
        except OSError as exc:
            logger.warning("could not write statistics cache %s: %s", cache_file, exc)
    return stats


def check_statistics(
    stats: FeatureStatistics,
    protocol: str,
    weights_sha256: str,
    weights_digest: str = "",
    *,
    allow_mismatch: bool = False,
    origin: str = "reference statistics",
) -> FeatureStatistics:
    """Refuse statistics from another protocol or other Inception weights.

    Weights match when the file hashes match (and are known), or when both sides carry equal tensor
    digests (the same weights read from a different container). With ``allow_mismatch=True`` a mismatch warns loudly and
    is recorded in ``stats.mismatch`` instead.
    """
    protocol = get_protocol(protocol).name
    problems = []
    if stats.protocol != protocol:
        problems.append(f"protocol {stats.protocol!r} but {protocol!r} was requested")
    same_digest = bool(stats.weights_digest) and stats.weights_digest == weights_digest
    same_file = stats.weights_sha256 == weights_sha256 and weights_sha256 not in ("", UNKNOWN)
    if not (same_file or same_digest):
        problems.append(
            f"Inception weights sha256 {stats.weights_sha256[:16]!r} but {weights_sha256[:16]!r} is loaded"
        )
    if not problems:
        return stats
    msg = f"{origin} were computed with " + " and ".join(problems)
    if not allow_mismatch:
        raise StatisticsMismatchError(msg + "; recompute them or pass allow_mismatch=True")
    warnings.warn(
        f"USING MISMATCHED STATISTICS: {msg}; the metric is not comparable", UserWarning, stacklevel=2
    )
    logger.warning("USING MISMATCHED STATISTICS: %s", msg)
    stats.mismatch = msg
    return stats
