"""Say the cost first: passes over the data, time and peak memory of each step of a method.

:func:`plan` combines the shape of the input (rows, width, dtype, shards, whether the
load pass is cached), the method's parameters and the memory budget with the rates of a
:class:`~prunekit.runtime.probe.Probe` of this machine, and predicts each step twice: on this
machine (the local engine, one task per core) and on a Ray cluster of ``W`` workers.

Nothing here knows a method: each method declares its cost model and the kernels its
probe times (``register(..., cost=, probe=)``, :mod:`prunekit.methods`), in the words of
:mod:`prunekit.runtime.costs`. This module adds the load pass (hash, NaN check, norms:
``B / read + B / (scan x tasks)`` with shards scanned in parallel, or free when cached)
and, for a folder output, the writing of its parts (``n / (part rows/s x tasks)``: one task
a part when the method writes parts from its workers, else the driver alone), and prints
the table. An HDF5 output's writing from the driver is not modelled. Asked to
(``select=PR``), the plan goes on with the rest of the run, ``select`` and ``export``
(:mod:`prunekit.runtime.pipeline_costs`); their passes read the scores and the selection, so
the total's passes count those over the embeddings only.

Peak memory counts what a step holds beyond the per-row arrays (scores, clusters, ids,
positions), which are reported on their own line; a plan fits when every step's peak is
within the budget.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from prunekit.errors import PrunekitError
from prunekit.io import scan
from prunekit.io.dataset import wants_dataset
from prunekit.io.embeddings import Embeddings
from prunekit.io.source import DEFAULT_KEY, EmbeddingSource, open_source
from prunekit.methods import get_method
from prunekit.params import validate
from prunekit.runtime.budget import memory_budget
from prunekit.runtime.costs import CostModel, Step
from prunekit.runtime.engine import chunk_rows_for, resolve_workers
from prunekit.runtime.memory import human
from prunekit.runtime.pipeline_costs import STEP_NAMES, Pipeline, check_pipeline, pipeline_steps
from prunekit.runtime.probe import Probe, probe

__all__ = ["DEFAULT_RAY_WORKERS", "Plan", "Step", "duration", "plan"]

DEFAULT_RAY_WORKERS = 8


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
    pipeline: Pipeline | None = None  # select (and export) after score, when planned

    @property
    def seconds_local(self) -> float:
        return sum(s.seconds_local for s in self.steps)

    @property
    def seconds_ray(self) -> float:
        return sum(s.seconds_ray for s in self.steps)

    @property
    def passes(self) -> float:
        """Passes over the embeddings (select and export read the scores and selection)."""
        return sum(s.passes for s in self.steps if s.name not in STEP_NAMES)

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
            "select": None if self.pipeline is None else vars(self.pipeline),
        }

    def table(self) -> str:
        """The plan as text: header, probe, one line per step, totals, verdict."""
        p = self.probe
        lines = [
            f"plan: {self.method} on {self.source} ({self.n:,} x {self.dim} {self.dtype}, "
            f"{human(self.nbytes)} in {self.shards} shard{'s' if self.shards != 1 else ''})"
            + ("" if self.pipeline is None else f", {self.pipeline.describe()}")
            + f"; memory budget {human(self.budget)}",
            f"probe ({p.seconds:.1f} s): read {human(p.read_bytes_per_s)}/s, load-pass work "
            f"{human(p.scan_bytes_per_s)}/s, GEMM {p.gemm_flops_1 / 1e9:.0f} GFLOP/s per thread "
            f"({p.gemm_flops_all / 1e9:.0f} on {p.threads}), GEMV {p.gemv_flops_1 / 1e9:.1f} GFLOP/s",
            f"  float32 copies {human(p.prepare_bytes_per_s)}/s, scratch writes "
            f"{human(p.write_bytes_per_s)}/s, Parquet {p.part_rows_per_s / 1e6:.1f} M rows/s "
            "(a task each)",
        ]
        if self.pipeline is not None:
            lines.append(_pipeline_rates(p))
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
        if self.pipeline is not None:
            after = [s for s in self.steps if s.name in STEP_NAMES]
            here, ray = sum(s.seconds_local for s in after), sum(s.seconds_ray for s in after)
            lines.append(
                f"score {duration(self.seconds_local - here)} here, "
                f"{duration(self.seconds_ray - ray)} on Ray; select and export {duration(here)} "
                f"here, {duration(ray)} on Ray (their passes read the scores and the selection: "
                "not in the total's passes)")
        lines.append(f"per-row arrays (scores, clusters, ids, positions): {human(self.per_row_bytes)}")
        verdict = "fits" if self.fits else "does NOT fit"
        lines.append(f"{verdict} the memory budget of {human(self.budget)} "
                     f"(largest step: {human(self.peak_bytes)})")
        lines += self.notes
        return "\n".join(lines)


def _pipeline_rates(p: Probe) -> str:
    """The probe's select and export rates, one line."""
    exports = "".join(f", export {f} {v / 1e6:.1f}" for f, v in p.export_rows_per_s.items())
    return (f"  select M rows/s a task: count {p.select_count_rows_per_s / 1e6:.1f}, cut bins "
            f"{p.select_cut_rows_per_s / 1e6:.1f}, write {p.select_write_rows_per_s / 1e6:.1f}, "
            f"in memory {p.select_memory_rows_per_s / 1e6:.1f}{exports}")


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
    output: str | os.PathLike | None = None,
    select: float | None = None,
    balance: str | None = None,
    export: str | None = None,
    **params: Any,
) -> Plan:
    """Predict the steps of ``score --method method -o output`` on ``emb`` (an Embeddings,
    a source or a path; a path is opened without the load pass). ``output`` (default an HDF5
    file) decides whether parts are written. ``rates`` defaults to a fresh probe.

    ``select`` (a pr in [0, 1)) adds the steps of ``select OUTPUT --pr select --balance
    balance`` (none, clusters or proportional), and ``export`` (npy, txt, json) those of
    ``export --format export`` of its selection (a folder when ``output`` is one)."""
    pipe = check_pipeline(select, balance, export)
    spec = get_method(method)
    values = validate(method, spec.params, params)
    groups = _groups(method, values, pipe)
    if isinstance(emb, Embeddings):
        src, cached, n_usable = emb.reader, True, emb.n
    else:
        src = emb if isinstance(emb, EmbeddingSource) else open_source(emb, key=key, id_key=id_key)
        cached, n_usable = scan.is_cached(src), src.n_total
    if ray_workers < 1:
        raise PrunekitError(f"--workers must be >= 1 (got {ray_workers}).")
    if rates is None:
        rates = probe(src, spec.probe, values, select_groups=groups,
                      export=pipe and pipe.export)
    folder = output is not None and wants_dataset(output)
    m = CostModel(src, n_usable, rates, budget or memory_budget(),
                  resolve_workers(local_workers), int(ray_workers), folder=folder)
    steps = [_load(m, cached)]
    if spec.cost is None:
        notes = [f"no cost model for method '{method}': only the load pass is shown."]
        per_row = 16 * m.n
    else:
        cost = spec.cost(m, values)
        steps += cost.steps
        per_row, notes = cost.per_row_bytes, list(cost.notes)
    if folder:
        steps.append(_write_parts(m, spec.writes_parts))
        if m.rates.part_rows_per_s <= 0:
            notes.append("writing parts not timed: pyarrow is missing (pip install "
                         "'prunekit[parquet]').")
    if pipe is not None:
        more, said = pipeline_steps(m, pipe, groups, _part_rows(m, spec.writes_parts))
        steps += more
        notes += said
    return Plan(method, src.name, src.n_total, src.dim, str(src.dtype), src.nbytes,
                len(src.shards), m.budget, m.local, m.ray, steps,
                per_row + (m.ids_bytes() if per_row else 0),  # ids go where the arrays go
                m.rates, notes, pipe)


def _groups(method: str, values: dict[str, Any], pipe: Pipeline | None) -> int | None:
    """The groups the planned select balances (None: no select): one for balance none, else
    the clusters of ``--within`` or the method's ``k``."""
    if pipe is None:
        return None
    if pipe.balance == "none":
        return 1
    if values.get("within") is not None:
        from prunekit.runtime.costs import cluster_sizes

        return int(cluster_sizes(values["within"]).size)
    if "k" in values:
        return int(values["k"])
    raise PrunekitError(f"--balance {pipe.balance} needs clusters in the scores, and method "
                        f"'{method}' writes none here; plan --balance none, or a method "
                        "that clusters (kmeans, semdedup, or --within k-means scores).")


def _part_rows(m: CostModel, workers_write: bool) -> list[int]:
    """Rows of each part of a folder output: one per group of chunks where the method's
    tasks write them, else ``PART_ROWS`` positions each (written from the driver)."""
    from prunekit.io.dataset import chunk_parts, part_bounds

    if workers_write:
        return [p.stop - p.start for p in chunk_parts(m.src.chunks(chunk_rows_for(m.d)))]
    return [b - a for a, b in part_bounds(m.src.n_total)]


def _write_parts(m: CostModel, workers_write: bool) -> Step:
    """A folder output's parts: written by one task a part where the method writes them
    from its workers (at the same time as its last step), else by the driver alone."""
    rate, parts = m.rates.part_rows_per_s, m.parts
    here, there = (min(m.local, parts), min(m.ray, parts)) if workers_write else (1, 1)

    def t(tasks: int) -> float:
        return 0.0 if rate <= 0 else m.n / (rate * tasks)

    who = "by the tasks that computed them" if workers_write else "from the driver"
    return Step("write parts", 0, t(here), t(there), 0,
                f"{parts:,} Parquet part(s) written {who}")


def _load(m: CostModel, cached: bool) -> Step:
    """The load pass: read, hash, NaN check and norms of every row; shards in parallel."""
    if cached:
        return Step("load + check", 0, 0.0, 0.0, 0, "cached scan (no pass)")
    r = m.rates
    tasks = min(m.local, len(m.src.shards))
    t = m.read() + m.B / (r.scan_bytes_per_s * tasks)
    return Step("load + check", 1, t, t, int(m.chunk_bytes() * tasks),
                "hash, NaN check and norms of every row, shards in parallel "
                "(cached for the next command)")
