"""Large-k k-means: the k-means|| seeding's re-clustering on threads, and Lloyd's sums tree.

Part 1 times one seeding (k-means|| over the whole sample, then the weighted greedy
k-means++ re-clustering of its candidates) on clustered float32 data, on a local engine of
1 and of 2 workers: with one re-clustering try (what large k gets) the try runs on every
worker's thread. Then the try alone on 1 and 2 threads. Every run gives the same
centroids, byte for byte; the tables say so. Part 2
prints how a Lloyd iteration adds up its per-centroid sums at a few sizes (chunks a task,
tasks, the tree's fan-in and levels) and the bytes the driver receives, before and now.

    python benchmarks/bench_large_k.py                 # 2e5 x 64, k = 2000
    python benchmarks/bench_large_k.py --n 50000 --k 500 --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from _common import mixture

from prunekit.compute import cluster
from prunekit.compute.cluster import FitSample, _Fit, seed_parallel
from prunekit.runtime.engine import LocalEngine, tree_sizes


def bench_seeding(n: int, d: int, k: int, repeats: int) -> None:
    x = mixture(n, d, max(2, k // 2))
    sample = FitSample.of(x)
    tries = cluster.recluster_tries(n, k, d)
    print(f"\nk-means|| seeding of {n:,} x {d}, k = {k}: "
          f"{cluster.expected_candidates(k):,} candidates expected, {tries} re-clustering "
          "try(s)\n")
    print("| workers | try threads | seeding s (median) | same bytes as 1 worker |")
    print("|---:|---:|---:|---|")
    first = None
    for workers in (1, 2):
        eng = LocalEngine(workers)
        times, cent = [], None
        for _ in range(repeats):
            t0 = time.perf_counter()
            cent = seed_parallel(_Fit(sample, k, False, eng, 0, None), 0)
            times.append(time.perf_counter() - t0)
        first = cent if first is None else first
        threads = cluster.recluster_threads(workers, tries, eng.max_task_cpus)
        print(f"| {workers} | {threads} | {statistics.median(times):.2f} | "
              f"{'yes' if cent.tobytes() == first.tobytes() else 'NO'} |")
    cand, weight = cluster._oversample(_Fit(sample, k, False, LocalEngine(1), 0, None), 0)
    print(f"\nThe re-clustering try alone ({cand.shape[0]:,} weighted candidates):\n")
    print("| threads | try s (median) | same bytes as 1 thread |")
    print("|---:|---:|---|")
    first = None
    for threads in (1, 2):
        times, chosen = [], None
        for _ in range(repeats):
            t0 = time.perf_counter()
            chosen, _ = cluster._greedy_pp(cand, k, np.random.default_rng(0), weights=weight,
                                           threads=threads)
            times.append(time.perf_counter() - t0)
        first = chosen if first is None else first
        print(f"| {threads} | {statistics.median(times):.2f} | "
              f"{'yes' if chosen.tobytes() == first.tobytes() else 'NO'} |")


def bench_tree() -> None:
    print("\nLloyd's per-centroid sums: what one iteration sends the driver\n")
    print("| sample | d | k | chunks | chunks/task | tasks | fan-in | levels | to the driver before | now (Ray) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for rows, d, k in ((1_000_000, 64, 100), (256_000, 768, 1000),
                       (25_600_000, 768, 100_000)):
        step = cluster.fit_chunk_rows(d, k)
        chunks = -(-rows // step)
        group, fan_in = cluster.lloyd_tree(rows, d, k)
        tasks = -(-chunks // group)
        levels = len(tree_sizes(tasks, fan_in)) - 1
        before = chunks * min(step, k) * (d + 1) * 8
        # one combine: every task's sums; a tree: the root alone (Ray), fan-in per level here
        now = tasks * min(k, group * step) * (d + 1) * 8 if levels == 1 else k * (d + 1) * 8
        print(f"| {rows:,} | {d} | {k:,} | {chunks:,} | {group} | {tasks:,} | {fan_in} | "
              f"{levels} | {human(before)} | {human(now)} |")


def human(b: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if b < 1000:
            return f"{b:.0f} {unit}"
        b /= 1000
    return f"{b:.0f} PB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--k", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    bench_seeding(args.n, args.d, args.k, args.repeats)
    bench_tree()


if __name__ == "__main__":
    main()
