"""Squared Euclidean distances between rows, the one implementation the core shares.

||x - y||^2 = ||x||^2 + ||y||^2 - 2 x.y: one matrix product instead of an (n, m, d)
difference tensor. Rounding can make the sum slightly negative for (nearly) equal rows;
it is clipped at 0.
"""

from __future__ import annotations

import numpy as np


def sq_norms(x: np.ndarray) -> np.ndarray:
    """||x_i||^2 of every row (float64)."""
    x = np.asarray(x, dtype=np.float64)
    return np.einsum("ij,ij->i", x, x)


def sq_distances(x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    """(n, m) matrix of ||x_i - y_j||^2 in float64 (``y`` defaults to ``x``)."""
    x = np.asarray(x, dtype=np.float64)
    same = y is None
    y = x if same else np.asarray(y, dtype=np.float64)
    xx = sq_norms(x)
    yy = xx if same else sq_norms(y)
    d2 = xx[:, None] + yy[None, :] - 2.0 * (x @ y.T)
    np.maximum(d2, 0.0, out=d2)
    if same:
        np.fill_diagonal(d2, 0.0)
    return d2
