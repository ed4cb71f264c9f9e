"""``kmeans``: cluster, then score each item by its distance to its own centroid.

Larger score = kept first, so the natural order keeps the items FURTHEST from their
centroid (hard, atypical); ``select --invert`` keeps the nearest (prototypical) ones.
Together with ``select --balance clusters`` this is the paper's balanced clustering (Cb).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from prunekit.compute.cluster import (
    BACKENDS,
    SEED_SAMPLE_MIN,
    SEED_SAMPLE_PER_CLUSTER,
    assign,
    auto_restarts,
    check_k,
    check_sample_fits,
    kmeans,
    kmeans_streamed,
    sample_bytes,
    sample_plan,
)
from prunekit.io.embeddings import Embeddings
from prunekit.methods import MethodResult, Summary, register
from prunekit.params import Param
from prunekit.runtime.budget import memory_budget
from prunekit.runtime.context import current_engine, current_work_dir
from prunekit.runtime.costs import Cost, CostModel, Step
from prunekit.runtime.memory import human
from prunekit.selection.partitioned import ScoresPartSink

DEFAULT_K = 24
DEFAULT_ITERS = 25

PARAMS = (
    Param("k", "int", DEFAULT_K, "Number of clusters.", low=1),
    Param("iters", "int", DEFAULT_ITERS, "Lloyd iterations (on the sample held in memory).",
          low=1, high=100_000),
    Param("spherical", "bool", True,
          "Spherical: rows L2-normalised, centroids renormalised, score = 1 - cos; "
          "Euclidean: score = ||x - c||.", negation="euclidean"),
    Param("backend", "choice", "auto", "Lloyd implementation (auto = faiss when installed).",
          choices=BACKENDS),
    Param("restarts", "int", None,
          "Independent seedings; the lowest inertia wins. Default: from the problem size "
          "(10 for small and medium data, down to 1 for large).", low=1, high=1000, nullable=True),
    Param("sample", "int", None,
          "Rows held in memory for seeding and Lloyd. Default: max(256 k, 256 MiB of float32 "
          "rows), at most all rows; never shrunk to fit --memory (refused instead).",
          low=1, nullable=True),
    Param("full_passes", "int", 0,
          "Streamed Lloyd passes over all rows after the sample's Lloyd iterations.",
          low=0, high=1000),
)



PROBE_K_MAX = 512


def kmeans_probe(dim: int, n: int, p: dict) -> dict[str, float]:
    """``kmeans_k``, and the flop/s of prunekit's k-means at that k: ``lloyd_flops`` (one
    Lloyd iteration, 2 m k d flops, on the one thread the fit runs on), ``seeding_flops`` (k-means++ seeding,
    2 m k d (2 + ln k) flops), ``assign_flops_1`` (assignment, one thread).

    Runs k-means with 1 and with 3 Lloyd iterations on ``m = max(2k, 4096)`` random rows:
    the difference is two iterations; the rest, less the final assignment, is seeding.
    """
    from threadpoolctl import threadpool_limits

    k = min(int(p["k"]), PROBE_K_MAX)  # a probe takes seconds; beyond it the GEMM rate serves
    m = max(2 * k, 4096)
    x = np.random.default_rng(0).standard_normal((m, dim), dtype=np.float32)
    times = []
    for iters in (1, 3):
        t0 = time.perf_counter()
        res = kmeans(x, k, iters=iters, seed=0, restarts=1, progress=False)
        times.append(time.perf_counter() - t0)
    with threadpool_limits(limits=1):
        t0 = time.perf_counter()
        assign(x, res.centroids, spherical=True)
        t_assign = time.perf_counter() - t0
    flops = 2.0 * m * k * dim
    per_iter = max((times[1] - times[0]) / 2, 1e-9)
    seed_rows = min(m, max(SEED_SAMPLE_MIN, SEED_SAMPLE_PER_CLUSTER * k))
    seeding = max(times[0] - per_iter - t_assign, 1e-9)
    return {"kmeans_k": k, "lloyd_flops": flops / per_iter,
            "seeding_flops": 2.0 * seed_rows * k * dim * (2 + math.log(k)) / seeding,
            "assign_flops_1": flops / max(t_assign, 1e-9)}


def kmeans_cost(m: CostModel, p: dict) -> Cost:
    """Sample, Lloyd on the sample (one thread), optional streamed Lloyd passes, assign.

    The sample is the one k-means will draw (:func:`~prunekit.compute.cluster.sample_plan`,
    from the data and the options); a sorted gather of ``s`` of ``n`` rows reads
    ``1 - exp(-s chunk / n)`` of every chunk. The Lloyd step's peak is the memory k-means
    checks against the budget (:func:`~prunekit.compute.cluster.sample_bytes`): a plan
    that does not fit it is a run that is refused.
    Lloyd costs ``restarts x (iters x 2 s k d + seeding + the sample's assignment)`` flops at
    the probed k-means rates when the probe ran at this ``k``, else at the one-thread GEMM
    rate (the fit runs on one thread, so that its result does not depend on the machine); a
    streamed pass does ``2 n k d`` flops, one chunk (and its distances) per task.
    """
    check_k(int(p["k"]), m.n)
    k, iters, full = int(p["k"]), int(p["iters"]), int(p["full_passes"])
    sp = sample_plan(m.n, k, m.d, p["sample"])
    s = sp.rows
    restarts = int(p["restarts"] or auto_restarts(s, k, m.d, iters))
    r = m.rates
    if s >= m.n:
        frac_read, sample_note = 1.0, "the sample is every row: read them once"
    else:
        frac_read = 1.0 - math.exp(-s / m.n * m.chunk)  # share of each chunk a sorted gather spans
        sample_note = f"{s:,} of {m.n:,} rows, uniform without replacement"
    t_sample = frac_read * m.read()
    seed_rows = min(s, max(SEED_SAMPLE_MIN, SEED_SAMPLE_PER_CLUSTER * k))
    measured = m.kernel("kmeans_k") == k  # the probe's k-means rates hold at its k only
    lloyd_rate = (measured and m.kernel("lloyd_flops")) or r.gemm_flops_1
    seed_rate = (measured and m.kernel("seeding_flops")) or r.gemm_flops_1
    assign_rate = (measured and m.kernel("assign_flops_1")) or r.gemm_flops_1
    one = 2.0 * s * k * m.d  # flops of one Lloyd iteration (and of assigning the sample)
    t_lloyd = restarts * (iters * one / lloyd_rate
                          + 2.0 * seed_rows * k * m.d * (2 + math.log(k)) / seed_rate
                          + one / assign_rate)
    held = s * m.d * (4 + m.item)  # the sample as read and as float32
    fit = sample_bytes(s, k, m.d, m.item)
    pass_flops = 2.0 * m.n * k * m.d
    task = m.chunk_bytes(4.0 * k)  # plus the chunk's distances to every centroid
    local_peak = task * m.local * m.in_flight
    steps = [
        Step("sample", frac_read, t_sample, t_sample, int(held + m.chunk_bytes()),
             sample_note),
        Step("lloyd on sample", 0, t_lloyd, t_lloyd, fit,
             f"k={k}, {iters} iterations x {restarts} restart(s), one thread"),
    ]
    if full:
        steps.append(Step("full lloyd passes", full,
                          full * m.stream(pass_flops, m.local, 1, assign_rate),
                          full * m.stream(pass_flops, m.ray, m.ray, assign_rate),
                          int(local_peak + m.local * k * m.d * 8),
                          f"{full} streamed pass(es) of per-centroid sums"))
    steps.append(Step("assign", 1, m.stream(pass_flops, m.local, 1, assign_rate),
                      m.stream(pass_flops, m.ray, m.ray, assign_rate),
                      int(local_peak), f"every row to its nearest of {k} centroids; "
                      f"{human(task)} per Ray worker"))
    notes = [] if s >= m.n else [f"k-means sample: {sp.drawn}."]
    if fit > m.budget:
        notes.append(f"k-means would refuse: its {s:,} rows need {human(fit)}; raise --memory "
                     "to that, or give a smaller --sample.")
    return Cost(steps, 8 * m.n * 4, notes)  # score, cluster, distance, positions


def kmeans_detail(p: dict) -> str:
    return f" (k={p['k']}, inertia {p['inertia']:.6g}, backend {p['backend_used']})"


@register("kmeans", params=PARAMS, cost=kmeans_cost, probe=kmeans_probe,
          summary=Summary(detail=kmeans_detail))
def kmeans_scores(
    emb: Embeddings,
    *,
    seed: int = 0,
    progress: bool = True,
    k: int = DEFAULT_K,
    iters: int = DEFAULT_ITERS,
    spherical: bool = True,
    backend: str = "auto",
    restarts: int | None = None,
    sample: int | None = None,
    full_passes: int = 0,
    parts: ScoresPartSink | None = None,
) -> MethodResult:
    """Spherical (default) or Euclidean k-means; score = distance to the own centroid.

    The distance is 1 - cos(x, c) when spherical, ||x - c|| otherwise. Seeding and Lloyd
    run on a sample held in memory (all rows when they fit), then every row is assigned in
    one streamed pass (see :func:`prunekit.compute.cluster.kmeans_streamed`). Writes ``cluster``,
    ``centroids`` and ``centroid_distance`` too. With ``parts`` (a folder output), the
    assignment pass writes each part where it is computed and the result carries the parts'
    records and the rows per cluster instead of per-row arrays.
    """
    plan = sample_plan(emb.n, int(k), emb.dim, sample)  # from the data and options alone
    check_sample_fits(plan, int(k), emb.dim, emb.dtype.itemsize, memory_budget())
    res = kmeans_streamed(
        emb.reader, emb.usable_rows, int(k), plan=plan, iters=int(iters), seed=seed,
        spherical=bool(spherical), backend=backend, restarts=restarts,
        full_passes=int(full_passes), engine=current_engine(), work=current_work_dir(),
        progress=progress, sink=None if parts is None else KMeansParts(parts),
    )
    return MethodResult(
        score=res.distance,
        cluster=res.labels,
        centroids=res.centroids,
        centroid_distance=res.distance,
        parts=res.parts,
        counts=res.counts,
        params={
            "k": int(k), "iters": int(iters), "spherical": bool(spherical), "backend": backend,
            "restarts": restarts, "restarts_used": res.restarts, "sample": sample,
            "full_passes": int(full_passes),
            "backend_used": res.backend, "inertia": res.inertia, "best_restart": res.restart,
            **plan.params(),
        },
    )


@dataclass(frozen=True)
class KMeansParts:
    """The assignment pass's sink (:func:`prunekit.compute.cluster.assign_parts`): a part's
    labels and distances become its ``cluster``, ``score`` and ``centroid_distance``."""

    sink: ScoresPartSink

    def open(self, part) -> _KMeansPart:
        return _KMeansPart(self.sink.open(part))


class _KMeansPart:
    def __init__(self, out) -> None:
        self.out = out

    def add(self, start: int, labels: np.ndarray, dist: np.ndarray) -> None:
        self.out.write(start, score=dist, cluster=labels, centroid_distance=dist)

    def close(self):
        return self.out.close()

    def abort(self) -> None:
        self.out.abort()
