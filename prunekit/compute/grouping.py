"""Rows grouped by cluster on disk, so that one cluster's rows are one contiguous read.

Per-cluster methods (herding and k-center ``--within``, semdedup) need all rows of one
cluster at a time, while the clusters are spread over the whole file. :func:`group_rows`
reads the source once, chunk by chunk, and writes every usable row into a flat file (the
files' dtype, row-major) at its cluster's place: the groups follow each other in increasing
cluster id, and inside a group the rows keep their order in the source. After that, a
group is one ``pread`` of ``rows x dim`` values, whichever process or Ray worker asks.
Peak memory: one chunk while grouping, one group while reading.

Small clusters are batched (:func:`batches`), so a task has some work to do; the batches
depend on the cluster sizes only, never on the number of workers.

:func:`map_clusters` is the whole per-cluster protocol every such method uses (herding and
k-center ``--within``, semdedup): group, batch, map the batches on the current engine
within the memory budget, record each batch for ``--resume``, clean up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.runtime.context import current_engine, current_work_dir
from prunekit.runtime.engine import chunk_rows_for
from prunekit.runtime.memory import human
from prunekit.runtime.progress import track

BATCH_ROWS = 8192  # a task handles consecutive clusters until it holds this many rows


@dataclass(frozen=True)
class GroupedRows:
    """The usable rows of a source grouped by cluster in the flat file ``path``.

    ``clusters[g]`` is the id of group g, its rows are file rows ``offsets[g]:offsets[g+1]``,
    and ``members[offsets[g]:offsets[g+1]]`` are their compact positions (ascending).
    """

    path: str
    dim: int
    dtype: np.dtype
    clusters: np.ndarray
    offsets: np.ndarray
    members: np.ndarray

    @property
    def n_groups(self) -> int:
        return int(self.clusters.size)

    def size(self, g: int) -> int:
        return int(self.offsets[g + 1] - self.offsets[g])

    def read(self, g: int) -> np.ndarray:
        """The rows of group ``g``, ``(size, dim)`` in the files' dtype."""
        n = self.size(g)
        row_bytes = self.dim * self.dtype.itemsize
        with open(self.path, "rb") as fh:
            data = os.pread(fh.fileno(), n * row_bytes, int(self.offsets[g]) * row_bytes)
        if len(data) != n * row_bytes:
            raise OSError(f"grouped rows file {self.path} is shorter than expected")
        return np.frombuffer(data, dtype=self.dtype).reshape(n, self.dim)

    def for_tasks(self) -> GroupedRows:
        """A copy without ``members`` (O(N)): what a task needs to read its groups."""
        return replace(self, members=np.zeros(0, dtype=np.int64))

    def rows_of(self, g: int) -> np.ndarray:
        """Compact positions of group ``g``'s rows, in their source order."""
        return self.members[self.offsets[g] : self.offsets[g + 1]]


def layout(clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cluster ids present, group offsets, compact positions in grouped order)."""
    ids, counts = np.unique(clusters, return_counts=True)
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    members = np.argsort(clusters, kind="stable").astype(np.int64)
    return ids, offsets, members


def group_rows(src, rows: np.ndarray, clusters: np.ndarray, path: str | os.PathLike, *,
               chunk_rows: int, progress: bool = True,
               lay: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> GroupedRows:
    """Write the usable ``rows`` of ``src``, grouped by ``clusters`` (one a row), to ``path``.

    One sequential pass over ``src``: each chunk's usable rows are sorted by cluster
    (stable) and each cluster's run is written at that cluster's next free place. ``lay``
    is ``layout(clusters)`` when the caller has it already.
    """
    ids, offsets, members = layout(clusters) if lay is None else lay
    group_of = np.searchsorted(ids, clusters)
    filled = offsets[:-1].copy()
    row_bytes = src.dim * src.dtype.itemsize
    path = Path(path)
    free = shutil.disk_usage(path.parent).free
    if rows.size * row_bytes > free:
        raise PrunekitError(
            f"grouping the rows by cluster needs {human(rows.size * row_bytes)} of scratch space "
            f"in {path.parent}, which has {human(free)} free; free some space or write the "
            "output to a directory on a larger disk."
        )
    with open(path, "wb") as fh:
        fh.truncate(int(rows.size) * row_bytes)
        fd = fh.fileno()
        chunks = src.chunks(chunk_rows)
        for ref in track(chunks, total=len(chunks), desc="grouping rows by cluster",
                         progress=progress):
            lo, hi = np.searchsorted(rows, [ref.global_start, ref.global_stop])
            if lo == hi:
                continue
            block = np.ascontiguousarray(src.read(ref)[rows[lo:hi] - ref.global_start])
            g = group_of[lo:hi]
            order = np.argsort(g, kind="stable")
            block, g = block[order], g[order]
            present, starts, counts = np.unique(g, return_index=True, return_counts=True)
            for c, a, m in zip(present, starts, counts, strict=True):
                os.pwrite(fd, block[a : a + m].tobytes(), int(filled[c]) * row_bytes)
                filled[c] += m
    return GroupedRows(str(path), src.dim, np.dtype(src.dtype), ids, offsets, members)


def batches(sizes: np.ndarray, batch_rows: int | None = None) -> list[list[int]]:
    """Consecutive groups per task: a batch closes once it holds ``batch_rows`` rows."""
    batch_rows = BATCH_ROWS if batch_rows is None else batch_rows
    out: list[list[int]] = []
    cur: list[int] = []
    held = 0
    for g, size in enumerate(sizes):
        cur.append(g)
        held += int(size)
        if held >= batch_rows:
            out.append(cur)
            cur, held = [], 0
    if cur:
        out.append(cur)
    return out


def map_clusters(emb, clusters: np.ndarray, task: Callable[[tuple, tuple[int, list[int]]], Any],
                 shared: Any, *, task_bytes: int, desc: str, progress: bool,
                 members: bool = False, name: str = "groups",
                 ) -> tuple[GroupedRows, list[tuple[list[int], Any]]]:
    """Run ``task`` over the clusters of ``emb``'s usable rows, a batch of clusters a call.

    ``clusters``: one cluster id per usable row (compact order). The rows are grouped by
    cluster on disk once (:func:`group_rows`: in the run's work directory when it has one,
    else in a temporary directory removed afterwards) and the clusters cut into
    :func:`batches`. Then ``task((grouped, shared), (i, batch))`` runs for every batch on
    the current engine, as many at a time as the memory budget holds ``task_bytes`` (one
    call's peak); ``grouped`` reads a cluster's rows (``grouped.read(g)``) and, with
    ``members``, knows their compact positions (``rows_of``; O(n) more to ship to the
    workers). A result is recorded in the work directory (as ``name/<batch>``, an array)
    when its batch finishes, and ``--resume`` maps only the batches not recorded.

    Returns the grouped rows (with ``members``) and ``(batch, result)`` for every batch,
    in batch order, so the caller combines them the same way on every engine.
    """
    engine, work = current_engine(), current_work_dir()
    lay = layout(clusters)
    sizes = np.diff(lay[1])
    src = emb.reader
    tmp = None if work.enabled else tempfile.mkdtemp(prefix=f"prunekit-{name}-")
    path = work.scratch(f"{name}.rows") if tmp is None else Path(tmp) / f"{name}.rows"
    try:
        if work.load_json(f"{name}.grouped") is None or not path.exists():
            grouped = group_rows(src, emb.rows, clusters, path, chunk_rows=chunk_rows_for(src.dim),
                                 progress=progress, lay=lay)
            work.save_json(f"{name}.grouped", {"rows": int(emb.rows.size)})
        else:
            grouped = GroupedRows(str(path), src.dim, np.dtype(src.dtype), *lay)
        plan = list(enumerate(batches(sizes)))
        done = {i: work.load(f"{name}/{i:08d}") for i, _ in plan}
        todo = [item for item in plan if done[item[0]] is None]
        view = grouped if members else grouped.for_tasks()
        results = engine.map(task, todo, (view, shared), desc=desc, progress=progress,
                             task_bytes=int(task_bytes))
        with contextlib.closing(results):
            for (i, _), result in zip(todo, results, strict=True):
                work.save(f"{name}/{i:08d}", result)
                done[i] = result
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return grouped, [(batch, done[i]) for i, batch in plan]
