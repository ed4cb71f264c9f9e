"""Metric math on hand-made distributions: Fréchet distance, k-NN precision/recall, PSNR, SSIM."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.errors import PrunekitError
from prunekit_lfm import metrics as m


def test_fd_of_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(200, 6))
    assert m.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


def test_fd_of_shifted_diagonal_gaussians_matches_closed_form():
    # Whitened rows have exactly zero mean and identity sample covariance, so the two sets
    # below have exactly the moments mu = 0, S1 = diag(a) and mu = shift, S2 = diag(b).
    # For diagonal covariances (S1 S2)^½ = diag(sqrt(a_i b_i)): the trace term is
    # sum (sqrt(a_i) - sqrt(b_i))², computed by hand from the variances.
    z = _whiten(np.random.default_rng(1).normal(size=(500, 3)))
    a_var, b_var = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    shift = np.array([3.0, -1.0, 0.5])
    x, y = z * np.sqrt(a_var), z[::-1] * np.sqrt(b_var) + shift
    expected = (9 + 1 + 0.25) + ((1 - 3) ** 2 + (2 - 1) ** 2 + 0.0)
    assert m.frechet_distance(x, y) == pytest.approx(expected, rel=1e-9)


def _whiten(z: np.ndarray) -> np.ndarray:
    """Rows with exactly zero mean and identity sample covariance (ddof = 1)."""
    z = z - z.mean(0)
    cov = np.cov(z, rowvar=False)
    evals, evecs = np.linalg.eigh(cov)
    return z @ evecs @ np.diag(evals**-0.5) @ evecs.T


def test_fd_from_stats_equals_the_sqrtm_formula_on_full_covariances():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    reference = (
        np.sum((mu1 - mu2) ** 2)
        + np.trace(s1 + s2)
        - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    )
    assert m.frechet_from_stats(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-9)


def test_fd_is_finite_when_covariances_are_singular():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(4, 10)), rng.normal(size=(4, 10))  # rank 3 in 10 dimensions
    value = m.frechet_distance(x, y)
    assert np.isfinite(value) and value > 0


def test_fd_rejects_mismatched_dimensions():
    with pytest.raises(PrunekitError, match="feature dimensions differ"):
        m.frechet_distance(np.zeros((5, 2)) + np.arange(5)[:, None], np.ones((5, 3)) * np.arange(5)[:, None])


def test_knn_radii_by_hand():
    x = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]])
    np.testing.assert_allclose(m.knn_radii(x, 3), [3, 2, 2, 2, 3])
    np.testing.assert_allclose(m.knn_radii(x, 1), [1, 1, 1, 1, 1])


def test_precision_recall_disjoint_and_identical_sets():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(50, 4))
    far = real + 1000.0
    pr = m.precision_recall(real, far)
    assert (pr.precision, pr.recall, pr.f_score) == (0.0, 0.0, 0.0)
    same = m.precision_recall(real, real.copy())
    assert (same.precision, same.recall, same.f_score) == (1.0, 1.0, 1.0)
    assert (same.n_real, same.n_generated, same.k) == (50, 50, 3)


def test_precision_recall_roles_on_an_asymmetric_case():
    # real = 0..4 (k = 3 radii 3,2,2,2,3 cover [-3, 7]); generated = 0, 1, 2 and two far
    # outliers. Precision: 3 of 5 generated points lie in the real manifold -> 0.6.
    # Recall: the outliers' huge radii (100, 199) cover every real point -> 1.0.
    real = np.arange(5.0)[:, None]
    generated = np.array([[0.0], [1.0], [2.0], [100.0], [200.0]])
    pr = m.precision_recall(real, generated, k=3)
    assert pr.precision == pytest.approx(0.6)
    assert pr.recall == pytest.approx(1.0)
    assert pr.f_score == pytest.approx(2 * 0.6 / 1.6)
    swapped = m.precision_recall(generated, real, k=3)
    assert (swapped.precision, swapped.recall) == pytest.approx((1.0, 0.6))


def test_precision_recall_against_brute_force():
    rng = np.random.default_rng(5)
    real, gen = rng.normal(size=(40, 3)), rng.normal(0.7, 1.3, size=(30, 3))

    def coverage(support, queries, k):
        radii = [sorted(np.linalg.norm(support - s, axis=1))[k] for s in support]  # [0] is itself
        return np.mean([any(np.linalg.norm(q - s) <= r for s, r in zip(support, radii, strict=True)) for q in queries])

    pr = m.precision_recall(real, gen, k=3)
    assert pr.precision == pytest.approx(coverage(real, gen, 3))
    assert pr.recall == pytest.approx(coverage(gen, real, 3))


def test_psnr_closed_form():
    a = np.zeros((2, 4, 4))
    b = a.copy()
    b[0] += 0.1  # MSE 0.01 -> 10 log10(1 / 0.01) = 20 dB
    psnr = m.psnr_pairs(a, b, data_range=1.0)
    assert psnr[0] == pytest.approx(20.0)
    assert np.isposinf(psnr[1])
    assert m.psnr_pairs(a[:1], b[:1], data_range=2.0)[0] == pytest.approx(10 * np.log10(4 / 0.01))


def test_ssim_identical_is_one_and_drops_with_noise():
    rng = np.random.default_rng(6)
    x = rng.uniform(size=(3, 1, 16, 16))
    np.testing.assert_allclose(m.ssim_pairs(x, x), 1.0, atol=1e-12)
    noisy = np.clip(x + rng.normal(0, 0.3, size=x.shape), 0, 1)
    assert np.all(m.ssim_pairs(x, noisy) < 0.9)


def test_ssim_constant_images_by_hand():
    # Constant images: variances and covariance vanish, so SSIM = (2ab + c1) / (a² + b² + c1).
    a, b = np.full((1, 8, 8), 0.2), np.full((1, 8, 8), 0.6)
    c1 = 0.01**2
    expected = (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1)
    assert m.ssim_pairs(a, b)[0] == pytest.approx(expected)


def test_cosine_and_mse_pairs():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[0.0, 2.0], [2.0, 2.0], [1.0, 0.0]])
    np.testing.assert_allclose(m.cosine_pairs(a, b), [0.0, 1.0, 0.0])
    np.testing.assert_allclose(m.mse_pairs(a, b), [2.5, 1.0, 0.5])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3), min_size=2, max_size=60))
def test_within_class_pairs_is_a_derangement_within_each_class(labels):
    labels = np.array(labels)
    sizes = np.bincount(labels)
    if sizes.max() < 2:
        return  # no class with two samples: refused, tested below
    rows, partners = m.within_class_pairs(labels)
    assert rows.tolist() == [i for i in range(labels.size) if sizes[labels[i]] >= 2]
    assert sorted(partners.tolist()) == rows.tolist()  # each partner used once
    assert np.all(rows != partners) and np.all(labels[rows] == labels[partners])


def test_summarize_statistics_and_histogram():
    s = m.summarize(np.array([0.0, 1.0, 2.0, 3.0, np.inf]), bins=3, value_range=(0.0, 3.0))
    assert s["n"] == 5 and s["n_infinite"] == 1
    assert s["mean"] == pytest.approx(1.5) and s["median"] == pytest.approx(2.0)
    assert s["histogram"]["counts"] == [1, 1, 2]
    assert s["histogram"]["edges"] == pytest.approx([0, 1, 2, 3])


def test_f_score():
    assert m.f_score(0.0, 0.0) == 0.0
    assert m.f_score(1.0, 0.5) == pytest.approx(2 / 3)


def test_within_class_pairs_pair_each_sample_with_the_next_of_its_class():
    rows, partners = m.within_class_pairs(np.array([0, 1, 0, 2, 1, 0]))
    assert rows.tolist() == [0, 1, 2, 4, 5]  # the lone class-2 sample has no partner
    assert partners.tolist() == [2, 4, 5, 1, 0]
    labels = np.array([0, 1, 0, 2, 1, 0])
    assert np.all(labels[rows] == labels[partners]) and np.all(rows != partners)
    same = np.full(5, 3)  # one label (unconditional): the plain shift i -> i + 1 mod n
    r, p = m.within_class_pairs(same)
    assert r.tolist() == list(range(5)) and p.tolist() == [1, 2, 3, 4, 0]
    with pytest.raises(PrunekitError, match="two samples of one class"):
        m.within_class_pairs(np.array([0, 1, 2]))
