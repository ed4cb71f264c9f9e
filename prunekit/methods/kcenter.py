"""``kcenter``: greedy k-center (farthest-first traversal), a 2-approximation.

Start from the item nearest to the mean; then repeatedly pick the item farthest from all
picked ones (largest distance to its nearest picked item), ties to the lowest index. The
first m picks cover every item within at most twice the optimal m-center radius
(Gonzalez 1985). ``metric="cosine"`` runs the same traversal on L2-normalised rows
(Euclidean distance there is sqrt(2 - 2 cos), monotone in the cosine distance).

``within``: run the traversal inside each cluster of an earlier k-means scores file; the
per-cluster orders are merged round by round (:func:`prunekit.methods.greedy.interleave`),
so ``select --balance clusters`` keeps each cluster's prefix.

One pass over the (n, d) float32 matrix per pick: the squared distances to the new pick,
folded into a running minimum.
Output: ``order`` (the picks) and score = N - position (first pick N, unpicked -inf).
"""

from __future__ import annotations

import os

import numpy as np

from prunekit.compute.cluster import normalize_rows
from prunekit.errors import PrunekitError
from prunekit.io.embeddings import Embeddings
from prunekit.methods import MethodResult, Summary, register
from prunekit.methods.greedy import (
    MAX_KEEP,
    WITHIN,
    check_in_memory,
    greedy_result,
    per_cluster_orders,
    resolve_max_keep,
    row_sqdist,
    within_column,
    within_param,
)
from prunekit.params import Param
from prunekit.runtime.costs import Cost, CostModel, greedy_cost, pick_cost
from prunekit.runtime.probe import time_greedy
from prunekit.runtime.progress import counter
from prunekit.selection.scores import Scores

METRICS = ("euclidean", "cosine")


def kcenter_probe(dim: int, n: int, p: dict) -> dict[str, float]:
    """The farthest-first pick loop (``kcenter_pick_s``, ``kcenter_pick_per_value``)."""
    a, b = time_greedy(farthest_first, dim)
    return {"kcenter_pick_s": a, "kcenter_pick_per_value": b}


def kcenter_cost(m: CostModel, p: dict) -> Cost:
    """The picks over all rows or per cluster: a pick over s candidates of d values costs
    ``pick_s + per_value x s x d`` (probed, else ``3 s d`` flops at the GEMV rate); memory
    the rows as float32 and their running distances (per cluster: as read too)."""
    pick_s, per_value = pick_cost(m, "kcenter", 3.0)

    def seconds(s: np.ndarray, picks: np.ndarray) -> np.ndarray:
        return picks * (pick_s + per_value * s * m.d)

    return greedy_cost(m, "kcenter", p, seconds, m.d * 4 + 8, m.d * (4 + m.item) + 8)


def kcenter_detail(p: dict) -> str:
    return f" ({p['n_picked']} picked in order)"


@register("kcenter", params=(
    MAX_KEEP,
    Param("metric", "choice", "euclidean", "Distance between items.", choices=METRICS),
    WITHIN,
), cost=kcenter_cost, probe=kcenter_probe, summary=Summary(detail=kcenter_detail))
def kcenter_scores(
    emb: Embeddings,
    *,
    seed: int = 0,
    progress: bool = True,
    max_keep: int | None = None,
    metric: str = "euclidean",
    within: str | os.PathLike | Scores | None = None,
    parts=None,
) -> MethodResult:
    """Farthest-first order of the rows, or of each cluster's rows with ``within``.

    ``max_keep`` stops after that many picks (per cluster with ``within``; default all).
    With ``within`` and ``parts`` (a folder output) the workers write the parts and the
    order; without ``within`` the one order over all rows is gathered here.
    """
    if metric not in METRICS:
        raise PrunekitError(f"unknown k-center metric '{metric}'; choose one of: {', '.join(METRICS)}.")
    n = emb.n
    if within is None:
        check_in_memory(n * _row_bytes(emb), "k-center", n)
        x = emb.array()
        if metric == "cosine":
            normalize_rows(x)
        m = resolve_max_keep(max_keep, n)
        bar = counter(m, desc="k-center", progress=progress)
        order = farthest_first(x, m, bar.update)
        bar.close()
        picks = None
    else:
        picks = per_cluster_orders(
            emb, within_column(emb, within), _kcenter_batch, metric, max_keep=max_keep,
            row_bytes=_row_bytes(emb), desc="k-center", progress=progress, parts=parts)
        order = picks.order
    params = {"metric": metric, "max_keep": max_keep,
              "n_picked": int(order.size) if picks is None else picks.n_picked}
    if within is not None:
        params["within"] = within_param(within)
    return greedy_result(order, n, picks, params)


def _kcenter_batch(shared, item) -> np.ndarray:
    """Engine task: the concatenated traversals of one batch of clusters."""
    grouped, (metric, picks) = shared
    _, batch = item
    orders = []
    for g in batch:
        x = np.array(grouped.read(g), dtype=np.float32)
        if metric == "cosine":
            normalize_rows(x)
        orders.append(farthest_first(x, picks[g]))
    return np.concatenate(orders)


def _row_bytes(emb: Embeddings) -> int:
    """Memory per row: as read, as float32, and the running distances."""
    return emb.dim * (emb.dtype.itemsize + 4) + 16


def farthest_first(x: np.ndarray, m: int, tick=None) -> np.ndarray:
    """The first ``m`` picks of the farthest-first traversal of the rows of ``x``."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    order = np.empty(m, dtype=np.int64)
    mind = np.full(n, np.inf, dtype=np.float32)  # squared distance to the nearest pick
    buf = np.empty(n, dtype=np.float32)
    p = int(np.argmin(row_sqdist(x, x.mean(axis=0, dtype=np.float64).astype(np.float32), buf)))
    for t in range(m):
        order[t] = p
        if tick is not None:
            tick(1)
        if t == m - 1:
            break
        np.minimum(mind, row_sqdist(x, x[p], buf), out=mind)
        mind[p] = -1.0  # picked: never again (distances are >= 0)
        p = int(np.argmax(mind))
    return order
