"""Where particles end up, and how much pruning the training set changes that.

The *assignment* of a noise point is the training point nearest to the end of its
trajectory. Comparing the full set with a subset S on the same noise points gives

* ``n_retained``: particles whose full-set assignment is a point of S;
* ``unchanged_fraction``: among those, the fraction whose assignment under S is the same
  point (particles whose full-set point was removed must move, so they are not counted);
* path deviation per particle: sqrt(mean_k ||x_k^full - x_k^S||^2 / d), k = 0..K, summarised
  by its median and 95th percentile over all particles (and, apart, over the retained ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..progress import track
from .ode import integrate_together
from .velocity import ClosedFormField


def nearest(field: ClosedFormField, points: np.ndarray) -> np.ndarray:
    """Position (into the full training set) of the field's point nearest to each row of ``points``.

    A blocked argmin of ||p - x1_i||^2 = ||p||^2 - 2 p.x1_i + ||x1_i||^2 with one GEMM per
    block (||p||^2 is the same for every i and is dropped). Ties go to the lowest position.
    """
    p = np.asarray(points, dtype=field.dtype) - field.mean
    best = np.full(p.shape[0], np.inf, dtype=field.dtype)
    arg = np.zeros(p.shape[0], dtype=np.int64)
    rows = np.arange(p.shape[0])
    for start, xb, sq in field.iter_blocks(p.shape[0]):
        d = p @ xb.T
        d *= -2
        d += sq
        j = d.argmin(axis=1)
        val = d[rows, j]
        better = val < best
        best[better] = val[better]
        arg[better] = start + j[better]
    return field.points()[arg]


@dataclass
class Comparison:
    """The full-set run against one subset's run on the same noise points."""

    n_sources: int
    n_kept: int
    n_retained: int
    unchanged_fraction: float  # NaN when no particle's full-set point was kept
    deviation: np.ndarray  # per particle
    assignment_full: np.ndarray
    assignment_subset: np.ndarray
    retained: np.ndarray  # mask: the particle's full-set assignment was kept

    @property
    def deviation_median(self) -> float:
        return float(np.median(self.deviation))

    @property
    def deviation_p95(self) -> float:
        return float(np.percentile(self.deviation, 95))

    def _retained_stats(self) -> tuple[float | None, float | None]:
        dev = self.deviation[self.retained]
        if dev.size == 0:
            return None, None
        return float(np.median(dev)), float(np.percentile(dev, 95))

    def summary(self) -> dict:
        """The JSON-ready numbers (NaN becomes None)."""
        uf = self.unchanged_fraction
        kept_median, kept_p95 = self._retained_stats()
        return {
            "n_kept": self.n_kept,
            "n_sources": self.n_sources,
            "n_retained": self.n_retained,
            "unchanged_fraction": None if np.isnan(uf) else float(uf),
            "path_deviation_median": self.deviation_median,
            "path_deviation_p95": self.deviation_p95,
            "path_deviation_retained_median": kept_median,
            "path_deviation_retained_p95": kept_p95,
        }


def compare_assignments(
    full: np.ndarray, subset: np.ndarray, kept: np.ndarray, deviation: np.ndarray
) -> Comparison:
    """Unchanged fraction among particles whose full-set assignment is in ``kept``."""
    retained = np.isin(full, kept)
    n_retained = int(retained.sum())
    same = int(np.sum(full[retained] == subset[retained]))
    return Comparison(
        n_sources=int(full.size),
        n_kept=int(np.unique(kept).size),
        n_retained=n_retained,
        unchanged_fraction=same / n_retained if n_retained else float("nan"),
        deviation=np.asarray(deviation, dtype=np.float64),
        assignment_full=full,
        assignment_subset=subset,
        retained=retained,
    )


def compare_subsets(
    field: ClosedFormField,
    subsets: Sequence[np.ndarray],
    x0: np.ndarray,
    *,
    steps: int = 100,
    solver: str = "euler",
    progress: bool = True,
) -> list[Comparison]:
    """Run the full ``field`` and each subset (positions into its training set) from ``x0``.

    All runs go in lockstep, so the full run is integrated once and no path is stored.
    """
    fields = [field.subset(s) for s in subsets]
    runs = integrate_together(field, fields, x0, steps=steps, solver=solver, progress=progress)
    full = nearest(field, runs.reference_end)
    out = []
    items = zip(fields, runs.ends, runs.deviations, strict=True)
    for sub, end, dev in track(items, total=len(fields), desc="assigning", progress=progress):
        out.append(compare_assignments(full, nearest(sub, end), sub.points(), dev))
    return out
