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
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from .errors import PrunekitError
from .progress import track

BACKENDS = ("auto", "faiss", "sklearn")
SEED_SAMPLE_MIN = 4096
SEED_SAMPLE_PER_CLUSTER = 8
ASSIGN_CHUNK = 8192
# Below this many multiply-adds per iteration (n * k * d), threads cost more than they
# save: OpenMP start-up and spinning dominate, badly so on a busy machine.
SINGLE_THREAD_WORK = 50_000_000


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


def kmeans(
    x: np.ndarray,
    k: int,
    *,
    iters: int = 25,
    seed: int = 0,
    spherical: bool = True,
    backend: str = "auto",
    restarts: int = 1,
    progress: bool = True,
    copy: bool = True,
) -> KMeansResult:
    """Cluster the rows of ``x`` into ``k`` clusters; keep the restart of lowest inertia.

    ``x`` is used as C-contiguous float32 and normalised when ``spherical``: on a copy,
    unless ``copy=False`` (then a float32 C-contiguous ``x`` is normalised in place).
    Restart ``r`` draws its seeding from ``SeedSequence([seed, r])``.
    """
    n = x.shape[0]
    if not 1 <= k <= n:
        raise PrunekitError(f"k-means needs 1 <= k <= number of rows ({n}); got k={k}. Lower --k.")
    if iters < 1 or restarts < 1:
        raise PrunekitError(f"k-means needs --iters >= 1 and --restarts >= 1 (got {iters}, {restarts}).")
    backend = resolve_backend(backend)
    data = np.array(x, dtype=np.float32, order="C") if copy else np.ascontiguousarray(x, np.float32)
    if spherical:
        normalize_rows(data)
    best: KMeansResult | None = None
    for r in track(range(restarts), total=restarts, desc="k-means restarts", progress=progress and restarts > 1):
        rng = np.random.default_rng(np.random.SeedSequence([seed, r]))
        with threadpool_limits(limits=1):  # thin products: threads only add contention
            init = kmeanspp(data, k, rng, spherical=spherical)
        lloyd_seed = int(rng.integers(0, 2**31 - 1))
        with _threads(backend, single=n * k * data.shape[1] < SINGLE_THREAD_WORK):
            if backend == "faiss":
                cent = _lloyd_faiss(data, init, iters, lloyd_seed, spherical)
            else:
                cent = _lloyd_sklearn(data, init, iters, lloyd_seed, spherical)
        labels, dist, sq = assign(data, cent, spherical=spherical)
        inertia = float(sq.sum())
        if best is None or inertia < best.inertia:
            best = KMeansResult(cent, labels, dist, inertia, backend, r)
    assert best is not None
    return best


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
def _threads(backend: str, single: bool) -> Iterator[None]:
    """Run small problems on one thread (results do not depend on the thread count)."""
    if not single:
        yield
        return
    with threadpool_limits(limits=1):
        if backend != "faiss":
            yield
            return
        import faiss

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
