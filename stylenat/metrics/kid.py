"""Kernel Inception Distance, as StyleGAN2-ADA's ``metrics/kernel_inception_distance.py``.

Unbiased MMD^2 with the polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over ``num_subsets``
random subsets of ``m = min(n_gen, n_real, max_subset_size)`` samples from each side (drawn without
replacement, generated first then real, from a seeded ``np.random.RandomState``). Computed in float64
(NVIDIA works in float32; the difference is far below the metric's noise).
"""

from __future__ import annotations

import numpy as np


def kernel_inception_distance(
    gen_features,
    real_features,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int = 0,
) -> float:
    x_all = np.asarray(gen_features, dtype=np.float64)
    y_all = np.asarray(real_features, dtype=np.float64)
    if x_all.ndim != 2 or y_all.ndim != 2 or x_all.shape[1] != y_all.shape[1]:
        raise ValueError(
            f"expected feature matrices [N, D] with equal D, got {x_all.shape} and {y_all.shape}"
        )
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    n = x_all.shape[1]
    m = min(x_all.shape[0], y_all.shape[0], max_subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per side, got {x_all.shape[0]} and {y_all.shape[0]}")
    rng = np.random.RandomState(seed)
    t = 0.0
    for _ in range(num_subsets):
        x = x_all[rng.choice(x_all.shape[0], m, replace=False)]
        y = y_all[rng.choice(y_all.shape[0], m, replace=False)]
        a = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3
        b = (x @ y.T / n + 1) ** 3
        t += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
    return float(t / num_subsets / m)
