"""(c) FID against independent formulas and pytorch-fid; KID against a direct unbiased MMD."""

import warnings

import numpy as np
import pytest

from stylenat.metrics import frechet_distance, frechet_distance_from_features, kernel_inception_distance


def _features(n, d, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    return np.abs(rng.standard_normal((n, d)) @ mix + shift)  # non-negative, correlated, like pool features


def _stats(x):
    return x.mean(0), np.cov(x, rowvar=False)


def _fid_by_eigenvalues(mu1, s1, mu2, s2):
    """Independent: Tr sqrtm(S1 S2) = sum sqrt(eig(S1 S2)) (the eigenvalues of a PSD product are >= 0)."""
    ev = np.linalg.eigvals(s1 @ s2).real.clip(min=0)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(ev).sum())


def test_frechet_distance_matches_direct_formula_and_pytorch_fid():
    from pytorch_fid.fid_score import calculate_frechet_distance

    x, y = _features(400, 48, 0), _features(300, 48, 1, shift=0.3)
    (m1, s1), (m2, s2) = _stats(x), _stats(y)
    ours = frechet_distance(m1, s1, m2, s2)
    assert isinstance(ours, float) and ours > 0.1
    assert ours == pytest.approx(_fid_by_eigenvalues(m1, s1, m2, s2), rel=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pytorch-fid passes sqrtm(disp=False)
        assert ours == pytest.approx(float(calculate_frechet_distance(m1, s1, m2, s2)), rel=1e-10)


def test_fid_of_a_set_with_itself_is_zero():
    x = _features(500, 64, 2)
    m, s = _stats(x)
    assert abs(frechet_distance(m, s, m, s)) < 1e-6 * np.trace(s)
    assert abs(frechet_distance_from_features(x, x)) < 1e-6 * np.trace(s)


@pytest.mark.parametrize("n1, n2", [(200, 150), (12, 9)])
def test_fid_from_features_is_exact(n1, n2):
    x, y = _features(n1, 32, 3), _features(n2, 32, 4, shift=0.2)
    (m1, s1), (m2, s2) = _stats(x), _stats(y)
    assert frechet_distance_from_features(x, y) == pytest.approx(
        _fid_by_eigenvalues(m1, s1, m2, s2), rel=1e-7
    )


def test_fid_of_singular_covariances_is_exact():
    # Fewer samples than dimensions (fid500 against the 100 demo faces): both covariances are singular.
    # The eigendecomposition route matches the exact small-set formula; scipy's sqrtm of the product
    # (pytorch-fid's route) is off by far more.
    import scipy.linalg

    x, y = _features(40, 256, 7), _features(100, 256, 8, shift=0.2)
    (m1, s1), (m2, s2) = _stats(x), _stats(y)
    exact = frechet_distance_from_features(x, y)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(exact, rel=1e-11)
    assert frechet_distance(m2, s2, m1, s1) == pytest.approx(exact, rel=1e-11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scipy_trace = np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    scipy_fid = ((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * scipy_trace
    assert abs(scipy_fid - exact) > 100 * abs(frechet_distance(m1, s1, m2, s2) - exact)


def test_fid_rejects_bad_covariances():
    with pytest.raises(ValueError, match="second covariance is not positive semi-definite"):
        frechet_distance(np.zeros(4), np.eye(4), np.zeros(4), -np.eye(4))
    with pytest.raises(ValueError, match="first covariance is not positive semi-definite"):
        frechet_distance(np.zeros(4), -np.eye(4), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(np.zeros(4), np.full((4, 4), np.nan), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="feature dimensions differ: 4 vs 5"):
        frechet_distance(np.zeros(4), np.eye(4), np.zeros(5), np.eye(5))


def _mmd2_unbiased(x, y):
    """Direct O(n^2) unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, written element-wise."""
    d, m = x.shape[1], len(x)

    def k(a, b):
        return (np.einsum("id,jd->ij", a, b) / d + 1) ** 3

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    off = ~np.eye(m, dtype=bool)
    return kxx[off].sum() / (m * (m - 1)) + kyy[off].sum() / (m * (m - 1)) - 2 * kxy.sum() / (m * m)


def test_kid_equals_direct_unbiased_mmd():
    x, y = _features(60, 32, 7), _features(60, 32, 8, shift=0.1)
    # one subset covering everything: a permutation of both sets, and the MMD is permutation invariant
    assert kernel_inception_distance(x, y, num_subsets=1, max_subset_size=1000) == pytest.approx(
        _mmd2_unbiased(x, y), rel=1e-10
    )
    # several subsets of 25: the mean of the direct MMD over the same (seeded) draws
    rng = np.random.RandomState(3)
    direct = []
    for _ in range(4):
        xs = x[rng.choice(60, 25, replace=False)]
        ys = y[rng.choice(60, 25, replace=False)]
        direct.append(_mmd2_unbiased(xs, ys))
    got = kernel_inception_distance(x, y, num_subsets=4, max_subset_size=25, seed=3)
    assert got == pytest.approx(np.mean(direct), rel=1e-10)


def test_kid_orders_distributions():
    x, same, other = _features(200, 16, 9), _features(200, 16, 10), _features(200, 16, 11, shift=0.5)
    near = kernel_inception_distance(x, same, num_subsets=10, max_subset_size=100)
    far = kernel_inception_distance(x, other, num_subsets=10, max_subset_size=100)
    assert abs(near) < far
    with pytest.raises(ValueError, match="equal D"):
        kernel_inception_distance(x, other[:, :8])
