"""Shared pieces of the greedy methods (herding, k-center): option checks, groups, ranks to scores."""

from __future__ import annotations

import os

import numpy as np

from prunekit.compute.grouping import map_clusters
from prunekit.errors import PrunekitError
from prunekit.io.embeddings import Embeddings
from prunekit.params import Param, ParamError
from prunekit.runtime.budget import memory_budget
from prunekit.runtime.memory import human
from prunekit.selection.scores import Scores, load_scores

# Parameters both greedy methods take (one declaration, shared by their specs).
MAX_KEEP = Param(
    "max_keep", "int", None,
    "Stop after this many picks (per cluster with within); the rest score -inf. "
    "Default: the full order.", low=1, nullable=True)
WITHIN = Param(
    "within", "path", None,
    "Work inside each cluster of this k-means scores file (one cluster at a time; greedy "
    "orders are merged round by round).",
    nullable=True, objects=(Scores,))


def resolve_max_keep(max_keep: int | None, n: int) -> int:
    """How many items to pick: ``max_keep`` capped at ``n``; ``None`` = all of them."""
    if max_keep is None:
        return n
    if int(max_keep) < 1:
        raise ParamError("{max_keep} must be >= 1 (got {}); leave it out for the full order.",
                         max_keep)
    return min(int(max_keep), n)


def within_clusters(emb: Embeddings, within: str | os.PathLike | Scores) -> np.ndarray:
    """Cluster of each usable row of ``emb`` from a k-means scores file, checked to match."""
    src = within if isinstance(within, Scores) else load_scores(within)
    name = f"--within scores (method '{src.method}')" if isinstance(within, Scores) else f"--within file {within}"
    if src.cluster is None:
        raise PrunekitError(
            f"{name} has no 'cluster' dataset; give the scores of "
            "'prunekit score EMB --method kmeans'."
        )
    if src.n_total != emb.n_total or src.source_fingerprint != emb.fingerprint:
        raise PrunekitError(
            f"{name} was computed on other embeddings (n_total {src.n_total}, "
            f"fingerprint '{src.source_fingerprint}') than {emb.name} (n_total {emb.n_total}, "
            f"fingerprint '{emb.fingerprint}'). Run k-means on these embeddings first."
        )
    labels = np.asarray(src.cluster, dtype=np.int64)[emb.rows]
    bad = np.flatnonzero(labels < 0)
    if bad.size:
        shown = ", ".join(map(str, emb.rows[bad[:10]]))
        raise PrunekitError(
            f"{name} ['cluster'] leaves rows {shown} unclustered (-1); "
            "score k-means with the same --drop-nonfinite setting."
        )
    return labels


def check_in_memory(need: int, method: str, n: int) -> None:
    """Refuse a greedy pass over all ``n`` rows at once when it does not fit the budget."""
    budget = memory_budget()
    if need > budget:
        raise PrunekitError(
            f"{method} without --within holds all {n} rows in memory: {human(need)}, more than "
            f"the memory budget of {human(budget)}. Use --within SCORES (the clusters of "
            "'prunekit score EMB -m kmeans'; memory is then bounded by the largest cluster) "
            "or raise --memory."
        )


def per_cluster_orders(
    emb: Embeddings,
    clusters: np.ndarray,
    task,
    params: object,
    *,
    max_keep: int | None,
    row_bytes: int,
    desc: str,
    progress: bool,
) -> list[np.ndarray]:
    """Each cluster's pick order (compact positions), clusters in increasing id.

    :func:`prunekit.compute.grouping.map_clusters` runs
    ``task((grouped, (params, picks)), (i, batch))``, which returns the concatenated local
    orders of the clusters of one batch (``picks[g]`` picks in cluster g), with as many
    batches at a time as the memory budget holds (a batch costs ``row_bytes`` per row of
    its largest cluster); each finished batch is recorded for ``--resume``.
    """
    ids, counts = np.unique(clusters, return_counts=True)
    sizes = counts.astype(np.int64)
    largest = int(sizes.max())
    need, budget = largest * row_bytes, memory_budget()
    if need > budget:
        raise PrunekitError(
            f"{desc} --within: cluster {int(ids[int(np.argmax(sizes))])} has {largest} rows and "
            f"needs {human(need)}, more than the memory budget of {human(budget)}. Raise "
            "--memory, or cluster into more, smaller clusters (a larger --k)."
        )
    picks = [resolve_max_keep(max_keep, int(s)) for s in sizes]
    grouped, results = map_clusters(emb, clusters, task, (params, picks), task_bytes=need,
                                    desc=desc, progress=progress)
    orders = []
    for batch, flat in results:
        at = 0
        for g in batch:
            orders.append(grouped.rows_of(g)[flat[at : at + picks[g]]])
            at += picks[g]
    return orders


def within_param(within: str | os.PathLike | Scores) -> str:
    """How ``within`` is recorded in a scores file's params."""
    return "<Scores>" if isinstance(within, Scores) else str(within)


def order_scores(order: np.ndarray, n: int) -> np.ndarray:
    """score = n - position for picked items (first pick = n), -inf for unpicked ones."""
    score = np.full(n, -np.inf)
    score[order] = n - np.arange(order.size, dtype=np.float64)
    return score


def interleave(orders: list[np.ndarray]) -> np.ndarray:
    """Merge per-group pick orders round by round.

    Round r holds the r-th pick of every group that has one, groups in list order: the
    merged order is o_0[0], o_1[0], ..., o_0[1], o_1[1], ... Every group's picks keep their
    relative order, so a top-q per group by the resulting scores is that group's prefix.
    """
    if not orders:
        return np.zeros(0, dtype=np.int64)
    pos = np.concatenate(orders).astype(np.int64)
    rank = np.concatenate([np.arange(o.size) for o in orders])
    group = np.concatenate([np.full(o.size, g) for g, o in enumerate(orders)])
    return pos[np.lexsort((group, rank))]


def _faiss():
    try:
        import faiss
    except ImportError:  # numpy fallback below
        return None
    return faiss


def row_dots(x: np.ndarray, v: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out[i] = x[i] . v for C-contiguous float32 ``x`` (n, d), ``v`` (d,), ``out`` (n,).

    faiss's SIMD kernel streams ``x`` once at memory bandwidth; OpenBLAS's sgemv on a
    row-major matrix measured about 2x slower here. numpy when faiss is missing.
    """
    faiss = _faiss()
    if faiss is None:
        return np.dot(x, v, out=out)
    faiss.fvec_inner_products_ny(faiss.swig_ptr(out), faiss.swig_ptr(v), faiss.swig_ptr(x),
                                 x.shape[1], x.shape[0])
    return out


def row_sqdist(x: np.ndarray, p: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out[i] = ||x[i] - p||^2 for C-contiguous float32 ``x`` (n, d), ``p`` (d,), ``out`` (n,).

    Computed from the differences (no |x|^2 - 2 x.p + |p|^2 cancellation), in one pass.
    """
    faiss = _faiss()
    if faiss is None:
        np.dot(x, p, out=out)
        out *= -2.0
        out += np.einsum("ij,ij->i", x, x)
        out += p @ p
        return np.maximum(out, 0.0, out=out)
    faiss.fvec_L2sqr_ny(faiss.swig_ptr(out), faiss.swig_ptr(p), faiss.swig_ptr(x),
                        x.shape[1], x.shape[0])
    return out
