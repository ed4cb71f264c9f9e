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

from prunekit.errors import PrunekitError
from prunekit.flow.ode import check_run, integrate_together
from prunekit.flow.velocity import DEFAULT_BUFFER, ClosedFormField
from prunekit.runtime.context import current_engine


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


SOURCE_BLOCK = 64  # noise points per task: fixed, so the numbers never depend on the workers


def compare_subsets(
    field: ClosedFormField,
    subsets: Sequence[np.ndarray],
    x0: np.ndarray,
    *,
    steps: int = 100,
    solver: str = "euler",
    engine=None,
    progress: bool = True,
) -> list[Comparison]:
    """Run the full ``field`` and each subset (positions into its training set) from ``x0``.

    The noise points are cut into blocks of SOURCE_BLOCK; one task integrates a block under
    the full field and under a group of subsets in lockstep (no path is stored) and returns
    the end assignments and path deviations of its particles, which are joined in block
    order. Tasks run on ``engine`` (default: the current one, :mod:`prunekit.runtime.engine`).

    Every run of a particle is its own computation, which depends on its block (fixed by
    SOURCE_BLOCK) but not on which other runs share the task. So the subsets may be split
    into groups to give every worker work (the full run is then repeated once per group)
    and the numbers stay the same on every engine and any number of workers.
    """
    engine = engine or current_engine()
    check_run(field, x0, steps, solver)  # here, before any task starts
    x0 = np.asarray(x0)
    if x0.shape[0] == 0:
        raise PrunekitError("give at least one noise point (source) to integrate from.")
    subsets = [np.asarray(s) for s in subsets]
    points = [field.subset(s).points() for s in subsets]  # checks every subset first
    if not subsets:
        return []
    starts = list(range(0, x0.shape[0], SOURCE_BLOCK))
    n_groups = min(len(subsets), max(1, -(-engine.workers // max(1, len(starts)))))
    groups = [list(g) for g in np.array_split(np.arange(len(subsets)), n_groups) if g.size]
    items = [(a, g) for a in starts for g in groups]
    shared = (field, subsets, x0, steps, solver)
    full: dict[int, np.ndarray] = {}
    ends: list[list[np.ndarray]] = [[] for _ in subsets]
    devs: list[list[np.ndarray]] = [[] for _ in subsets]
    # A task holds its runs' states (and the solver's temporaries) and the logit buffers.
    task = field.dtype.itemsize * (4 * (1 + max(map(len, groups))) * SOURCE_BLOCK * field.dim
                                   + 2 * DEFAULT_BUFFER)
    with engine.map(_block_task, items, shared, desc=f"{solver}, {len(subsets) + 1} runs",
                    progress=progress, task_bytes=task) as results:
        for (a, group), (ref_assign, assigned, deviation) in zip(items, results, strict=True):
            full.setdefault(a, ref_assign)
            for i, e, d in zip(group, assigned, deviation, strict=True):
                ends[i].append(e)
                devs[i].append(d)
    ref = np.concatenate([full[a] for a in starts])
    return [compare_assignments(ref, np.concatenate(e), p, np.concatenate(d))
            for e, d, p in zip(ends, devs, points, strict=True)]


def _block_task(shared, item) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """One block of noise points under the full field and a group of subsets."""
    field, subsets, x0, steps, solver = shared
    a, group = item
    xb = x0[a : a + SOURCE_BLOCK]
    fields = [field.subset(subsets[i]) for i in group]
    runs = integrate_together(field, fields, xb, steps=steps, solver=solver, progress=False)
    return (nearest(field, runs.reference_end),
            [nearest(sub, end) for sub, end in zip(fields, runs.ends, strict=True)],
            runs.deviations)
