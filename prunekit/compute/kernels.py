"""RBF kernels: the median-heuristic bandwidth and random Fourier features.

k(x, y) = exp(-||x - y||^2 / (2 sigma^2)). Random Fourier features (Rahimi & Recht 2007)
give z(x) = sqrt(2/D) cos(W x + b) with W ~ N(0, sigma^-2 I), b ~ U[0, 2 pi], so that
E[z(x) . z(y)] = k(x, y).
"""

from __future__ import annotations

import numpy as np

from prunekit.compute.distances import sq_distances, sq_norms
from prunekit.errors import PrunekitError

# 1 / sigma times a normal draw (|z| < 40) must stay a finite, non-denormal float32.
MIN_SIGMA, MAX_SIGMA = 1e-30, 1e30

MEDIAN_SAMPLE = 4096
MEDIAN_BLOCK_BYTES = 2 << 20  # temporaries of one block of the median heuristic


def median_sigma(x: np.ndarray, *, seed: int = 0, sample: int = MEDIAN_SAMPLE) -> float:
    """sigma with sigma^2 = median pairwise squared distance / 2, on <= ``sample`` rows.

    The rows are drawn without replacement with ``seed`` when there are more than
    ``sample``. Only distinct pairs (i < j) count. Memory: the m (m - 1) / 2 pair distances
    (float64: 64 MiB at the default 4096 rows) and one block of rows, whatever ``x`` holds.
    """
    n = x.shape[0]
    if n < 2:
        return 1.0
    rows = np.arange(n) if n <= sample else np.sort(
        np.random.default_rng(seed).choice(n, size=sample, replace=False)
    )
    med = median_pair_sq_distance(x[rows])
    return float(np.sqrt(med / 2.0)) if med > 0 else 1.0


def median_pair_sq_distance(x: np.ndarray, block_bytes: int = MEDIAN_BLOCK_BYTES) -> float:
    """Median of ||x_i - x_j||^2 over the pairs i < j, computed a block of rows at a time.

    Each block holds rows a..b against rows a.. (the upper triangle only); every distance is
    the same float64 number :func:`prunekit.compute.distances.sq_distances` gives, so the median is
    too. The pairs are kept in one float64 vector and partitioned in place.
    """
    x = np.asarray(x, dtype=np.float64)
    m = x.shape[0]
    sq = sq_norms(x)
    pairs = np.empty(m * (m - 1) // 2, dtype=np.float64)
    step = max(1, block_bytes // (16 * m))  # two (step x m) float64 temporaries
    pos = 0
    for a in range(0, m, step):
        b = min(a + step, m)
        d2 = sq[a:b, None] + sq[None, a:]
        prod = x[a:b] @ x[a:].T
        prod *= 2.0
        d2 -= prod  # (||x_i||^2 + ||x_j||^2) - 2 x_i.x_j, in sq_distances' order
        np.maximum(d2, 0.0, out=d2)
        for i in range(b - a):  # row a + i pairs with the rows after it
            row = d2[i, i + 1 :]
            pairs[pos : pos + row.size] = row
            pos += row.size
        del d2, prod  # before the next block's are made
    return float(np.median(pairs, overwrite_input=True))


def rbf(x: np.ndarray, y: np.ndarray, sigma: float) -> np.ndarray:
    """Exact RBF kernel matrix between rows of ``x`` and ``y`` (float64)."""
    check_sigma(sigma)
    return np.exp(-sq_distances(x, y) / (2.0 * sigma * sigma))


def check_sigma(sigma: float) -> float:
    """An RBF bandwidth usable in float32 features and float64 kernels, else a PrunekitError."""
    sigma = float(sigma)
    if not (np.isfinite(sigma) and MIN_SIGMA <= sigma <= MAX_SIGMA):
        raise PrunekitError(
            f"RBF bandwidth sigma={sigma:g} is outside [{MIN_SIGMA:g}, {MAX_SIGMA:g}]: the kernel "
            "would overflow or vanish. Give a sigma on the scale of the distances between rows, "
            "or 'auto'."
        )
    return sigma


class RandomFourierFeatures:
    """A seeded random-Fourier-feature map for the RBF kernel of bandwidth ``sigma``."""

    def __init__(self, dim_in: int, sigma: float, n_features: int = 512, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.sigma = float(sigma)
        self.n_features = int(n_features)
        check_sigma(self.sigma)
        self.w = (rng.standard_normal((dim_in, n_features)) / self.sigma).astype(np.float32)
        self.b = rng.uniform(0.0, 2.0 * np.pi, size=n_features).astype(np.float32)
        self.scale = np.float32(np.sqrt(2.0 / n_features))

    def transform(self, x: np.ndarray, chunk_rows: int = 65536) -> np.ndarray:
        """z(x) for every row of ``x``, float32, computed ``chunk_rows`` at a time."""
        out = np.empty((x.shape[0], self.n_features), dtype=np.float32)
        for a in range(0, x.shape[0], chunk_rows):
            block = np.asarray(x[a : a + chunk_rows], dtype=np.float32) @ self.w
            block += self.b
            np.cos(block, out=block)
            block *= self.scale
            out[a : a + chunk_rows] = block
        return out


def rff_mmd(x: np.ndarray, y: np.ndarray, sigma: float, n_features: int = 512, seed: int = 0) -> float:
    """MMD between the rows of ``x`` and ``y`` under the RFF approximation of the RBF kernel.

    MMD^2 ~ || mean z(x) - mean z(y) ||^2; returns its square root.
    """
    rff = RandomFourierFeatures(x.shape[1], sigma, n_features, seed)
    diff = rff.transform(x).mean(axis=0, dtype=np.float64) - rff.transform(y).mean(axis=0, dtype=np.float64)
    return float(np.sqrt(max(float(diff @ diff), 0.0)))
