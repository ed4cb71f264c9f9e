"""``semdedup``: semantic deduplication (Abbas et al. 2023) as a score per item.

Cluster with spherical k-means (or take the clusters of an earlier k-means scores file,
``within``), put each cluster in keep order (``keep``: hard = furthest from the centroid
first, easy = nearest first, random = seeded), and score

    score_j = 1 - max over items i earlier in j's cluster of cos(x_i, x_j)   (2 for the first).

SemDeDup at threshold eps removes exactly the items with score < eps (``select --eps``);
``select --pr P`` removes the most redundant items first. See :mod:`prunekit.dedup`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .. import dedup
from ..budget import memory_budget
from ..embeddings import Embeddings
from ..engine import chunk_rows_for
from ..engine import current as current_engine
from ..errors import PrunekitError
from ..grouping import GroupedRows, batches, group_rows, layout
from ..memory import human
from ..params import Param
from ..resume import current as current_work
from ..scores import Scores, load_scores
from . import REGISTRY, MethodResult, register
from .greedy import within_clusters, within_param
from .kmeans import DEFAULT_ITERS, DEFAULT_K

# Similarity blocks beyond this size do not make the products faster.
MAX_BLOCK_BYTES = 256 << 20

PARAMS = (
    Param("k", "int", DEFAULT_K, "Number of clusters.", low=1),
    Param("iters", "int", DEFAULT_ITERS, "Lloyd iterations.", low=1, high=100_000),
    Param("keep", "choice", "hard",
          "Which item of a group of near-duplicates survives: hard = furthest from the "
          "centroid, easy = nearest, random = seeded.", choices=dedup.KEEPS),
    Param("within", "path", None,
          "Use the clusters of this k-means scores file instead of clustering again.",
          nullable=True, objects=(Scores,)),
)


@register("semdedup", params=PARAMS)
def semdedup_scores(
    emb: Embeddings,
    *,
    seed: int = 0,
    progress: bool = True,
    k: int = DEFAULT_K,
    iters: int = DEFAULT_ITERS,
    keep: str = "hard",
    within: str | os.PathLike | Scores | None = None,
) -> MethodResult:
    """SemDeDup: score = cosine distance to the nearest item earlier in its cluster's keep order.

    Writes ``cluster`` (and, when it clusters itself, ``centroids`` and
    ``centroid_distance``), so ``select --balance clusters`` works on the result too.
    """
    params: dict = {"keep": keep}
    if within is None:
        km = REGISTRY["kmeans"].fn(emb, seed=seed, progress=progress, k=k, iters=iters)
        clusters, distance = km.cluster, km.centroid_distance
        result = MethodResult(score=None, cluster=clusters, centroids=km.centroids,
                              centroid_distance=distance)
        params.update(k=k, iters=iters, kmeans_inertia=km.params.get("inertia"))
    else:
        clusters = within_clusters(emb, within)
        distance = _within_distance(emb, within)
        result = MethodResult(score=None, cluster=clusters)
        params["within"] = within_param(within)
    result.score = cluster_scores(emb, clusters, distance, keep=keep, seed=seed, progress=progress)
    params["duplicates"] = dedup.duplicate_counts(result.score, clusters=clusters)
    result.params = params
    return result


def _within_distance(emb: Embeddings, within: str | os.PathLike | Scores) -> np.ndarray | None:
    """The k-means file's distance to the own centroid, when it has one for every row."""
    src = within if isinstance(within, Scores) else load_scores(within)
    if src.centroid_distance is None:
        return None
    d = np.asarray(src.centroid_distance, dtype=np.float64)[emb.rows]
    return d if np.isfinite(d).all() else None


def cluster_scores(emb: Embeddings, clusters: np.ndarray, distance: np.ndarray | None, *,
                   keep: str, seed: int, progress: bool) -> np.ndarray:
    """SemDeDup scores of the usable rows, one batch of clusters per engine task.

    The rows are grouped by cluster on disk once (:mod:`prunekit.grouping`), so a task
    reads its clusters' rows with one read each and memory is bounded by the largest
    cluster; each finished batch is recorded for ``--resume``. ``distance`` None: the
    cosine distance to the cluster's normalised mean orders the items. The scores equal
    :func:`prunekit.dedup.semdedup` on the same rows.
    """
    engine, work = current_engine(), current_work()
    lay = layout(clusters)
    offsets = lay[1]
    sizes = np.diff(offsets)
    src = emb.source_obj
    block, limit = _plan(int(sizes.max()), src.dim)
    tmp = None if work.enabled else tempfile.mkdtemp(prefix="prunekit-semdedup-")
    path = work.scratch("semdedup.rows") if tmp is None else Path(tmp) / "semdedup.rows"
    try:
        if work.load_json("semdedup-grouped") is None or not path.exists():
            grouped = group_rows(src, emb.rows, clusters, path, chunk_rows=chunk_rows_for(src.dim),
                                 progress=progress, lay=lay)
            work.save_json("semdedup-grouped", {"rows": int(emb.rows.size)})
        else:
            grouped = GroupedRows(str(path), src.dim, np.dtype(src.dtype), *lay)
        plan = list(enumerate(batches(sizes)))
        done = {i: work.load(f"semdedup/{i:08d}") for i, _ in plan}
        todo = [item for item in plan if done[item[0]] is None]
        shared = (grouped, distance, keep, int(seed), block)
        results = engine.map(_batch_task, todo, shared, desc="semdedup", progress=progress,
                             limit=limit)
        with contextlib.closing(results):
            for (i, _), local in zip(todo, results, strict=True):
                work.save(f"semdedup/{i:08d}", local)
                done[i] = local
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    score = np.empty(emb.n, dtype=np.float64)
    for i, batch in plan:
        score[grouped.members[offsets[batch[0]] : offsets[batch[-1] + 1]]] = done[i]
    return score


def _batch_task(shared: tuple, item: tuple[int, list[int]]) -> np.ndarray:
    """Scores of one batch of clusters, concatenated in group order (a pure function)."""
    grouped, distance, keep, seed, block = shared
    out = []
    for g in item[1]:
        x = dedup.normalized(grouped.read(g), names=grouped.rows_of(g))
        if distance is None:
            mean = x.mean(axis=0, dtype=np.float64)
            norm = np.linalg.norm(mean)
            d = 1.0 - x @ (mean / norm if norm > 0 else mean)
        else:
            d = distance[grouped.rows_of(g)]
        order = dedup.keep_order(d, keep, seed=seed, cluster=int(grouped.clusters[g]))
        out.append(dedup.semdedup_cluster(x, order, block_bytes=block))
    return np.concatenate(out)


def _plan(largest: int, dim: int) -> tuple[int, int]:
    """Similarity block size and clusters in flight from the memory budget.

    One cluster task holds its gathered rows twice (as read and in keep order) plus one
    similarity block; a cluster whose rows alone exceed half the budget is refused.
    """
    budget = memory_budget()
    rows = largest * dim * 4 * 2
    if rows > budget // 2:
        raise PrunekitError(
            f"the largest cluster has {largest} rows ({human(rows)} as float32, twice) and does "
            f"not fit half the memory budget ({human(budget)}); use more clusters (a larger --k) "
            "or raise --memory."
        )
    block = int(min(MAX_BLOCK_BYTES, max(4 * largest, budget // 2 - rows)))  # >= one row
    return block, max(1, budget // (rows + block))
