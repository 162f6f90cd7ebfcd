"""Fréchet distance between two Gaussians (FID), pytorch-fid's numerical conventions."""

from __future__ import annotations

import logging

import numpy as np
import scipy
import scipy.linalg

logger = logging.getLogger(__name__)

_SCIPY_NEW_SQRTM = tuple(int(p) for p in scipy.__version__.split(".")[:2] if p.isdigit()) >= (1, 16)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    # scipy >= 1.16 deprecated ``disp``; older versions print a message unless disp=False.
    if _SCIPY_NEW_SQRTM:
        return scipy.linalg.sqrtm(a)
    return scipy.linalg.sqrtm(a, disp=False)[0]


def _as_stats(mu, sigma, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{name}: mu {mu.shape} and sigma {sigma.shape} are not a [D] / [D, D] pair")
    return mu, sigma


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """``||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrtm(sigma1 sigma2))`` in float64.

    As pytorch-fid: if ``sqrtm`` of the product is not finite, ``eps * I`` is added to both covariances;
    a complex result whose diagonal has an imaginary part beyond 1e-3 raises, otherwise the real part
    is used.
    """
    mu1, sigma1 = _as_stats(mu1, sigma1, "first statistics")
    mu2, sigma2 = _as_stats(mu2, sigma2, "second statistics")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]}")
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        logger.warning("FID: singular covariance product; adding %g to the diagonal of both covariances", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: sqrtm has an imaginary component of {np.max(np.abs(covmean.imag)):.3g}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def frechet_distance_from_features(x, y, ddof: int = 1) -> float:
    """FID of two small feature sets, exactly and without a DxD matrix square root.

    With ``A = (x - mean) / sqrt(n - ddof)`` (and ``B`` alike), ``sigma_x sigma_y = A^T A B^T B`` has the
    nonzero eigenvalues of ``(A B^T)(A B^T)^T``, so ``Tr sqrtm(sigma_x sigma_y)`` is the nuclear norm of
    ``A B^T`` (an n_x x n_y matrix). Exact for any sizes; fast when the sets are smaller than the feature
    dimension (where the covariances are singular and ``sqrtm`` is both slow and fragile).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected feature matrices [N, D] with equal D, got {x.shape} and {y.shape}")
    if min(len(x), len(y)) <= ddof:
        raise ValueError(f"need more than {ddof} samples per set, got {len(x)} and {len(y)}")
    mx, my = x.mean(0), y.mean(0)
    a = (x - mx) / np.sqrt(len(x) - ddof)
    b = (y - my) / np.sqrt(len(y) - ddof)
    nuclear = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    diff = mx - my
    return float(diff.dot(diff) + np.sum(a * a) + np.sum(b * b) - 2 * nuclear)
