"""Metric math on numpy arrays: Fréchet distance, k-NN precision/recall, PSNR, SSIM, pair statistics.

Nothing here imports torch: every function takes arrays (features, latents or images) and
returns numbers, so the formulas can be tested on hand-made distributions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
from scipy import ndimage

from prunekit.errors import PrunekitError

# --------------------------------------------------------------------------- Fréchet distance


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (ddof = 1) of an (N, D) feature set, in float64."""
    x = _as_2d(features, "features")
    if x.shape[0] < 2:
        raise PrunekitError(f"the Fréchet distance needs at least 2 samples, got {x.shape[0]}.")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def frechet_from_stats(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    d² = ‖mu1 − mu2‖² + tr(S1 + S2 − 2 (S1 S2)^½).

    tr((S1 S2)^½) is computed as tr((S1^½ S2 S1^½)^½): the inner matrix is symmetric
    positive semi-definite, so its square root comes from a symmetric eigen-decomposition
    (``scipy.linalg.eigh``) with round-off negatives clipped to zero. This has the same
    trace as the general ``sqrtm(S1 @ S2)`` but never produces complex parts or NaNs for
    singular covariances (fewer samples than dimensions).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise PrunekitError(
            f"feature dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]}; "
            "compute both sets with the same feature extractor."
        )
    root1 = _psd_sqrt(s1)
    middle = root1 @ s2 @ root1
    evals = scipy.linalg.eigh((middle + middle.T) / 2, eigvals_only=True)
    tr_cross = float(np.sqrt(np.clip(evals, 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_cross)
    return max(value, 0.0)  # round-off can leave -1e-15 for identical sets


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets (FID's formula)."""
    return frechet_from_stats(*gaussian_stats(a), *gaussian_stats(b))


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    evals, evecs = scipy.linalg.eigh((s + s.T) / 2)
    return (evecs * np.sqrt(np.clip(evals, 0.0, None))) @ evecs.T


# --------------------------------------------------------------------------- precision / recall


@dataclass(frozen=True)
class PrecisionRecall:
    """k-NN precision/recall (Kynkäänniemi et al. 2019) with the sample counts used."""

    precision: float
    recall: float
    f_score: float
    k: int
    n_real: int
    n_generated: int


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each row of ``x`` to its k-th nearest other row (itself excluded)."""
    x = _as_2d(x, "features")
    if x.shape[0] <= k:
        raise PrunekitError(f"k-NN radii with k = {k} need more than {k} samples, got {x.shape[0]}.")
    d = _pairwise_distances(x, x)
    np.fill_diagonal(d, np.inf)
    return np.partition(d, k - 1, axis=1)[:, k - 1]


def manifold_coverage(support: np.ndarray, queries: np.ndarray, k: int = 3) -> float:
    """Fraction of ``queries`` inside the k-NN manifold of ``support``.

    The manifold is the union of balls centred on the support points, each with radius
    the distance to its k-th nearest support neighbour. A query on a ball's boundary is
    inside.
    """
    support, queries = _as_2d(support, "support"), _as_2d(queries, "queries")
    radii = knn_radii(support, k)
    inside = np.zeros(queries.shape[0], dtype=bool)
    for start in range(0, queries.shape[0], 1024):  # blocks keep memory at 1024 x N
        d = _pairwise_distances(queries[start : start + 1024], support)
        inside[start : start + 1024] = np.any(d <= radii[None, :], axis=1)
    return float(inside.mean())


def precision_recall(real: np.ndarray, generated: np.ndarray, k: int = 3) -> PrecisionRecall:
    """Improved precision and recall of ``generated`` against ``real`` features.

    precision = fraction of GENERATED samples inside the manifold of the REAL samples
    (are the outputs realistic?); recall = fraction of REAL samples inside the manifold of
    the GENERATED samples (is the data's variety covered?).
    """
    real, generated = _as_2d(real, "real"), _as_2d(generated, "generated")
    if real.shape[1] != generated.shape[1]:
        raise PrunekitError(
            f"real features have {real.shape[1]} dimensions but generated ones {generated.shape[1]}; "
            "use the same feature extractor for both."
        )
    p = manifold_coverage(real, generated, k)
    r = manifold_coverage(generated, real, k)
    return PrecisionRecall(p, r, f_score(p, r), k, real.shape[0], generated.shape[0])


def f_score(precision: float, recall: float, beta: float = 1.0) -> float:
    """F_beta = (1 + β²)·P·R / (β²·P + R); 0 when both are 0."""
    denom = beta**2 * precision + recall
    return 0.0 if denom == 0 else float((1 + beta**2) * precision * recall / denom)


def _pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances (float64) via the GEMM expansion, clipped at 0 before the root."""
    a, b = a.astype(np.float64, copy=False), b.astype(np.float64, copy=False)
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.clip(sq, 0.0, None))


# --------------------------------------------------------------------------- paired measures


def cosine_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of row i of ``a`` with row i of ``b`` (rows flattened)."""
    a, b = _flat_pair(a, b)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    denom = np.where(na * nb == 0, 1.0, na * nb)  # a zero vector has similarity 0
    return (a * b).sum(1) / denom


def mse_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean squared difference of row i of ``a`` and row i of ``b`` (rows flattened)."""
    a, b = _flat_pair(a, b)
    return ((a - b) ** 2).mean(1)


def psnr_pairs(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """PSNR in dB per pair: 10·log10(range² / MSE); +inf for identical images."""
    mse = mse_pairs(a, b)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range**2 / mse)


def ssim_pairs(
    a: np.ndarray, b: np.ndarray, data_range: float = 1.0, sigma: float = 1.5
) -> np.ndarray:
    """Mean SSIM (Wang et al. 2004) per image pair, Gaussian window of std ``sigma``.

    Images are (N, H, W) or (N, C, H, W). Local means, variances and the covariance come
    from a Gaussian filter (truncated at 3.5 σ) with reflected borders — so images as
    small as 8 × 8 need no cropping; that border handling is the one difference from the
    "valid"-window original. The SSIM map is averaged over pixels and channels.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim not in (3, 4):
        raise PrunekitError(f"SSIM needs two image arrays (N, H, W) or (N, C, H, W) of one shape, got {a.shape} and {b.shape}.")
    if a.ndim == 3:
        a, b = a[:, None], b[:, None]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    spatial = (0, 0, sigma, sigma)  # filter over H and W only

    def blur(x: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(x, spatial, mode="reflect", truncate=3.5)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).mean(axis=(1, 2, 3))


def within_class_pairs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unrelated pairs of the same class: (rows, partners), row i paired with partner i.

    Within each class (in order of position) a sample is paired with the next sample of
    its class, cyclically: the shift i -> (i + 1) mod n applied per class. Samples are
    drawn from independent noise per index, so neighbours are as unrelated as any other
    pair, and the shift needs no seed. Same-seed pairs of a conditional model share their
    label, so their baseline must too, or it would measure how different two classes look
    instead of what an unrelated noise seed gives. Classes with a single sample have no
    partner and are left out. With one label for all samples (unconditional models) this
    is the plain shift i -> (i + 1) mod n.
    """
    labels = np.asarray(labels)
    rows, partners = [], []
    for c in np.unique(labels):
        pos = np.flatnonzero(labels == c)
        if pos.size >= 2:
            rows.append(pos)
            partners.append(np.roll(pos, -1))
    if not rows:
        raise PrunekitError("the unrelated-pair baseline needs two samples of one class; draw more samples.")
    rows_a, partners_a = np.concatenate(rows), np.concatenate(partners)
    order = np.argsort(rows_a, kind="stable")
    return rows_a[order], partners_a[order]


def summarize(values: np.ndarray, bins: int = 20, value_range: tuple[float, float] | None = None) -> dict:
    """Mean, median, std, min, max and a histogram of the finite ``values``.

    ``n_infinite`` counts +inf values (PSNR of identical images); they enter the median but
    not the mean or the histogram.
    """
    v = np.asarray(values, np.float64).ravel()
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return {"n": int(v.size), "n_infinite": int(np.isinf(v).sum()), "mean": None, "median": float(np.median(v)) if v.size else None}
    lo, hi = value_range if value_range is not None else (float(finite.min()), float(finite.max()))
    if hi <= lo:
        hi = lo + 1e-12
    counts, edges = np.histogram(np.clip(finite, lo, hi), bins=bins, range=(lo, hi))
    return {
        "n": int(v.size),
        "n_infinite": int(np.isinf(v).sum()),
        "mean": float(finite.mean()),
        "median": float(np.median(v)),
        "std": float(finite.std()),
        "min": float(finite.min()),
        "max": float(finite.max()),
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
    }


# --------------------------------------------------------------------------- helpers


def _as_2d(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise PrunekitError(f"{what} must be a non-empty (N, D) array, got shape {x.shape}.")
    if not np.all(np.isfinite(x)):
        raise PrunekitError(f"{what} contain NaN or inf values; check the model's outputs.")
    return x


def _flat_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise PrunekitError(f"paired arrays must have one shape, got {a.shape} and {b.shape}.")
    return a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
