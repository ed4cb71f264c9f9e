"""The words a method's cost model is written in: steps, a cost, and the model's quantities.

A method declares its cost model beside its function (``register(..., cost=fn)``, see
:mod:`prunekit.methods`): ``fn(m, params) -> Cost``, where ``params`` are the method's
validated parameters (defaults filled in) and ``m`` a :class:`CostModel`: the input's shape,
the memory budget, the tasks here and on Ray, and the rates of a
:class:`~prunekit.runtime.probe.Probe` (the kernels the method's own probe timed are in
``m.rates.kernels``). :func:`prunekit.runtime.plan.plan` adds the load pass and the totals.

Formulas every method shares (``B`` = bytes of the usable rows as stored):

* a streamed pass takes ``max(B / (read x streams), flops / (tasks x rate))``; locally the
  reads share one disk (one stream), on Ray each worker reads its own chunks;
* a chunk task first copies the rows it read to float32 and takes their norms:
  ``B / (prepare x tasks)`` more (the probe's ``prepare`` rate);
* grouping the rows by cluster (:mod:`prunekit.compute.grouping`) is a partitioned
  shuffle of engine tasks. Scatter, a task a chunk: read the chunk and its cluster ids,
  sort, write a piece (the rows plus 16 bytes each); gather, a task a bucket of clusters:
  read its stretch of every piece, write the grouped file (the rows plus 8 bytes each).
  Scratch: ``P = n (row + 16)`` bytes of pieces and ``G = n (row + 8)`` grouped, both on
  disk at the end of the gather; written once each, the pieces read by the gather, the
  grouped rows by the per-cluster tasks. A scatter task holds ``chunk (3 row + 48)``
  bytes, a gather task ``2 chunk (row + 16)``; the driver ``8 (chunks x buckets + 3
  groups)``;
* per-cluster work runs as parallel tasks reading the grouped rows once: ``max(total /
  tasks, largest cluster's time) + G / (read x streams)``; a task holds its batch's
  largest cluster, and as many tasks run at once as the budget holds (at most one a
  worker);
* a folder output's parts are written by the tasks that computed them (a method that
  writes parts, one task a part) or from the driver: ``n / (part rows/s x tasks)``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.runtime.engine import IN_FLIGHT_PER_WORKER, chunk_rows_for, tasks_fitting
from prunekit.runtime.memory import human

if TYPE_CHECKING:
    from prunekit.io.source import EmbeddingSource
    from prunekit.runtime.probe import Probe


@dataclass
class Step:
    """One step of a plan: passes over the data, predicted seconds, peak bytes."""

    name: str
    passes: float
    seconds_local: float
    seconds_ray: float
    peak_bytes: int
    note: str = ""


@dataclass
class Cost:
    """A method's predicted steps after the load pass, its per-row arrays, and notes."""

    steps: list[Step]
    per_row_bytes: int
    notes: list[str] = field(default_factory=list)


class CostModel:
    """The quantities every step's formula uses.

    ``n`` usable rows of ``d`` values of ``item`` bytes (``B`` bytes in all), ``chunk`` rows
    a streamed task, ``local`` tasks here and ``ray`` workers, the ``budget`` in bytes.
    """

    def __init__(self, src: EmbeddingSource, n: int, rates: Probe, budget: int, local: int,
                 ray: int, folder: bool = False) -> None:
        self.src, self.n, self.d, self.item = src, n, src.dim, src.dtype.itemsize
        self.rates, self.budget, self.local, self.ray = rates, budget, local, ray
        self.B = float(src.nbytes) * n / max(src.n_total, 1)
        self.chunk = min(chunk_rows_for(self.d), max(n, 1))
        self.in_flight = IN_FLIGHT_PER_WORKER
        self.folder = folder  # the output is a folder of parts (else one HDF5 file)

    @functools.cached_property
    def chunks(self) -> int:
        """The source's chunks: one streamed task each."""
        return len(self.src.chunks(chunk_rows_for(self.d)))

    @functools.cached_property
    def parts(self) -> int:
        """The parts of a folder output (aligned with the shards, whole chunks)."""
        from prunekit.io.dataset import output_parts

        return len(output_parts(self.src))

    def prepare(self, tasks: int, nbytes: float | None = None) -> float:
        """Seconds of the float32 copies and norms of ``nbytes`` (default every row) as read,
        over ``tasks``; zero when the probe did not time it."""
        rate = self.rates.prepare_bytes_per_s
        return 0.0 if rate <= 0 else (self.B if nbytes is None else nbytes) / (rate * tasks)

    def write(self, nbytes: float, streams: int = 1) -> float:
        """Seconds to write ``nbytes`` of scratch over ``streams`` writers (the probe's
        write rate, else its read rate)."""
        rate = self.rates.write_bytes_per_s or self.rates.read_bytes_per_s
        return nbytes / (rate * streams)

    def kernel(self, name: str) -> float | None:
        """A rate the method's probe measured, or None when it did not."""
        return self.rates.kernels.get(name)

    def ids_bytes(self) -> int:
        return 8 * self.src.n_total  # int64 ids (string ids take more: ~60 bytes each)

    def read(self, streams: int = 1) -> float:
        """Seconds of one read of every usable row over ``streams`` parallel readers: the
        distinct files at the read rate, shards that repeat one (hard links) at the page
        cache's rate."""
        r = self.rates
        again = self.B * (1.0 - self.distinct) if r.cache_bytes_per_s > 0 else 0.0
        return ((self.B - again) / r.read_bytes_per_s
                + (again / r.cache_bytes_per_s if again else 0.0)) / streams

    @functools.cached_property  # the source does not change: computed once
    def distinct(self) -> float:
        """Share of the source's bytes in distinct files (hard links of one file count
        once; 1.0 when the shards are not files)."""
        seen, total, unique = set(), 0, 0
        for sh in self.src.shards:
            total += sh.n_rows
            try:
                st = os.stat(sh.path)
            except (OSError, TypeError, AttributeError):
                return 1.0
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                unique += sh.n_rows
        return unique / total if total else 1.0

    def stream(self, flops: float, tasks: int, streams: int, rate: float | None = None) -> float:
        """Seconds of one streamed pass doing ``flops`` over all rows, ``rate`` flop/s a task,
        after each task's float32 copy of its rows."""
        work = flops / (tasks * (rate or self.rates.gemm_flops_1)) + self.prepare(tasks)
        return max(self.read(streams), work)

    def chunk_bytes(self, extra_per_row: float = 0.0) -> float:
        """One task's chunk: as read, as float32, plus ``extra_per_row`` bytes a row."""
        return self.chunk * (self.d * (self.item + 4) + extra_per_row)

    def in_memory(self, name: str, seconds: float, need: int, note: str) -> list[Step]:
        """All rows read into memory as float32 (``need`` bytes with the work's arrays),
        then ``seconds`` of work on them."""
        t = self.read()
        return [Step("load matrix", 1, t, t, int(need), "all rows as float32 in memory"),
                Step(name, 0, seconds, seconds, int(need), note)]

    def per_cluster(self, name: str, sizes: np.ndarray, seconds: np.ndarray, task_bytes: int,
                    what: str) -> list[Step]:
        """Group the rows by cluster (:meth:`grouping`), then one task a batch of clusters.

        ``sizes``: rows a cluster; ``seconds``: one task's time on each cluster;
        ``task_bytes``: what a task holds for the largest cluster.
        """
        total, largest = float(seconds.sum()), float(seconds.max())
        tasks = min(self.local, tasks_fitting(task_bytes, self.budget))  # as the engine runs them
        grouped = self.n * (self.d * self.item + 8)  # rows and their positions
        here = grouped / self.rates.read_bytes_per_s
        there = grouped / (self.rates.read_bytes_per_s * self.ray)
        return self.grouping(sizes.size) + [
            Step(name, 1, max(total / tasks, largest) + here,
                 max(total / self.ray, largest) + there, int(task_bytes * tasks),
                 f"{sizes.size:,} clusters, largest {int(sizes.max()):,} rows "
                 f"({human(task_bytes)} per task{what}); reads the grouped rows"),
        ]

    def grouping(self, groups: int) -> list[Step]:
        """The shuffle that groups the rows by cluster (see the module docstring): a scatter
        and a gather step, ``groups`` clusters (ids ``0..groups - 1``)."""
        from prunekit.compute.grouping import bucket_plan

        row, n, chunks = self.d * self.item, self.n, self.chunks
        buckets = bucket_plan(max(groups - 1, 0), n)[0]
        pieces, grouped = n * (row + 16.0), n * (row + 8.0)
        ids = 8.0 * n  # the cluster column, read by the scatter tasks
        scatter_task = self.chunk * (3 * row + 48)
        gather_task = 2 * self.chunk * (row + 16)
        driver = 8 * (chunks * buckets + 3 * groups)

        def scatter(tasks: int, streams: int) -> float:
            io = self.read(streams) + ids / (self.rates.read_bytes_per_s * streams)
            return io + self.prepare(tasks, self.B) + self.write(pieces, streams)

        def gather(streams: int) -> float:  # the ids of a piece, then the piece
            return ((pieces + ids) / (self.rates.read_bytes_per_s * streams)
                    + self.write(grouped, streams))

        here = min(self.local, max(chunks, 1), tasks_fitting(scatter_task, self.budget))
        gathers = min(self.local, buckets, tasks_fitting(gather_task, self.budget))
        return [
            Step("group: scatter", 1, scatter(here, 1), scatter(min(self.ray, chunks), min(self.ray, chunks)),
                 int(driver + scatter_task * here),
                 f"{chunks:,} tasks: read a chunk and its clusters, sort, write a piece "
                 f"({human(pieces)} of pieces in scratch)"),
            Step("group: gather", 1, gather(1), gather(min(self.ray, buckets)),
                 int(driver + gather_task * gathers),
                 f"{buckets:,} task(s): read a bucket of every piece, write the grouped rows "
                 f"({human(grouped)}; {human(pieces + grouped)} of scratch at the peak)"),
        ]


def cluster_sizes(within: Any) -> np.ndarray:
    """Rows a cluster of a k-means scores file, folder or ``Scores``, ids ascending: a
    folder's manifest counts, else the ``cluster`` column counted chunk by chunk (a plan
    never holds the column)."""
    from prunekit.selection.scores import Scores

    if isinstance(within, Scores):
        if within.cluster is None:
            raise PrunekitError("--within scores have no 'cluster' dataset; give k-means scores.")
        c = np.asarray(within.cluster)
        sizes = np.bincount(c[c >= 0])
    else:
        sizes = _counted_sizes(os.fspath(within))
    return sizes[sizes > 0]


def _counted_sizes(path: str) -> np.ndarray:
    from prunekit.compute.grouping import cluster_column

    if os.path.isdir(path):
        from prunekit.io.dataset import PartsReader

        counts = PartsReader(path, kind="scores").manifest.get("cluster_counts")
        if counts is not None:
            return np.asarray(counts, dtype=np.int64)
    n_total = _scores_rows(path)
    col = cluster_column(path, n_total, where=f"--within {path}")
    sizes = np.zeros(0, dtype=np.int64)
    step = 1 << 20
    for a in range(0, n_total, step):
        c = col.read(a, min(a + step, n_total))
        part = np.bincount(c[c >= 0])
        if part.size > sizes.size:
            sizes = np.pad(sizes, (0, part.size - sizes.size))
        sizes[: part.size] += part
    return sizes


def _scores_rows(path: str) -> int:
    """n_total of a scores file or folder (metadata only)."""
    if os.path.isdir(path):
        from prunekit.io.dataset import PartsReader

        return PartsReader(path, kind="scores").n_total
    from prunekit.io.h5io import open_h5

    with open_h5(path, "scores") as f:
        ds = f.get("cluster")
        if ds is None:
            raise PrunekitError(f"--within {path} has no 'cluster' dataset; give k-means scores.")
        return int(ds.shape[0])


def pick_cost(m: CostModel, kind: str, flops_per_value: float) -> tuple[float, float]:
    """``(seconds a pick, seconds per candidate value)`` of a greedy loop: as the method's
    probe timed it (kernels ``{kind}_pick_s``, ``{kind}_pick_per_value``, see
    :func:`prunekit.runtime.probe.time_greedy`), else ``flops_per_value`` at the GEMV rate."""
    a, b = m.kernel(f"{kind}_pick_s"), m.kernel(f"{kind}_pick_per_value")
    if a is None or b is None:
        return 0.0, flops_per_value / m.rates.gemv_flops_1
    return a, b


def greedy_cost(m: CostModel, kind: str, p: dict[str, Any], seconds: Any, mem_row: int,
                task_row: int) -> Cost:
    """A greedy order over all rows in memory, or per cluster with ``p["within"]``.

    ``seconds(sizes, picks)``: one task's time for clusters of ``sizes`` rows with
    ``picks`` picks each (arrays); ``mem_row``/``task_row``: bytes a row holds over all
    rows / in a per-cluster task. Picks per cluster are ``min(size, max_keep)``.
    """
    max_keep = p.get("max_keep")
    if p.get("within") is None:  # one greedy pass over all rows, in memory
        picks = min(int(max_keep or m.n), m.n)
        need = m.n * mem_row
        t = float(seconds(np.array([m.n], float), np.array([picks], float))[0])
        notes = []
        if need > m.budget:
            notes.append(f"{kind} over all rows needs {human(need)}: give --within "
                         "k-means scores to run cluster by cluster, or raise --memory.")
        return Cost(m.in_memory("greedy picks", t, need, f"{picks:,} picks over {m.n:,} rows"),
                    8 * m.n * 2, notes)
    sizes = cluster_sizes(p["within"])
    s = sizes.astype(np.float64)
    picks = np.minimum(s, int(max_keep)) if max_keep else s
    return Cost(m.per_cluster("per-cluster picks", sizes, seconds(s, picks),
                              int(sizes.max()) * task_row, ""), 0 if m.folder else 8 * m.n * 3)
