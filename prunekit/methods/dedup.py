"""Semantic deduplication (SemDeDup, Abbas et al. 2023) as a score per item.

Inside each cluster the items are put in a *keep order* (``hard``: furthest from the
centroid first; ``easy``: nearest first; ``random``: a seeded permutation). An item is a
near-duplicate at threshold ``eps`` when its cosine similarity to some item EARLIER in
the keep order exceeds ``1 - eps``, i.e. when its cosine distance to that item is below
``eps``. This is the rule of SemDeDup's reference implementation (the column maxima of
the upper triangle of the cluster's similarity matrix): earlier items count whether or
not they were kept themselves, which makes the removed set grow monotonically with
``eps``. So one number per item describes every threshold at once::

    score_j = 1 - max_{i before j} cos(x_i, x_j)        (2 for the first item)

and the items SemDeDup removes at ``eps`` are exactly those with ``score < eps``
(:func:`removed`). Selecting the highest scores removes the most redundant items first.

The work is O(m^2 d) per cluster of m items, done in row blocks so that no m x m matrix
is held beyond a memory budget. :func:`semdedup_cluster` is a pure function of one
cluster's rows; the ``semdedup`` method (:mod:`prunekit.methods.semdedup`) maps it over
batches of clusters grouped on disk.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.seeds import role_rng
from prunekit.selection.scores import Scores
from prunekit.selection.subset import Selection

KEEPS = ("hard", "easy", "random")
# Similarity block per step: rows x earlier items x 4 bytes stays below this.
BLOCK_BYTES = 64 << 20
FIRST_SCORE = 2.0  # no earlier item: as far as two unit vectors can be
DEFAULT_EPS = (0.001, 0.01, 0.05, 0.1)
ORDER_ROLE = "semdedup-keep-order"  # the random keep order's stream: (seed, role, cluster)


def normalized(x: np.ndarray, rows: np.ndarray | None = None,
               names: np.ndarray | None = None) -> np.ndarray:
    """Rows of ``x`` (all, or ``rows``) as a new L2-normalised float32 array.

    All-zero rows have no direction, so no cosine similarity: they are an error, which
    names them by ``names`` (default: ``rows``, or the positions in ``x``).
    """
    out = np.array(x if rows is None else x[rows], dtype=np.float32, order="C")
    norms = np.sqrt(np.einsum("ij,ij->i", out, out, dtype=np.float64))
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        label = names if names is not None else rows
        where = zero if label is None else np.asarray(label)[zero]
        raise PrunekitError(
            f"rows {', '.join(map(str, where[:5]))} are all zero and have no cosine similarity; "
            "drop them from the embeddings before deduplicating."
        )
    out /= norms[:, None].astype(np.float32)
    return out


def keep_order(distance: np.ndarray, keep: str, *, seed: int = 0, cluster: int = 0) -> np.ndarray:
    """Local positions of one cluster's items in keep order (first = kept first).

    ``hard``: largest ``distance`` to the centroid first; ``easy``: smallest first; ties
    to the lower position. ``random``: a permutation drawn from (seed, role, cluster), so
    it does not depend on which other clusters exist or in what order they run.
    """
    if keep not in KEEPS:
        raise PrunekitError(f"unknown keep order '{keep}'; choose one of: {', '.join(KEEPS)}.")
    d = np.asarray(distance, dtype=np.float64)
    m = d.shape[0]
    if keep == "random":
        return role_rng(seed, ORDER_ROLE, cluster).permutation(m).astype(np.int64)
    key = -d if keep == "hard" else d
    return np.lexsort((np.arange(m), key)).astype(np.int64)


def block_rows(m: int, block_bytes: int = BLOCK_BYTES) -> int:
    """Rows per similarity block for a cluster of ``m`` items (at least 1)."""
    return max(1, int(block_bytes) // (4 * max(m, 1)))


def semdedup_cluster(
    x: np.ndarray, order: np.ndarray, *, block_bytes: int = BLOCK_BYTES
) -> np.ndarray:
    """SemDeDup scores of one cluster: ``1 - max cos`` to any earlier item in ``order``.

    ``x`` (m, d): the cluster's rows, L2-normalised (:func:`normalized`); ``order``: a
    permutation of 0..m-1, the keep order. Returns float64 (m,) in ``x``'s row order; the
    first item in ``order`` scores 2. Similarities are float32 products computed in blocks
    of :func:`block_rows` later items against all earlier ones.
    """
    x = np.asarray(x, dtype=np.float32)
    order = np.asarray(order, dtype=np.int64)
    m = x.shape[0]
    if order.shape != (m,) or (m and not np.array_equal(np.sort(order), np.arange(m))):
        raise PrunekitError(f"keep order must be a permutation of the cluster's {m} rows.")
    xs = np.ascontiguousarray(x[order])  # rows in keep order
    best = np.full(m, -np.inf, dtype=np.float64)  # max similarity to an earlier item
    step = block_rows(m, block_bytes)
    for a in range(1, m, step):
        b = min(a + step, m)
        sim = xs[a:b] @ xs[:b].T  # (b - a, b): block rows against every item up to b
        # Row r stands for item a + r: only columns before it are earlier items.
        sim[np.arange(b - a)[:, None] + a <= np.arange(b)[None, :]] = -np.inf
        best[a:b] = sim.max(axis=1)
    score = np.empty(m, dtype=np.float64)
    score[order] = np.where(np.isinf(best), FIRST_SCORE, 1.0 - np.clip(best, -1.0, 1.0))
    return score


def removed(score: np.ndarray, eps: float) -> np.ndarray:
    """Mask of the items SemDeDup removes at threshold ``eps``: ``score < eps``."""
    check_eps(eps)
    s = np.asarray(score, dtype=np.float64)
    return s < float(eps)  # NaN (unscored rows) compares False: never "removed" here


def check_eps(eps: float, name: str = "eps") -> float:
    """``eps`` as a float in (0, 2], or a PrunekitError naming ``name``."""
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise PrunekitError(f"{name} must be a number in (0, 2], got {eps!r}.") from None
    if not 0.0 < value <= FIRST_SCORE:
        raise PrunekitError(
            f"{name} must lie in (0, 2] (a cosine distance; SemDeDup uses 0.001-0.1), got {eps!r}."
        )
    return value


def duplicate_counts(
    score: np.ndarray,
    eps: Iterable[float] = DEFAULT_EPS,
    clusters: np.ndarray | None = None,
    kept: np.ndarray | None = None,
) -> list[dict]:
    """How many items SemDeDup removes at each threshold (inspect's report).

    One dict per ``eps``: ``eps``, ``removed``, ``kept``, ``fraction`` removed (of the
    scored rows); with ``clusters``, ``clusters_affected`` (clusters losing an item); with
    ``kept`` (the rows of a selection), ``in_selection``: how many of them SemDeDup removes.
    """
    s = np.asarray(score, dtype=np.float64)
    n = int((~np.isnan(s)).sum())
    out = []
    for e in eps:
        gone = removed(s, e)
        row = {"eps": float(e), "removed": int(gone.sum()), "kept": n - int(gone.sum()),
               "fraction": float(gone.sum() / n) if n else 0.0}
        if clusters is not None:
            row["clusters_affected"] = int(np.unique(np.asarray(clusters)[gone]).size)
        if kept is not None:
            row["in_selection"] = int(gone[np.unique(np.asarray(kept, dtype=np.int64))].sum())
        out.append(row)
    return out


def render_counts(rows: list[dict]) -> list[str]:
    """The counts of :func:`duplicate_counts` as text lines."""
    lines = ["near-duplicates (semdedup, cosine distance < eps to an earlier item of the cluster):"]
    for r in rows:
        line = f"  eps {r['eps']:<6g} removes {r['removed']} ({100 * r['fraction']:.2f} %)"
        if "in_selection" in r:
            line += f", {r['in_selection']} of them in the selection"
        lines.append(line)
    return lines


def select_eps(scores: Scores, eps: float) -> Selection:
    """The selection SemDeDup keeps at threshold ``eps``: every scored row with score >= eps.

    ``scores`` must come from the ``semdedup`` method. ``pr`` records the fraction removed
    (of the scored rows); ``params`` the threshold and the count.
    """
    if scores.method != "semdedup":
        raise PrunekitError(
            f"a threshold eps applies to semdedup scores, but these ({scores.source}) come from "
            f"method '{scores.method}'. Score with --method semdedup, or select with --pr."
        )
    eps = check_eps(eps)
    eligible = scores.eligible
    n = int(eligible.sum())
    indices = np.flatnonzero(eligible & (scores.score >= eps))
    if indices.size == 0:
        raise PrunekitError(f"eps {eps:g} removes every row; use a smaller threshold.")
    return Selection(
        indices=indices,
        n_total=scores.n_total,
        pr=1.0 - indices.size / n,
        method=scores.method,
        ids=None if scores.ids is None else scores.ids[indices],
        source_fingerprint=scores.source_fingerprint,
        params={"eps": eps, "n_eligible": n, "removed": n - int(indices.size),
                "score_method": scores.method, "keep": scores.params.get("keep")},
    )
