"""Per-row scores written part by part from the engine's tasks, for methods that score each
row on its own (``random``, ``loss``): the driver holds O(parts), never a per-row array.

:func:`write_score_parts` cuts the embeddings' chunks into the folder's parts
(:func:`prunekit.io.dataset.output_parts`, the bounds :func:`prunekit.methods.score_to_folder`
uses) and runs one task per part. The task asks the method's ``score_part(shared, ranges)``
for the scores of each chunk of its part (a generator, so a file is opened once per part),
blanks the rows that are not usable (NaN, as the gathered path scatters them) and writes
them to its part, chunk by chunk, through the sink
(:class:`~prunekit.selection.partitioned.ScoresPartSink`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from prunekit.io.embeddings import Embeddings
from prunekit.runtime.context import current_engine
from prunekit.runtime.engine import chunk_rows_for, tasks_fitting

NAMED = 5  # non-finite rows an error names
ROW_BYTES = 96  # a part's ids and labels, a chunk's scores, positions and mask


@dataclass(frozen=True)
class RowRange:
    """One chunk of a part: positions ``start..stop``, ``ok`` (which are usable) and
    ``first`` (the compact index of its first usable row: usable rows before ``start``)."""

    start: int
    stop: int
    ok: np.ndarray
    first: int


ScorePart = Callable[[object, list[RowRange]], Iterator[np.ndarray]]


@dataclass(frozen=True)
class PartsWritten:
    """The parts' records (in part order) and the usable rows whose score is not finite:
    how many, and the first :data:`NAMED` positions."""

    records: list
    n_nonfinite: int
    nonfinite: np.ndarray


def write_score_parts(emb: Embeddings, sink, score_part: ScorePart, shared: object, *,
                      desc: str, progress: bool = True) -> PartsWritten:
    """Write every part of ``emb``'s scores folder from a task; ``score_part`` (module-level,
    it is pickled for Ray) yields one float array per :class:`RowRange` it is given, values
    of unusable rows ignored. Results are the same on every engine and worker count."""
    from prunekit.io.dataset import output_parts

    chunk_rows = chunk_rows_for(emb.dim)
    parts = output_parts(emb.reader)
    dropped = emb.dropped_rows()  # sparse: the rows dropped at load time
    rows = max((p.stop - p.start for p in parts), default=0)
    limit = tasks_fitting(rows * ROW_BYTES + chunk_rows * ROW_BYTES)
    records, n_bad, bad = [], 0, []
    results = current_engine().map(_write_part, parts, (score_part, shared, dropped, sink),
                                   desc=desc, progress=progress, limit=limit)
    with contextlib.closing(results):
        for record, part_bad, part_first in results:
            records.append(record)
            n_bad += part_bad
            bad.append(part_first)
    return PartsWritten(records, n_bad, np.concatenate([np.zeros(0, np.int64), *bad])[:NAMED])


def _row_range(ref, dropped: np.ndarray) -> RowRange:
    a, b = ref.global_start, ref.global_stop
    lo, hi = np.searchsorted(dropped, [a, b])
    ok = np.ones(b - a, dtype=bool)
    ok[dropped[lo:hi] - a] = False
    return RowRange(a, b, ok, a - int(lo))


def _write_part(shared, part) -> tuple[object, int, np.ndarray]:
    """Engine task: one part's scores, chunk by chunk, to its file; aborted on error."""
    score_part, method_shared, dropped, sink = shared
    ranges = [_row_range(ref, dropped) for ref in part.chunks]
    n_bad, first = 0, []
    out = sink.open(part)
    try:
        with contextlib.closing(score_part(method_shared, ranges)) as scores:
            for r in ranges:
                score = np.array(next(scores), dtype=np.float64)  # a copy: blanked below
                score[~r.ok] = np.nan
                bad = np.flatnonzero(r.ok & ~np.isfinite(score))
                n_bad += bad.size
                first.append(bad[:NAMED] + r.start)
                out.write(r.start, score=score)
        return out.close(), n_bad, np.concatenate(first)[:NAMED].astype(np.int64)
    except BaseException:
        out.abort()
        raise
