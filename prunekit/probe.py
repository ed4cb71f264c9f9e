"""A seconds-long probe of this machine, on the data at hand: the rates a plan is made of.

* reading: chunks spread evenly through the source, read as a command reads them (the
  first read of a file that is still in the page cache measures memory, not the disk:
  the probe reports what it saw, and a plan is only as right as that);
* the load pass's work per byte (hash, NaN check, norms) on those chunks;
* float32 GEMM (the k-means kernel) on one thread and on all threads;
* float32 matrix-vector products (one greedy pick) on one thread;
* with a ``k``: the k-means kernels themselves on a small random problem of that k
  (seeding, one Lloyd iteration, the assignment of a chunk on one thread), since their
  speed is far from the GEMM peak for many shapes.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from .kernels import MEDIAN_SAMPLE, median_sigma
from .scan import norms_into
from .source import CHUNK_ROWS, EmbeddingSource

READ_SECONDS = 1.5  # stop reading after this long ...
READ_BYTES = 512 << 20  # ... or this many bytes
READ_CHUNKS = 8  # at most this many chunks, evenly spaced
KERNEL_SECONDS = 0.3  # each compute kernel repeats until this long


@dataclass
class Probe:
    """Measured rates; the per-thread ones are what one engine task gets."""

    read_bytes_per_s: float
    scan_bytes_per_s: float  # hash + NaN check + norms, after the read
    gemm_flops_1: float  # float32 GEMM, one thread
    gemm_flops_all: float  # float32 GEMM, all threads
    gemv_flops_1: float  # float32 matrix-vector, one thread
    threads: int
    bytes_read: int
    seconds: float
    kmeans_k: int | None = None  # the k the three k-means rates were measured at
    lloyd_flops: float | None = None  # one Lloyd iteration, 2 m k d flops, all threads
    seeding_flops: float | None = None  # k-means++ seeding, 2 m k d (2 + ln k) flops
    assign_flops_1: float | None = None  # assignment of rows to centroids, one thread
    # One greedy pick over s candidates of w values costs pick_s + pick_per_value * s * w
    # seconds (w: herding's features, k-center's dimensions); one thread.
    herding_pick_s: float | None = None
    herding_pick_per_value: float | None = None
    kcenter_pick_s: float | None = None
    kcenter_pick_per_value: float | None = None
    sigma_s: float | None = None  # herding's median heuristic on its sample (seconds)

    def to_dict(self) -> dict:
        return asdict(self)


def _repeat(fn, seconds: float = KERNEL_SECONDS) -> float:
    """Seconds per call of ``fn``, repeated for about ``seconds`` (after one warm-up call)."""
    fn()
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return elapsed / calls


def measure_read(src: EmbeddingSource, chunk_rows: int = CHUNK_ROWS) -> tuple[float, float, int]:
    """``(read bytes/s, scan bytes/s, bytes read)`` over chunks spread through ``src``."""
    refs = src.chunks(chunk_rows)
    pick = np.unique(np.linspace(0, len(refs) - 1, min(READ_CHUNKS, len(refs))).round().astype(int))
    read_s = scan_s = 0.0
    nbytes = 0
    for i in pick:
        t0 = time.perf_counter()
        block = src.read(refs[int(i)])
        t1 = time.perf_counter()
        hashlib.blake2b(memoryview(np.ascontiguousarray(block)), digest_size=16)
        t2 = time.perf_counter()
        norms_into(block, np.empty(block.shape[0], np.float32))
        t3 = time.perf_counter()
        scan_s += max(t2 - t1, t3 - t2)  # the load pass hashes on a second thread
        read_s += t1 - t0
        nbytes += block.nbytes
        if read_s + scan_s > READ_SECONDS or nbytes > READ_BYTES:
            break
    return nbytes / max(read_s, 1e-9), nbytes / max(scan_s, 1e-9), nbytes


def measure_gemm(dim: int, threads: int | None) -> float:
    """float32 GEMM flop/s of a (4096 x dim) by (dim x 1024) product."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4096, dim), dtype=np.float32)
    b = rng.standard_normal((dim, 1024), dtype=np.float32)
    with threadpool_limits(limits=threads):
        per_call = _repeat(lambda: a @ b)
    return 2.0 * 4096 * dim * 1024 / per_call


def measure_gemv(dim: int) -> float:
    """float32 matrix-vector flop/s on a (32768 x dim) matrix, one thread."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((32768, dim), dtype=np.float32)
    v = rng.standard_normal(dim, dtype=np.float32)
    with threadpool_limits(limits=1):
        per_call = _repeat(lambda: a @ v)
    return 2.0 * 32768 * dim / per_call


def measure_kmeans(dim: int, k: int) -> tuple[float, float, float]:
    """``(Lloyd, seeding, assignment)`` flop/s of prunekit's k-means at this ``k``.

    Runs k-means with 1 and with 3 Lloyd iterations on ``m = max(2k, 4096)`` random rows:
    the difference is two iterations; the rest, less the final assignment, is seeding.
    """
    from .cluster import SEED_SAMPLE_MIN, SEED_SAMPLE_PER_CLUSTER, assign, kmeans

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
    return (flops / per_iter, 2.0 * seed_rows * k * dim * (2 + np.log(k)) / seeding,
            flops / max(t_assign, 1e-9))


GREEDY_ROWS = (512, 8192)  # candidates of the two timed greedy runs
GREEDY_PICKS = 64


def measure_greedy(method: str, width: int) -> tuple[float, float]:
    """``(seconds a pick, seconds per candidate value)`` of herding or k-center, one thread.

    Times the real greedy loop at two candidate counts; the per-pick cost is a line in the
    number of candidate values.
    """
    from .methods.herding import herd_rff
    from .methods.kcenter import farthest_first

    fn = herd_rff if method == "herding" else farthest_first
    per_pick = []
    with threadpool_limits(limits=1):
        for rows in GREEDY_ROWS:
            x = np.random.default_rng(rows).standard_normal((rows, width), dtype=np.float32)
            per_pick.append(_repeat(lambda x=x: fn(x, GREEDY_PICKS), 0.1) / GREEDY_PICKS)
    slope = max((per_pick[1] - per_pick[0]) / ((GREEDY_ROWS[1] - GREEDY_ROWS[0]) * width), 0.0)
    return max(per_pick[0] - slope * GREEDY_ROWS[0] * width, 0.0), slope


def measure_sigma(dim: int, rows: int) -> float:
    """Seconds of the median heuristic (herding's ``--sigma auto``) on ``rows`` rows."""
    x = np.random.default_rng(0).standard_normal((max(rows, 2), dim), dtype=np.float32)
    t0 = time.perf_counter()
    median_sigma(x)
    return time.perf_counter() - t0


def probe(src: EmbeddingSource, k: int | None = None, greedy: str | None = None,
          width: int | None = None) -> Probe:
    """Measure this machine on ``src`` (a few seconds); k-means at ``k`` if given, the
    greedy ``herding``/``kcenter`` loop over ``width`` values a candidate if given."""
    t0 = time.perf_counter()
    read, scan, nbytes = measure_read(src)
    dim = max(16, src.dim)
    lloyd = seeding = assign = None
    if k is not None:
        lloyd, seeding, assign = measure_kmeans(dim, int(k))
    picks: dict[str, float] = {}
    if greedy is not None:
        a, b = measure_greedy(greedy, int(width or dim))
        picks = {f"{greedy}_pick_s": a, f"{greedy}_pick_per_value": b}
    if greedy == "herding":
        picks["sigma_s"] = measure_sigma(dim, min(src.n_total, MEDIAN_SAMPLE))
    return Probe(
        read_bytes_per_s=read,
        scan_bytes_per_s=scan,
        gemm_flops_1=measure_gemm(dim, 1),
        gemm_flops_all=measure_gemm(dim, None),
        gemv_flops_1=measure_gemv(dim),
        threads=os.cpu_count() or 1,
        bytes_read=nbytes,
        seconds=time.perf_counter() - t0,
        kmeans_k=k,
        lloyd_flops=lloyd,
        seeding_flops=seeding,
        assign_flops_1=assign,
        **picks,
    )
