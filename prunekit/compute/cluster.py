"""k-means: spherical or Euclidean, k-means++ seeding, restarts, faiss or scikit-learn Lloyd.

Spherical k-means (the default, as in the paper's CLIP clustering) L2-normalises the rows
and renormalises the centroids after every update, so assignment is by cosine similarity.
Euclidean k-means is the textbook Lloyd algorithm on the rows as given.

Seeding is greedy k-means++ (Arthur & Vassilvitskii 2007, with ``2 + ln k`` local trials
as in scikit-learn) on a seeded subsample of at most ``max(SEED_SAMPLE_MIN,
SEED_SAMPLE_PER_CLUSTER * k)`` rows. The Lloyd iterations run in a backend:

* ``faiss`` — ``faiss.Clustering`` started from our centroids, with
  ``max_points_per_centroid`` raised so that every row takes part (faiss would otherwise
  train on a subsample of 256 rows per centroid);
* ``sklearn`` — ``sklearn.cluster.KMeans(init=our centroids, n_init=1, tol=0)``; for
  spherical k-means one ``max_iter=1`` fit per iteration followed by renormalisation
  (scikit-learn has no spherical mode), which costs a second assignment pass per iteration;
* ``auto`` — faiss: measured faster than scikit-learn on 2 cores at equal iterations (see
  docs/performance.md, section "Core"); scikit-learn if faiss cannot be imported.

The final assignment, the distances and the inertia are recomputed by :func:`assign` in
chunks against the final centroids (memory O(chunk x k)), so labels and centroids always
agree whatever the backend. Same inputs and seed give the same bytes.

The whole in-memory fit (seeding, Lloyd, the final assignment) runs on one thread: BLAS,
OpenMP and faiss are held to one thread inside it (:func:`one_thread`). A GEMM or a faiss
search splits its work by the number of threads, and rounding that differs in the last
bit moves rows that lie between two centroids; on one thread the fit is the same on a
laptop and on a 64-core node, whatever ``OMP_NUM_THREADS`` says.

``restarts=None`` picks the number of restarts from the problem size
(:func:`auto_restarts`): ten for small and medium problems, where a single k-means++
seeding too often merges two clusters, one for large ones.

:func:`kmeans_streamed` bounds the memory for data of any size: :func:`kmeans` on a sample
held in memory (:func:`sample_plan`: its size follows the data and the options, never the
memory budget), optional streamed Lloyd passes, and one streamed
assignment pass, chunk tasks running on the current engine (:mod:`prunekit.runtime.engine`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from prunekit.errors import PrunekitError
from prunekit.runtime.context import current_engine
from prunekit.runtime.engine import chunk_rows_for, tasks_fitting
from prunekit.runtime.memory import human
from prunekit.runtime.progress import track
from prunekit.runtime.resume import WorkDir
from prunekit.seeds import role_rng

BACKENDS = ("auto", "faiss", "sklearn")
AUTO_RESTARTS_MAX = 10  # scikit-learn's n_init for k-means++ seeding
# restarts=None: as many restarts (up to the max) as fit in this many multiply-adds of
# seeding and Lloyd together; problems larger than that keep one restart.
AUTO_RESTARTS_WORK = 3e10  # about 10 s of faiss Lloyd on 2 busy cores
SEED_SAMPLE_MIN = 4096
SEED_SAMPLE_PER_CLUSTER = 8
ASSIGN_CHUNK = 8192


@dataclass
class KMeansResult:
    """Centroids (k, d) float32, per-row ``labels`` int64 and ``distance`` to the own centroid.

    ``distance`` is the cosine distance 1 - cos(x, c) for spherical k-means and the
    Euclidean distance ||x - c|| otherwise (float64). ``inertia`` is the sum of squared
    Euclidean distances to the own centroid in the space that was clustered (rows
    normalised when spherical, where ||x - c||^2 = 2 * (1 - cos)).
    """

    centroids: np.ndarray
    labels: np.ndarray
    distance: np.ndarray
    inertia: float
    backend: str
    restart: int  # which restart won (lowest inertia)
    restarts: int = 1  # how many ran
    # Assigned by parts (kmeans_streamed's ``sink``): labels/distance are None, the parts'
    # records and the rows per cluster (summed over the parts) come back instead.
    parts: list | None = None
    counts: np.ndarray | None = None


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalise rows in place (all-zero rows stay zero); returns ``x``."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    norms[norms == 0] = 1.0
    x /= norms[:, None].astype(x.dtype)
    return x


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``faiss`` when importable, else ``sklearn``; checks the name."""
    if backend not in BACKENDS:
        raise PrunekitError(f"unknown k-means backend '{backend}'; choose one of: {', '.join(BACKENDS)}.")
    if backend != "auto":
        return backend
    try:
        import faiss  # noqa: F401
    except ImportError:
        return "sklearn"
    return "faiss"


def check_k(k: int, n: int) -> None:
    """k-means needs 1 <= k <= n rows (also what a plan checks before probing anything)."""
    if not 1 <= k <= n:
        raise PrunekitError(f"k-means needs 1 <= k <= number of rows ({n}); got k={k}. Lower --k.")


def kmeans(
    x: np.ndarray,
    k: int,
    *,
    iters: int = 25,
    seed: int = 0,
    spherical: bool = True,
    backend: str = "auto",
    restarts: int | None = None,
    progress: bool = True,
    copy: bool = True,
) -> KMeansResult:
    """Cluster the rows of ``x`` into ``k`` clusters; keep the restart of lowest inertia.

    ``x`` is used as C-contiguous float32 and normalised when ``spherical``: on a copy,
    unless ``copy=False`` (then a float32 C-contiguous ``x`` is normalised in place).
    Restart ``r`` draws its seeding from ``SeedSequence([seed, r])``. ``restarts=None``
    chooses their number from the problem size (:func:`auto_restarts`).
    """
    n = x.shape[0]
    check_k(k, n)
    if restarts is None:
        restarts = auto_restarts(n, k, x.shape[1], iters)
    if iters < 1 or restarts < 1:
        raise PrunekitError(f"k-means needs --iters >= 1 and --restarts >= 1 (got {iters}, {restarts}).")
    backend = resolve_backend(backend)
    data = np.array(x, dtype=np.float32, order="C") if copy else np.ascontiguousarray(x, np.float32)
    if spherical:
        normalize_rows(data)
    best: KMeansResult | None = None
    for r in track(range(restarts), total=restarts, desc="k-means restarts", progress=progress and restarts > 1):
        rng = np.random.default_rng(np.random.SeedSequence([seed, r]))
        with one_thread(backend):  # the same bytes whatever the machine's thread count
            init = kmeanspp(data, k, rng, spherical=spherical)
            lloyd_seed = int(rng.integers(0, 2**31 - 1))
            if backend == "faiss":
                cent = _lloyd_faiss(data, init, iters, lloyd_seed, spherical)
            else:
                cent = _lloyd_sklearn(data, init, iters, lloyd_seed, spherical)
            labels, dist, sq = assign(data, cent, spherical=spherical)
        inertia = float(sq.sum())
        if best is None or inertia < best.inertia:
            best = KMeansResult(cent, labels, dist, inertia, backend, r, restarts)
    assert best is not None
    return best


def auto_restarts(n: int, k: int, d: int, iters: int) -> int:
    """Restarts for ``restarts=None``: up to 10 while their work stays small.

    One restart costs about ``n k d iters`` multiply-adds of Lloyd plus the seeding's
    ``m k d (2 + ln k)`` on its subsample of m rows. As many restarts as fit in
    :data:`AUTO_RESTARTS_WORK` run, at least 1 and at most :data:`AUTO_RESTARTS_MAX` (the
    ``n_init`` of scikit-learn): small and medium problems get the quality of ten seedings,
    large ones keep the cost of one.
    """
    m = min(n, max(SEED_SAMPLE_MIN, SEED_SAMPLE_PER_CLUSTER * k))
    one = float(n) * k * d * iters + float(m) * k * d * (2 + np.log(k))
    return int(min(AUTO_RESTARTS_MAX, max(1, AUTO_RESTARTS_WORK // max(one, 1.0))))


def kmeanspp(
    data: np.ndarray, k: int, rng: np.random.Generator, *, spherical: bool, trials: int | None = None
) -> np.ndarray:
    """Greedy k-means++ centroids (k, d) float32 from a seeded subsample of ``data``.

    Each step samples ``trials`` (default ``2 + ln k``) candidates with probability
    proportional to the squared distance to the nearest chosen centre and keeps the one
    that lowers the potential most; ``trials=1`` is classic k-means++.
    """
    n = data.shape[0]
    m = min(n, max(SEED_SAMPLE_MIN, SEED_SAMPLE_PER_CLUSTER * k))
    rows = np.arange(n) if m == n else np.sort(rng.choice(n, size=m, replace=False))
    s = data[rows]
    sq = np.einsum("ij,ij->i", s, s, dtype=np.float64).astype(np.float32)
    trials = trials or 2 + int(np.log(k))
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = rng.integers(m)
    closest = _sqdist_to(s, sq, s[chosen[:1]])[:, 0]
    for i in range(1, k):
        cum = np.cumsum(closest, dtype=np.float64)
        if cum[-1] <= 0:  # fewer distinct points than k: take unused rows in order
            unused = np.setdiff1d(np.arange(m), chosen[:i])
            chosen[i:] = unused[: k - i]
            break
        cand = np.searchsorted(cum, rng.random(trials) * cum[-1], side="right")
        np.minimum(cand, m - 1, out=cand)
        d2 = np.minimum(closest[:, None], _sqdist_to(s, sq, s[cand]))
        best = int(np.argmin(d2.sum(axis=0, dtype=np.float64)))
        chosen[i] = cand[best]
        closest = d2[:, best].copy()
    cent = s[chosen].copy()
    if spherical:
        normalize_rows(cent)
    return cent


def _sqdist_to(s: np.ndarray, sq: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (m, len(c)) float32 from rows of ``s`` to rows of ``c``."""
    d2 = s @ c.T
    d2 *= -2.0
    d2 += sq[:, None]
    d2 += np.einsum("ij,ij->i", c, c)[None, :]
    return np.maximum(d2, 0.0, out=d2)


def assign(
    data: np.ndarray, centroids: np.ndarray, *, spherical: bool, chunk: int = ASSIGN_CHUNK
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest centroid of every row, in chunks of ``chunk`` rows (memory O(chunk x k)).

    Returns ``labels`` int64, ``distance`` float64 (cosine distance when ``spherical``,
    else Euclidean) and the squared Euclidean distance float64. The nearest centroid is
    found with a float32 product; the distances to it are recomputed in float64.
    """
    n = data.shape[0]
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    c_sq = np.einsum("ij,ij->i", c, c)
    c64 = c.astype(np.float64)
    labels = np.empty(n, dtype=np.int64)
    dist = np.empty(n, dtype=np.float64)
    sqd = np.empty(n, dtype=np.float64)
    for a in range(0, n, chunk):
        block = data[a : a + chunk]
        prod = block @ c.T
        if spherical:
            lab = np.argmax(prod, axis=1)
        else:
            prod *= -2.0
            prod += c_sq[None, :]
            lab = np.argmin(prod, axis=1)
        diff = block.astype(np.float64) - c64[lab]
        d2 = np.einsum("ij,ij->i", diff, diff)
        labels[a : a + chunk] = lab
        sqd[a : a + chunk] = d2
        if spherical:
            b64 = block.astype(np.float64)
            dist[a : a + chunk] = 1.0 - np.einsum("ij,ij->i", b64, c64[lab])
        else:
            dist[a : a + chunk] = np.sqrt(d2)
    return labels, dist, sqd


@contextlib.contextmanager
def one_thread(backend: str) -> Iterator[None]:
    """BLAS, OpenMP and faiss on one thread inside the block (the backend imported first).

    threadpoolctl limits the libraries loaded when the block starts, so the backend
    (faiss, or scikit-learn's OpenMP Lloyd) is imported before; faiss's own OpenMP count
    is set as well and restored on exit.
    """
    if backend == "faiss":
        import faiss
    else:
        import sklearn.cluster  # noqa: F401  (loads its OpenMP runtime before the limit)
    with threadpool_limits(limits=1):
        if backend != "faiss":
            yield
            return
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            yield
        finally:
            faiss.omp_set_num_threads(before)


def _lloyd_faiss(data: np.ndarray, init: np.ndarray, iters: int, seed: int, spherical: bool) -> np.ndarray:
    import faiss

    n, d = data.shape
    k = init.shape[0]
    clus = faiss.Clustering(d, k)
    clus.niter = iters
    clus.seed = seed
    clus.spherical = spherical
    clus.verbose = False
    clus.max_points_per_centroid = n // k + 1  # never subsample: every row takes part
    clus.min_points_per_centroid = 1  # small clusters are fine (and silence faiss's warning)
    faiss.copy_array_to_vector(np.ascontiguousarray(init, dtype=np.float32).ravel(), clus.centroids)
    index = faiss.IndexFlatIP(d) if spherical else faiss.IndexFlatL2(d)
    clus.train(data, index)
    return faiss.vector_to_array(clus.centroids).reshape(k, d).astype(np.float32)


def _lloyd_sklearn(data: np.ndarray, init: np.ndarray, iters: int, seed: int, spherical: bool) -> np.ndarray:
    import warnings

    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    k = init.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # duplicate points with k > distinct
        if not spherical:
            km = KMeans(k, init=init, n_init=1, max_iter=iters, tol=0.0, random_state=seed)
            return km.fit(data).cluster_centers_.astype(np.float32)
        cent = init
        for _ in range(iters):
            km = KMeans(k, init=cent, n_init=1, max_iter=1, tol=0.0, random_state=seed)
            cent = normalize_rows(km.fit(data).cluster_centers_.astype(np.float32))
        return cent


# ------------------------------------------------------------------ bounded-memory k-means

SAMPLE_PER_CLUSTER = 256  # rows per centroid in the default sample (faiss's own default) ...
SAMPLE_BYTES = 256 << 20  # ... and at least this many bytes of float32 rows
SAMPLE_DRAWN = "uniform without replacement, seeded by (seed, 'kmeans-sample')"
STATE_EVERY_S = 60.0  # how often a streamed Lloyd pass records its running sums


@dataclass
class SamplePlan:
    """How many usable rows k-means holds in memory, how they were drawn, and why that many."""

    rows: int
    of: int
    drawn: str
    rule: str = "given (--sample)"

    def params(self) -> dict:
        return {"sample_rows": self.rows, "sample_of": self.of, "sample_drawn": self.drawn,
                "sample_rule": self.rule}


def default_sample_rows(n: int, k: int, d: int) -> int:
    """``max(256 k, the rows of SAMPLE_BYTES as float32)``, at most ``n``."""
    return int(min(n, max(SAMPLE_PER_CLUSTER * k, SAMPLE_BYTES // (4 * max(1, d)))))


def sample_plan(n: int, k: int, d: int, sample: int | None = None) -> SamplePlan:
    """The usable rows k-means holds in memory: ``sample`` (at most ``n``), else the default.

    The size comes from the data's shape and the options only, never from the memory
    budget or the machine, so a laptop and a cluster fit the same sample; a budget too
    small for it is refused (:func:`check_sample_fits`). The default is
    :func:`default_sample_rows`; fewer than all rows are drawn uniformly without
    replacement with the stream keyed by (seed, ``"kmeans-sample"``) (:func:`kmeans_streamed`).
    """
    if sample is None:
        rows = default_sample_rows(n, k, d)
        rule = (f"default: max({SAMPLE_PER_CLUSTER} k, {SAMPLE_BYTES >> 20} MiB of float32 "
                "rows), at most all rows")
    else:
        rows = min(int(sample), n)
        if rows < min(k, n):
            raise PrunekitError(f"--sample {sample} holds fewer rows than --k {k} clusters; "
                                f"give --sample {k} or more (or leave it out).")
        rule = "given (--sample)"
    return SamplePlan(rows, n, "all rows" if rows >= n else SAMPLE_DRAWN, rule)


def sample_bytes(rows: int, k: int, d: int, itemsize: int) -> int:
    """Memory of the in-memory fit: the rows as read and as float32, per-row labels and
    distances (24 bytes), the centroids in float64."""
    return rows * (d * (4 + itemsize) + 24) + 8 * k * d


def check_sample_fits(plan: SamplePlan, k: int, d: int, itemsize: int, budget: int) -> None:
    """Refuse (PrunekitError, with the number and the fix) a sample the budget cannot hold."""
    need = sample_bytes(plan.rows, k, d, itemsize)
    if need > budget:
        held = "all" if plan.rows >= plan.of else f"a sample of {plan.rows:,} of"
        raise PrunekitError(
            f"k-means holds {held} {plan.of:,} rows in memory ({d} dimensions, "
            f"{itemsize * 8}-bit as stored): {human(need)}, more than the memory budget of "
            f"{human(budget)}. Raise --memory to at least {human(need)}, or give a smaller "
            f"--sample (at least --k {k}); the sample never shrinks to fit the budget, so "
            "that the clusters do not depend on the machine."
        )


def kmeans_streamed(
    src,
    rows: np.ndarray,
    k: int,
    *,
    plan: SamplePlan,
    iters: int = 25,
    seed: int = 0,
    spherical: bool = True,
    backend: str = "auto",
    restarts: int | None = None,
    full_passes: int = 0,
    engine=None,
    work=None,
    chunk_rows: int | None = None,
    budget: int | None = None,
    progress: bool = True,
    sink=None,
) -> KMeansResult:
    """k-means over the usable ``rows`` of a chunked source, holding only a sample in memory.

    When all rows fit (``plan.rows >= n``) and no streamed passes are asked for, this is
    :func:`kmeans` on the rows read into memory. Otherwise:

    1. Seed and run Lloyd (:func:`kmeans`) on ``plan.rows`` usable rows read into memory.
    2. ``full_passes`` streamed Lloyd passes: each chunk adds up its rows per nearest
       centroid (float64), the chunk sums are added in chunk order, the centroids become
       the means (renormalised when spherical; an empty cluster keeps its centroid).
    3. One streamed assignment pass: labels and distances of every row, chunk by chunk.

    ``src`` has ``chunks``/``read``/``read_rows`` (:class:`prunekit.io.source.EmbeddingSource`);
    ``rows`` are the positions of its usable (finite) rows. Chunks run on ``engine`` and
    record their results in ``work`` (a :class:`prunekit.runtime.resume.WorkDir`). Labels and
    distances come back in compact order (one per usable row). As many chunks run at a
    time as :func:`chunk_task_bytes` fit in ``budget`` (default: the memory budget).
    ``rows`` may be an array or anything indexable like one with a ``dropped`` attribute
    (:class:`prunekit.io.embeddings.UsableRows`: no per-row array on the driver).

    With a ``sink`` (``sink.open(part)`` -> an object with ``add(start, labels, distances)``,
    ``close()`` and ``abort()``; it must pickle), step 3 runs one task per part
    (:func:`assign_parts`) and hands the labels and distances to the sink where they are
    computed: the result then has ``parts`` (what each ``close()`` returned) and ``counts``
    instead of ``labels`` and ``distance``. Not in the all-in-memory case (no pass is run).
    """
    engine = engine or current_engine()
    work = work or WorkDir(None)
    fit = {"iters": iters, "seed": seed, "spherical": spherical, "backend": backend,
           "restarts": restarts, "progress": progress}
    if plan.rows >= rows.size and full_passes == 0:
        # Everything fits: in-memory k-means, whose last assignment is the answer (no
        # second pass over the data; the same on every engine, nothing worth recording).
        return kmeans(_float32_rows(src, rows), k, copy=False, **fit)
    cent, info = _sample_centroids(src, rows, k, plan, work, fit)
    dropped = _dropped(src.n_total, rows)
    chunk_rows = chunk_rows or chunk_rows_for(src.dim)
    chunks = src.chunks(chunk_rows)
    limit = tasks_fitting(chunk_task_bytes(chunk_rows, src.dim, src.dtype.itemsize, k), budget)
    for p in range(full_passes):
        nxt = work.load(f"centroids-{p + 1}")
        if nxt is None:
            nxt = _lloyd_pass(src, chunks, cent, spherical, dropped, engine, work, p, limit,
                              progress)
            work.save(f"centroids-{p + 1}", nxt)
        cent = nxt
    if sink is not None:
        parts, counts, inertia = assign_parts(src, chunks, cent, spherical, dropped, engine,
                                              sink, budget, progress)
        return KMeansResult(cent, None, None, inertia, info["backend"], int(info["restart"]),
                            int(info["restarts"]), parts=parts, counts=counts)
    labels, dist, inertia = _assign_pass(src, chunks, cent, spherical, dropped, engine, work,
                                         limit, progress)
    if dropped is not None:
        keep = np.asarray(rows)
        labels, dist = labels[keep], dist[keep]
    return KMeansResult(cent, labels, dist, inertia, info["backend"],
                        int(info["restart"]), int(info["restarts"]))


def _dropped(n_total: int, rows) -> np.ndarray | None:
    """Sorted positions not in ``rows`` (None when every row is usable)."""
    if rows.size >= n_total:
        return None
    dropped = getattr(rows, "dropped", None)  # UsableRows knows them without the array
    return dropped if dropped is not None else np.setdiff1d(np.arange(n_total), rows)


def _float32_rows(src, rows: np.ndarray) -> np.ndarray:
    """``rows`` of ``src`` read into one C-contiguous float32 array."""
    return np.ascontiguousarray(src.read_rows(rows, chunk_rows=chunk_rows_for(src.dim)),
                                dtype=np.float32)


def _sample_centroids(src, rows: np.ndarray, k: int, plan: SamplePlan, work,
                      fit: dict) -> tuple[np.ndarray, dict]:
    """Step 1 of :func:`kmeans_streamed`: :func:`kmeans` (options ``fit``) on the sample,
    or the centroids and facts an earlier run with the same sample size recorded."""
    info = work.load_json("sample")
    if info is not None and info.get("sample_rows") != plan.rows:
        work.clear()  # recorded with another sample size (another --sample): start over
        info = None
    cent = work.load("centroids-0")
    if cent is not None and info is not None:
        return cent, info
    n = rows.size
    if plan.rows >= n:
        pick = rows
    else:
        rng = role_rng(fit["seed"], "kmeans-sample")
        pick = rows[np.sort(rng.choice(n, size=plan.rows, replace=False))]
    # The sample is only referenced by this call, so it is freed before the streamed passes.
    res = kmeans(_float32_rows(src, pick), k, copy=False, **fit)
    info = {"backend": res.backend, "restart": res.restart, "restarts": res.restarts,
            "sample_inertia": res.inertia, "sample_rows": plan.rows}
    work.save("centroids-0", res.centroids)
    work.save_json("sample", info)
    return res.centroids, info


def _prepared(src, ref, dropped: np.ndarray | None,
              spherical: bool) -> tuple[np.ndarray, np.ndarray]:
    """A chunk as float32 (dropped rows zeroed, normalised when spherical) and its usable mask."""
    x = np.array(src.read(ref), dtype=np.float32, order="C")
    ok = np.ones(x.shape[0], dtype=bool)
    if dropped is not None:
        lo, hi = np.searchsorted(dropped, [ref.global_start, ref.global_start + x.shape[0]])
        ok[dropped[lo:hi] - ref.global_start] = False
        x[~ok] = 0.0
    if spherical:
        normalize_rows(x)
    return x, ok


def _assign_chunk(shared, ref) -> tuple[np.ndarray, np.ndarray, float]:
    src, cent, spherical, dropped = shared
    x, ok = _prepared(src, ref, dropped, spherical)
    labels, dist, sq = assign(x, cent, spherical=spherical)
    labels[~ok] = -1
    dist[~ok] = np.nan
    return labels, dist, float(sq[ok].sum())


def _lloyd_chunk(shared, ref) -> tuple[np.ndarray, np.ndarray]:
    src, cent, spherical, dropped = shared
    x, ok = _prepared(src, ref, dropped, spherical)
    labels = assign(x, cent, spherical=spherical)[0][ok]
    x = x[ok]
    k = cent.shape[0]
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    order = np.argsort(labels, kind="stable")  # rows of one cluster together, in row order
    present, starts = np.unique(labels[order], return_index=True)
    if present.size:
        sums[present] = np.add.reduceat(x[order], starts, axis=0, dtype=np.float64)
    return sums, np.bincount(labels, minlength=k).astype(np.int64)


def chunk_task_bytes(chunk_rows: int, d: int, itemsize: int, k: int) -> int:
    """Peak memory of one chunk task: the rows as read, float32 copies, the product blocks."""
    return chunk_rows * (d * (itemsize + 12) + 32) + ASSIGN_CHUNK * (4 * k + 16 * d)


def _lloyd_pass(src, chunks, cent, spherical, dropped, engine, work, p, limit,
                progress) -> np.ndarray:
    """One streamed Lloyd update; the running sums are recorded every STATE_EVERY_S."""
    k, d = cent.shape
    sums = work.load(f"pass-{p}-sums")
    counts = work.load(f"pass-{p}-counts")
    state = work.load_json(f"pass-{p}")
    done = int(state["next_chunk"]) if state and sums is not None and counts is not None else 0
    if not done:
        sums, counts = np.zeros((k, d)), np.zeros(k, dtype=np.int64)
    last = time.monotonic()
    todo = chunks[done:]
    shared = (src, cent, spherical, dropped)
    results = engine.map(_lloyd_chunk, todo, shared, desc=f"Lloyd pass {p + 1}",
                         progress=progress, limit=limit)
    with contextlib.closing(results):
        for i, (s, c) in enumerate(results):
            sums += s  # chunk order: the same additions on every engine
            counts += c
            if work.enabled and (time.monotonic() - last >= STATE_EVERY_S or i == len(todo) - 1):
                work.save(f"pass-{p}-sums", sums)
                work.save(f"pass-{p}-counts", counts)
                work.save_json(f"pass-{p}", {"next_chunk": done + i + 1})
                last = time.monotonic()
    new = cent.astype(np.float64).copy()
    full = counts > 0
    new[full] = sums[full] / counts[full, None]
    new = new.astype(np.float32)
    if spherical:
        normalize_rows(new)
    return new


def _assign_pass(src, chunks, cent, spherical, dropped, engine, work, limit, progress):
    """Labels, distances (per source row) and inertia; each chunk's result is recorded."""
    labels = np.empty(src.n_total, dtype=np.int64)
    dist = np.empty(src.n_total, dtype=np.float64)
    sse = np.zeros(len(chunks))
    todo = []
    for ref in chunks:
        rec = work.load(f"assign/{ref.index:08d}")
        if rec is None:
            todo.append(ref)
            continue
        a, b = ref.global_start, ref.global_stop
        r = ref.n_rows  # record: [chunk's squared-distance sum, labels, distances]
        sse[ref.index], labels[a:b], dist[a:b] = rec[0], rec[1 : r + 1], rec[r + 1 :]
    shared = (src, cent, spherical, dropped)
    results = engine.map(_assign_chunk, todo, shared, desc="k-means assignment",
                         progress=progress, limit=limit)
    with contextlib.closing(results):
        for ref, (lab, dis, s) in zip(todo, results, strict=True):
            a, b = ref.global_start, ref.global_stop
            labels[a:b], dist[a:b], sse[ref.index] = lab, dis, s
            work.save(f"assign/{ref.index:08d}", np.concatenate(([s], lab, dis)))
    return labels, dist, float(np.sum(sse))  # per-chunk sums added in chunk order


def assign_parts(src, chunks, cent, spherical, dropped, engine, sink, budget=None,
                 progress=True) -> tuple[list, np.ndarray, float]:
    """The assignment pass written where it is computed: one task per part.

    The chunks are grouped into parts aligned with the shards
    (:func:`prunekit.io.dataset.chunk_parts`); a task assigns its part's chunks exactly as
    :func:`_assign_chunk` does for the single-file path, passes each chunk's labels and
    distances to ``sink.open(part)`` and returns what ``close()`` gives, its rows per
    cluster and its chunks' squared-distance sums. The driver keeps O(parts + k): the
    records in part order, the counts summed, and the inertia added up chunk by chunk in
    chunk order (the same additions as :func:`_assign_pass`).
    """
    from prunekit.io.dataset import chunk_parts

    parts = chunk_parts(chunks)
    k = cent.shape[0]
    rows = max(p.stop - p.start for p in parts)
    per_task = chunk_task_bytes(min(rows, max(r.n_rows for r in chunks)), src.dim,
                                src.dtype.itemsize, k) + rows * PART_ROW_BYTES
    sse = np.zeros(len(chunks))
    counts = np.zeros(k, dtype=np.int64)
    records = []
    results = engine.map(_assign_part, parts, (src, cent, spherical, dropped, sink),
                         desc="k-means assignment", progress=progress,
                         limit=tasks_fitting(per_task, budget))
    with contextlib.closing(results):
        for part, (record, part_counts, part_sse) in zip(parts, results, strict=True):
            records.append(record)
            counts += part_counts  # part order
            sse[[ref.index for ref in part.chunks]] = part_sse
    return records, counts, float(np.sum(sse))


PART_ROW_BYTES = 48  # a part's ids and labels, and a shard's read to slice them from


def _assign_part(shared, part) -> tuple[object, np.ndarray, np.ndarray]:
    """Engine task: assign one part's chunks and hand them to the sink; aborted on error."""
    src, cent, spherical, dropped, sink = shared
    k = cent.shape[0]
    counts = np.zeros(k, dtype=np.int64)
    sse = np.zeros(len(part.chunks))
    out = sink.open(part)
    try:
        for j, ref in enumerate(part.chunks):
            labels, dist, sse[j] = _assign_chunk((src, cent, spherical, dropped), ref)
            counts += np.bincount(labels[labels >= 0], minlength=k)
            out.add(ref.global_start, labels, dist)
        return out.close(), counts, sse
    except BaseException:
        out.abort()
        raise
