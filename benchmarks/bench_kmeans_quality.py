"""k-means quality: prunekit's inertia against scikit-learn's ``KMeans(n_init=10)``.

For each data set (Gaussian blobs from ``sklearn.datasets.make_blobs``: ``--k`` centres in
the box [-10, 10]^d, one cluster standard deviation per data set) this fits
scikit-learn's ``KMeans(k, n_init=10)`` once as the reference, then prunekit's k-means for
``--seeds`` seeds in two configurations:

* ``subsample + faiss``: the seeding and Lloyd prunekit used before k-means|| (greedy
  k-means++ on max(4096, 8k) rows, faiss Lloyd on one thread);
* ``parallel + chunked``: the default (k-means|| over the whole sample, the best weighted
  re-clustering of its candidates, Lloyd as chunk tasks).

Both use their default number of restarts (one at the default size) and ``--iters``
Lloyd iterations, Euclidean. Every inertia is recomputed the same way (float64 distances
to the final centroids), and the table prints the ratio to the reference: mean, max and
min over the seeds, and the mean time of one fit.

    python benchmarks/bench_kmeans_quality.py                       # 1e5 x 64, k = 200
    python benchmarks/bench_kmeans_quality.py --stds 2 --seeds 3    # one data set, quick
    python benchmarks/bench_kmeans_quality.py --speed 100000,64,200 --speed 50000,128,2000

``--speed N,D,K`` (repeatable) times Lloyd iterations instead, from the same starting
centroids on blobs of that size: faiss on one thread against the chunked Lloyd on 1 and 2
local workers (median of ``--repeats`` runs of 5 iterations each).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from prunekit.compute.cluster import (
    FitSample,
    _Fit,
    _lloyd_faiss,
    assign,
    kmeans,
    lloyd_step,
    one_thread,
)
from prunekit.runtime.engine import LocalEngine

CONFIGS = {
    "subsample + faiss": {"seeding": "subsample", "backend": "faiss"},
    "parallel + chunked": {"seeding": "parallel", "backend": "auto"},
}


def inertia(x: np.ndarray, centroids: np.ndarray) -> float:
    return float(assign(x, centroids, spherical=False)[2].sum())


def blobs(n: int, d: int, k: int, std: float) -> np.ndarray:
    from sklearn.datasets import make_blobs

    x, _ = make_blobs(n_samples=n, n_features=d, centers=k, cluster_std=std, random_state=0)
    return x.astype(np.float32)


def reference(x: np.ndarray, k: int) -> tuple[float, float]:
    """scikit-learn's KMeans(n_init=10): (inertia, seconds)."""
    from sklearn.cluster import KMeans

    t0 = time.perf_counter()
    km = KMeans(k, n_init=10, random_state=0).fit(x)
    return inertia(x, km.cluster_centers_.astype(np.float32)), time.perf_counter() - t0


def lloyd_speed(n: int, d: int, k: int, repeats: int, iters: int = 5) -> None:
    """Seconds per Lloyd iteration: faiss on one thread, chunked on 1 and 2 workers."""
    x = blobs(n, d, k, 2.0)
    init = x[np.random.default_rng(0).choice(n, k, replace=False)]

    def chunked(workers):
        run = _Fit(FitSample.of(x), k, False, LocalEngine(workers), 0, None)
        cent = init
        for _ in range(iters):
            cent = lloyd_step(run, cent)

    def faiss_one_thread():
        with one_thread("faiss"):
            _lloyd_faiss(x, init, iters, 0, False)

    runs = {"faiss, 1 thread": faiss_one_thread,
            "chunked, 1 worker": lambda: chunked(1), "chunked, 2 workers": lambda: chunked(2)}
    for name, fn in runs.items():
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) / iters)
        print(f"{n:>8} x {d:<4} | {k:>5} | {name:<19} | {np.median(times):>9.4f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--iters", type=int, default=25)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--stds", default="1,2,4", help="cluster standard deviations, one data set each")
    ap.add_argument("--speed", action="append", default=[], metavar="N,D,K",
                    help="time Lloyd iterations at this size instead (repeatable)")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    if a.speed:
        print(f"{'data':>15} | {'k':>5} | {'Lloyd':<19} | {'s / iter':>9}")
        print("-" * 58)
        for spec in a.speed:
            n, d, k = (int(v) for v in spec.split(","))
            lloyd_speed(n, d, k, a.repeats)
        return
    print(f"{a.n} x {a.d}, k = {a.k}, {a.iters} Lloyd iterations, seeds 0..{a.seeds - 1}; "
          "ratio = inertia / scikit-learn KMeans(n_init=10)")
    print(f"{'blobs std':>9} | {'configuration':<19} | {'mean':>7} | {'max':>7} | {'min':>7} | "
          f"{'time (s)':>8}")
    print("-" * 72)
    for std in (float(s) for s in a.stds.split(",")):
        x = blobs(a.n, a.d, a.k, std)
        ref, t_ref = reference(x, a.k)
        print(f"{std:>9g} | {'sklearn n_init=10':<19} | {1.0:>7.4f} | {'':>7} | {'':>7} | "
              f"{t_ref:>8.1f}", flush=True)
        for name, opts in CONFIGS.items():
            ratios, times = [], []
            for seed in range(a.seeds):
                t0 = time.perf_counter()
                res = kmeans(x, a.k, iters=a.iters, seed=seed, spherical=False, progress=False,
                             **opts)
                times.append(time.perf_counter() - t0)
                ratios.append(inertia(x, res.centroids) / ref)
            print(f"{std:>9g} | {name:<19} | {np.mean(ratios):>7.4f} | {max(ratios):>7.4f} | "
                  f"{min(ratios):>7.4f} | {np.mean(times):>8.1f}", flush=True)


if __name__ == "__main__":
    main()
