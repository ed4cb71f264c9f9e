"""k-means: spherical or Euclidean, k-means|| seeding, restarts, Lloyd as chunk tasks.

Spherical k-means (the default, as in the paper's CLIP clustering) L2-normalises the rows
and renormalises the centroids after every update, so assignment is by cosine similarity.
Euclidean k-means is the textbook Lloyd algorithm on the rows as given.

The fit (:func:`fit`) runs on a sample (:class:`FitSample`: float32 rows in memory, or in
a scratch .npy that every task reads itself) cut into fixed chunks
(:func:`fit_chunk_rows`: from the width and k, never from the workers), and every pass
over it is a map of chunk tasks on the engine (:mod:`prunekit.runtime.engine`), each
single-threaded, whose results the driver combines in chunk order:

* **Seeding** (``seeding="parallel"``, the default): k-means|| (Bahmani et al. 2012) --
  one uniform row, then PAR_ROUNDS rounds in which every row joins the candidates with
  probability ``min(1, 2k D^2(x) / phi)``, drawn per (seed, restart, round, chunk); each
  candidate weighs the rows nearest to it, and the best (lowest weighted potential) of up
  to RECLUSTER_TRIES_MAX weighted greedy k-means++ runs over the candidates (one task
  each, ``2 + ln k`` local trials as in scikit-learn; a task's distance updates run on the
  threads the workers leave it, over fixed blocks of candidates) gives the k centroids. A
  sample of at most :func:`expected_candidates` rows is its own candidate set. ``seeding="subsample"``
  is greedy k-means++ on a seeded subsample of ``max(SEED_SAMPLE_MIN,
  SEED_SAMPLE_PER_CLUSTER k)`` rows, on one thread.
* **Lloyd** (``backend="chunked"``, what ``auto`` means): each task adds up the float64
  row sums and counts of a fixed run of chunks in chunk order, and the tasks' sums are
  added in task order, by a tree of tasks at large k (:func:`lloyd_tree`: the driver gets
  O(k d) bytes an iteration); a cluster left without rows takes the row farthest from its
  centroid (ties to the lower position); the iterations stop early once one changes no
  centroid. ``faiss``
  (``faiss.Clustering`` from our centroids, every row taking part) and ``sklearn``
  (``KMeans(init=our centroids, n_init=1, tol=0)``, one ``max_iter=1`` fit per iteration
  and renormalisation when spherical) run Lloyd on one thread of the driver instead.
* **Assignment**: labels, distances and the inertia of the sample by :func:`assign`
  (float32 products to find the nearest centroid, float64 distances to it).

So the result is the same bytes for any number of workers or threads, on any engine: the
chunks, the random draws (keyed by seed, role, restart, round, chunk) and the order of
every sum come from the data and the options; an in-memory sample goes to the workers
once a fit (:meth:`~prunekit.runtime.engine.Engine.share`). ``restarts=None`` picks the number of
restarts from the problem size (:func:`auto_restarts`): ten for small and medium
problems, one for large ones.

:func:`kmeans_streamed` bounds the memory for data of any size: the sample (:func:`sample_plan`:
its size follows the data and the options, never the memory budget) is drawn by chunk
tasks, each chunk of the data giving its largest-remainder share (:func:`draw_sample`),
held in memory up to SAMPLE_MEMORY_MAX and in a scratch file above; then the fit,
optional streamed Lloyd passes over every row (task groups of chunks whose sums are added
by the fixed tree of the fit's Lloyd: :func:`pass_groups`, :func:`_lloyd_pass`), and one
streamed assignment pass.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from prunekit.errors import PrunekitError
from prunekit.runtime.context import current_engine
from prunekit.runtime.engine import chunk_rows_for, resolve_workers, tasks_fitting
from prunekit.runtime.memory import human
from prunekit.runtime.progress import counter
from prunekit.runtime.resume import WorkDir
from prunekit.seeds import role_rng, role_seed

BACKENDS = ("auto", "chunked", "faiss", "sklearn")
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
    """``auto`` -> ``chunked`` (Lloyd as chunk tasks on the engine); checks the name."""
    if backend not in BACKENDS:
        raise PrunekitError(f"unknown k-means backend '{backend}'; choose one of: {', '.join(BACKENDS)}.")
    return "chunked" if backend == "auto" else backend


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
    seeding: str = "parallel",
    progress: bool = True,
    copy: bool = True,
    engine=None,
) -> KMeansResult:
    """Cluster the rows of ``x`` into ``k`` clusters; keep the restart of lowest inertia.

    ``x`` is used as C-contiguous float32 and normalised when ``spherical``: on a copy,
    unless ``copy=False`` (then a float32 C-contiguous ``x`` is normalised in place).
    ``restarts=None`` chooses their number from the problem size (:func:`auto_restarts`).
    The work runs as chunk tasks on ``engine`` (default: the run context's), see :func:`fit`.
    """
    check_k(k, x.shape[0])
    data = np.array(x, dtype=np.float32, order="C") if copy else np.ascontiguousarray(x, np.float32)
    if spherical:
        normalize_rows(data)
    return fit(FitSample.of(data), k, iters=iters, seed=seed, spherical=spherical,
               backend=backend, restarts=restarts, seeding=seeding, engine=engine,
               progress=progress)


def auto_restarts(n: int, k: int, d: int, iters: int, seeding: str = "parallel") -> int:
    """Restarts for ``restarts=None``: up to 10 while their work stays small.

    One restart costs about ``n k d iters`` multiply-adds of Lloyd plus its seeding's
    (:func:`seeding_flops`: k-means|| about ``n d c`` for ``c`` candidates and the
    re-clustering tries ``c k d (2 + ln k)`` each; ``subsample``: ``m k d (2 + ln k)`` on
    its m rows). As many restarts as fit in :data:`AUTO_RESTARTS_WORK` run, at least 1 and
    at most :data:`AUTO_RESTARTS_MAX` (the ``n_init`` of scikit-learn): small and medium
    problems get the quality of ten seedings, large ones keep the cost of one.
    """
    spread, one_try, tries = seeding_flops(n, k, d, seeding)
    one = float(n) * k * d * iters + (spread + tries * one_try) / 2  # multiply-adds
    return int(min(AUTO_RESTARTS_MAX, max(1, AUTO_RESTARTS_WORK // max(one, 1.0))))


def kmeanspp(
    data, k: int, rng: np.random.Generator, *, spherical: bool, trials: int | None = None
) -> np.ndarray:
    """Greedy k-means++ centroids (k, d) float32 from a seeded subsample of ``data``.

    The subsample holds ``max(SEED_SAMPLE_MIN, SEED_SAMPLE_PER_CLUSTER k)`` rows (all when
    fewer); ``data`` is an array or a :class:`FitSample`. Each step samples ``trials``
    (default ``2 + ln k``) candidates with probability proportional to the squared distance
    to the nearest chosen centre and keeps the one that lowers the potential most
    (:func:`_greedy_pp`); ``trials=1`` is classic k-means++.
    """
    n = data.shape[0] if isinstance(data, np.ndarray) else data.rows
    m = min(n, max(SEED_SAMPLE_MIN, SEED_SAMPLE_PER_CLUSTER * k))
    rows = np.arange(n) if m == n else np.sort(rng.choice(n, size=m, replace=False))
    s = data[rows] if isinstance(data, np.ndarray) else data.take(rows)
    cent = s[_greedy_pp(s, k, rng, trials)[0]].copy()
    if spherical:
        normalize_rows(cent)
    return cent


def _sqdist_to(s: np.ndarray, sq: np.ndarray, c: np.ndarray,
               cc: np.ndarray | None = None) -> np.ndarray:
    """Squared Euclidean distances (m, len(c)) float32 from rows of ``s`` to rows of ``c``
    (``cc``: the squared norms of ``c``, when known)."""
    d2 = s @ c.T
    d2 *= -2.0
    d2 += sq[:, None]
    d2 += (np.einsum("ij,ij->i", c, c) if cc is None else cc)[None, :]
    return np.maximum(d2, 0.0, out=d2)


def nearest(data: np.ndarray, centroids: np.ndarray, *, spherical: bool,
            chunk: int | None = None) -> np.ndarray:
    """Nearest centroid (int64) of every row: the labels of :func:`assign`, without the
    distances. Blocks of ``chunk`` rows (default :func:`block_rows`)."""
    c = _scoring(centroids, spherical)
    chunk = chunk or block_rows(c.shape[0])
    labels = np.empty(data.shape[0], dtype=np.int64)
    for a in range(0, data.shape[0], chunk):
        labels[a : a + chunk] = _nearest_block(data[a : a + chunk], c)
    return labels


def _scoring(centroids: np.ndarray, spherical: bool) -> np.ndarray:
    """float32 rows whose largest product with a row (extended by a 1 when Euclidean) is its
    nearest centroid: the centroids (spherical), or ``[c, -|c|^2 / 2]`` (Euclidean)."""
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    if spherical:
        return c
    half = np.einsum("ij,ij->i", c, c, dtype=np.float64) / 2
    return np.ascontiguousarray(np.hstack([c, -half[:, None]]), dtype=np.float32)


def _nearest_block(block: np.ndarray, scoring: np.ndarray) -> np.ndarray:
    """Argmax of one float32 product: ``x.c`` (spherical) or ``x.c - |c|^2 / 2`` (the
    smallest ``|x - c|``), the bias folded into the product as an extra column."""
    d = block.shape[1]
    if scoring.shape[1] > d:
        ext = np.empty((block.shape[0], d + 1), dtype=np.float32)
        ext[:, :d] = block
        ext[:, d] = 1.0
        block = ext
    return np.argmax(block @ scoring.T, axis=1)


def assign(
    data: np.ndarray, centroids: np.ndarray, *, spherical: bool, chunk: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest centroid of every row, in blocks of ``chunk`` rows (default
    :func:`block_rows`: memory O(block x k)).

    Returns ``labels`` int64, ``distance`` float64 (cosine distance when ``spherical``,
    else Euclidean) and the squared Euclidean distance float64. The nearest centroid is
    found with a float32 product (:func:`nearest`); the distances to it are recomputed in
    float64.
    """
    n = data.shape[0]
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    scoring = _scoring(c, spherical)
    c64 = c.astype(np.float64)
    chunk = chunk or block_rows(c.shape[0])
    labels = np.empty(n, dtype=np.int64)
    dist = np.empty(n, dtype=np.float64)
    sqd = np.empty(n, dtype=np.float64)
    for a in range(0, n, chunk):
        block = data[a : a + chunk]
        lab = _nearest_block(block, scoring)
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


# ------------------------------------------------------------------ the fit as chunk tasks

FIT_CHUNK_BYTES = 4 << 20  # float32 bytes of one chunk of the fit (and at least k rows)
FIT_MIN_CHUNK_ROWS = 1024
SAMPLE_MEMORY_MAX = 1 << 30  # a larger float32 sample lives in a scratch .npy (chunked Lloyd)
PRODUCT_BYTES = 64 << 20  # float32 distance block of one assignment step, rows x centroids
PAR_ROUNDS = 5  # k-means|| oversampling rounds (Bahmani et al. 2012) ...
PAR_OVERSAMPLING = 2  # ... each drawing 2 k candidates in expectation
RECLUSTER_TRIES_MAX = 10  # best-of re-clusterings of the candidates, as many as fit in ...
RECLUSTER_WORK = 3e10  # ... this many multiply-adds (like AUTO_RESTARTS_WORK)
GREEDY_BLOCK_ROWS = 2048  # candidate rows a thread updates at a time in a greedy step
LLOYD_ROWS_PER_CLUSTER = 4  # a Lloyd task's chunks hold at least this many rows a centroid
LLOYD_FLAT_BYTES = 64 << 20  # the tasks' sums up to this size are added by one combine ...
LLOYD_FAN_IN = 8  # ... larger ones by a tree of this fan-in (lloyd_tree, streamed passes)
PASS_GROUPS_MAX = 256  # a streamed Lloyd pass has at most this many task groups
SEEDINGS = ("parallel", "subsample")


def fit_chunk_rows(d: int, k: int) -> int:
    """Rows per chunk of the fit: a power of two near FIT_CHUNK_BYTES of float32 rows, and at
    least ``k`` rows, so that a chunk's per-centroid sums are never much larger than the
    chunk. It depends on the width and ``k`` only, never on the workers or the budget."""
    rows = max(FIT_MIN_CHUNK_ROWS, FIT_CHUNK_BYTES // (4 * max(1, int(d))))
    rows = 1 << (rows.bit_length() - 1)
    return max(rows, 1 << max(0, int(k) - 1).bit_length())


def fit_chunks(rows: int, d: int, k: int) -> list[tuple[int, int, int]]:
    """The fit's chunks ``(index, start, stop)`` over ``rows`` sample rows."""
    step = fit_chunk_rows(d, k)
    return [(i, a, min(a + step, rows)) for i, a in enumerate(range(0, rows, step))]


def block_rows(k: int) -> int:
    """Rows of one distance block against ``k`` centroids (at most ASSIGN_CHUNK, and
    PRODUCT_BYTES of float32 products): every assignment of a chunk cuts it the same way."""
    return int(max(16, min(ASSIGN_CHUNK, PRODUCT_BYTES // (4 * max(1, int(k))))))


def sample_in_memory(rows: int, d: int, backend: str = "auto") -> bool:
    """Whether the fit's sample stays in the driver's memory (else a scratch .npy).

    faiss and scikit-learn run Lloyd on the driver and need it there; the chunked Lloyd
    reads it from a scratch file once it is larger than SAMPLE_MEMORY_MAX as float32. The
    rule follows the sample's shape and the options, never the memory budget, and where
    the sample lives changes no result.
    """
    return resolve_backend(backend) != "chunked" or rows * d * 4 <= SAMPLE_MEMORY_MAX


def expected_candidates(k: int) -> int:
    """k-means|| candidates in expectation: the first row and 2 k per round."""
    return 1 + PAR_ROUNDS * PAR_OVERSAMPLING * int(k)


def recluster_tries(s: int, k: int, d: int) -> int:
    """Greedy k-means++ runs over the candidates, the lowest weighted potential wins: up to
    RECLUSTER_TRIES_MAX while they fit in RECLUSTER_WORK multiply-adds (from the expected
    number of candidates, so from the data and options only)."""
    one = float(min(s, expected_candidates(k))) * k * d * (2 + np.log(k))
    return int(min(RECLUSTER_TRIES_MAX, max(1, RECLUSTER_WORK // max(one, 1.0))))


def seeding_flops(s: int, k: int, d: int, seeding: str) -> tuple[float, float, int]:
    """Flops of one seeding on ``s`` rows: ``(spread over the fit's chunk tasks, one
    re-clustering try, tries)``; ``subsample`` is one serial greedy k-means++."""
    greedy = 2.0 * k * d * (2 + np.log(k))
    if seeding == "subsample":
        return 0.0, min(s, max(SEED_SAMPLE_MIN, SEED_SAMPLE_PER_CLUSTER * k)) * greedy, 1
    c = min(s, expected_candidates(k))
    spread = 0.0 if s <= c else 2.0 * s * d * c  # distances to every candidate, once
    return spread, c * greedy, recluster_tries(s, k, d)


@dataclass
class FitSample:
    """The rows the fit runs on, float32 (normalised when spherical), ``rows x dim``.

    In memory (``array``) or in a scratch .npy (``path``, data at byte ``offset``) that
    every task reads itself, so that the driver never holds a large sample. Pickles small
    in the second case (a path), for Ray.
    """

    rows: int
    dim: int
    array: np.ndarray | None = None
    path: str | None = None
    offset: int = 0

    @classmethod
    def of(cls, x: np.ndarray) -> FitSample:
        return cls(int(x.shape[0]), int(x.shape[1]), array=x)

    def read(self, a: int, b: int) -> np.ndarray:
        """Rows ``a:b``."""
        if self.array is not None:
            return self.array[a:b]
        with open(self.path, "rb") as fh:
            return self._pread(fh.fileno(), a, b)

    def _pread(self, fd: int, a: int, b: int) -> np.ndarray:
        n = (b - a) * self.dim * 4
        data = os.pread(fd, n, self.offset + a * self.dim * 4)
        if len(data) != n:
            raise PrunekitError(f"the k-means sample file {self.path} is shorter than its "
                                "header says; run the command again without --resume.")
        return np.frombuffer(data, dtype=np.float32).reshape(b - a, self.dim)

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows at positions ``idx`` (any order), as a new array."""
        idx = np.asarray(idx, dtype=np.int64)
        if self.array is not None:
            return self.array[idx]
        out = np.empty((idx.size, self.dim), dtype=np.float32)
        with open(self.path, "rb") as fh:
            for j, i in enumerate(idx):
                out[j] = self._pread(fh.fileno(), int(i), int(i) + 1)[0]
        return out


def fit(
    sample: FitSample,
    k: int,
    *,
    iters: int = 25,
    seed: int = 0,
    spherical: bool = True,
    backend: str = "auto",
    restarts: int | None = None,
    seeding: str = "parallel",
    engine=None,
    progress: bool = True,
    labels: bool = True,
    work=None,
) -> KMeansResult:
    """k-means on the rows of ``sample`` (prepared: float32, normalised when spherical).

    Each restart ``r`` seeds (:func:`seed_parallel`, or :func:`kmeanspp` on a subsample),
    runs ``iters`` Lloyd iterations (:func:`lloyd_step`, or faiss / scikit-learn on one
    thread) and assigns the sample; the lowest inertia wins. Chunk tasks run on ``engine``
    (default: the run context's). ``labels=False`` keeps only the inertia (the result's
    ``labels``/``distance`` are None). With a scratch-file sample and an enabled ``work``
    directory, each restart's centroids are recorded after seeding and every
    STATE_EVERY_S of Lloyd, and ``--resume`` continues from there.
    """
    s = sample.rows
    if not 1 <= k <= s:
        raise PrunekitError(f"k-means needs 1 <= k <= number of rows ({s}); got k={k}. Lower --k.")
    if seeding not in SEEDINGS:
        raise PrunekitError(f"unknown k-means seeding '{seeding}'; choose one of: "
                            f"{', '.join(SEEDINGS)}.")
    if restarts is None:
        restarts = auto_restarts(s, k, sample.dim, iters, seeding)
    if iters < 1 or restarts < 1:
        raise PrunekitError(f"k-means needs --iters >= 1 and --restarts >= 1 (got {iters}, {restarts}).")
    backend = resolve_backend(backend)
    if backend != "chunked" and sample.array is None:
        raise PrunekitError(f"the {backend} backend needs the sample in memory; use --backend auto.")
    run = _Fit(sample, k, spherical, engine or current_engine(), seed,
               work if work is not None and sample.path is not None else None)
    best: KMeansResult | None = None
    bar = counter(restarts * (iters + 1), desc="k-means fit", progress=progress)
    # An in-memory sample goes to the workers once for all the fit's maps (a file: a path).
    shared = run.engine.share(sample) if sample.array is not None else contextlib.nullcontext(sample)
    with contextlib.closing(bar), shared as run.shared:
        for r in range(restarts):
            cent = run.restart(r, iters, backend, seeding, bar)
            lab, dist, inertia = run.assign(cent, labels)
            bar.update()
            if best is None or inertia < best.inertia:
                best = KMeansResult(cent, lab, dist, inertia, backend, r, restarts)
    assert best is not None
    return best


class _Fit:
    """One fit's sample, chunks and engine; the steps of a restart."""

    def __init__(self, sample: FitSample, k: int, spherical: bool, engine, seed: int,
                 work) -> None:
        self.sample, self.k, self.spherical, self.engine = sample, k, spherical, engine
        self.seed, self.work = seed, work
        self.shared = sample  # what tasks are given: the engine's handle while fit() runs
        self.chunks = fit_chunks(sample.rows, sample.dim, k)
        rows = self.chunks[0][2] - self.chunks[0][1]
        d = sample.dim
        # a task: its rows (as read, extended by a column, sorted by label), a distance
        # block, the sums and counts of the clusters present
        self.task_bytes = (rows * (12 * d + 24) + block_rows(k) * k * 4
                           + min(rows, k) * (8 * d + 16))
        group, self.fan_in = lloyd_tree(sample.rows, d, k)
        self.groups = [self.chunks[a : a + group] for a in range(0, len(self.chunks), group)]
        # a Lloyd task adds its chunks' sums into one array of its clusters (at most k)
        self.group_bytes = self.task_bytes + min(k, group * rows) * (8 * d + 8)

    def map(self, fn, items, shared):
        return contextlib.closing(self.engine.map(fn, items, shared, progress=False,
                                                  task_bytes=self.task_bytes))

    def restart(self, r: int, iters: int, backend: str, seeding: str, bar) -> np.ndarray:
        """Seed and run Lloyd for restart ``r`` (from its record when there is one)."""
        state = self.work.load_json(f"fit-{r}") if self.work else None
        cent = self.work.load(f"fit-{r}-centroids") if state is not None else None
        if cent is not None:
            done = int(state["iteration"])
            bar.update(done)
            if state["converged"] or done >= iters:
                bar.update(iters - done)
                return cent
            return self.lloyd(r, cent, done, iters, bar)
        if seeding == "subsample":  # the draws of SeedSequence([seed, r]), as they always were
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, r]))
            with threadpool_limits(limits=1):  # the same bytes whatever the thread count
                init = kmeanspp(self.sample, self.k, rng, spherical=self.spherical)
            lloyd_seed = int(rng.integers(0, 2**31 - 1))
        else:
            init = seed_parallel(self, r)
            lloyd_seed = role_seed(self.seed, "kmeans lloyd", r) % (2**31 - 1)
        if backend != "chunked":
            with one_thread(backend):
                lloyd = _lloyd_faiss if backend == "faiss" else _lloyd_sklearn
                cent = lloyd(self.sample.array, init, iters, lloyd_seed, self.spherical)
            bar.update(iters)
            return cent
        self._record(r, init, 0, False)
        return self.lloyd(r, init, 0, iters, bar)

    def _record(self, r: int, cent: np.ndarray, iteration: int, converged: bool) -> None:
        if self.work is not None:
            self.work.save(f"fit-{r}-centroids", cent)
            self.work.save_json(f"fit-{r}", {"iteration": iteration, "converged": converged})

    def lloyd(self, r: int, cent: np.ndarray, start: int, iters: int, bar) -> np.ndarray:
        """Lloyd iterations ``start..iters`` as chunk tasks (:func:`lloyd_step`); stops early
        once an iteration changes no centroid (the rest would not either)."""
        last = time.monotonic()
        for it in range(start, iters):
            new = lloyd_step(self, cent)
            converged = np.array_equal(new, cent)
            cent = new
            bar.update(iters - it if converged else 1)
            if converged or it == iters - 1 or time.monotonic() - last >= STATE_EVERY_S:
                self._record(r, cent, it + 1, converged)
                last = time.monotonic()
            if converged:
                break
        return cent

    def assign(self, cent: np.ndarray, labels: bool):
        """Labels, distances (when ``labels``) and inertia of the sample, chunk by chunk."""
        lab = np.empty(self.sample.rows, dtype=np.int64) if labels else None
        dist = np.empty(self.sample.rows, dtype=np.float64) if labels else None
        sse = np.zeros(len(self.chunks))
        with self.map(_fit_assign_chunk, self.chunks, (self.shared, cent, self.spherical,
                                                        labels)) as results:
            for (i, a, b), (la, di, sq) in zip(self.chunks, results, strict=True):
                sse[i] = sq
                if labels:
                    lab[a:b], dist[a:b] = la, di
        return lab, dist, float(np.sum(sse))  # chunk order


def seed_parallel(run: _Fit, r: int) -> np.ndarray:
    """k-means|| seeding of restart ``r`` (Bahmani et al. 2012), as chunk tasks.

    One row drawn uniformly, then PAR_ROUNDS rounds: every row joins the candidates with
    probability ``min(1, l D^2(x) / phi)`` (l = 2k, D^2 the squared distance to the nearest
    candidate, phi its sum over the sample), by a draw keyed by (seed, round, chunk); more
    rounds only while there are fewer than k candidates. Each candidate weighs the rows
    nearest to it; :func:`recluster` picks the k centroids among them. A sample of at most
    :func:`expected_candidates` rows is its own candidate set, every row of weight 1 (the
    greedy k-means++ over the whole sample).
    """
    sample, k = run.sample, run.k
    if sample.rows <= expected_candidates(k):
        cand, weight = np.array(sample.read(0, sample.rows)), np.ones(sample.rows)
    else:
        cand, weight = _oversample(run, r)
    if cand.shape[0] < k:  # fewer distinct rows than k: any rows complete the centroids
        cand = np.concatenate([cand, sample.read(0, k - cand.shape[0])])
        weight = np.concatenate([weight, np.zeros(k - weight.size)])
    return recluster(run, cand, weight, r)


def _oversample(run: _Fit, r: int) -> tuple[np.ndarray, np.ndarray]:
    """k-means|| candidates (rows) and their weights (rows nearest to each, float64)."""
    sample, k, seed = run.sample, run.k, run.seed
    ell = PAR_OVERSAMPLING * k
    closest = np.full(sample.rows, np.inf, dtype=np.float32)
    owner = np.zeros(sample.rows, dtype=np.int64)
    new = np.array([role_rng(seed, "kmeans|| start", r).integers(sample.rows)])
    picked, m, rnd = [new], 1, 0
    while True:
        if new.size:  # a round may draw nothing
            _absorb(run, sample.take(new), m - new.size, closest, owner)
        phi = float(np.sum([closest[a:b].sum(dtype=np.float64) for _, a, b in run.chunks]))
        if (rnd >= PAR_ROUNDS and m >= k) or phi <= 0:
            break
        hits = []
        for i, a, b in run.chunks:
            u = role_rng(seed, "kmeans|| draws", r, rnd, i).random(b - a)
            hits.append(np.flatnonzero(u * phi < ell * closest[a:b].astype(np.float64)) + a)
        new = np.concatenate(hits)
        picked.append(new)
        m += new.size
        rnd += 1
    weight = np.bincount(owner, minlength=m).astype(np.float64)
    return sample.take(np.concatenate(picked)), weight


def _absorb(run: _Fit, centres: np.ndarray, first: int, closest: np.ndarray,
            owner: np.ndarray) -> None:
    """Lower each row's ``closest`` squared distance with the new candidates ``centres``
    (numbered from ``first``), and point ``owner`` at the nearest; ties keep the earlier."""
    with run.map(_nearest_chunk, run.chunks, (run.shared, centres)) as results:
        for (_, a, b), (d2, j) in zip(run.chunks, results, strict=True):
            better = d2 < closest[a:b]
            closest[a:b][better] = d2[better]
            owner[a:b][better] = j[better] + first


def recluster(run: _Fit, cand: np.ndarray, weight: np.ndarray, r: int) -> np.ndarray:
    """k centroids among weighted candidates: :func:`recluster_tries` weighted greedy
    k-means++ runs as tasks, each keyed by (seed, restart, try) and each on
    :func:`recluster_threads` threads; the lowest potential sum(w D^2) wins, ties to the
    earlier try."""
    tries = recluster_tries(run.sample.rows, run.k, run.sample.dim)
    threads = recluster_threads(run.engine.workers, tries, run.engine.max_task_cpus)
    shared = (cand, weight, run.k, run.seed, r, threads)
    with contextlib.closing(run.engine.map(_recluster_try, range(tries), shared,
                                           progress=False, cpus=threads)) as results:
        best = min(((pot, t, chosen) for t, (pot, chosen) in enumerate(results)),
                   key=lambda x: (x[0], x[1]))
    return np.array(cand[best[2]], dtype=np.float32)


def recluster_threads(workers: int, tries: int, max_cpus: int | None = None) -> int:
    """Threads of one re-clustering try: the workers shared out over the tries (at most
    ``max_cpus``, one node's). They change no byte of the result (:func:`_greedy_pp`)."""
    threads = max(1, int(workers) // max(1, int(tries)))
    return threads if max_cpus is None else max(1, min(threads, int(max_cpus)))


def _recluster_try(shared, t: int) -> tuple[float, np.ndarray]:
    cand, weight, k, seed, r, threads = shared
    threads = min(threads, resolve_workers(None))  # this node's cores
    chosen, potential = _greedy_pp(cand, k, role_rng(seed, "kmeans|| recluster", r, t),
                                   weights=weight, threads=threads)
    return potential, chosen


def _greedy_pp(s: np.ndarray, k: int, rng: np.random.Generator, trials: int | None = None,
               weights: np.ndarray | None = None,
               threads: int = 1) -> tuple[np.ndarray, float]:
    """Greedy k-means++ over the rows of ``s`` (optionally weighted): chosen rows, potential.

    Each step samples ``trials`` (default ``2 + ln k``) rows with probability proportional
    to ``w D^2`` (the squared distance to the nearest chosen row) and keeps the one that
    lowers the potential ``sum(w D^2)`` most. Without weights the first row is uniform.

    The distance updates, the expensive part, run over fixed blocks of GREEDY_BLOCK_ROWS
    rows on ``threads`` threads: a row's new distances are an elementwise minimum that no
    other row takes part in, each block sums its rows' potential per trial, and this thread
    adds the blocks' sums in block order; the cumulative mass the draws search runs over the
    whole array on this thread. So the result is the same bytes for any ``threads``.
    """
    m = s.shape[0]
    sq = np.einsum("ij,ij->i", s, s, dtype=np.float64).astype(np.float32)
    trials = trials or 2 + int(np.log(k))
    chosen = np.empty(k, dtype=np.int64)
    if weights is None:
        chosen[0] = rng.integers(m)
    else:
        cum = np.cumsum(weights, dtype=np.float64)
        chosen[0] = min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), m - 1)
    closest = np.empty(m, dtype=np.float32)
    d2 = np.empty((m, trials), dtype=np.float32)
    blocks = [(a, min(a + GREEDY_BLOCK_ROWS, m)) for a in range(0, m, GREEDY_BLOCK_ROWS)]
    part = np.empty((len(blocks), trials))  # each block's potential per trial

    def first(i: int, a: int, b: int, c: np.ndarray) -> None:
        closest[a:b] = _sqdist_to(s[a:b], sq[a:b], c)[:, 0]

    def update(i: int, a: int, b: int, c: np.ndarray, cc: np.ndarray) -> None:
        np.minimum(closest[a:b, None], _sqdist_to(s[a:b], sq[a:b], c, cc), out=d2[a:b])
        pot = d2[a:b] if weights is None else d2[a:b] * weights[a:b, None]
        part[i] = pot.sum(axis=0, dtype=np.float64)

    with _on_threads(blocks, threads) as each:
        each(first, s[chosen[:1]])
        for i in range(1, k):
            mass = closest if weights is None else closest * weights
            cum = np.cumsum(mass, dtype=np.float64)
            if cum[-1] <= 0:  # fewer distinct (weighted) rows than k: take unused rows in order
                unused = np.setdiff1d(np.arange(m), chosen[:i])
                chosen[i:] = unused[: k - i]
                break
            cand = np.searchsorted(cum, rng.random(trials) * cum[-1], side="right")
            np.minimum(cand, m - 1, out=cand)
            c = s[cand]
            each(update, c, np.einsum("ij,ij->i", c, c))
            best = int(np.argmin(part.sum(axis=0)))  # the blocks' sums in block order
            chosen[i] = cand[best]
            closest = d2[:, best].copy()
    w = 1.0 if weights is None else weights
    return chosen, float(np.sum(closest * w, dtype=np.float64))


@contextlib.contextmanager
def _on_threads(blocks: list[tuple[int, int]], threads: int) -> Iterator[Callable]:
    """``each(fn, *args)``: ``fn(i, a, b, *args)`` for every block ``i`` of rows ``a:b``, on up
    to ``threads`` threads (BLAS on one thread each); returns when all are done."""
    threads = max(1, min(int(threads), len(blocks)))
    if threads == 1:
        with threadpool_limits(limits=1):
            yield lambda fn, *args: [fn(i, a, b, *args) for i, (a, b) in enumerate(blocks)]
        return
    numbered = list(enumerate(blocks))

    def share(j: int, fn, args) -> None:  # thread j: blocks j, j + threads, ...
        for i, (a, b) in numbered[j::threads]:
            fn(i, a, b, *args)

    with ThreadPoolExecutor(threads) as pool, threadpool_limits(limits=1):
        def each(fn, *args):
            for fut in [pool.submit(share, j, fn, args) for j in range(threads)]:
                fut.result()
        yield each


def _nearest_chunk(shared, item) -> tuple[np.ndarray, np.ndarray]:
    """Squared distance (float32) and position of each row's nearest of ``centres``."""
    sample, centres = shared
    _, a, b = item
    x = sample.read(a, b)
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64).astype(np.float32)
    d2 = np.empty(b - a, dtype=np.float32)
    j = np.empty(b - a, dtype=np.int64)
    step = block_rows(centres.shape[0])
    for lo in range(0, b - a, step):
        block = _sqdist_to(x[lo : lo + step], sq[lo : lo + step], centres)
        j[lo : lo + step] = np.argmin(block, axis=1)
        d2[lo : lo + step] = block[np.arange(block.shape[0]), j[lo : lo + step]]
    return d2, j


def lloyd_tree(rows: int, d: int, k: int) -> tuple[int, int]:
    """How a Lloyd iteration on ``rows`` sample rows adds up its per-centroid sums:
    ``(chunks per task, fan-in)``.

    A task takes a run of consecutive chunks holding at least LLOYD_ROWS_PER_CLUSTER k rows
    (so that its sums, at most k x d, are small next to its rows) and adds their sums in
    chunk order. The tasks' sums are then added in task order by one combine when they
    are at most LLOYD_FLAT_BYTES in all, else by a tree of fan-in LLOYD_FAN_IN
    (:meth:`~prunekit.runtime.engine.Engine.reduce`), so that the driver receives O(k d)
    bytes whatever the number of chunks. Both follow the sample's shape and k only, never
    the workers: every engine adds the same numbers in the same order.
    """
    step = fit_chunk_rows(d, k)
    chunks = -(-int(rows) // step)
    group = min(chunks, max(1, -(-LLOYD_ROWS_PER_CLUSTER * int(k) // step)))
    tasks = -(-chunks // group)
    sums = tasks * min(int(k), group * step) * (d + 1) * 8
    return group, (max(2, tasks) if sums <= LLOYD_FLAT_BYTES else LLOYD_FAN_IN)


def lloyd_step(run: _Fit, cent: np.ndarray) -> np.ndarray:
    """One Lloyd update: per-centroid float64 sums and counts, each task's chunks added in
    chunk order, the tasks' sums added by :func:`lloyd_tree`'s fixed tree; a centroid left
    without rows takes the farthest row (:func:`_refill`)."""
    k, d = cent.shape
    present, part, c = run.engine.reduce(
        _fit_lloyd_group, run.groups, (run.shared, cent, run.spherical),
        combine=functools.partial(_add_sums, k), fan_in=run.fan_in, progress=False,
        task_bytes=run.group_bytes)
    sums = np.zeros((k, d))
    counts = np.zeros(k, dtype=np.int64)
    sums[present], counts[present] = part, c
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        _refill(run, cent, empty, sums, counts)
    return _means(cent, sums, counts, run.spherical)


def _refill(run: _Fit, cent: np.ndarray, empty: np.ndarray, sums: np.ndarray,
            counts: np.ndarray) -> None:
    """Empty clusters, in id order, take the rows farthest from their centroids (largest
    squared distance, ties to the lower position), which leave their own clusters."""
    e = empty.size
    found = [[], [], []]
    with run.map(_farthest_chunk, run.chunks, (run.shared, cent, run.spherical, e)) as results:
        for part in results:
            for acc, v in zip(found, part, strict=True):
                acc.append(v)
    sq, pos, lab = (np.concatenate(v) for v in found)
    top = np.lexsort((pos, -sq))[:e]
    rows = run.sample.take(pos[top]).astype(np.float64)
    for c, x, donor in zip(empty, rows, lab[top], strict=True):
        sums[donor] -= x
        counts[donor] -= 1
        sums[c], counts[c] = x, 1


def _means(cent: np.ndarray, sums: np.ndarray, counts: np.ndarray, spherical: bool) -> np.ndarray:
    """The centroids as means (renormalised when spherical); a cluster without rows keeps
    its centroid."""
    new = cent.astype(np.float64)
    full = counts > 0
    new[full] = sums[full] / counts[full, None]
    new = new.astype(np.float32)
    return normalize_rows(new) if spherical else new


def _cluster_sums(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clusters present, their float64 row sums (rows added in row order) and row counts."""
    order = np.argsort(labels, kind="stable")
    present, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    if not present.size:
        return present, np.zeros((0, x.shape[1])), counts.astype(np.int64)
    sums = np.add.reduceat(x[order], starts, axis=0, dtype=np.float64)
    return present, sums, counts.astype(np.int64)


def _fit_lloyd_chunk(shared, item):
    sample, cent, spherical = shared
    _, a, b = item
    x = sample.read(a, b)
    return _cluster_sums(x, nearest(x, cent, spherical=spherical))


def _fit_lloyd_group(shared, group) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A Lloyd task: its chunks' clusters present, sums and counts, added in chunk order."""
    k, d = shared[1].shape
    return _summed(k, d, (_fit_lloyd_chunk(shared, item) for item in group))


def _add_sums(k: int, parts: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The combine of the Lloyd trees: partial ``(present, sums, counts)`` added in list
    order (:func:`_summed`)."""
    return _summed(k, parts[0][1].shape[1], parts)


def _summed(k: int, d: int, parts: Iterable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Partial ``(present, sums, counts)`` added in order, holding only the running sums:
    each cluster's float64 sum is ``0 + part_0 + part_1 + ...``."""
    sums = np.zeros((k, d))
    counts = np.zeros(k, dtype=np.int64)
    for present, s, c in parts:
        sums[present] += s
        counts[present] += c
    present = np.flatnonzero(counts)
    return present, sums[present], counts[present]


def _farthest_chunk(shared, item) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The chunk's ``e`` rows farthest from their centroids: squared distances, positions,
    labels."""
    sample, cent, spherical, e = shared
    _, a, b = item
    labels, _, sq = assign(sample.read(a, b), cent, spherical=spherical)
    top = np.lexsort((np.arange(b - a), -sq))[:e]
    return sq[top], top + a, labels[top]


def _fit_assign_chunk(shared, item):
    sample, cent, spherical, want = shared
    _, a, b = item
    labels, dist, sq = assign(sample.read(a, b), cent, spherical=spherical)
    return (labels, dist, float(sq.sum())) if want else (None, None, float(sq.sum()))


# ------------------------------------------------------------------ bounded-memory k-means

SAMPLE_PER_CLUSTER = 256  # rows per centroid in the default sample (faiss's own default) ...
SAMPLE_BYTES = 256 << 20  # ... and at least this many bytes of float32 rows
SAMPLE_DRAWN = ("uniform without replacement within each chunk of the data, the chunks' "
                "shares by largest remainder, seeded by (seed, 'kmeans sample', chunk)")
STATE_EVERY_S = 60.0  # how often a streamed Lloyd pass (or a long fit) records its state
SAMPLE_FILE = "kmeans-sample.npy"  # the scratch sample's name in the work directory


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
    :func:`default_sample_rows`; fewer than all rows are drawn chunk by chunk
    (:func:`draw_sample`).
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


def sample_bytes(rows: int, k: int, d: int, *, in_memory: bool = True,
                 seeding: str = "parallel") -> int:
    """What the fit holds on the driver: the sample as float32 when it is held in memory
    (:func:`sample_in_memory`), 24 bytes a row (labels and distances; k-means||'s nearest
    candidate), k-means||'s candidates, the centroids and their float64 sums."""
    held = rows * (24 + (4 * d if in_memory else 0)) + 12 * k * d
    if seeding == "parallel":
        held += 4 * d * min(rows, expected_candidates(k))
    return held


def check_sample_fits(plan: SamplePlan, k: int, d: int, budget: int, *, backend: str = "auto",
                      seeding: str = "parallel") -> None:
    """Refuse (PrunekitError, with the number and the fix) a fit the budget cannot hold."""
    in_memory = sample_in_memory(plan.rows, d, backend)
    need = sample_bytes(plan.rows, k, d, in_memory=in_memory, seeding=seeding)
    if need <= budget:
        return
    held = "all" if plan.rows >= plan.of else f"a sample of {plan.rows:,} of"
    where = (f"holds {held} {plan.of:,} rows in memory ({d} dimensions as float32)" if in_memory
             else f"keeps {held} {plan.of:,} rows in a scratch file, and its seeding and "
             f"centroids ({d} dimensions) on the driver")
    raise PrunekitError(
        f"k-means {where}: {human(need)}, more than the memory budget of {human(budget)}. "
        f"Raise --memory to at least {human(need)}, or give a smaller --sample (at least "
        f"--k {k}); the sample never shrinks to fit the budget, so that the clusters do not "
        "depend on the machine."
    )


def sample_quotas(counts: np.ndarray, s: int) -> np.ndarray:
    """Rows to draw from each chunk: ``s`` apportioned over the chunks' usable ``counts``
    by largest remainder (``floor(s c / total)`` each, one more for the chunks with the
    largest remainders, ties to the earlier chunk); all of them when ``s >= total``."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if s >= total:
        return counts.copy()
    parts = [divmod(int(c) * int(s), total) for c in counts]  # Python ints: no overflow
    base = np.array([q for q, _ in parts], dtype=np.int64)
    rem = np.array([r for _, r in parts], dtype=np.int64)
    extra = int(s) - int(base.sum())
    base[np.lexsort((np.arange(counts.size), -rem))[:extra]] += 1
    return base


def draw_sample(src, rows, s: int, *, seed: int, spherical: bool, engine=None,
                path: str | os.PathLike | None = None, progress: bool = True
                ) -> tuple[FitSample, str]:
    """The fit's sample of ``s`` usable ``rows``, drawn by chunk tasks from the data alone.

    Every chunk of the data (:func:`~prunekit.runtime.engine.chunk_rows_for`) gives its
    share (:func:`sample_quotas` over its usable rows; all rows when ``s`` is every row),
    drawn uniformly without replacement by ``role_rng(seed, "kmeans sample", chunk)``; the
    task reads them, converts them to float32 (normalised when spherical) and returns them;
    the driver concatenates them in chunk order: into memory, or into the .npy at ``path``
    (written by the driver alone, never more than a few chunks' rows held). Returns the
    sample and, for a file, the BLAKE2b digest of its rows.
    """
    engine = engine or current_engine()
    chunk_rows = chunk_rows_for(src.dim)
    chunks = src.chunks(chunk_rows)
    dropped = _dropped(src.n_total, rows)
    usable = np.array([ref.n_rows for ref in chunks], dtype=np.int64)
    if dropped is not None:
        ends = np.array([ref.global_stop for ref in chunks], dtype=np.int64)
        usable -= np.diff(np.searchsorted(dropped, ends), prepend=0)
    quotas = sample_quotas(usable, s)
    items = [(ref, int(q)) for ref, q in zip(chunks, quotas, strict=True) if q > 0]
    task = chunk_rows * src.dim * (src.dtype.itemsize + 8)
    results = engine.map(_draw_chunk, items, (src, dropped, seed, spherical),
                         desc="k-means sample", progress=progress, task_bytes=task)
    with contextlib.closing(results):
        if path is None:
            out = np.empty((s, src.dim), dtype=np.float32)
            at = 0
            for x in results:
                out[at : at + x.shape[0]] = x
                at += x.shape[0]
            return FitSample.of(out), ""
        digest = hashlib.blake2b(digest_size=32)
        offset = _write_sample(path, results, s, src.dim, digest)
    return FitSample(s, src.dim, path=os.fspath(path), offset=offset), digest.hexdigest()


def _draw_chunk(shared, item) -> np.ndarray:
    """One chunk's share of the sample, float32 (normalised when spherical)."""
    src, dropped, seed, spherical = shared
    ref, quota = item
    local = np.arange(ref.n_rows, dtype=np.int64)
    if dropped is not None:
        lo, hi = np.searchsorted(dropped, [ref.global_start, ref.global_stop])
        local = np.delete(local, dropped[lo:hi] - ref.global_start)
    if quota < local.size:
        pick = role_rng(seed, "kmeans sample", ref.index).choice(local.size, quota, replace=False)
        local = local[np.sort(pick)]
    x = src.read_rows(local + ref.global_start, chunk_rows=chunk_rows_for(src.dim))
    x = np.ascontiguousarray(x, dtype=np.float32)
    return normalize_rows(x) if spherical else x


def _write_sample(path, results, s: int, d: int, digest) -> int:
    """Write the sample's rows as they come into a new .npy at ``path``; returns the byte
    offset of the rows. Refused before writing when the disk cannot hold it."""
    path = os.fspath(path)
    free = shutil.disk_usage(os.path.dirname(path) or ".").free
    if s * d * 4 > free:
        raise PrunekitError(
            f"the k-means sample needs {human(s * d * 4)} of scratch space in "
            f"{os.path.dirname(path)}, which has {human(free)} free; free some space, give a "
            "smaller --sample, or write the output to a directory on a larger disk.")
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        head, {"descr": "<f4", "fortran_order": False, "shape": (int(s), int(d))})
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0),
                 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(head.getvalue())
        for x in results:
            data = np.ascontiguousarray(x, dtype="<f4").tobytes()
            fh.write(data)
            digest.update(data)
    return len(head.getvalue())


def _recorded_sample(path, work, s: int, d: int) -> FitSample | None:
    """The scratch sample an earlier run of this command wrote, when its record says it is
    complete and its rows still hash to the recorded digest."""
    rec = work.load_json("sample-file")
    if rec is None or (rec.get("rows"), rec.get("dim")) != (s, d) or not os.path.isfile(path):
        return None
    offset = int(rec["offset"])
    if os.path.getsize(path) != offset + s * d * 4:
        return None
    digest = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as fh:
        fh.seek(offset)
        for block in iter(lambda: fh.read(16 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != rec.get("digest"):
        return None
    return FitSample(s, d, path=os.fspath(path), offset=offset)


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
    seeding: str = "parallel",
    full_passes: int = 0,
    engine=None,
    work=None,
    chunk_rows: int | None = None,
    budget: int | None = None,
    progress: bool = True,
    sink=None,
) -> KMeansResult:
    """k-means over the usable ``rows`` of a chunked source, holding only a sample in memory.

    When the sample is every row, held in memory (:func:`sample_in_memory`), and no
    streamed passes are asked for, this is :func:`fit` on all rows. Otherwise:

    1. Draw the sample (:func:`draw_sample`: chunk tasks, into memory or a scratch .npy in
       ``work``'s directory, else a temporary one), then seed and run Lloyd on it
       (:func:`fit`, chunk tasks again).
    2. ``full_passes`` streamed Lloyd passes (:func:`_lloyd_pass`): each task takes a
       group of consecutive chunks (:func:`pass_groups`) and adds up their rows per
       nearest centroid (float64) in chunk order; the groups' sums are added by a fixed
       tree of fan-in LLOYD_FAN_IN; the centroids become the means (renormalised when
       spherical; an empty cluster keeps its centroid).
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
    opts = {"iters": iters, "seed": seed, "spherical": spherical, "backend": backend,
            "restarts": restarts, "seeding": seeding, "progress": progress}
    if plan.rows >= rows.size and full_passes == 0 and sample_in_memory(plan.rows, src.dim,
                                                                         backend):
        # Everything fits: the fit on every row, whose last assignment is the answer (no
        # second pass over the data; the same on every engine, nothing worth recording).
        sample, _ = draw_sample(src, rows, plan.rows, seed=seed, spherical=spherical,
                                engine=engine, progress=progress)
        return fit(sample, k, engine=engine, **opts)
    cent, info = _sample_centroids(src, rows, k, plan, work, opts, engine)
    dropped = _dropped(src.n_total, rows)
    chunk_rows = chunk_rows or chunk_rows_for(src.dim)
    chunks = src.chunks(chunk_rows)
    limit = tasks_fitting(chunk_task_bytes(chunk_rows, src.dim, src.dtype.itemsize, k), budget)
    groups = pass_groups(chunks, chunk_rows, k)
    # a group task also holds its float64 sums and counts of every cluster
    pass_limit = tasks_fitting(chunk_task_bytes(chunk_rows, src.dim, src.dtype.itemsize, k)
                               + k * (src.dim + 1) * 16, budget)
    for p in range(full_passes):
        nxt = work.load(f"centroids-{p + 1}")
        if nxt is None:
            nxt = _lloyd_pass(src, groups, cent, spherical, dropped, engine, work, p,
                              pass_limit, progress)
            work.save(f"centroids-{p + 1}", nxt)
            if work.enabled:  # the pass's group records are no longer needed
                shutil.rmtree(work.scratch(f"pass-{p}"), ignore_errors=True)
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


def _sample_centroids(src, rows, k: int, plan: SamplePlan, work, opts: dict,
                      engine) -> tuple[np.ndarray, dict]:
    """Step 1 of :func:`kmeans_streamed`: :func:`fit` (options ``opts``) on the sample,
    or the centroids and facts an earlier run with the same sample size recorded."""
    info = work.load_json("sample")
    if info is not None and info.get("sample_rows") != plan.rows:
        work.clear()  # recorded with another sample size (another --sample): start over
        info = None
    cent = work.load("centroids-0")
    if cent is not None and info is not None:
        return cent, info
    draw = {"seed": opts["seed"], "spherical": opts["spherical"], "engine": engine,
            "progress": opts["progress"]}
    if sample_in_memory(plan.rows, src.dim, opts["backend"]):
        # The sample is only referenced by this call: freed before the streamed passes.
        res = fit(draw_sample(src, rows, plan.rows, **draw)[0], k, engine=engine,
                  labels=False, **opts)
    else:
        with _scratch_path(work) as path:
            sample = _recorded_sample(path, work, plan.rows, src.dim)
            if sample is None:
                sample, digest = draw_sample(src, rows, plan.rows, path=path, **draw)
                work.save_json("sample-file", {"rows": plan.rows, "dim": src.dim,
                                               "offset": sample.offset, "digest": digest})
            res = fit(sample, k, engine=engine, labels=False, work=work, **opts)
    info = {"backend": res.backend, "restart": res.restart, "restarts": res.restarts,
            "sample_inertia": res.inertia, "sample_rows": plan.rows}
    work.save("centroids-0", res.centroids)
    work.save_json("sample", info)
    return res.centroids, info


@contextlib.contextmanager
def _scratch_path(work) -> Iterator[str]:
    """Where the scratch sample goes: the work directory (kept for ``--resume`` until the
    run ends), else a private temporary directory removed afterwards (this machine only:
    Ray workers on other nodes need a work directory on shared storage)."""
    if work.enabled:
        yield os.fspath(work.scratch(SAMPLE_FILE))
        return
    tmp = tempfile.mkdtemp(prefix="prunekit-kmeans-")
    try:
        yield os.path.join(tmp, SAMPLE_FILE)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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


def _lloyd_chunk(shared, ref) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A chunk's clusters present, their float64 row sums and counts (:func:`_cluster_sums`)."""
    src, cent, spherical, dropped = shared
    x, ok = _prepared(src, ref, dropped, spherical)
    labels = nearest(x, cent, spherical=spherical)[ok]
    return _cluster_sums(x[ok], labels)


def chunk_task_bytes(chunk_rows: int, d: int, itemsize: int, k: int) -> int:
    """Peak memory of one chunk task: the rows as read, float32 copies, the product blocks."""
    return chunk_rows * (d * (itemsize + 12) + 32) + ASSIGN_CHUNK * (4 * k + 16 * d)


def pass_groups(chunks: list, chunk_rows: int, k: int) -> list[list]:
    """The task groups of a streamed Lloyd pass: runs of consecutive chunks.

    A group holds at least LLOYD_ROWS_PER_CLUSTER k rows (so that its sums, at most k x d,
    are small next to its rows) and there are at most PASS_GROUPS_MAX groups, so a pass
    makes at most that many sums, whatever the number of rows, for its tree to add up.
    Both follow the data's chunks and ``k`` only, never the workers.
    """
    n = len(chunks)
    per = max(1, -(-LLOYD_ROWS_PER_CLUSTER * int(k) // max(1, int(chunk_rows))),
              -(-n // PASS_GROUPS_MAX))
    return [chunks[a : a + per] for a in range(0, n, per)]


def _lloyd_group(shared, group) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A pass task: its chunks' clusters present, float64 sums and counts, added in chunk
    order (:func:`_summed`)."""
    k, d = shared[1].shape
    return _summed(k, d, (_lloyd_chunk(shared, ref) for ref in group))


def _lloyd_pass(src, groups, cent, spherical, dropped, engine, work, p, limit,
                progress) -> np.ndarray:
    """One streamed Lloyd update: a task per group (:func:`_lloyd_group`), the groups' sums
    added by the tree of :meth:`~prunekit.runtime.engine.Engine.reduce` (fan-in
    LLOYD_FAN_IN, the same on every engine), so the driver receives the root alone. With a
    work directory each group task records its own sums (``pass-P/GROUP``, for
    ``--resume``) or loads them from an earlier run (:func:`_recorded_group`); the work
    directory is then on storage every worker shares."""
    k, d = cent.shape
    shared = (src, cent, spherical, dropped)
    fn, items = _lloyd_group, groups
    if work.enabled:
        fn, shared = _recorded_group, (shared, work)
        items = [(f"pass-{p}/{i:08d}", group) for i, group in enumerate(groups)]
    present, s, c = engine.reduce(fn, items, shared, combine=functools.partial(_add_sums, k),
                                  fan_in=LLOYD_FAN_IN, desc=f"Lloyd pass {p + 1}",
                                  progress=progress, limit=limit)
    sums = np.zeros((k, d))
    counts = np.zeros(k, dtype=np.int64)
    sums[present], counts[present] = s, c
    return _means(cent, sums, counts, spherical)  # an empty cluster keeps its centroid


def _recorded_group(shared, item) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A pass task with a work directory: the group's record of an earlier run when it
    verifies, else its sums (:func:`_lloyd_group`), recorded where they are computed."""
    (pass_shared, work), (name, group) = shared, item
    rec = work.load(name)  # [cluster, count, sums...] per cluster present
    if rec is not None:
        return (rec[:, 0].astype(np.int64), np.ascontiguousarray(rec[:, 2:]),
                rec[:, 1].astype(np.int64))
    present, s, c = _lloyd_group(pass_shared, group)
    work.save(name, np.column_stack([present, c, s]).astype(np.float64))
    return present, s, c


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
