"""Stability sweeps: one row of numbers per subset, over pruning fractions and dimensions.

A row holds ``pr``, ``n_kept``, ``n_sources``, ``n_retained``, ``unchanged_fraction``,
``path_deviation_median`` and ``path_deviation_p95`` (see :mod:`.assign`), plus what
identifies the subset (its selection file or method) and, in a dimension sweep, ``dim``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..embeddings import Embeddings
from ..errors import PrunekitError
from ..methods import score
from ..progress import track
from ..scores import Scores
from ..selection import Selection, resolve_rows, select
from .assign import compare_subsets
from .synthetic import gaussian_mixture
from .velocity import ClosedFormField


@dataclass
class Subset:
    """Rows of a training set (positions 0..n-1 of the array used) and how they were chosen."""

    pr: float
    rows: np.ndarray
    info: dict = field(default_factory=dict)  # extra row fields, e.g. the selection file


def draw_sources(n: int, dim: int, seed: int) -> np.ndarray:
    """``n`` noise points x0 ~ N(0, I_dim) (float64), from ``seed``."""
    if n < 1:
        raise PrunekitError(f"the number of sources must be at least 1, got {n}.")
    return np.random.default_rng(seed).standard_normal((n, dim))


def check_prs(prs: Sequence[float]) -> list[float]:
    """Pruned fractions, each in [0, 1)."""
    out = [float(p) for p in prs]
    bad = [p for p in out if not 0.0 <= p < 1.0]
    if not out or bad:
        raise PrunekitError(
            f"pr is the fraction removed and must lie in [0, 1); got {bad or 'nothing'}."
        )
    return out


def selection_subset(sel: Selection, emb: Embeddings, name: str, info: dict | None = None) -> Subset:
    """The usable rows of ``emb`` that ``sel`` keeps (by ids, or by position).

    Repeats (oversampling ``counts``) are ignored: the closed-form field depends on which
    points are present.
    """
    src = np.unique(resolve_rows(sel, emb.n_total, emb.ids, selection_name=name, target_name=emb.source))
    compact = np.searchsorted(emb.rows, src)
    bad = (compact >= emb.n) | (emb.rows[np.minimum(compact, emb.n - 1)] != src)
    if bad.any():
        raise PrunekitError(
            f"{name} keeps rows that {emb.source} dropped as non-finite (e.g. row {src[bad][0]}); "
            "select from scores of the same finite rows."
        )
    return Subset(pr=float(sel.pr), rows=compact, info=dict(info or {}))


def scored_subsets(
    scores: Scores,
    emb: Embeddings,
    prs: Sequence[float],
    *,
    balance: str = "none",
    invert: bool = False,
    seed: int = 0,
    name: str | None = None,
) -> list[Subset]:
    """One subset per pr, chosen by :func:`prunekit.select` from ``scores``.

    ``name`` is how errors call the scores (default: after their source embeddings).
    """
    name = name or f"selection of {scores.source}"
    # Labels for balance="labels": the scores' own, else the embeddings' when rows align.
    labels = emb.labels if scores.labels is None and emb.n_total == scores.n_total else None
    out = []
    for pr in check_prs(prs):
        sel = select(scores, pr, balance=balance, invert=invert, seed=seed, labels=labels)
        info = {"method": scores.method, "balance": balance, "invert": bool(invert)}
        out.append(selection_subset(sel, emb, name, info))
    return out


def random_subsets(emb: Embeddings, prs: Sequence[float], *, seed: int = 0) -> list[Subset]:
    """Uniform random subsets, as ``prunekit score --method random`` + ``select`` make them.

    All pr values share one draw of scores, so the subsets are nested.
    """
    return scored_subsets(score(emb, "random", seed=seed, progress=False), emb, prs, seed=seed)


def stability_rows(
    x1: np.ndarray,
    subsets: Sequence[Subset],
    x0: np.ndarray,
    *,
    steps: int = 100,
    solver: str = "euler",
    dtype: str = "float32",
    block: int | None = None,
    progress: bool = True,
) -> list[dict]:
    """Compare the full training set ``x1`` with each subset on the noise points ``x0``."""
    x0 = np.asarray(x0)
    if x0.ndim != 2 or x0.shape[1] != np.shape(x1)[1]:
        raise PrunekitError(
            f"sources have shape {x0.shape} but the training set has dimension {np.shape(x1)[1]}; "
            f"give an (M x {np.shape(x1)[1]}) array."
        )
    fld = ClosedFormField(x1, dtype=dtype, block=block)
    comps = compare_subsets(
        fld, [s.rows for s in subsets], x0, steps=steps, solver=solver, progress=progress
    )
    return [{"pr": s.pr, **s.info, **c.summary()} for s, c in zip(subsets, comps, strict=True)]


def dimension_study(
    dims: Sequence[int],
    prs: Sequence[float],
    *,
    n: int = 1000,
    components: int = 10,
    spread: float = 0.5,
    n_sources: int = 256,
    seed: int = 0,
    steps: int = 100,
    solver: str = "euler",
    dtype: str = "float32",
    progress: bool = True,
) -> list[dict]:
    """The stability curve of a Gaussian mixture for each dimension (random subsets).

    Data, subsets and sources come from ``seed`` in every dimension; rows carry ``dim``.
    """
    prs = check_prs(prs)
    bad = [d for d in dims if int(d) < 1]
    if bad:  # before any work, not after the first dimensions ran
        raise PrunekitError(f"dimensions must be positive integers, got {bad[0]}.")
    rows: list[dict] = []
    for dim in track(list(dims), desc="dimensions", progress=progress):
        gmm = gaussian_mixture(n, int(dim), components, spread=spread, seed=seed)
        emb = Embeddings.from_array(gmm.points, labels=gmm.labels, name=f"gmm(dim={dim})")
        subsets = random_subsets(emb, prs, seed=seed)
        x0 = draw_sources(n_sources, int(dim), seed)
        found = stability_rows(
            gmm.points, subsets, x0, steps=steps, solver=solver, dtype=dtype, progress=progress
        )
        rows.extend({"dim": int(dim), **r} for r in found)
    return rows
