"""Improved precision and recall (Kynkäänniemi et al. 2019), as StyleGAN2-ADA's ``metrics/precision_recall.py``.

Each sample of a set spans a ball reaching its k-th nearest neighbour in the same set (itself excluded); the
union of the balls is the set's manifold. Precision is the fraction of generated samples inside the real
manifold, recall the fraction of real samples inside the generated one.

Distances come in blocks of ``row_batch_size x col_batch_size`` (StyleGAN2-ADA's ``compute_distances``), so
50k x 50k samples of 4096-d features never need the whole distance matrix: the k-NN radii keep a running
top-k per row, membership a running "inside any ball" per probe. Squared distances are
``|a|^2 + |b|^2 - 2 a.b`` with the product a float32 matmul and the norms and the sum in float64, after
centring both sets on their joint mean (VGG16 features are post-ReLU, far from the origin, and the
cancellation would otherwise eat float32's digits). NVIDIA casts features to float16 and uses ``cdist``; the
difference only flips samples lying on a ball's surface.
"""

from __future__ import annotations

import numpy as np
import torch

ROW_BATCH_SIZE = 10000  # StyleGAN2-ADA's pr50k3_full
COL_BATCH_SIZE = 10000


def _as_tensor(x, name: str, device) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if t.ndim != 2:
        raise ValueError(f"{name} must be [N, D], got shape {tuple(t.shape)}")
    return t.to(device if device is not None else t.device)


class _Block:
    """One set's centred float32 features and their float64 squared norms."""

    def __init__(self, x: torch.Tensor, centre: torch.Tensor):
        centred = x.to(torch.float64) - centre
        self.x = centred.to(torch.float32)
        self.sq = centred.square().sum(dim=1)

    def __len__(self) -> int:
        return self.x.shape[0]


def _sq_distances(rows: _Block, r0: int, r1: int, cols: _Block, c0: int, c1: int) -> torch.Tensor:
    """Squared distances [r1 - r0, c1 - c0], float64, clamped at 0 (rounding can go below)."""
    d = (rows.x[r0:r1] @ cols.x[c0:c1].T).to(torch.float64).mul_(-2)  # in place: one float64 block at a time
    return d.add_(rows.sq[r0:r1, None]).add_(cols.sq[None, c0:c1]).clamp_min_(0)


def knn_radii(manifold: _Block, k: int, row_batch_size: int, col_batch_size: int) -> torch.Tensor:
    """Squared distance of every sample to its k-th nearest other sample in the same set, [N] float64."""
    n = len(manifold)
    radii = torch.empty(n, dtype=torch.float64, device=manifold.x.device)
    for r0 in range(0, n, row_batch_size):
        r1 = min(r0 + row_batch_size, n)
        rows = torch.arange(r0, r1, device=manifold.x.device)
        nearest = None  # the k smallest distances seen so far, per row
        for c0 in range(0, n, col_batch_size):
            c1 = min(c0 + col_batch_size, n)
            d = _sq_distances(manifold, r0, r1, manifold, c0, c1)
            own = (rows >= c0) & (rows < c1)  # rows whose own column lies in this block: excluded
            d[own.nonzero().squeeze(1), rows[own] - c0] = float("inf")
            block = d.topk(min(k, d.shape[1]), dim=1, largest=False).values
            both = block if nearest is None else torch.cat([nearest, block], dim=1)
            nearest = both.topk(min(k, both.shape[1]), dim=1, largest=False).values
        radii[r0:r1] = nearest.max(dim=1).values
    return radii


def inside_fraction(
    probes: _Block, manifold: _Block, radii: torch.Tensor, row_batch_size: int, col_batch_size: int
) -> float:
    """Fraction of probes within some manifold sample's k-NN ball (distance <= that sample's radius)."""
    inside = 0
    for r0 in range(0, len(probes), row_batch_size):
        r1 = min(r0 + row_batch_size, len(probes))
        hit = torch.zeros(r1 - r0, dtype=torch.bool, device=probes.x.device)
        for c0 in range(0, len(manifold), col_batch_size):
            c1 = min(c0 + col_batch_size, len(manifold))
            hit |= (_sq_distances(probes, r0, r1, manifold, c0, c1) <= radii[None, c0:c1]).any(dim=1)
        inside += int(hit.sum())
    return inside / len(probes)


def precision_recall(
    real_features,
    fake_features,
    k: int = 3,
    *,
    row_batch_size: int = ROW_BATCH_SIZE,
    col_batch_size: int = COL_BATCH_SIZE,
    device: str | torch.device | None = None,
) -> tuple[float, float]:
    """(precision, recall) of ``fake_features`` against ``real_features``: [N, D] numpy arrays or tensors.

    Computed on ``device``, else where the tensors are (the CPU for numpy arrays); ``k`` is the
    neighbourhood size (3 in StyleGAN2-ADA's ``pr50k3``).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if row_batch_size < 1 or col_batch_size < 1:
        raise ValueError(f"batch sizes must be >= 1, got {row_batch_size} and {col_batch_size}")
    real = _as_tensor(real_features, "real_features", device)
    fake = _as_tensor(fake_features, "fake_features", real.device)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: real {real.shape[1]}, fake {fake.shape[1]}")
    for name, t in (("real", real), ("fake", fake)):
        if t.shape[0] <= k:
            raise ValueError(f"k={k} needs more than {k} {name} samples, got {t.shape[0]}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} features hold NaN or inf")
    centre = torch.cat([real, fake]).to(torch.float64).mean(dim=0)
    real_block, fake_block = _Block(real, centre), _Block(fake, centre)
    sizes = (row_batch_size, col_batch_size)
    with torch.no_grad():
        real_radii = knn_radii(real_block, k, *sizes)
        precision = inside_fraction(fake_block, real_block, real_radii, *sizes)
        fake_radii = knn_radii(fake_block, k, *sizes)
        recall = inside_fraction(real_block, fake_block, fake_radii, *sizes)
    return precision, recall
