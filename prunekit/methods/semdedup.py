"""``semdedup``: semantic deduplication (Abbas et al. 2023) as a score per item.

Cluster with spherical k-means (or take the clusters of an earlier k-means scores file,
``within``), put each cluster in keep order (``keep``: hard = furthest from the centroid
first, easy = nearest first, random = seeded), and score

    score_j = 1 - max over items i earlier in j's cluster of cos(x_i, x_j)   (2 for the first).

SemDeDup at threshold eps removes exactly the items with score < eps (``select --eps``);
``select --pr P`` removes the most redundant items first. See :mod:`prunekit.methods.dedup`.

A ``within`` file or folder is read column-wise by the tasks (its ``centroid_distance``
travels with the rows through the grouping). With a folder output the workers write the
parts (:func:`prunekit.methods.greedy.write_parts`); clustering itself, semdedup then writes
its k-means to a scratch folder first and groups by that, so no per-row array reaches the
driver either way.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from prunekit.compute.grouping import (
    ClusterColumn,
    GroupedRows,
    cluster_column,
    map_clusters,
    write_keyed,
)
from prunekit.errors import PrunekitError
from prunekit.io.embeddings import Embeddings
from prunekit.methods import REGISTRY, MethodResult, Summary, dedup, register
from prunekit.methods.greedy import (
    ORDER_SCORES,
    Out,
    cluster_counts,
    grouped_clusters,
    within_column,
    within_param,
    write_parts,
)
from prunekit.methods.kmeans import DEFAULT_ITERS, DEFAULT_K
from prunekit.params import Param, validate
from prunekit.runtime.budget import memory_budget
from prunekit.runtime.costs import Cost, CostModel, cluster_sizes
from prunekit.runtime.memory import human
from prunekit.runtime.scratch import scratch_folder
from prunekit.selection.scores import Scores, load_scores

# The similarity block of every cluster task: a constant, so that a cluster is cut into
# the same blocks (and its float32 products round the same way) whatever the memory budget,
# and the scores equal a plain loop over the clusters in memory. A cluster of m rows is scored in blocks of
# dedup.block_rows(m) rows, min(this, 4 m^2) bytes.
MAX_BLOCK_BYTES = dedup.BLOCK_BYTES

PARAMS = (
    Param("k", "int", DEFAULT_K, "Number of clusters.", low=1),
    Param("iters", "int", DEFAULT_ITERS, "Lloyd iterations.", low=1, high=100_000),
    Param("keep", "choice", "hard",
          "Which item of a group of near-duplicates survives: hard = furthest from the "
          "centroid, easy = nearest, random = seeded.", choices=dedup.KEEPS),
    Param("within", "path", None,
          "Use the clusters of this k-means scores file (or folder) instead of clustering "
          "again.", nullable=True, objects=(Scores,), dir_okay=True),
)

PROBE_ROWS = 2048  # the cluster the probe deduplicates


def semdedup_probe(dim: int, n: int, p: dict) -> dict[str, float]:
    """``semdedup_flops_1``: the per-cluster pass on one thread, counted as ``s^2 d`` flops
    for a cluster of s rows (the similarities' upper triangle), measured on ``PROBE_ROWS``
    random rows; without ``within`` also the k-means kernels at ``k``."""
    from threadpoolctl import threadpool_limits

    from prunekit.runtime.probe import repeat

    out = {} if p["within"] is not None else REGISTRY["kmeans"].probe(dim, n, _kmeans_params(p))
    x = dedup.normalized(np.random.default_rng(0).standard_normal((PROBE_ROWS, dim)))
    order = np.arange(PROBE_ROWS)
    with threadpool_limits(limits=1):
        t = repeat(lambda: dedup.semdedup_cluster(x, order, block_bytes=_block_bytes(PROBE_ROWS)),
                   0.1)
    out["semdedup_flops_1"] = float(PROBE_ROWS) ** 2 * dim / t
    return out


def semdedup_cost(m: CostModel, p: dict) -> Cost:
    """k-means (unless ``within``), grouping by cluster, then one task a batch of clusters.

    A cluster of s rows costs ``s^2 d`` flops at the probed rate (else the one-thread GEMM
    rate) and holds its rows as read and twice as float32 (normalised, in keep order) plus
    one similarity block and its mask: ``s d (item + 8) + 1.25 min(MAX_BLOCK_BYTES, 4 s^2)``.
    Without ``within`` the sizes are unknown before k-means and taken as equal (n / k).
    """
    notes: list[str] = []
    steps = []
    if p["within"] is None:
        km = REGISTRY["kmeans"].cost(m, _kmeans_params(p))
        steps, notes = km.steps, km.notes
        k = max(1, min(int(p["k"]), m.n))
        sizes = np.full(k, m.n // k, dtype=np.int64) + (np.arange(k) < m.n % k)
        notes = notes + [f"semdedup: cluster sizes taken as equal ({m.n // k:,} rows); a "
                         "cluster c times larger takes c^2 times longer (plan with --within "
                         "KMEANS_SCORES for the real sizes)."]
    else:
        sizes = cluster_sizes(p["within"])
    s = sizes.astype(np.float64)
    rate = m.kernel("semdedup_flops_1") or m.rates.gemm_flops_1
    largest = float(s.max())
    task = largest * m.d * (m.item + 8) + 1.25 * _block_bytes(largest)
    steps = steps + m.per_cluster("per-cluster dedup", sizes, s * s * m.d / rate, int(task),
                                  ", one similarity block")
    # score, cluster, distance, positions, members, kept; none when the tasks write parts
    return Cost(steps, 0 if m.folder else 8 * m.n * 6, notes)


def _kmeans_params(p: dict) -> dict:
    """The k-means parameters semdedup clusters with (the rest at their defaults)."""
    return validate("kmeans", REGISTRY["kmeans"].params, {"k": p["k"], "iters": p["iters"]})


def _block_bytes(rows: float) -> float:
    """A similarity block of a cluster of ``rows``: the whole triangle, up to the cap."""
    return min(float(MAX_BLOCK_BYTES), 4.0 * rows * rows)


def semdedup_detail(p: dict) -> str:
    counts = ", ".join(f"{r['eps']:g}: {r['removed']}" for r in p["duplicates"])
    return f" (near-duplicates removed at eps {counts}; select --eps E applies one)"


def semdedup_inspect(scores: Scores, kept: np.ndarray) -> dict:
    """inspect's ``duplicates``: SemDeDup's removals per eps, and how many the selection keeps."""
    return {"duplicates": dedup.duplicate_counts(scores.score, clusters=scores.cluster, kept=kept)}


def semdedup_render(report: dict) -> list[str]:
    return dedup.render_counts(report["duplicates"]) if "duplicates" in report else []


@register("semdedup", params=PARAMS, cost=semdedup_cost, probe=semdedup_probe,
          summary=Summary(detail=semdedup_detail, inspect=semdedup_inspect,
                          render=semdedup_render))
def semdedup_scores(
    emb: Embeddings,
    *,
    seed: int = 0,
    progress: bool = True,
    k: int = DEFAULT_K,
    iters: int = DEFAULT_ITERS,
    keep: str = "hard",
    within: str | os.PathLike | Scores | None = None,
    parts=None,
) -> MethodResult:
    """SemDeDup: score = cosine distance to the nearest item earlier in its cluster's keep order.

    Writes ``cluster`` (and, when it clusters itself, ``centroids`` and
    ``centroid_distance``), so ``select --balance clusters`` works on the result too.
    With ``parts`` (a folder output) the workers write the parts.
    """
    if parts is not None:
        return _scores_to_parts(emb, parts, seed=seed, progress=progress, k=k, iters=iters,
                                keep=keep, within=within)
    params: dict = {"keep": keep}
    if within is None:
        km = REGISTRY["kmeans"].fn(emb, seed=seed, progress=progress, k=k, iters=iters)
        clusters, distance = km.cluster, km.centroid_distance
        result = MethodResult(score=None, cluster=clusters, centroids=km.centroids,
                              centroid_distance=distance)
        params.update(k=k, iters=iters, kmeans_inertia=km.params.get("inertia"))
    else:
        clusters = within_column(emb, within, carry="centroid_distance")
        distance = _within_distance(emb, within) if isinstance(within, Scores) else None
        result = MethodResult(score=None)
        params["within"] = within_param(within)
    result.score, result.cluster = cluster_scores(emb, clusters, distance, keep=keep, seed=seed,
                                                  progress=progress)
    params["duplicates"] = dedup.duplicate_counts(result.score, clusters=result.cluster)
    result.params = params
    return result


def _scores_to_parts(emb: Embeddings, parts, *, seed: int, progress: bool, k: int,
                     iters: int, keep: str, within) -> MethodResult:
    """SemDeDup written by the workers: the clusters of ``within``, or of a k-means written
    to a scratch folder first (its distances carried as the ``centroid_distance`` column)."""
    from prunekit.io.dataset import PartsReader
    from prunekit.methods import score_to_folder

    params: dict = {"keep": keep}
    centroids, own = None, within is None
    # Its own k-means goes to a scratch folder (a crashed run's is removed first), removed
    # once the parts are written.
    with scratch_folder("semdedup") if own else contextlib.nullcontext() as scratch:
        if own:
            km = score_to_folder(emb, "kmeans", scratch / "kmeans", seed=seed,
                                 progress=progress, k=k, iters=iters)
            centroids = PartsReader(km.path, kind="scores").array("centroids")
            params.update(k=k, iters=iters, kmeans_inertia=km.params.get("inertia"))
            clusters = cluster_column(km.path, emb.n_total, where="semdedup's k-means",
                                      carry="centroid_distance")
        else:
            clusters = within_column(emb, within, carry="centroid_distance")
            params["within"] = within_param(within)
        distance = _within_distance(emb, within) if isinstance(within, Scores) else None
        infos, counts, dup = _cluster_parts(emb, clusters, distance, parts, keep=keep,
                                            seed=seed, progress=progress, own=own,
                                            k=0 if centroids is None else centroids.shape[0])
    n = emb.n
    params["duplicates"] = [
        {"eps": float(e), "removed": int(r), "kept": n - int(r),
         "fraction": float(r / n) if n else 0.0, "clusters_affected": int(a)}
        for e, r, a in zip(dedup.DEFAULT_EPS, dup[0], dup[1], strict=True)]
    return MethodResult(score=None, centroids=centroids, parts=infos, counts=counts,
                        params=params)


def _within_distance(emb: Embeddings, within: str | os.PathLike | Scores) -> np.ndarray | None:
    """The k-means file's distance to the own centroid, when it has one for every row."""
    src = within if isinstance(within, Scores) else load_scores(within)
    if src.centroid_distance is None:
        return None
    d = np.asarray(src.centroid_distance, dtype=np.float64)[emb.rows]
    return d if np.isfinite(d).all() else None


def cluster_scores(emb: Embeddings, clusters: np.ndarray | ClusterColumn,
                   distance: np.ndarray | None, *, keep: str, seed: int,
                   progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """SemDeDup scores of the usable rows and their cluster ids, one batch of clusters per
    engine task.

    The rows are grouped by cluster on disk once and the batches mapped on the engine
    (:func:`prunekit.compute.grouping.map_clusters`), so a task reads its clusters' rows
    with one read each and memory is bounded by the largest cluster; each finished batch
    is recorded for ``--resume``. ``clusters``: an array, or a scores file's column whose
    carried ``centroid_distance`` orders the items; ``distance`` (an array) orders them
    otherwise, and with neither the cosine distance to the cluster's normalised mean does.
    The scores equal :func:`prunekit.methods.dedup.semdedup_cluster` run on each cluster's
    rows in memory.
    """
    grouped, results = map_clusters(emb, clusters, _batch_task, desc="semdedup",
                                    progress=progress, members=True,
                                    prepare=_prepare(emb, distance, keep, seed, None, False))
    score = np.empty(emb.n, dtype=np.float64)
    offsets = grouped.offsets
    for batch, done in results:
        score[grouped.members[offsets[batch[0]] : offsets[batch[-1] + 1]]] = done
    return score, grouped_clusters(grouped, emb.n)


def _cluster_parts(emb: Embeddings, clusters, distance, parts, *, keep: str, seed: int,
                   progress: bool, own: bool, k: int) -> tuple[list, np.ndarray, np.ndarray]:
    """SemDeDup scores written as parts by the workers (see :func:`cluster_scores`):
    the parts' records, rows per cluster, and per eps of ``dedup.DEFAULT_EPS`` the rows
    removed and the clusters affected (2 x eps)."""
    state: dict = {}
    grouped, results = map_clusters(
        emb, clusters, _batch_task, desc="semdedup", progress=progress,
        prepare=_prepare(emb, distance, keep, seed, state, own),
        valid=lambda i, rec: state["out"].present(i, rec))
    dtype = _records(own)
    infos, _ = write_parts(state["out"], parts, len(results), dtype, "semdedup", progress)
    eps = len(dedup.DEFAULT_EPS)
    dup = np.zeros((2, eps), dtype=np.int64)
    for _, rec in results:  # batch order; integer sums
        dup += np.asarray(rec[1:], dtype=np.int64).reshape(2, eps)
    return infos, cluster_counts(grouped, k), dup


def _records(own: bool) -> np.dtype:
    """What a batch task leaves per row for the parts (with its own k-means' distance)."""
    return np.dtype(ORDER_SCORES.descr + ([("centroid_distance", "<f8")] if own else []))


def _prepare(emb, distance, keep, seed, state, own):
    """``map_clusters``'s ``prepare``: a task's memory and the tasks' shared part, with
    an :class:`~prunekit.methods.greedy.Out` when ``state`` (a dict to fill) is given."""

    def prepare(grouped: GroupedRows, scratch: Path) -> tuple[tuple, int]:
        largest = int(grouped.sizes.max())
        block, _ = _plan(largest, emb.reader.dim)
        out = None
        if state is not None:
            out = state["out"] = Out.plan(emb, scratch)
        shared = (distance, keep, int(seed), MAX_BLOCK_BYTES, out, own)
        return shared, 8 * largest * emb.reader.dim + block  # see _plan

    return prepare


def _batch_task(shared: tuple, item: tuple[int, list[int]]) -> np.ndarray:
    """Scores of one batch of clusters, concatenated in group order (a pure function); with
    an ``Out``, left in its folder instead: the file's size, then per eps the rows removed
    and the clusters affected."""
    grouped, (distance, keep, seed, block, out, own) = shared
    scores, dists = [], []
    for g in item[1]:
        x = dedup.normalized(grouped.read(g), names=grouped.rows_of(g))
        d = _keep_distance(grouped, g, x, distance)
        order = dedup.keep_order(d, keep, seed=seed, cluster=int(grouped.clusters[g]))
        scores.append(dedup.semdedup_cluster(x, order, block_bytes=block))
        dists.append(d)
    if out is None:
        return np.concatenate(scores)
    recs = []
    removed = np.zeros((2, len(dedup.DEFAULT_EPS)), dtype=np.int64)
    dtype = _records(own)
    for g, score, d in zip(item[1], scores, dists, strict=True):
        rec = np.zeros(score.size, dtype=dtype)
        rec["key"] = out.positions(grouped.rows_of(g))
        rec["score"], rec["cluster"] = score, grouped.clusters[g]
        if own:  # the carried k-means distance _keep_distance returned
            rec["centroid_distance"] = d
        recs.append(rec)
        gone = score[:, None] < np.asarray(dedup.DEFAULT_EPS)[None, :]
        removed[0] += gone.sum(axis=0)
        removed[1] += gone.any(axis=0)
    size = write_keyed(out.folder, f"scores-{item[0]:08d}", np.concatenate(recs), out.bounds)
    return np.concatenate(([size], removed.ravel())).astype(np.int64)


def _keep_distance(grouped: GroupedRows, g: int, x: np.ndarray,
                   distance: np.ndarray | None) -> np.ndarray:
    """What orders cluster g's items: the caller's distances, the carried k-means ones, or
    the cosine distance to the cluster's normalised mean."""
    if distance is not None:
        return distance[grouped.rows_of(g)]
    carried = grouped.values_of(g)
    if carried is not None:
        if not np.isfinite(carried).all():
            raise PrunekitError(
                "the --within scores' 'centroid_distance' is not finite for rows that have a "
                "cluster; give the scores of 'prunekit score EMB --method kmeans'.")
        return carried
    mean = x.mean(axis=0, dtype=np.float64)
    norm = np.linalg.norm(mean)
    return 1.0 - x @ (mean / norm if norm > 0 else mean)


def _plan(largest: int, dim: int) -> tuple[int, int]:
    """Bytes of the largest task's similarity block (with its mask), clusters in flight.

    One cluster task holds its gathered rows twice (as read and in keep order) plus one
    similarity block. The block follows the data (:data:`MAX_BLOCK_BYTES`), never the
    budget; a task the budget cannot hold is refused with the number.
    """
    budget = memory_budget()
    rows = largest * dim * 4 * 2
    block = int(1.25 * _block_bytes(largest))  # float32 products and a one-byte mask
    if rows + block > budget:
        raise PrunekitError(
            f"the largest cluster has {largest:,} rows: its task holds them twice as float32 "
            f"({human(rows)}) and a similarity block ({human(block)}), {human(rows + block)} "
            f"in all, more than the memory budget of {human(budget)}. Raise --memory to at "
            "least that, or use more, smaller clusters (a larger --k)."
        )
    return block, max(1, budget // (rows + block))
