"""Synthetic Gaussian-mixture data for the stability analysis.

Component means are drawn from N(0, I_d) and each point is its component's mean plus
``spread`` times N(0, I_d) noise, so every coordinate has the scale of the N(0, I) noise the
flow starts from, whatever the dimension. Components get equal shares of the points (up to
one), in a shuffled order. The means, the shuffle and the noise each have their own random
stream derived from the seed (:mod:`prunekit.seeds`), and so do the flow's noise sources
(:func:`prunekit.flow.study.draw_sources`): the first source is never the first mean.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.h5io import atomic_h5
from prunekit.io.provenance import stamp
from prunekit.runtime.memory import check_fits
from prunekit.seeds import check_seed, role_rng


@dataclass
class GaussianMixture:
    """Points (n x dim, float32), their component ``labels`` and the component ``means``."""

    points: np.ndarray
    labels: np.ndarray
    means: np.ndarray
    params: dict

    def save(self, path: str | os.PathLike, command: list[str] | None = None) -> Path:
        """Write an embeddings file (``embeddings``, ``labels``, ``means``) atomically."""
        with atomic_h5(path) as f:
            f.create_dataset("embeddings", data=self.points)
            f.create_dataset("labels", data=self.labels)
            f.create_dataset("means", data=self.means)
            f.attrs["method"] = "gmm"
            stamp(f.attrs, self.params, command)
        return Path(path)


def gaussian_mixture(
    n: int, dim: int, components: int, *, spread: float = 0.5, seed: int = 0
) -> GaussianMixture:
    """Draw ``n`` points in ``dim`` dimensions from ``components`` Gaussian components."""
    if n < 1 or dim < 1:
        raise PrunekitError(f"need n >= 1 and dim >= 1, got n={n}, dim={dim}.")
    if not 1 <= components <= n:
        raise PrunekitError(f"components must lie in [1, n={n}], got {components}.")
    if not (np.isfinite(spread) and spread >= 0):
        raise PrunekitError(f"spread must be a finite number >= 0, got {spread}.")
    seed = check_seed(seed)
    # float64 noise, the gathered means, the float32 result; labels and their permutation
    check_fits(20.0 * n * dim + 4.0 * components * dim + 24.0 * n, f"a mixture of {n} x {dim} points")
    means = role_rng(seed, "gmm means").standard_normal((components, dim))
    labels = role_rng(seed, "gmm labels").permutation(np.arange(n) % components).astype(np.int64)
    points = role_rng(seed, "gmm noise").standard_normal((n, dim))
    points *= spread
    points += means[labels]
    params = {"n": n, "dim": dim, "components": components, "spread": spread, "seed": seed}
    return GaussianMixture(points.astype(np.float32), labels, means.astype(np.float32), params)
