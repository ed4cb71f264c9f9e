"""The rest of a run after ``score``: ``select`` and ``export``, in a plan's steps.

A run at scale is ``score EMB -o scores/``, ``select scores/ --pr P -o sel/`` and ``export
sel/ --format F``. :func:`pipeline_steps` predicts the last two from the rates the probe timed
on the real code (:func:`prunekit.runtime.probe.measure_pipeline`: rows a second of one
task), the scores' parts and the number of groups the selection balances:

* a folder of scores is selected part by part (:mod:`prunekit.selection.streamed`), every
  pass a task a part: ``select: count`` (rows per group and each group's first histogram;
  it hashes the parts of at most ``HASH_ALWAYS_BYTES``), ``select: cut bins`` (gathers the
  rows of each group's cut bin; none when every row is kept, a second one when the bins hold
  more than ``COLLECT_ROWS`` rows) and ``select: write parts`` (a selection part from each
  scores part). A pass takes the time the parts take on ``tasks`` workers taking them in
  order (here: the cores, as many as the memory budget holds; on Ray: ``W``);
* an HDF5 scores file is selected in memory: one read of its columns, then ``select()``;
* ``export`` runs in the driver alone (here and on Ray): the kept rows at the format's rate.

The rows of a cut bin are estimated as ``CUT_SPREAD x rows / 2^bits`` per group (the first
histogram has ``2^bits`` bins a group): the one number here that depends on the scores.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.runtime.costs import Step
from prunekit.runtime.engine import tasks_fitting
from prunekit.runtime.memory import human

if TYPE_CHECKING:
    from prunekit.runtime.costs import CostModel

BALANCES = ("none", "clusters", "proportional")  # the balances a plan models
EXPORT_FORMATS = ("npy", "txt", "json")
STEP_NAMES = ("select: count", "select: cut bins", "select: write parts", "select (in memory)",
              "export")
CUT_SPREAD = 32  # a cut bin's rows x 2^bits / its group's rows (25 measured on k-means scores)
MEMORY_SCORE_BYTES = 24  # an HDF5 scores file's columns a row, loaded: score, cluster, one more
EXPORT_ROW_BYTES = {"npy": 24, "txt": 128, "json": 128}  # a batch row: values, ints, text


@dataclass(frozen=True)
class Pipeline:
    """What follows ``score``: ``select --pr pr --balance balance``, then ``export`` in that
    format (None: no export)."""

    pr: float
    balance: str = "none"
    export: str | None = None

    def describe(self) -> str:
        text = f"then select --pr {self.pr:g} --balance {self.balance}"
        return text + (f", export --format {self.export}" if self.export else "")


def check_pipeline(pr: float | None, balance: str | None = None,
                   export: str | None = None) -> Pipeline | None:
    """The options as a :class:`Pipeline` (None when ``pr`` is None), checked first."""
    if pr is None:
        if balance is not None or export is not None:
            raise PrunekitError("--balance and --export describe the select step: give "
                                "--select PR too (e.g. --select 0.5).")
        return None
    pr = float(pr)
    if not 0.0 <= pr < 1.0:
        raise PrunekitError(f"--select {pr} is outside [0, 1): it is the fraction REMOVED "
                            "(--select 0.8 keeps 20 %).")
    balance = balance or "none"
    if balance not in BALANCES:
        raise PrunekitError(f"--balance '{balance}' cannot be planned; choose one of: "
                            f"{', '.join(BALANCES)}.")
    if export is not None and export not in EXPORT_FORMATS:
        raise PrunekitError(f"--export '{export}' is not a format; choose one of: "
                            f"{', '.join(EXPORT_FORMATS)}.")
    return Pipeline(pr, balance, export)


def makespan(seconds: Sequence[float] | np.ndarray, tasks: int) -> float:
    """Wall time of jobs taking ``seconds`` each, started in order on ``tasks`` workers, each
    job on the first worker free (as an engine's map runs its items)."""
    free = [0.0] * max(1, min(int(tasks), len(seconds)))
    for s in seconds:
        heapq.heappush(free, heapq.heappop(free) + float(s))
    return max(free, default=0.0)


def pipeline_steps(m: CostModel, pipe: Pipeline, groups: int,
                   part_rows: Sequence[int] | np.ndarray) -> tuple[list[Step], list[str]]:
    """The steps of ``pipe`` after ``score`` on ``m``'s rows, and the plan's notes.

    ``groups``: the clusters the selection balances (1 for balance ``none``);
    ``part_rows``: rows of each scores part when the scores are a folder (``m.folder``).
    """
    r = m.rates
    kept = max(1, round((1.0 - pipe.pr) * m.n))
    notes = []
    if m.folder:
        steps = _streamed(m, pipe, groups, np.asarray(part_rows, dtype=np.float64), kept)
        timed = min(r.select_count_rows_per_s, r.select_cut_rows_per_s,
                    r.select_write_rows_per_s)
    else:
        steps = [_in_memory(m)]
        timed = r.select_memory_rows_per_s
    if pipe.export is not None:
        steps.append(_export(m, pipe.export, kept))
        timed = min(timed, r.export_rows_per_s.get(pipe.export, 0.0))
    if timed <= 0:
        notes.append("select/export not timed (0 s shown): the probe did not time them "
                     "(pyarrow missing: pip install 'prunekit[parquet]').")
    return steps, notes


def _streamed(m: CostModel, pipe: Pipeline, groups: int, rows: np.ndarray,
              kept: int) -> list[Step]:
    """The three passes of the streamed select over the scores parts of ``rows`` rows each."""
    from prunekit.io.dataset.layout import HASH_ALWAYS_BYTES, ROW_GROUP_ROWS
    from prunekit.selection.streamed import BATCH_ROWS, COLLECT_ROWS, ROW_BYTES, _first_bits

    r, n, parts = m.rates, float(rows.sum()), rows.size
    bits = _first_bits(groups, int(n))  # as the counting pass sizes its first histogram
    hist = 8 * groups * ((1 << bits) + 2) if bits else 0
    batch = BATCH_ROWS * ROW_BYTES

    def timed(rate: float, task: float, extra: np.ndarray | float = 0.0):
        """``(seconds here, seconds on Ray, tasks here)`` of one pass: each part at ``rate``
        rows/s plus ``extra`` seconds; here as many tasks as the budget holds ``task``."""
        here = min(m.local, parts, tasks_fitting(int(task), m.budget))
        each = (rows / rate + extra) if rate > 0 else np.zeros(parts)
        return makespan(each, here), makespan(each, min(m.ray, parts)), here

    hashed = rows * r.score_part_bytes_per_row
    hashing = np.where(hashed <= HASH_ALWAYS_BYTES, hashed, 0.0) / (r.hash_bytes_per_s or math.inf)
    count_task = batch + hist
    t_here, t_ray, here = timed(r.select_count_rows_per_s, count_task, hashing)
    if bits:
        what = f"a histogram of {groups:,} x {1 << bits:,} bins ({human(hist)}) a task"
    else:
        what = "too many groups for a first histogram: the cuts take radix passes (not shown)"
    steps = [Step("select: count", 1, t_here, t_ray, int(here * (count_task + hist) + hist),
                  f"{parts:,} part task(s) over the scores: rows per "
                  f"{'cluster' if groups > 1 else 'group'}, {what}")]
    per_group = n / max(groups, 1)
    cand = min(n, groups * min(per_group, math.ceil(per_group * CUT_SPREAD / (1 << bits)))) \
        if bits else n
    passes = 0 if pipe.pr == 0 else (1 if cand <= COLLECT_ROWS else 2)
    held = 24 * min(cand, COLLECT_ROWS)  # a gathered row: cut, key, position
    cut_task = batch + held / parts
    t_here, t_ray, here = timed(r.select_cut_rows_per_s, cut_task)
    steps.append(Step("select: cut bins", passes, passes * t_here, passes * t_ray,
                      int(passes and here * cut_task + 3 * held),
                      "every row kept: no cut to find" if not passes else
                      f"gathers the ~{int(cand):,} rows of the cut bins (estimated) and finds "
                      "each cut among them"))
    write_task = 3 * ROW_GROUP_ROWS * ROW_BYTES
    t_here, t_ray, here = timed(r.select_write_rows_per_s, write_task)
    steps.append(Step("select: write parts", 1, t_here, t_ray, int(here * write_task),
                      f"{parts:,} selection part(s) of the {kept:,} kept rows, a task a part"))
    return steps


def _in_memory(m: CostModel) -> Step:
    """An HDF5 scores file: read whole, then select() in memory, in the driver."""
    from prunekit.selection.streamed import MEMORY_ROW_BYTES

    r = m.rates
    t = m.n * MEMORY_SCORE_BYTES / r.read_bytes_per_s
    t += m.n / r.select_memory_rows_per_s if r.select_memory_rows_per_s > 0 else 0.0
    return Step("select (in memory)", 1, t, t,
                int(m.n * (MEMORY_SCORE_BYTES + MEMORY_ROW_BYTES)),
                "the scores file is loaded and sorted in the driver (a folder output, "
                "-o scores/, is selected part by part)")


def _export(m: CostModel, fmt: str, kept: int) -> Step:
    """The kept rows written by the driver alone, one batch at a time (from a folder) or
    built in memory (from an HDF5 selection)."""
    from prunekit.selection.streamed import BATCH_ROWS

    rate = m.rates.export_rows_per_s.get(fmt, 0.0)
    t = kept / rate if rate > 0 else 0.0
    # from a folder one batch at a time; else the positions and the payload (64 B a row,
    # what export checks) in memory
    peak = BATCH_ROWS * EXPORT_ROW_BYTES[fmt] if m.folder else 72 * kept
    return Step("export", 1, t, t, int(peak),
                f"{kept:,} kept rows as {fmt}, written by the driver")
