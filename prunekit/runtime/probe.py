"""A seconds-long probe of this machine, on the data at hand: the rates a plan is made of.

Every probe measures what every method uses:

* reading: chunks spread evenly through the source, read as a command reads them (the
  first read of a file that is still in the page cache measures memory, not the disk:
  the probe reports what it saw, and a plan is only as right as that), and one chunk
  read again, from the page cache (shards that are hard links of one file are read from
  the disk once, then from the cache);
* the load pass's work per byte (hash, NaN check, norms) on those chunks;
* what every chunk task does first with the rows it read (float32 copy, row norms);
* writing a scores part (Parquet, one thread), when pyarrow is installed;
* writing scratch (a file of ``WRITE_BYTES`` in the temporary directory, synced to disk:
  the grouping's pieces of a large input outgrow the page cache);
* float32 GEMM on one thread and on all threads, float32 matrix-vector on one thread;
* when the plan covers ``select`` and ``export`` (:func:`measure_pipeline`): the real
  streamed select of a small generated scores folder on one task, each of its passes timed
  apart, ``select()`` of the same scores in memory, and the export of the selection in the
  format asked.

A method adds the kernels its cost model needs: it declares a probe
(``register(..., probe=fn)``, see :mod:`prunekit.methods`), ``fn(dim, n, params)`` returning
named rates (the k-means kernels at its ``k``, a greedy pick loop, ...), which land in
:attr:`Probe.kernels`. :func:`repeat` and :func:`time_greedy` are the timers they use.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from prunekit.errors import PrunekitError
from prunekit.io.scan import norms_into
from prunekit.io.source import CHUNK_ROWS, EmbeddingSource
from prunekit.runtime.engine import LocalEngine

# A method's probe: (dim, usable rows, validated params) -> named rates of its kernels.
ProbeFn = Callable[[int, int, dict[str, Any]], dict[str, float]]

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
    prepare_bytes_per_s: float = 0.0  # rows as read -> float32 and norms, one thread (0: unknown)
    part_rows_per_s: float = 0.0  # a scores part written as Parquet, one thread (0: unknown)
    write_bytes_per_s: float = 0.0  # scratch written and synced (0: unknown, the read rate)
    cache_bytes_per_s: float = 0.0  # a chunk read again: from the page cache (0: unknown)
    # select and export, rows a second of one task (0: not timed; see measure_pipeline)
    select_count_rows_per_s: float = 0.0  # the counting pass, less the parts' hashing
    select_cut_rows_per_s: float = 0.0  # a pass gathering the rows of the cut bins
    select_write_rows_per_s: float = 0.0  # the write pass (scores rows read, half kept)
    select_memory_rows_per_s: float = 0.0  # select() of scores in memory
    hash_bytes_per_s: float = 0.0  # a part file hashed as the reader checks it
    score_part_bytes_per_row: float = 0.0  # a k-means scores part on disk, bytes a row
    export_rows_per_s: dict[str, float] = field(default_factory=dict)  # kept rows, by format
    # The method's own kernels, named by its probe (e.g. kmeans_k, lloyd_flops).
    kernels: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def repeat(fn: Callable[[], object], seconds: float = KERNEL_SECONDS) -> float:
    """Seconds per call of ``fn``, repeated for about ``seconds`` (after one warm-up call)."""
    fn()
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return elapsed / calls


def measure_read(src: EmbeddingSource,
                 chunk_rows: int = CHUNK_ROWS) -> tuple[float, float, float, int]:
    """``(read, scan, prepare bytes/s, bytes read)`` over chunks spread through ``src``;
    prepare: the float32 copy and row norms a chunk task makes of what it read."""
    refs = src.chunks(chunk_rows)
    pick = np.unique(np.linspace(0, len(refs) - 1, min(READ_CHUNKS, len(refs))).round().astype(int))
    read_s = scan_s = prep_s = 0.0
    nbytes = 0
    for i in pick:
        t0 = time.perf_counter()
        block = src.read(refs[int(i)])
        t1 = time.perf_counter()
        hashlib.blake2b(memoryview(np.ascontiguousarray(block)), digest_size=16)
        t2 = time.perf_counter()
        norms_into(block, np.empty(block.shape[0], np.float32))
        t3 = time.perf_counter()
        x = np.array(block, dtype=np.float32, order="C")
        norms_into(x, np.empty(x.shape[0], np.float32))
        t4 = time.perf_counter()
        scan_s += max(t2 - t1, t3 - t2)  # the load pass hashes on a second thread
        read_s += t1 - t0
        prep_s += t4 - t3
        nbytes += block.nbytes
        if read_s + scan_s + prep_s > READ_SECONDS or nbytes > READ_BYTES:
            break
    return (nbytes / max(read_s, 1e-9), nbytes / max(scan_s, 1e-9),
            nbytes / max(prep_s, 1e-9), nbytes)


def measure_cache(src: EmbeddingSource, chunk_rows: int = CHUNK_ROWS) -> float:
    """Bytes a second of the first chunk read twice: the second read is the page cache's
    (what a shard hard-linked to one already read costs)."""
    ref = src.chunks(chunk_rows)[0]
    src.read(ref)
    t0 = time.perf_counter()
    block = src.read(ref)
    return block.nbytes / max(time.perf_counter() - t0, 1e-9)


def measure_gemm(dim: int, threads: int | None) -> float:
    """float32 GEMM flop/s of a (4096 x dim) by (dim x 1024) product."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4096, dim), dtype=np.float32)
    b = rng.standard_normal((dim, 1024), dtype=np.float32)
    with threadpool_limits(limits=threads):
        per_call = repeat(lambda: a @ b)
    return 2.0 * 4096 * dim * 1024 / per_call


def measure_gemv(dim: int) -> float:
    """float32 matrix-vector flop/s on a (32768 x dim) matrix, one thread."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((32768, dim), dtype=np.float32)
    v = rng.standard_normal(dim, dtype=np.float32)
    with threadpool_limits(limits=1):
        per_call = repeat(lambda: a @ v)
    return 2.0 * 32768 * dim / per_call


WRITE_BYTES = 64 << 20  # the scratch file the probe writes


def measure_write(nbytes: int = WRITE_BYTES) -> float:
    """Bytes a second written to a new file in the temporary directory and synced."""
    block = np.random.default_rng(0).integers(0, 255, 1 << 22, dtype=np.uint8).tobytes()
    blocks = max(1, nbytes // len(block))
    with tempfile.TemporaryFile(prefix="prunekit-probe-") as fh:
        t0 = time.perf_counter()
        for _ in range(blocks):
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())
        return blocks * len(block) / max(time.perf_counter() - t0, 1e-9)


PART_ROWS_PROBED = 1 << 17  # rows of the scores part the probe writes


def measure_part_write(rows: int = PART_ROWS_PROBED) -> float:
    """Rows a second of one scores part written as Parquet (position, score, cluster,
    centroid distance: the k-means columns), closed and hashed, on one thread; 0.0 when
    pyarrow is not installed."""
    from prunekit.io.dataset.writer import PartFile, PartSpec

    rng = np.random.default_rng(0)
    dist = rng.random(rows)
    cols = {"position": np.arange(rows, dtype=np.int64), "score": dist,
            "cluster": rng.integers(0, 1000, rows), "centroid_distance": dist}
    with tempfile.TemporaryDirectory(prefix="prunekit-probe-") as tmp:
        def write() -> None:
            part = PartFile(PartSpec(tmp, "probe", "scores"), 0, 0, rows)
            part.write(cols)
            os.unlink(os.path.join(tmp, part.close().file))

        try:
            return rows / repeat(write, 0.2)
        except PrunekitError:  # the parquet extra is missing: folders cannot be written
            return 0.0


PIPELINE_ROWS = 1 << 18  # rows of the scores folder the pipeline probe selects from
PIPELINE_GROUPS_MAX = PIPELINE_ROWS // 64  # clusters of it, at most


class _TimedEngine(LocalEngine):
    """One task at a time (an engine task's rate), each map's wall time kept by its name."""

    def __init__(self) -> None:
        super().__init__(1)
        self.seconds: dict[str, float] = {}

    def _map(self, fn, items, shared, *, desc, **kw):
        t0 = time.perf_counter()
        try:
            yield from super()._map(fn, items, shared, desc=desc, **kw)
        finally:
            self.seconds[desc] = self.seconds.get(desc, 0.0) + time.perf_counter() - t0


def measure_pipeline(groups: int = 1, export: str | None = None,
                     rows: int = PIPELINE_ROWS) -> dict[str, Any]:
    """The select and export rates of :class:`Probe` (its field names), timed on the real code.

    k-means-like scores of ``rows`` rows in ``groups`` clusters (at most
    ``PIPELINE_GROUPS_MAX``) are saved as a folder, selected from with pr 0.5 (balance
    ``clusters``, or ``none`` for one group) into a folder twice on one task, each pass's
    best time kept; the folder's part is then hashed alone, as the counting pass hashes parts
    of up to ``HASH_ALWAYS_BYTES`` (the count rate is given without it), and the selection
    exported in ``export``'s format. ``{}`` when pyarrow is missing.
    """
    from prunekit.io.dataset import PartsReader
    from prunekit.io.dataset.layout import blake2b_file
    from prunekit.runtime.context import runtime
    from prunekit.selection.export import export_folder
    from prunekit.selection.scores import Scores
    from prunekit.selection.streamed import COUNT_PASS, CUT_PASS, WRITE_PASS, select_folder
    from prunekit.selection.subset import select

    k = max(1, min(int(groups), PIPELINE_GROUPS_MAX))
    balance = "clusters" if k > 1 else "none"
    rng = np.random.default_rng(0)
    dist = rng.random(rows)
    sc = Scores(score=dist, method="kmeans", n_total=rows, cluster=rng.integers(0, k, rows),
                centroid_distance=dist, centroids=np.zeros((k, 4), np.float32))
    with tempfile.TemporaryDirectory(prefix="prunekit-probe-") as tmp:
        scores, sel = os.path.join(tmp, "scores"), os.path.join(tmp, "sel")
        try:
            sc.save(scores)
        except PrunekitError:  # the parquet extra is missing: no folder to select from
            return {}
        best: dict[str, float] = {}
        for run in range(2):
            engine = _TimedEngine()
            with runtime(engine=engine, progress=False):
                select_folder(scores, f"{sel}{run}", 0.5, balance=balance, progress=False)
            for name, t in engine.seconds.items():
                best[name] = min(best.get(name, t), t)
        parts = PartsReader(scores, kind="scores").files()
        nbytes = sum(os.path.getsize(f) for f in parts)
        t0 = time.perf_counter()
        for f in parts:
            blake2b_file(f)
        hashing = time.perf_counter() - t0
        cut = sum(t for name, t in best.items() if name.startswith(CUT_PASS))
        count = best.get(COUNT_PASS, 0.0)
        out: dict[str, Any] = {
            "select_count_rows_per_s": _rate(rows, max(count - hashing, 0.1 * count)),
            "select_cut_rows_per_s": _rate(rows, cut),
            "select_write_rows_per_s": _rate(rows, best.get(WRITE_PASS, 0.0)),
            "select_memory_rows_per_s": rows / repeat(lambda: select(sc, 0.5, balance=balance),
                                                      0.05),
            "hash_bytes_per_s": _rate(nbytes, hashing),
            "score_part_bytes_per_row": nbytes / rows,
            "export_rows_per_s": {},
        }
        if export is not None:
            kept = rows - rows // 2
            target = os.path.join(tmp, f"sel.{export}")
            t0 = time.perf_counter()
            export_folder(f"{sel}1", target, export)
            out["export_rows_per_s"] = {export: _rate(kept, time.perf_counter() - t0)}
    return out


def _rate(amount: float, seconds: float) -> float:
    """``amount / seconds``; 0.0 (not timed) when nothing was timed."""
    return amount / seconds if seconds > 0 else 0.0


GREEDY_ROWS = (512, 8192)  # candidates of the two timed greedy runs
GREEDY_PICKS = 64


def time_greedy(fn: Callable[[np.ndarray, int], np.ndarray], width: int) -> tuple[float, float]:
    """``(seconds a pick, seconds per candidate value)`` of a greedy loop, one thread.

    ``fn(x, m)`` makes ``m`` picks over the rows of ``x`` (herding, k-center). It is timed
    at two candidate counts of ``width`` values; the per-pick cost is a line in the number
    of candidate values.
    """
    per_pick = []
    with threadpool_limits(limits=1):
        for rows in GREEDY_ROWS:
            x = np.random.default_rng(rows).standard_normal((rows, width), dtype=np.float32)
            per_pick.append(repeat(lambda x=x: fn(x, GREEDY_PICKS), 0.1) / GREEDY_PICKS)
    slope = max((per_pick[1] - per_pick[0]) / ((GREEDY_ROWS[1] - GREEDY_ROWS[0]) * width), 0.0)
    return max(per_pick[0] - slope * GREEDY_ROWS[0] * width, 0.0), slope


def probe(src: EmbeddingSource, measure: ProbeFn | None = None,
          params: dict[str, Any] | None = None, *, select_groups: int | None = None,
          export: str | None = None) -> Probe:
    """Measure this machine on ``src`` (a few seconds), and the kernels ``measure`` (a
    method's probe) times for ``params``; with ``select_groups``, also select (from scores of
    that many clusters) and ``export`` in that format (:func:`measure_pipeline`)."""
    t0 = time.perf_counter()
    read, scan, prepare, nbytes = measure_read(src)
    dim = max(16, src.dim)
    kernels = {} if measure is None else dict(measure(dim, src.n_total, dict(params or {})))
    gemm_1, gemm_all, gemv = measure_gemm(dim, 1), measure_gemm(dim, None), measure_gemv(dim)
    part_rows, write, cache = measure_part_write(), measure_write(), measure_cache(src)
    pipeline = {} if select_groups is None else measure_pipeline(select_groups, export)
    return Probe(
        read_bytes_per_s=read,
        scan_bytes_per_s=scan,
        gemm_flops_1=gemm_1,
        gemm_flops_all=gemm_all,
        gemv_flops_1=gemv,
        threads=os.cpu_count() or 1,
        bytes_read=nbytes,
        seconds=time.perf_counter() - t0,
        prepare_bytes_per_s=prepare,
        part_rows_per_s=part_rows,
        write_bytes_per_s=write,
        cache_bytes_per_s=cache,
        kernels=kernels,
        **pipeline,
    )
