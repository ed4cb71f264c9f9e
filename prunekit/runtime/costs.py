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
* grouping the rows by cluster (:mod:`prunekit.compute.grouping`) reads and writes every
  row once: ``2 B / read``, one chunk in memory;
* per-cluster work runs as parallel tasks reading the grouped rows once: ``max(total /
  tasks, largest cluster's time) + B / (read x streams)``; a task holds its batch's
  largest cluster, and as many tasks run at once as the budget holds (at most one a
  worker).
"""

from __future__ import annotations

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
                 ray: int) -> None:
        self.src, self.n, self.d, self.item = src, n, src.dim, src.dtype.itemsize
        self.rates, self.budget, self.local, self.ray = rates, budget, local, ray
        self.B = float(src.nbytes) * n / max(src.n_total, 1)
        self.chunk = min(chunk_rows_for(self.d), max(n, 1))
        self.in_flight = IN_FLIGHT_PER_WORKER

    def kernel(self, name: str) -> float | None:
        """A rate the method's probe measured, or None when it did not."""
        return self.rates.kernels.get(name)

    def ids_bytes(self) -> int:
        return 8 * self.src.n_total  # int64 ids (string ids take more: ~60 bytes each)

    def read(self, streams: int = 1) -> float:
        """Seconds of one read of every usable row over ``streams`` parallel readers."""
        return self.B / (self.rates.read_bytes_per_s * streams)

    def stream(self, flops: float, tasks: int, streams: int, rate: float | None = None) -> float:
        """Seconds of one streamed pass doing ``flops`` over all rows, ``rate`` flop/s a task."""
        return max(self.read(streams), flops / (tasks * (rate or self.rates.gemm_flops_1)))

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
        """Group the rows by cluster, then one task a batch of clusters.

        ``sizes``: rows a cluster; ``seconds``: one task's time on each cluster;
        ``task_bytes``: what a task holds for the largest cluster.
        """
        total, largest = float(seconds.sum()), float(seconds.max())
        tasks = min(self.local, tasks_fitting(task_bytes, self.budget))  # as the engine runs them
        group = 2 * self.read()
        return [
            Step("group by cluster", 2, group, group, int(self.chunk_bytes()),
                 f"one read and one write of every row ({human(self.B)} temporary file)"),
            Step(name, 1, max(total / tasks, largest) + self.read(),
                 max(total / self.ray, largest) + self.read(self.ray), int(task_bytes * tasks),
                 f"{sizes.size:,} clusters, largest {int(sizes.max()):,} rows "
                 f"({human(task_bytes)} per task{what})"),
        ]


def cluster_sizes(within: Any) -> np.ndarray:
    """Rows a cluster of a k-means scores file (a path or a ``Scores``), ids ascending."""
    from prunekit.selection.scores import Scores, load_scores

    sc = within if isinstance(within, Scores) else load_scores(os.fspath(within))
    if sc.cluster is None:
        raise PrunekitError(f"--within {within} has no 'cluster' dataset; give k-means scores.")
    c = np.asarray(sc.cluster)
    sizes = np.bincount(c[c >= 0])
    return sizes[sizes > 0]


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
                              int(sizes.max()) * task_row, ""), 8 * m.n * 3)
