"""Rows grouped by cluster on disk, so that one cluster's rows are one contiguous read.

Per-cluster methods (herding and k-center ``--within``, semdedup) need all rows of one
cluster at a time, while the clusters are spread over the whole input. The grouping is a
partitioned shuffle of two passes of engine tasks; the driver only adds up counts:

1. **Scatter**, one task per row chunk (the data's chunks, :func:`chunk_rows_for`): the
   task reads its chunk's usable rows and their cluster ids (a slice of the caller's array,
   or of the ``cluster`` column of a scores file or folder, :class:`ClusterColumn`), sorts
   them by cluster id (stable) and writes them, with their compact positions and ids, to
   its piece file. Bucket b is clusters ``[b*C, (b+1)*C)``, C from the largest id and the
   number of rows alone (:func:`bucket_plan`), so a bucket is one stretch of every piece.
   The task returns its rows per bucket.
2. **Gather**, one task per bucket: the task reads its stretch of every piece, in chunk
   order, and writes each cluster's rows to their place in the grouped file, where the
   groups follow each other in increasing cluster id and inside a group the rows keep
   their source order (chunk order, then the stable sort within a chunk). It returns the
   ids and sizes of its clusters.

The result (:class:`GroupedRows`) is a flat file of rows (the files' dtype, row-major) and
one of their compact positions (int64): a group is one ``pread`` of each, whichever
process or Ray worker asks. The driver holds O(k + chunks x buckets) numbers, never a
per-row array; a scatter task holds one chunk, a gather task one piece of one chunk and
its bucket's cluster sizes. Each finished chunk and bucket is recorded in the run's work
directory, so ``--resume`` redoes only the rest and writes the same bytes. Scratch space:
the pieces (the usable rows plus 16 bytes each) until the gather ends, and the grouped
rows plus 8 bytes a row until the caller is done.

Small clusters are batched (:func:`batches`), so a task has some work to do; the batches
depend on the cluster sizes only, never on the number of workers.

:func:`map_clusters` is the whole per-cluster protocol every such method uses (herding and
k-center ``--within``, semdedup): group, batch, map the batches on the current engine
within the memory budget, record each batch for ``--resume``, clean up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.atomic import create_temp
from prunekit.runtime.context import current_engine, current_work_dir
from prunekit.runtime.engine import chunk_rows_for
from prunekit.runtime.memory import human
from prunekit.runtime.resume import WorkDir
from prunekit.runtime.scratch import private_subfolder, scratch_folder

BATCH_ROWS = 8192  # a task handles consecutive clusters until it holds this many rows
BUCKET_ROWS = 1 << 22  # usable rows per bucket on average: the gather tasks' share
DENSE_IDS = 1 << 16  # a gather task counts a bucket this wide in an array, wider in a _Tally
POSITION = np.dtype("<i8")  # compact positions and cluster ids in the scratch files
VALUE = np.dtype("<f8")  # a carried column in the scratch files
EMPTY = np.zeros(0, dtype=np.int64)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class GroupedRows:
    """The usable rows of a source grouped by cluster in the flat file ``path``.

    ``clusters[g]`` is the id of group g, its rows are file rows ``offsets[g]:offsets[g+1]``,
    and the same entries of the file ``members_path`` (int64) are their compact positions,
    ascending; ``values_path`` (float64), when a column was carried, their values. Holds
    O(groups); rows, positions and values are read from the files on demand.
    """

    path: str
    dim: int
    dtype: np.dtype
    clusters: np.ndarray
    offsets: np.ndarray
    members_path: str
    values_path: str | None = None

    @property
    def n_groups(self) -> int:
        return int(self.clusters.size)

    @property
    def sizes(self) -> np.ndarray:
        """Rows per group."""
        return np.diff(self.offsets)

    def size(self, g: int) -> int:
        return int(self.offsets[g + 1] - self.offsets[g])

    def read(self, g: int) -> np.ndarray:
        """The rows of group ``g``, ``(size, dim)`` in the files' dtype."""
        row_bytes = self.dim * self.dtype.itemsize
        data = _pread(self.path, self.size(g) * row_bytes, int(self.offsets[g]) * row_bytes)
        return np.frombuffer(data, dtype=self.dtype).reshape(-1, self.dim)

    @property
    def members(self) -> Positions:
        """The compact positions of all rows in grouped order; slices are read from disk."""
        return Positions(self.members_path, int(self.offsets[-1]))

    def for_tasks(self) -> GroupedRows:
        """What a task needs to read its groups: this object (it holds O(groups))."""
        return self

    def rows_of(self, g: int) -> np.ndarray:
        """Compact positions of group ``g``'s rows, in their source order."""
        return self.members[self.offsets[g] : self.offsets[g + 1]]

    def values_of(self, g: int) -> np.ndarray | None:
        """The carried values (float64) of group ``g``'s rows, or None when none were."""
        if self.values_path is None:
            return None
        a, b = int(self.offsets[g]), int(self.offsets[g + 1])
        data = _pread(self.values_path, (b - a) * VALUE.itemsize, a * VALUE.itemsize)
        return np.frombuffer(data, dtype=VALUE).astype(np.float64)


@dataclass(frozen=True)
class Positions:
    """An int64 file of ``n`` compact positions; ``p[a:b]`` reads those entries."""

    path: str
    n: int

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice):
            raise TypeError("grouped positions are read by slices")
        a, b, step = index.indices(self.n)
        if step != 1:
            raise TypeError("grouped positions are read by contiguous slices")
        b = max(a, b)
        data = _pread(self.path, (b - a) * POSITION.itemsize, a * POSITION.itemsize)
        return np.frombuffer(data, dtype=POSITION).astype(np.int64)


@dataclass(frozen=True)
class ClusterColumn:
    """The ``cluster`` column of a scores file (HDF5) or partitioned scores folder, read one
    position range at a time by the tasks that need it (the driver never holds it).

    Make one with :func:`cluster_column`, which checks the column without reading it;
    ``where`` is how messages name it. ``carry``: a float column of the same scores (e.g.
    ``centroid_distance``) whose values travel with the rows through the grouping
    (:meth:`GroupedRows.values_of`); None for none.
    """

    path: str
    where: str
    folder: bool
    carry: str | None = None

    def read(self, start: int, stop: int) -> np.ndarray:
        """Cluster ids (int64) of positions ``start:stop``; -1 where the scores have none."""
        return self.read_with_carry(start, stop, carry=False)[0]

    def read_with_carry(self, start: int, stop: int, *, carry: bool = True
                        ) -> tuple[np.ndarray, np.ndarray | None]:
        """Cluster ids (as :meth:`read`) and carried values (float64, NaN where absent; None
        without ``carry`` or a carried column) of positions ``start:stop``, read together:
        one opening of the file, one pass over the parts' batches."""
        cols = [("cluster", -1, np.int64)]
        if carry and self.carry is not None:
            cols.append((self.carry, np.nan, np.float64))
        if self.folder:
            out = _read_parts(self.path, start, stop, cols)
        else:
            from prunekit.io.h5io import open_h5

            with open_h5(self.path, "scores") as f:
                out = [np.asarray(f[name][start:stop], dtype=dtype) for name, _, dtype in cols]
        return out[0], out[1] if len(out) > 1 else None


def cluster_column(path: str | os.PathLike, n_total: int, *, where: str | None = None,
                   carry: str | None = None) -> ClusterColumn:
    """The ``cluster`` column of the scores at ``path`` (HDF5 file or partitioned folder),
    checked to hold one integer per row of an input of ``n_total`` rows (metadata only).
    ``carry``: a float column to carry through the grouping when the scores have it (one
    number per row); left out (``carry`` None) when they do not."""
    where = where or f"scores {path}"
    folder = os.path.isdir(path)
    has_carry = False
    if folder:
        from prunekit.io.dataset import PartsReader

        r = PartsReader(path, kind="scores")
        kind, rows = r.columns.get("cluster"), r.n_total
        integer = str(kind).startswith(("int", "uint"))
        has_carry = str(r.columns.get(carry, "")).startswith("float")
    else:
        from prunekit.io.h5io import open_h5

        with open_h5(path, "scores") as f:
            ds = f.get("cluster")
            kind = None if ds is None else ds.dtype
            integer = kind is not None and ds.dtype.kind in "iu" and ds.ndim == 1
            rows = None if ds is None else ds.shape[0]
            c = f.get(carry) if carry else None
            has_carry = (c is not None and getattr(c, "shape", None) == (rows,)
                         and c.dtype.kind in "iuf")
    if kind is None:
        raise PrunekitError(f"{where} has no 'cluster' dataset; give the scores of "
                            "'prunekit score EMB --method kmeans'.")
    if not integer or rows != n_total:
        raise PrunekitError(f"{where} ['cluster'] must hold one integer per row of the "
                            f"{n_total} embeddings; score k-means on these embeddings again.")
    # Absolute: the tasks that read it may run in another working directory (Ray workers).
    return ClusterColumn(os.path.abspath(path), where, folder, carry if has_carry else None)


def _read_parts(path: str, start: int, stop: int,
                cols: list[tuple[str, Any, Any]]) -> list[np.ndarray]:
    """Columns ``(name, fill, dtype)`` at positions ``start:stop`` from the parts of a scores
    folder that hold them, read together in the reader's bounded batches: only the row
    groups that meet the range (a chunk's read costs the chunk, not the part before it);
    ``fill`` where no part has a row."""
    from prunekit.io.dataset import PartsReader

    r = PartsReader(path, kind="scores")
    out = [np.full(stop - start, fill, dtype=dtype) for _, fill, dtype in cols]
    names = [name for name, _, _ in cols]
    for i, part in enumerate(r.manifest["parts"]):
        if part["stop"] <= start or part["start"] >= stop:
            continue
        with contextlib.closing(r.iter_part_range(i, start, stop, names)) as batches:
            for batch in batches:
                pos = batch["position"]
                if pos.size == 0 or pos[-1] < start:
                    continue
                if pos[0] >= stop:
                    break
                inside = (pos >= start) & (pos < stop)
                for name, col in zip(names, out, strict=True):
                    col[pos[inside] - start] = batch[name][inside]
    return out


# ------------------------------------------------------------------------------ the plan


@dataclass(frozen=True, slots=True)
class Chunk:
    """A scatter task: chunk ``ref`` of the source, whose usable rows are the compact
    indices ``first:first + n``, at positions ``rows`` (None: all but ``dropped``), with
    cluster ids ``labels`` (None: read from the :class:`ClusterColumn`)."""

    ref: Any
    first: int
    n: int
    rows: np.ndarray | None
    dropped: np.ndarray
    labels: np.ndarray | None

    def local(self) -> np.ndarray:
        """Indices of the usable rows inside the chunk, ascending."""
        a = self.ref.global_start
        if self.rows is not None:
            return np.asarray(self.rows, dtype=np.int64) - a
        return np.delete(np.arange(self.ref.n_rows, dtype=np.int64), self.dropped - a)


def _chunks(src, usable: tuple[np.ndarray | None, np.ndarray], labels: np.ndarray | None,
            chunk_rows: int) -> list[Chunk]:
    """The scatter tasks, one per chunk of ``src`` (slices of the usable rows, no copies)."""
    rows, dropped = usable
    out, first = [], 0
    for ref in src.chunks(chunk_rows):
        a, b = ref.global_start, ref.global_stop
        if rows is not None:
            lo, hi = (int(v) for v in np.searchsorted(rows, [a, b]))
            n, sel, drop = hi - lo, rows[lo:hi], EMPTY
        else:
            lo, hi = (int(v) for v in np.searchsorted(dropped, [a, b]))
            n, sel, drop = (b - a) - (hi - lo), None, dropped[lo:hi] if hi > lo else EMPTY
        out.append(Chunk(ref, first, n, sel, drop,
                         None if labels is None else labels[first : first + n]))
        first += n
    return out


def bucket_plan(top: int, n: int) -> tuple[int, int]:
    """``(buckets, width)`` for cluster ids ``0..top`` over ``n`` rows: about ``BUCKET_ROWS``
    rows a bucket, at most one bucket per id; bucket b is ids ``[b*width, (b+1)*width)``."""
    ids = max(1, int(top) + 1)
    want = min(ids, max(1, -(-int(n) // BUCKET_ROWS)))
    width = -(-ids // want)
    return -(-ids // width), width


def _usable(emb) -> tuple[np.ndarray | None, np.ndarray]:
    """(positions of the usable rows when they are held, else None; dropped positions)."""
    held = emb.usable_rows
    if isinstance(held, np.ndarray):
        return held, EMPTY
    dropped = getattr(held, "dropped", None)  # UsableRows: all but the dropped positions
    return None, EMPTY if dropped is None else np.asarray(dropped, dtype=np.int64)


@dataclass(frozen=True)
class _Files:
    """Where one grouping writes: the grouped rows and positions, and the pieces' folder."""

    rows: Path
    members: Path
    pieces: Path

    @property
    def values(self) -> Path:
        """The carried values, beside the positions."""
        return self.members.with_name(self.members.name[: -len("members")] + "values")

    @staticmethod
    def in_folder(folder: Path) -> _Files:
        """The files in a :class:`~prunekit.runtime.scratch.scratch_folder` (the pieces'
        folder made 0700, or checked and kept for a resumed run)."""
        return _Files(folder / "rows", folder / "members", private_subfolder(folder, "pieces"))


# ------------------------------------------------------------------------------ grouping


def group_rows(src, rows: np.ndarray, clusters: np.ndarray, path: str | os.PathLike, *,
               chunk_rows: int, progress: bool = True) -> GroupedRows:
    """Group the usable ``rows`` of ``src`` (ascending positions) by ``clusters`` (one id a
    row) into ``path`` and ``path.members``, on the current engine, recording nothing.

    The pieces live in a temporary folder beside ``path``, removed before returning.
    """
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=".prunekit-pieces-", dir=path.parent))
    try:
        files = _Files(path, Path(f"{path}.members"), tmp)
        return _group(src, (np.asarray(rows, dtype=np.int64), EMPTY), int(np.size(rows)),
                      np.asarray(clusters), files, work=WorkDir(None), record="groups",
                      chunk_rows=chunk_rows, progress=progress, desc="grouping")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _group(src, usable, n: int, clusters: np.ndarray | ClusterColumn, files: _Files, *,
           work: WorkDir, record: str, chunk_rows: int, progress: bool,
           desc: str) -> GroupedRows:
    """The two passes (see the module docstring), each unit recorded as ``record.*``;
    the column's ``carry``, if any, travels with the rows."""
    column = clusters if isinstance(clusters, ClusterColumn) else None
    labels = None if column is not None else _checked_labels(clusters, n)
    carry = column is not None and column.carry is not None
    chunks = _chunks(src, usable, labels, chunk_rows)
    row_bytes = src.dim * src.dtype.itemsize
    val = VALUE.itemsize if carry else 0
    top = _top_id(column, labels, chunks, work, f"{record}.shuffle/top", chunk_rows, progress,
                  desc)
    n_buckets, width = bucket_plan(top, n)
    key = hashlib.blake2b(json.dumps([n, len(chunks), chunk_rows, n_buckets, width, row_bytes,
                                      src.dtype.str] + ([val] if val else [])).encode(),
                          digest_size=8).hexdigest()
    prefix = f"{record}.shuffle/{key}"
    fresh = not (_allocated(files.rows, n * row_bytes)
                 and _allocated(files.members, n * POSITION.itemsize)
                 and (not carry or _allocated(files.values, n * val)))
    done = [None if fresh else _bucket_record(work, f"{prefix}/bucket-{b:08d}")
            for b in range(n_buckets)]
    if any(d is None for d in done):
        grouped_bytes = n * (row_bytes + POSITION.itemsize + val) if fresh else 0
        counts = _scatter(src, column, chunks, files, work, prefix, n_buckets, width,
                          chunk_rows, grouped_bytes, progress, desc, val)
        if fresh:
            _allocate(files.rows, n * row_bytes)
            _allocate(files.members, n * POSITION.itemsize)
            if carry:
                _allocate(files.values, n * val)
        _gather(counts, done, files, work, prefix, row_bytes, width, chunk_rows, progress,
                desc, val)
    shutil.rmtree(files.pieces, ignore_errors=True)
    ids = np.concatenate([EMPTY, *(d[0] for d in done)])
    sizes = np.concatenate([EMPTY, *(d[1] for d in done)])
    offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    if int(offsets[-1]) != n:  # records of another grouping: never expected
        raise PrunekitError(f"the grouped rows in {files.rows.parent} hold {int(offsets[-1])} "
                            f"rows, not {n}; run the command again without --resume.")
    return GroupedRows(str(files.rows), src.dim, np.dtype(src.dtype), ids, offsets,
                       str(files.members), str(files.values) if carry else None)


def _checked_labels(clusters: np.ndarray, n: int) -> np.ndarray:
    """The caller's cluster ids: one non-negative integer per usable row."""
    clusters = np.asarray(clusters)
    if clusters.shape != (n,) or (n and clusters.dtype.kind not in "iu"):
        raise PrunekitError(f"clusters must hold one integer per usable row ({n}), got "
                            f"shape {clusters.shape} and dtype {clusters.dtype}.")
    if n and int(clusters.min()) < 0:
        raise PrunekitError("clusters must be >= 0 (-1 marks an unclustered row); give "
                            "every usable row a cluster.")
    return clusters


def _top_id(column, labels, chunks, work, name, chunk_rows, progress, desc) -> int:
    """The largest cluster id: of the caller's array, else one pass over the column."""
    if column is None:
        return int(labels.max()) if labels.size else 0
    recorded = work.load_json(name)
    if isinstance(recorded, int):
        return recorded
    top = 0
    results = current_engine().map(_top_task, chunks, column, desc=f"{desc}: cluster ids",
                                   progress=progress, task_bytes=24 * chunk_rows)
    with contextlib.closing(results):
        for value in results:
            top = max(top, int(value))
    work.save_json(name, top)
    return top


def _top_task(column: ClusterColumn, chunk: Chunk) -> int:
    """Engine task: the largest cluster id of a chunk's usable rows (checked >= 0)."""
    return int(_chunk_labels(column, chunk)[0].max(initial=0))


def _chunk_labels(column: ClusterColumn | None, chunk: Chunk, *,
                  carry: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """The cluster ids of a chunk's usable rows (an unclustered row is an error) and, with
    ``carry``, the column's carried values of those rows, read with the ids (else None)."""
    if column is None:
        return np.asarray(chunk.labels, dtype=np.int64), None
    if chunk.n == 0:
        return EMPTY, np.zeros(0) if carry else None
    local = chunk.local()
    labels, values = column.read_with_carry(chunk.ref.global_start, chunk.ref.global_stop,
                                            carry=carry)
    labels = labels[local]
    bad = np.flatnonzero(labels < 0)
    if bad.size:
        shown = ", ".join(str(chunk.ref.global_start + int(i)) for i in local[bad[:10]])
        raise PrunekitError(f"{column.where} ['cluster'] leaves rows {shown} unclustered "
                            "(-1); score k-means with the same --drop-nonfinite setting.")
    return labels, None if values is None else values[local]


def _allocated(path: Path, size: int) -> bool:
    """Whether ``path`` is a regular file of ``size`` bytes (kept from an earlier run)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return st.st_size == size and (st.st_mode & 0o170000) == 0o100000


def _allocate(path: Path, size: int) -> None:
    """Create ``path`` (or empty it) as a sparse file of ``size`` bytes."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o600)
    try:
        os.ftruncate(fd, 0)
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def _bucket_record(work: WorkDir, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    rec = work.load(name)
    if rec is None or rec.ndim != 2 or rec.shape[0] != 2:
        return None
    return rec[0].astype(np.int64), rec[1].astype(np.int64)


# ------------------------------------------------------------------------ pass 1: scatter


def _scatter(src, column, chunks, files, work, prefix, n_buckets, width, chunk_rows,
             grouped_bytes, progress, desc, val=0) -> np.ndarray:
    """Rows per (chunk, bucket); the scatter tasks run for the chunks not recorded (after a
    check that their pieces and ``grouped_bytes`` still to allocate fit on the disk).
    ``val``: bytes of a carried value per row (0: none)."""
    rec_bytes = src.dim * src.dtype.itemsize + 2 * POSITION.itemsize + val
    counts = np.zeros((len(chunks), n_buckets), dtype=np.int64)
    todo = []
    for i, chunk in enumerate(chunks):
        rec = work.load(f"{prefix}/chunk-{i:08d}")
        if (rec is not None and rec.shape == (n_buckets,) and int(rec.sum()) == chunk.n
                and (chunk.n == 0 or _allocated(_piece(files.pieces, i), chunk.n * rec_bytes))):
            counts[i] = rec
        else:
            todo.append((i, chunk))
    _check_space(files.pieces, sum(c.n for _, c in todo) * rec_bytes + grouped_bytes)
    shared = (src, column, str(files.pieces), n_buckets, width, bool(val))
    task_bytes = chunk_rows * (3 * src.dim * src.dtype.itemsize + 6 * POSITION.itemsize
                               + 3 * val)
    results = current_engine().map(_scatter_task, todo, shared, progress=progress,
                                   desc=f"{desc}: grouping rows (1/2)", task_bytes=task_bytes)
    with contextlib.closing(results):
        for (i, _), result in zip(todo, results, strict=True):
            work.save(f"{prefix}/chunk-{i:08d}", result)
            counts[i] = result
    return counts


def _piece(folder: str | Path, i: int) -> str:
    """Chunk i's piece file (a plain string: tasks make thousands of these names)."""
    return os.path.join(folder, f"piece-{i:08d}")


def _scatter_task(shared: tuple, item: tuple[int, Chunk]) -> np.ndarray:
    """Engine task: write chunk i's usable rows sorted by cluster id (stable) to its piece,
    bucket after bucket: rows, compact positions, [carried values,] cluster ids. Returns
    rows per bucket."""
    src, column, pieces, n_buckets, width, carry = shared
    i, chunk = item
    if chunk.n == 0:
        return np.zeros(n_buckets, dtype=np.int64)
    labels, values = _chunk_labels(column, chunk, carry=carry)  # one read of the column
    order = np.argsort(labels, kind="stable")
    labels = labels[order].astype(POSITION)
    rows = np.ascontiguousarray(src.read(chunk.ref)[chunk.local()[order]], dtype=src.dtype)
    members = (chunk.first + order).astype(POSITION)
    fields = [rows, members]
    if values is not None:
        fields.append(values[order].astype(VALUE))
    fields.append(labels)
    counts = np.bincount(labels // width, minlength=n_buckets).astype(np.int64)
    if counts.size > n_buckets:  # the column changed since its largest id was read
        where = "clusters" if column is None else f"{column.where} ['cluster']"
        raise PrunekitError(f"{where} changed while the rows were grouped; "
                            "run the command again when nothing writes it.")
    bounds = np.concatenate(([0], np.cumsum(counts)))
    fd, tmp = create_temp(pieces)
    try:
        with os.fdopen(fd, "wb") as fh:
            for a, b in zip(bounds[:-1], bounds[1:], strict=True):
                for part in fields:
                    fh.write(np.ascontiguousarray(part[a:b]).data)
        os.replace(tmp, _piece(pieces, i))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return counts


def _check_space(folder: Path, need: int) -> None:
    free = shutil.disk_usage(folder).free
    if need > free:
        raise PrunekitError(
            f"grouping the rows by cluster needs {human(need)} of scratch space in "
            f"{folder.parent}, which has {human(free)} free; free some space or write the "
            "output to a directory on a larger disk."
        )


# ------------------------------------------------------------------------- pass 2: gather


def _gather(counts: np.ndarray, done: list, files: _Files, work: WorkDir, prefix: str,
            row_bytes: int, width: int, chunk_rows: int, progress: bool, desc: str,
            val: int = 0) -> None:
    """The gather tasks of the buckets not recorded; fills ``done[b]`` = (ids, sizes)."""
    rec_bytes = row_bytes + 2 * POSITION.itemsize + val
    starts = np.concatenate(([0], np.cumsum(counts.sum(axis=0))))  # bucket b's first row
    before = np.cumsum(counts, axis=1) - counts  # rows of earlier buckets in each piece
    todo = [b for b, d in enumerate(done) if d is None]

    def items() -> Iterator[tuple]:
        for b in todo:
            have = np.flatnonzero(counts[:, b])
            yield b, int(starts[b]), have, before[have, b] * rec_bytes, counts[have, b]

    shared = (str(files.pieces), str(files.rows), str(files.members),
              str(files.values) if val else None, row_bytes, width)
    results = current_engine().map(_gather_task, items(), shared, progress=progress,
                                   desc=f"{desc}: grouping rows (2/2)",
                                   task_bytes=2 * chunk_rows * rec_bytes)
    with contextlib.closing(results):
        for b, result in zip(todo, results, strict=True):
            work.save(f"{prefix}/bucket-{b:08d}", result)
            done[b] = (result[0], result[1])


def _gather_task(shared: tuple, item: tuple) -> np.ndarray:
    """Engine task: bucket b's stretch of every piece, in chunk order, written to its
    clusters' places; returns ``[ids, sizes]`` of the bucket's clusters (2 x m, int64)."""
    pieces, rows_path, members_path, values_path, row_bytes, width = shared
    b, start, chunks, offsets, counts = item
    pos = POSITION.itemsize
    val = VALUE.itemsize if values_path else 0
    head = row_bytes + pos + val  # bytes a row has before its cluster id
    tally = _Tally(b * width, width)
    for c, off, n in zip(chunks, offsets, counts, strict=True):  # sweep 1: the cluster sizes
        ids = np.frombuffer(_pread(_piece(pieces, c), int(n) * pos, int(off) + int(n) * head),
                            dtype=POSITION)
        tally.add(*_runs(ids)[::2])
    ids, sizes = tally.result()
    cursor = start + np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
    paths = [rows_path, members_path] + ([values_path] if val else [])
    widths = [row_bytes, pos] + ([val] if val else [])
    fds: list[int] = []
    try:
        for path in paths:
            fds.append(os.open(path, os.O_WRONLY | _NOFOLLOW))
        for c, off, n in zip(chunks, offsets, counts, strict=True):  # sweep 2: the rows
            n = int(n)
            data = memoryview(_pread(_piece(pieces, c), n * (head + pos), int(off)))
            run_ids, run_at, run_n = _runs(np.frombuffer(data[n * head:], dtype=POSITION))
            at, fields = 0, []
            for w in widths:  # the piece's stretch: rows, positions, values, ids
                fields.append(data[at : at + n * w])
                at += n * w
            for g, a, m in zip(np.searchsorted(ids, run_ids), run_at, run_n, strict=True):
                for fd, field, w in zip(fds, fields, widths, strict=True):
                    _pwrite(fd, field[a * w : (a + m) * w], int(cursor[g]) * w)
                cursor[g] += m
    finally:
        for fd in fds:
            os.close(fd)
    return np.stack([ids, sizes]).astype(np.int64)


def _runs(sorted_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct ids, index of their first entry, entries) of an ascending array."""
    ids, at, n = np.unique(sorted_ids, return_index=True, return_counts=True)
    return ids.astype(np.int64), at.astype(np.int64), n.astype(np.int64)


class _Tally:
    """Entries per id of ``lo .. lo + width - 1`` summed over many ``(distinct ids, counts)``
    runs: in an array when the range is at most ``DENSE_IDS`` wide, else in O(distinct ids)
    memory (runs are folded in once they hold as many entries as the tally)."""

    FOLD = 1 << 16

    def __init__(self, lo: int, width: int) -> None:
        self.ids, self.counts = EMPTY, EMPTY
        self._lo = lo
        self._dense = np.zeros(width, dtype=np.int64) if width <= DENSE_IDS else None
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._held = 0

    def add(self, ids: np.ndarray, counts: np.ndarray) -> None:
        if self._dense is not None:
            self._dense[ids - self._lo] += counts  # distinct ids: no repeated index
            return
        self._pending.append((ids, counts))
        self._held += ids.size
        if self._held > max(self.ids.size, self.FOLD):
            self._fold()

    def _fold(self) -> None:
        ids = np.concatenate([self.ids, *(i for i, _ in self._pending)])
        counts = np.concatenate([self.counts, *(c for _, c in self._pending)])
        self.ids, inverse = np.unique(ids, return_inverse=True)
        self.counts = np.bincount(inverse, weights=counts, minlength=self.ids.size
                                  ).astype(np.int64)  # exact: sums below 2**53
        self._pending, self._held = [], 0

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids present, ascending; their entries)."""
        if self._dense is not None:
            at = np.flatnonzero(self._dense)
            return at + self._lo, self._dense[at]
        if self._pending:
            self._fold()
        return self.ids.astype(np.int64), self.counts


def _pread(path: str | Path, n: int, offset: int) -> bytes:
    """``n`` bytes of ``path`` from ``offset``; a short file is an OSError."""
    if n == 0:
        return b""
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    try:
        parts, got = [], 0
        while got < n:
            data = os.pread(fd, n - got, offset + got)
            if not data:
                raise OSError(f"grouped rows file {path} is shorter than expected")
            parts.append(data)
            got += len(data)
    finally:
        os.close(fd)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _pwrite(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        done = os.pwrite(fd, data, offset)
        data, offset = data[done:], offset + done


# ------------------------------------------------------------------- per-cluster protocol


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


def map_clusters(emb, clusters: np.ndarray | ClusterColumn,
                 task: Callable[[tuple, tuple[int, list[int]]], Any], shared: Any = None, *,
                 task_bytes: int = 0, desc: str, progress: bool, members: bool = False,
                 name: str = "groups",
                 prepare: Callable[[GroupedRows, Path], tuple[Any, int]] | None = None,
                 valid: Callable[[int, Any], bool] | None = None,
                 ) -> tuple[GroupedRows, list[tuple[list[int], Any]]]:
    """Run ``task`` over the clusters of ``emb``'s usable rows, a batch of clusters a call.

    ``clusters``: one cluster id per usable row (compact order), or the
    :class:`ClusterColumn` of a scores file, which the tasks read chunk by chunk. The rows
    are grouped by cluster on disk once (the two passes of the module docstring, as engine
    tasks: in the run's work directory when it has one, else in a temporary directory
    removed once the returned :class:`GroupedRows` is dropped) and the clusters cut into
    :func:`batches`. Then ``task((grouped, shared), (i, batch))`` runs for every batch on
    the current engine, as many at a time as the memory budget holds ``task_bytes`` (one
    call's peak); ``grouped`` reads a cluster's rows (``grouped.read(g)``) and their compact
    positions (``rows_of``; ``members`` is accepted for older callers: the positions are a
    file, nothing per row travels). Every scatter chunk, gather bucket and batch is
    recorded in the work directory when it finishes (a batch's result as ``name/<batch>``),
    and ``--resume`` computes only what is not recorded.

    A column's ``carry`` travels with the rows, read back with ``grouped.values_of(g)``.
    ``prepare(grouped,
    scratch)``, when given, runs once the rows are grouped and returns ``(shared,
    task_bytes)`` in place of the arguments: it sees the cluster sizes, and ``scratch`` is a
    private folder (in the work directory, else removed with the grouped rows) where tasks
    may write what they leave for the caller (see :func:`write_keyed`). ``valid(i,
    result)`` says whether a recorded batch may be reused (say, its files are still there).

    Returns the grouped rows and ``(batch, result)`` for every batch, in batch order, so
    the caller combines them the same way on every engine.
    """
    engine, work = current_engine(), current_work_dir()
    src = emb.reader
    # In the work directory the grouped rows and the tasks' files are kept for --resume;
    # a temporary folder goes with the returned rows, which the caller reads.
    scratch = scratch_folder(name, resume=True)
    with scratch as folder:
        grouped = _group(src, _usable(emb), int(emb.n), clusters, _Files.in_folder(folder),
                         work=work, record=name, chunk_rows=chunk_rows_for(src.dim),
                         progress=progress, desc=desc)
        if prepare is not None:
            shared, task_bytes = prepare(grouped, private_subfolder(folder, "out"))
        plan = list(enumerate(batches(grouped.sizes)))
        done = {i: work.load(f"{name}/{i:08d}") for i, _ in plan}
        if valid is not None:
            done = {i: r if r is None or valid(i, r) else None for i, r in done.items()}
        todo = [item for item in plan if done[item[0]] is None]
        results = engine.map(task, todo, (grouped.for_tasks(), shared), desc=desc,
                             progress=progress, task_bytes=int(task_bytes))
        with contextlib.closing(results):
            for (i, _), result in zip(todo, results, strict=True):
                work.save(f"{name}/{i:08d}", result)
                done[i] = result
        scratch.remove_with(grouped)
    return grouped, [(batch, done[i]) for i, batch in plan]


# --------------------------------------------------------------- results keyed by position


def write_keyed(folder: str | os.PathLike, name: str, records: np.ndarray,
                bounds: np.ndarray) -> int:
    """Leave a task's results for :func:`read_keyed`: ``records`` (a structured array with
    an int64 field ``key``, distinct keys) sorted by key, preceded by the offsets where each range
    ``bounds[r]:bounds[r + 1]`` of keys starts, in the file ``folder/name`` (written to a
    temporary name and renamed). Returns the file's size, for the caller's record.

    The first pass of a shuffle by key: a task that computed rows scattered over the output
    (one batch of clusters) writes them once, and each range's reader later takes its
    stretch of every file with two reads, so nothing per row passes through the driver.
    """
    data = np.ascontiguousarray(records[np.argsort(records["key"], kind="stable")])
    offsets = np.searchsorted(data["key"], bounds).astype(POSITION)
    fd, tmp = create_temp(folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(offsets.data)
            fh.write(data.tobytes())
        os.replace(tmp, os.path.join(folder, name))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return offsets.nbytes + data.nbytes


def keyed_size(folder: str | os.PathLike, name: str) -> int:
    """The size of the file :func:`write_keyed` left as ``name`` (-1 when it is missing)."""
    try:
        st = os.lstat(os.path.join(folder, name))
    except FileNotFoundError:
        return -1
    return st.st_size if (st.st_mode & 0o170000) == 0o100000 else -1


def read_keyed(folder: str | os.PathLike, names: list[str], r: int, n_ranges: int,
               dtype: np.dtype) -> np.ndarray:
    """Range ``r``'s records of every file in ``names`` (in that order), concatenated: the
    second pass of the shuffle, two reads a file."""
    out = []
    head = (n_ranges + 1) * POSITION.itemsize
    for name in names:
        path = os.path.join(folder, name)
        a, b = np.frombuffer(_pread(path, 2 * POSITION.itemsize, r * POSITION.itemsize),
                             dtype=POSITION)
        if b > a:
            out.append(np.frombuffer(_pread(path, int(b - a) * dtype.itemsize,
                                            head + int(a) * dtype.itemsize), dtype=dtype))
    return np.concatenate(out) if out else np.zeros(0, dtype=dtype)
