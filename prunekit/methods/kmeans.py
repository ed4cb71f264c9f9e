"""``kmeans``: cluster, then score each item by its distance to its own centroid.

Larger score = kept first, so the natural order keeps the items FURTHEST from their
centroid (hard, atypical); ``select --invert`` keeps the nearest (prototypical) ones.
Together with ``select --balance clusters`` this is the paper's balanced clustering (Cb).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from prunekit.compute.cluster import (
    BACKENDS,
    SEEDINGS,
    assign,
    auto_restarts,
    check_k,
    check_sample_fits,
    fit_chunk_rows,
    kmeans_streamed,
    recluster_threads,
    resolve_backend,
    sample_bytes,
    sample_in_memory,
    sample_plan,
    seeding_flops,
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
    Param("backend", "choice", "auto",
          "Lloyd implementation: auto = chunked (chunk tasks on the engine: parallel, the same "
          "bytes on any number of workers); faiss or sklearn on one thread of this machine.",
          choices=BACKENDS),
    Param("restarts", "int", None,
          "Independent seedings; the lowest inertia wins. Default: from the problem size "
          "(10 for small and medium data, down to 1 for large).", low=1, high=1000, nullable=True),
    Param("seeding", "choice", "parallel",
          "parallel: k-means|| over the whole sample (chunk tasks), then the best of up to 10 "
          "weighted greedy k-means++ runs on its candidates; subsample: greedy k-means++ on "
          "max(4096, 8 k) rows of the sample.", choices=SEEDINGS),
    Param("sample", "int", None,
          "Rows seeding and Lloyd run on. Default: max(256 k, 256 MiB of float32 rows), at "
          "most all rows; never shrunk to fit --memory (refused instead). Above 1 GiB as "
          "float32 they live in a scratch file, not in memory.",
          low=1, nullable=True),
    Param("full_passes", "int", 0,
          "Streamed Lloyd passes over all rows after the sample's Lloyd iterations.",
          low=0, high=1000),
)



PROBE_K_MAX = 512


def kmeans_probe(dim: int, n: int, p: dict) -> dict[str, float]:
    """``kmeans_k``, and the flop/s of one k-means task at that k on one thread, each timed
    on the kernel the run's tasks call, on one fit chunk of random unit rows
    (:func:`~prunekit.compute.cluster.fit_chunk_rows`): ``lloyd_flops`` (a Lloyd chunk:
    nearest centroid and per-cluster sums, ``2 m k d``), ``assign_flops_1`` (labels and
    distances), ``seeding_flops`` (a k-means|| round: distances to ``2k`` new candidates,
    ``2 m d 2k``) and ``recluster_flops`` (one weighted greedy k-means++ over the expected
    candidates, :func:`~prunekit.compute.cluster.seeding_flops`).
    """
    from threadpoolctl import threadpool_limits

    from prunekit.compute import cluster as kc
    from prunekit.runtime.probe import repeat

    k = min(int(p["k"]), PROBE_K_MAX)  # a probe takes seconds; beyond it the GEMM rate serves
    m = fit_chunk_rows(dim, k)  # at least k rows
    rng = np.random.default_rng(0)
    x = kc.normalize_rows(rng.standard_normal((m, dim), dtype=np.float32))
    cent = x[rng.choice(m, k, replace=False)]
    new = x[: min(m, 2 * k)]
    c = kc.expected_candidates(k)
    cand = kc.normalize_rows(rng.standard_normal((c, dim), dtype=np.float32))
    sample, chunk = kc.FitSample.of(x), (0, 0, m)
    with threadpool_limits(limits=1):
        lloyd = repeat(lambda: kc._fit_lloyd_chunk((sample, cent, True), chunk))
        t_assign = repeat(lambda: assign(x, cent, spherical=True))
        spread = repeat(lambda: kc._nearest_chunk((sample, new), chunk))
        greedy = repeat(lambda: kc._greedy_pp(cand, k, np.random.default_rng(0),
                                              weights=np.ones(c)), 0.1)
    flops = 2.0 * m * k * dim
    one_try = seeding_flops(c + 1, k, dim, "parallel")[1]
    return {"kmeans_k": k, "lloyd_flops": flops / lloyd, "assign_flops_1": flops / t_assign,
            "seeding_flops": 2.0 * m * dim * new.shape[0] / spread,
            "recluster_flops": one_try / greedy}


def kmeans_cost(m: CostModel, p: dict) -> Cost:
    """Sample, fit on the sample, optional streamed Lloyd passes, assign.

    The sample is the one k-means will draw (:func:`~prunekit.compute.cluster.sample_plan`,
    from the data and the options) by chunk tasks; a sorted gather of ``s`` of ``n`` rows
    reads ``1 - exp(-s chunk / n)`` of every chunk. The fit's peak is the memory k-means
    checks against the budget (:func:`~prunekit.compute.cluster.sample_bytes`): a plan
    that does not fit it is a run that is refused. A restart of the fit costs ``iters x
    2 s k d`` flops of Lloyd and ``2 s k d`` of the sample's assignment, spread over its
    chunks (:func:`~prunekit.compute.cluster.fit_chunk_rows`: at most one task a chunk; one
    thread for faiss and scikit-learn), plus its seeding
    (:func:`~prunekit.compute.cluster.seeding_flops`: k-means||'s distance passes spread over
    the chunks, its re-clustering tries one task each), at the probed k-means rates when
    the probe ran at this ``k``, else at the one-thread GEMM rate (``iters`` is a bound:
    Lloyd stops once it converges). A streamed pass does ``2 n k d`` flops after each
    task's float32 copy of its rows, one chunk (and its distances) per task; for a folder
    output the assignment is one task a part.
    """
    check_k(int(p["k"]), m.n)
    k, iters, full = int(p["k"]), int(p["iters"]), int(p["full_passes"])
    seeding, backend = p["seeding"], resolve_backend(p["backend"])
    sp = sample_plan(m.n, k, m.d, p["sample"])
    s = sp.rows
    restarts = int(p["restarts"] or auto_restarts(s, k, m.d, iters, seeding))
    in_memory = sample_in_memory(s, m.d, backend)
    r = m.rates
    if s >= m.n:
        frac_read, sample_note = 1.0, "the sample is every row: read them once"
    else:
        frac_read = 1.0 - math.exp(-s / m.n * m.chunk)  # share of each chunk a sorted gather spans
        sample_note = f"{s:,} of {m.n:,} rows, drawn chunk by chunk"
    if not in_memory:
        sample_note += f"; {human(4 * s * m.d)} scratch file in the work directory"
    measured = m.kernel("kmeans_k") == k  # the probe's k-means rates hold at its k only
    lloyd_rate = (measured and m.kernel("lloyd_flops")) or r.gemm_flops_1
    seed_rate = (measured and m.kernel("seeding_flops")) or r.gemm_flops_1
    assign_rate = (measured and m.kernel("assign_flops_1")) or r.gemm_flops_1
    recluster_rate = (measured and m.kernel("recluster_flops")) or seed_rate
    one = 2.0 * s * k * m.d  # flops of one Lloyd iteration (and of assigning the sample)
    chunks = math.ceil(s / fit_chunk_rows(m.d, k))
    spread, one_try, tries = seeding_flops(s, k, m.d, seeding)

    def fit_seconds(workers: int) -> float:
        tasks = min(workers, chunks)
        lloyd = iters * one / (lloyd_rate * (tasks if backend == "chunked" else 1))
        threads = recluster_threads(workers, tries) if seeding == "parallel" else 1
        seed = (spread / (seed_rate * tasks)
                + math.ceil(tries / min(workers, tries)) * one_try / (recluster_rate * threads))
        return restarts * (lloyd + seed + one / (assign_rate * tasks))

    fit = sample_bytes(s, k, m.d, in_memory=in_memory, seeding=seeding)
    held = s * m.d * 4 if in_memory else 0  # the sample as float32
    pass_flops = 2.0 * m.n * k * m.d
    task = m.chunk_bytes(4.0 * k)  # plus the chunk's distances to every centroid
    local_peak = task * m.local * m.in_flight
    where = "chunk tasks" if backend == "chunked" else f"{backend} on one thread"
    steps = [
        Step("sample", frac_read, frac_read * m.read(), frac_read * m.read(m.ray),
             int(held + m.chunk_bytes()), sample_note),
        Step("lloyd on sample", 0, fit_seconds(m.local), fit_seconds(m.ray), fit,
             f"k={k}, {seeding} seeding, {iters} iterations x {restarts} restart(s), "
             f"{where} ({chunks} chunk(s))"),
    ]
    if full:
        steps.append(Step("full lloyd passes", full,
                          full * m.stream(pass_flops, m.local, 1, assign_rate),
                          full * m.stream(pass_flops, m.ray, m.ray, assign_rate),
                          int(local_peak + m.local * k * m.d * 8),
                          f"{full} streamed pass(es) of per-centroid sums"))
    # a folder output: one task a part, which writes it (plan adds its "write parts" step)
    here, there = (min(m.local, m.parts), min(m.ray, m.parts)) if m.folder else (m.local, m.ray)
    steps.append(Step("assign", 1, m.stream(pass_flops, here, 1, assign_rate),
                      m.stream(pass_flops, there, there, assign_rate),
                      int(local_peak), f"every row to its nearest of {k} centroids; "
                      f"{human(task)} per Ray worker"))
    notes = [] if s >= m.n else [f"k-means sample: {sp.drawn}."]
    if fit > m.budget:
        notes.append(f"k-means would refuse: its fit on {s:,} rows needs {human(fit)}; raise "
                     "--memory to that, or give a smaller --sample.")
    # score, cluster, distance, positions; none on the driver when the tasks write parts
    return Cost(steps, 0 if m.folder else 8 * m.n * 4, notes)


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
    seeding: str = "parallel",
    sample: int | None = None,
    full_passes: int = 0,
    parts: ScoresPartSink | None = None,
) -> MethodResult:
    """Spherical (default) or Euclidean k-means; score = distance to the own centroid.

    The distance is 1 - cos(x, c) when spherical, ||x - c|| otherwise. Seeding and Lloyd
    run on a sample (all rows when they fit) as chunk tasks, then every row is assigned in
    one streamed pass (see :func:`prunekit.compute.cluster.kmeans_streamed`). Writes ``cluster``,
    ``centroids`` and ``centroid_distance`` too. With ``parts`` (a folder output), the
    assignment pass writes each part where it is computed and the result carries the parts'
    records and the rows per cluster instead of per-row arrays.
    """
    plan = sample_plan(emb.n, int(k), emb.dim, sample)  # from the data and options alone
    check_sample_fits(plan, int(k), emb.dim, memory_budget(), backend=backend, seeding=seeding)
    res = kmeans_streamed(
        emb.reader, emb.usable_rows, int(k), plan=plan, iters=int(iters), seed=seed,
        spherical=bool(spherical), backend=backend, restarts=restarts, seeding=seeding,
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
            "restarts": restarts, "restarts_used": res.restarts, "seeding": seeding,
            "sample": sample,
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
