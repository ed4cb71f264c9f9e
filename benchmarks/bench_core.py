"""Core speed: k-means vs scikit-learn and raw faiss, greedy methods vs memory bandwidth, select.

Prints one table per part; every time is the median of ``--repeats`` runs measured in
this process. k-means peers run at equal settings: Euclidean, the same number of Lloyd
iterations, one initialisation, every point used (faiss's ``max_points_per_centroid``
raised), and their inertia is recomputed the same way from their final centroids.

    python benchmarks/bench_core.py            # 100k and 1M x 512, k = 1000 (long)
    python benchmarks/bench_core.py --quick    # small sizes, a minute or two
    python benchmarks/bench_core.py --sizes 100000 --picks 500 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from _common import mixture

import prunekit as pk
from prunekit.compute.cluster import assign, kmeans
from prunekit.compute.kernels import RandomFourierFeatures, median_sigma
from prunekit.methods.herding import herd_rff
from prunekit.methods.kcenter import farthest_first


def median_time(fn, repeats: int):
    """(median seconds, last result) over ``repeats`` calls."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def inertia(x: np.ndarray, centroids: np.ndarray) -> float:
    return float(assign(x, centroids, spherical=False)[2].sum())


# ----------------------------------------------------------------------------- k-means


def bench_kmeans(n: int, d: int, k: int, iters: int, repeats: int, sklearn_max: int):
    """Yield one row per run: (data, k, iterations, name, seconds, inertia).

    Raw faiss also runs with twice the iterations: random initialisation needs more
    Lloyd steps to reach the inertia k-means++ seeding starts near.
    """
    import faiss
    from sklearn.cluster import KMeans

    x = mixture(n, d, 2 * k)

    def ours():
        return kmeans(x, k, iters=iters, seed=0, spherical=False, backend="auto", restarts=1,
                      progress=False).centroids

    def raw_faiss(niter=iters):
        km = faiss.Kmeans(d, k, niter=niter, nredo=1, seed=1, spherical=False, verbose=False,
                          max_points_per_centroid=n // k + 1, min_points_per_centroid=1)
        km.train(x)
        return km.centroids

    def raw_sklearn():
        km = KMeans(k, n_init=1, max_iter=iters, tol=0.0, random_state=0).fit(x)
        return km.cluster_centers_.astype(np.float32)

    runs = [("raw faiss", iters, raw_faiss), ("prunekit (auto)", iters, ours),
            ("raw faiss", 2 * iters, lambda: raw_faiss(2 * iters)),
            ("sklearn KMeans", iters, raw_sklearn)]
    if n > sklearn_max:  # 14-46x slower than faiss here: hours at 1M rows
        runs = runs[:-1]
    for name, it, fn in runs:
        t, cent = median_time(fn, repeats)
        yield (f"{n}x{d}", k, it, name, t, inertia(x, cent))


def bench_backends(n: int, d: int, k: int, iters: int, repeats: int) -> list[tuple]:
    """prunekit's two Lloyd backends, spherical and Euclidean (the basis of ``auto``)."""
    x = mixture(n, d, 2 * k)
    rows = []
    for spherical in (True, False):
        for backend in ("faiss", "sklearn"):
            t, res = median_time(lambda b=backend, s=spherical: kmeans(
                x, k, iters=iters, seed=0, spherical=s, backend=b, restarts=1, progress=False),
                repeats)
            rows.append(("spherical" if spherical else "euclidean", backend, t, res.inertia))
    return rows


# ----------------------------------------------------------------------------- greedy


def bandwidth(x: np.ndarray, repeats: int) -> float:
    """Bytes per second of one read pass over ``x`` (best of a reduce and a copy)."""
    t_read, _ = median_time(lambda: np.add.reduce(x, axis=None), repeats)
    y = np.empty_like(x)
    t_copy, _ = median_time(lambda: np.copyto(y, x), repeats)
    return max(x.nbytes / t_read, 2 * x.nbytes / t_copy)


def bench_greedy(n: int, d: int, picks: int, repeats: int) -> tuple[float, list[tuple]]:
    x = mixture(n, d, 1000, seed=1)
    bw = bandwidth(x, repeats)
    bound = x.nbytes / bw
    sigma = median_sigma(x)
    t_rff, z = median_time(lambda: RandomFourierFeatures(d, sigma, 512, 0).transform(x), repeats)
    t_herd, _ = median_time(lambda: herd_rff(z, picks), repeats)
    t_kc, _ = median_time(lambda: farthest_first(x, picks), repeats)
    rows = [
        ("herding (RFF 512)", n, picks, t_rff, t_herd / picks, z.nbytes / bw),
        ("kcenter (euclidean)", n, picks, 0.0, t_kc / picks, bound),
    ]
    return bw, rows


# ----------------------------------------------------------------------------- select


def bench_select(n: int, k: int, repeats: int) -> list[tuple]:
    rng = np.random.default_rng(0)
    scores = pk.Scores(score=rng.random(n), method="random", n_total=n,
                       cluster=rng.integers(0, k, n).astype(np.int64))
    rows = []
    for balance in ("none", "clusters", "proportional"):
        t, sel = median_time(lambda b=balance: pk.select(scores, pr=0.5, balance=b), repeats)
        rows.append((n, balance, t, sel.n_kept))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (20k x 128, k = 100)")
    ap.add_argument("--sizes", type=int, nargs="+", help="k-means row counts (default 100000 1000000)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--greedy-n", type=int, default=100_000)
    ap.add_argument("--picks", type=int, default=10_000)
    ap.add_argument("--select-n", type=int, default=10_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kmeans-repeats", type=int, help="repeats of each k-means run (default --repeats)")
    ap.add_argument("--sklearn-max", type=int, default=200_000,
                    help="run the scikit-learn peer only up to this many rows (default 200000)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["kmeans", "backends", "greedy", "select"])
    a = ap.parse_args()
    if a.quick:
        a.dim, a.k, a.greedy_n, a.picks, a.select_n = 128, 100, 20_000, 500, 1_000_000
        a.sizes = a.sizes or [20_000]
    sizes = a.sizes or [100_000, 1_000_000]

    if "kmeans" not in a.skip:
        print(f"\nk-means (Euclidean, 1 init, all points; "
              f"median of {a.kmeans_repeats or a.repeats})")
        print(f"{'data':>12} {'k':>5} {'it':>3} {'implementation':>20} {'time s':>8} {'inertia':>14} {'vs faiss':>8}")
        for n in sizes:
            best = None
            for r in bench_kmeans(n, a.dim, a.k, a.iters, a.kmeans_repeats or a.repeats,
                                  a.sklearn_max):
                best = r[4] if best is None else best  # raw faiss comes first
                print(f"{r[0]:>12} {r[1]:>5} {r[2]:>3} {r[3]:>20} {r[4]:8.2f} {r[5]:14.6g} "
                      f"{r[4] / best:7.2f}x", flush=True)

    if "backends" not in a.skip:
        n = min(sizes)
        print(f"\nprunekit k-means backends, {n}x{a.dim}, k = {a.k}, {a.iters} iterations "
              f"(median of {a.kmeans_repeats or a.repeats})")
        print(f"{'mode':>10} {'backend':>8} {'time s':>8} {'inertia':>14}")
        for r in bench_backends(n, a.dim, a.k, a.iters, a.kmeans_repeats or a.repeats):
            print(f"{r[0]:>10} {r[1]:>8} {r[2]:8.2f} {r[3]:14.6g}")

    if "greedy" not in a.skip:
        bw, rows = bench_greedy(a.greedy_n, a.dim, a.picks, a.repeats)
        print(f"\ngreedy methods, {a.greedy_n}x{a.dim} float32, {a.picks} picks; "
              f"measured read bandwidth {bw / 1e9:.1f} GB/s")
        print(f"{'method':>20} {'n':>8} {'picks':>6} {'setup s':>8} {'ms/pick':>8} {'bound ms':>9} {'ratio':>6}")
        for r in rows:
            print(f"{r[0]:>20} {r[1]:>8} {r[2]:>6} {r[3]:8.2f} {1e3 * r[4]:8.2f} {1e3 * r[5]:9.2f} {r[4] / r[5]:6.2f}")

    if "select" not in a.skip:
        print(f"\nselect (pr = 0.5, {a.k} clusters; median of {a.repeats})")
        print(f"{'n':>10} {'balance':>13} {'time s':>8} {'kept':>10}")
        for r in bench_select(a.select_n, a.k, a.repeats):
            print(f"{r[0]:>10} {r[1]:>13} {r[2]:8.2f} {r[3]:>10}")


if __name__ == "__main__":
    main()
