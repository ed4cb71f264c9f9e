"""Say the cost first: passes over the data, time and peak memory of each step of a method.

:func:`plan` combines the shape of the input (rows, width, dtype, shards, whether the
load pass is cached), the method's parameters and the memory budget with the rates of a
:class:`~prunekit.probe.Probe` of this machine, and predicts each step twice: on this
machine (the local engine, one task per core) and on a Ray cluster of ``W`` workers.

The cost model, per step (``B`` = bytes of the matrix, ``n`` rows of ``d`` values):

* a streamed pass takes ``max(B / read, flops / (tasks x GEMM per thread))``; locally the
  reads share one disk (one stream), on Ray each worker reads its own chunks (``W`` streams
  at the probed rate: right for a shared file system that scales, optimistic otherwise);
* the load pass (hash, NaN check, norms) is ``B / read + B / (scan x tasks)`` (shards
  are scanned in parallel), or free when cached;
* k-means Lloyd on its sample runs on the driver with all its threads:
  ``restarts x (iters x 2 m k d + seeding + assignment)`` flops at the k-means rates the
  probe measured at this k (else the GEMM rates);
* a greedy pick costs a fixed time plus a time per candidate value, as the probe timed
  the real loop (else one matrix-vector product at the one-thread GEMV rate: herding
  ``2 s D`` for D random features, k-center ``3 s d``); per-cluster work runs as parallel
  tasks, so the step takes ``max(total / tasks, largest cluster)``.

Peak memory counts what a step holds beyond the per-row arrays (scores, clusters, ids,
positions), which are reported on their own line; a plan fits when every step's peak is
within the budget.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import scan
from .budget import memory_budget
from .cluster import (
    SEED_SAMPLE_MIN,
    SEED_SAMPLE_PER_CLUSTER,
    SamplePlan,
    auto_restarts,
    sample_plan,
)
from .embeddings import Embeddings
from .engine import IN_FLIGHT_PER_WORKER, chunk_rows_for, resolve_workers
from .errors import PrunekitError
from .kernels import MEDIAN_SAMPLE
from .memory import human
from .methods.kmeans import DEFAULT_ITERS, DEFAULT_K
from .probe import Probe, probe
from .scores import Scores, load_scores
from .source import DEFAULT_KEY, EmbeddingSource, open_source

DEFAULT_RAY_WORKERS = 8


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
class Plan:
    """The predicted cost of one method on one input; :meth:`table` prints it."""

    method: str
    source: str
    n: int
    dim: int
    dtype: str
    nbytes: int
    shards: int
    budget: int
    local_workers: int
    ray_workers: int
    steps: list[Step]
    per_row_bytes: int
    probe: Probe
    notes: list[str] = field(default_factory=list)

    @property
    def seconds_local(self) -> float:
        return sum(s.seconds_local for s in self.steps)

    @property
    def seconds_ray(self) -> float:
        return sum(s.seconds_ray for s in self.steps)

    @property
    def passes(self) -> float:
        return sum(s.passes for s in self.steps)

    @property
    def peak_bytes(self) -> int:
        return max((s.peak_bytes for s in self.steps), default=0)

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.budget

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method, "source": self.source, "shape": [self.n, self.dim],
            "dtype": self.dtype, "bytes": self.nbytes, "shards": self.shards,
            "budget": self.budget, "local_workers": self.local_workers,
            "ray_workers": self.ray_workers, "per_row_bytes": self.per_row_bytes,
            "steps": [vars(s) for s in self.steps], "passes": self.passes,
            "seconds_local": self.seconds_local, "seconds_ray": self.seconds_ray,
            "peak_bytes": self.peak_bytes, "fits": self.fits, "notes": self.notes,
            "probe": self.probe.to_dict(),
        }

    def table(self) -> str:
        """The plan as text: header, probe, one line per step, totals, verdict."""
        p = self.probe
        lines = [
            f"plan: {self.method} on {self.source} ({self.n:,} x {self.dim} {self.dtype}, "
            f"{human(self.nbytes)} in {self.shards} shard{'s' if self.shards != 1 else ''}); "
            f"memory budget {human(self.budget)}",
            f"probe ({p.seconds:.1f} s): read {human(p.read_bytes_per_s)}/s, load-pass work "
            f"{human(p.scan_bytes_per_s)}/s, GEMM {p.gemm_flops_1 / 1e9:.0f} GFLOP/s per thread "
            f"({p.gemm_flops_all / 1e9:.0f} on {p.threads}), GEMV {p.gemv_flops_1 / 1e9:.1f} GFLOP/s",
        ]
        head = ("step", "passes", f"here ({self.local_workers} tasks)",
                f"ray ({self.ray_workers} workers)", "peak memory")
        rows = [head] + [
            (s.name, f"{s.passes:.2g}", duration(s.seconds_local), duration(s.seconds_ray),
             human(s.peak_bytes)) for s in self.steps
        ] + [("total", f"{self.passes:.2g}", duration(self.seconds_local),
              duration(self.seconds_ray), human(self.peak_bytes))]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        for i, r in enumerate(rows):
            lines.append("  " + "  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                                          for j, (c, w) in enumerate(zip(r, widths, strict=True))))
            if i == 0 or i == len(rows) - 2:
                lines.append("  " + "  ".join("-" * w for w in widths))
        lines += [f"  {s.name}: {s.note}" for s in self.steps if s.note]
        lines.append(f"per-row arrays (scores, clusters, ids, positions): {human(self.per_row_bytes)}")
        verdict = "fits" if self.fits else "does NOT fit"
        lines.append(f"{verdict} the memory budget of {human(self.budget)} "
                     f"(largest step: {human(self.peak_bytes)})")
        lines += self.notes
        return "\n".join(lines)


def duration(seconds: float) -> str:
    """12.3 s, 4.5 min, 2.1 h."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def plan(
    emb: Embeddings | EmbeddingSource | str | os.PathLike,
    method: str,
    *,
    ray_workers: int = DEFAULT_RAY_WORKERS,
    local_workers: int | None = None,
    budget: int | None = None,
    rates: Probe | None = None,
    key: str = DEFAULT_KEY,
    id_key: str | None = None,
    **params: Any,
) -> Plan:
    """Predict the steps of ``score --method method`` on ``emb`` (an Embeddings, a source or a
    path; a path is opened without the load pass). ``rates`` defaults to a fresh probe."""
    if isinstance(emb, Embeddings):
        src, cached, n_usable = emb.source_obj, True, emb.n
    else:
        src = emb if isinstance(emb, EmbeddingSource) else open_source(emb, key=key, id_key=id_key)
        cached, n_usable = scan.is_cached(src), src.n_total
    if ray_workers < 1:
        raise PrunekitError(f"--workers must be >= 1 (got {ray_workers}).")
    if rates is None:
        greedy = method if method in ("herding", "kcenter") else None
        width = int(params.get("rff_dim") or 512) if method == "herding" else src.dim
        rates = probe(src, k=int(params.get("k") or DEFAULT_K) if method == "kmeans" else None,
                      greedy=greedy, width=width)
    m = _Model(src, n_usable, rates, budget or memory_budget(),
               resolve_workers(local_workers), int(ray_workers))
    steps = [m.load(cached)]
    builder = _METHODS.get(method)
    notes: list[str] = []
    if builder is None:
        notes.append(f"no cost model for method '{method}': only the load pass is shown.")
        per_row = 16 * m.n
    else:
        more, per_row, notes = builder(m, params)
        steps += more
    return Plan(method, src.name, src.n_total, src.dim, str(src.dtype), src.nbytes,
                len(src.shards), m.budget, m.local, m.ray, steps, per_row + m.ids_bytes(),
                m.rates, notes)


class _Model:
    """The quantities every step's formula uses."""

    def __init__(self, src: EmbeddingSource, n: int, rates: Probe, budget: int, local: int,
                 ray: int) -> None:
        self.src, self.n, self.d, self.item = src, n, src.dim, src.dtype.itemsize
        self.rates, self.budget, self.local, self.ray = rates, budget, local, ray
        self.B = float(src.nbytes) * n / max(src.n_total, 1)
        self.chunk = min(chunk_rows_for(self.d), max(n, 1))
        self.in_flight = IN_FLIGHT_PER_WORKER

    def ids_bytes(self) -> int:
        return 8 * self.src.n_total  # int64 ids (string ids take more: ~60 bytes each)

    def stream(self, flops: float, tasks: int, streams: int, rate: float | None = None) -> float:
        """Seconds of one streamed pass doing ``flops`` over all rows, ``rate`` flop/s a task."""
        r = self.rates
        return max(self.B / (r.read_bytes_per_s * streams), flops / (tasks * (rate or r.gemm_flops_1)))

    def chunk_bytes(self, extra_per_row: float = 0.0) -> float:
        """One task's chunk: as read, as float32, plus ``extra_per_row`` bytes a row."""
        return self.chunk * (self.d * (self.item + 4) + extra_per_row)

    def load(self, cached: bool) -> Step:
        if cached:
            return Step("load + check", 0, 0.0, 0.0, 0, "cached scan (no pass)")
        r = self.rates
        tasks = min(self.local, len(self.src.shards))  # shards are scanned in parallel
        t = self.B / r.read_bytes_per_s + self.B / (r.scan_bytes_per_s * tasks)
        return Step("load + check", 1, t, t, int(self.chunk_bytes() * tasks),
                    "hash, NaN check and norms of every row, shards in parallel "
                    "(cached for the next command)")


def _kmeans(m: _Model, p: dict) -> tuple[list[Step], int, list[str]]:
    k, iters = int(p.get("k") or DEFAULT_K), int(p.get("iters") or DEFAULT_ITERS)
    full = int(p.get("full_passes") or 0)
    if p.get("sample"):
        sp = SamplePlan(min(int(p["sample"]), m.n), m.n, "given")
    else:
        sp = sample_plan(m.n, k, m.d, m.item, m.budget)
    s = sp.rows
    restarts = int(p.get("restarts") or auto_restarts(s, k, m.d, iters))
    r = m.rates
    if s >= m.n:
        frac_read, sample_note = 1.0, "all rows fit: read them once"
    else:
        frac_read = 1.0 - math.exp(-s / m.n * m.chunk)  # share of each chunk a sorted gather spans
        sample_note = f"{s:,} of {m.n:,} rows, uniform without replacement"
    t_sample = frac_read * m.B / r.read_bytes_per_s
    seed_rows = min(s, max(SEED_SAMPLE_MIN, SEED_SAMPLE_PER_CLUSTER * k))
    # The probe's k-means rates when it measured them at this k, else the GEMM peak.
    measured = r.kmeans_k == k
    lloyd_rate = r.lloyd_flops if measured and r.lloyd_flops else r.gemm_flops_all
    seed_rate = r.seeding_flops if measured and r.seeding_flops else r.gemm_flops_all
    assign_rate = r.assign_flops_1 if measured and r.assign_flops_1 else r.gemm_flops_1
    one = 2.0 * s * k * m.d  # flops of one Lloyd iteration (and of assigning the sample)
    t_lloyd = restarts * (iters * one / lloyd_rate
                          + 2.0 * seed_rows * k * m.d * (2 + math.log(k)) / seed_rate
                          + one / (assign_rate * r.threads))
    sample_bytes = s * m.d * (4 + m.item)
    pass_flops = 2.0 * m.n * k * m.d
    task = m.chunk_bytes(4.0 * k)  # plus the chunk's distances to every centroid
    local_peak = task * m.local * m.in_flight
    ray_peak = task  # per worker
    steps = [
        Step("sample", frac_read, t_sample, t_sample, int(sample_bytes + m.chunk_bytes()), sample_note),
        Step("lloyd on sample", 0, t_lloyd, t_lloyd, int(sample_bytes + s * 12 + k * m.d * 8),
             f"k={k}, {iters} iterations x {restarts} restart(s), driver threads"),
    ]
    if full:
        steps.append(Step("full lloyd passes", full, full * m.stream(pass_flops, m.local, 1, assign_rate),
                          full * m.stream(pass_flops, m.ray, m.ray, assign_rate),
                          int(local_peak + m.local * k * m.d * 8),
                          f"{full} streamed pass(es) of per-centroid sums"))
    steps.append(Step("assign", 1, m.stream(pass_flops, m.local, 1, assign_rate),
                      m.stream(pass_flops, m.ray, m.ray, assign_rate),
                      int(local_peak), f"every row to its nearest of {k} centroids; "
                      f"{human(ray_peak)} per Ray worker"))
    notes = [] if s >= m.n else [f"k-means sample: {sp.drawn}."]
    return steps, 8 * m.n * 4, notes  # score, cluster, distance, positions


def _cluster_sizes(within: Any, n: int) -> np.ndarray | None:
    if within is None:
        return None
    sc = within if isinstance(within, Scores) else load_scores(within)
    if sc.cluster is None:
        raise PrunekitError(f"--within {within} has no 'cluster' dataset; give k-means scores.")
    c = np.asarray(sc.cluster)
    return np.bincount(c[c >= 0])


def _pick_cost(r: Probe, kind: str, width: int) -> tuple[float, float]:
    """``(seconds a pick, seconds per candidate value)``: probed, else from the GEMV rate."""
    a, b = getattr(r, f"{kind}_pick_s"), getattr(r, f"{kind}_pick_per_value")
    if a is None or b is None:
        flops = 2.0 if kind == "herding" else 3.0  # per candidate value
        return 0.0, flops / r.gemv_flops_1
    return a, b


def _sigma_step(m: _Model, p: dict) -> list[Step]:
    """herding's ``--sigma auto``: the median heuristic on a sample of rows."""
    sigma = p.get("sigma", "auto")
    if not (isinstance(sigma, str) and sigma.strip().lower() == "auto"):
        return []
    rows = min(m.n, MEDIAN_SAMPLE)
    frac = 1.0 - math.exp(-rows / max(m.n, 1) * m.chunk)
    t = frac * m.B / m.rates.read_bytes_per_s + (m.rates.sigma_s or 0.0)
    return [Step("sigma (median heuristic)", frac, t, t, int(rows * rows * 8 + m.chunk_bytes()),
                 f"pairwise distances of {rows:,} rows")]


def _greedy(kind: str):
    def build(m: _Model, p: dict) -> tuple[list[Step], int, list[str]]:
        r = m.rates
        width = int(p.get("rff_dim") or 512) if kind == "herding" else m.d
        pick_s, per_value = _pick_cost(r, kind, width)
        max_keep = p.get("max_keep")
        sizes = _cluster_sizes(p.get("within"), m.n)
        notes: list[str] = []

        def seconds(s: np.ndarray, picks: np.ndarray) -> np.ndarray:
            """One task's time for clusters of ``s`` rows with ``picks`` picks each."""
            t = picks * (pick_s + per_value * s * width)
            if kind == "herding":  # the rows' random features: a GEMM on the task's thread
                t = t + 2.0 * s * m.d * width / r.gemm_flops_1
            return t

        sigma = _sigma_step(m, p) if kind == "herding" else []
        if sizes is None:  # one greedy pass over all rows, in memory
            picks = min(int(max_keep or m.n), m.n)
            need = m.n * m.d * 4 + (m.n * width * 4 if kind == "herding" else m.n * 8)
            t = float(seconds(np.array([m.n], float), np.array([picks], float))[0])
            read = m.B / r.read_bytes_per_s
            steps = sigma + [
                     Step("load matrix", 1, read, read, int(need), "all rows as float32 in memory"),
                     Step("greedy picks", 0, t, t, int(need), f"{picks:,} picks over {m.n:,} rows")]
            if need > m.budget:
                notes.append(f"{kind} over all rows needs {human(need)}: give --within "
                             "k-means scores to run cluster by cluster, or raise --memory.")
            return steps, 8 * m.n * 2, notes
        s = sizes.astype(np.float64)
        picks = np.minimum(s, int(max_keep)) if max_keep else s
        work = seconds(s, picks)
        total, largest = float(work.sum()), float(work.max())
        group_t = m.B / r.read_bytes_per_s * 2  # read every row, write it to its group
        biggest = int(sizes.max())
        task = biggest * (m.d * (4 + m.item) + (width * 4 if kind == "herding" else 8))
        read = m.B / r.read_bytes_per_s
        steps = sigma + [
            Step("group by cluster", 2, group_t, group_t, int(m.chunk_bytes()),
                 f"one read and one write of every row ({human(m.B)} temporary file)"),
            Step("per-cluster picks", 1, max(total / m.local, largest) + read,
                 max(total / m.ray, largest) + read / m.ray, int(task * m.local),
                 f"{sizes.size:,} clusters, largest {biggest:,} rows ({human(task)} per task)"),
        ]
        return steps, 8 * m.n * 3, notes

    return build


def _trivial(name: str):
    def build(m: _Model, p: dict) -> tuple[list[Step], int, list[str]]:
        return [Step(name, 0, m.n * 2e-8, m.n * 2e-8, 0)], 8 * m.n * 2, []

    return build


_METHODS = {
    "kmeans": _kmeans,
    "herding": _greedy("herding"),
    "kcenter": _greedy("kcenter"),
    "random": _trivial("draw scores"),
    "loss": _trivial("read score file"),
}
