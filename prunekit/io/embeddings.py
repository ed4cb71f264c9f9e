"""Embedding sets: one validated, fingerprinted row space over a file or many shards.

An :class:`Embeddings` keeps its rows on disk, behind an
:class:`~prunekit.io.source.EmbeddingSource` (``emb.reader``: a file, a directory or a glob
of ``.npy``/``.h5``/``.npz``/``.parquet`` shards). After loading it holds O(shards + dropped
rows): the per-row arrays (``rows``, the usable positions; ``ids``, ``labels``, ``norms``)
are made or read on first use, and workers read the ids and labels of their own rows
(:meth:`Embeddings.side_for`). Methods stream it with :meth:`Embeddings.iter_chunks` (or
``reader.chunks()``/``read()`` in an engine); :meth:`Embeddings.array` materialises the
matrix for small data and refuses, with the number, when that would exceed the memory
budget (:mod:`prunekit.runtime.budget`).

Loading makes one streamed pass (non-finite rows, largest norm, fingerprint; see
:mod:`prunekit.io.scan`), which is cached for sharded and large inputs, and checks the ids
and labels shard by shard (unique ids in bounded memory; :mod:`prunekit.io.sides`).
"""

from __future__ import annotations

import enum
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io import scan
from prunekit.io.h5io import normalize_ids
from prunekit.io.sides import SIDES, SideReader, check_sides, check_unique
from prunekit.io.source import (
    CHUNK_ROWS,
    DEFAULT_KEY,
    EmbeddingSource,
    MemorySource,
    check_matrix,
    open_source,
)
from prunekit.runtime.budget import check_budget, memory_budget

MAX_ROWS_NAMED = 10

__all__ = ["CHUNK_ROWS", "DEFAULT_KEY", "Embeddings", "UsableRows", "as_embeddings",
           "load_embeddings"]


class UsableRows:
    """The positions ``0..n_total`` less the sorted ``dropped`` ones, without the array.

    Array-like where it matters: ``size``/``len``, ``rows[compact]`` (an index, an array of
    them or a slice) gives positions, and ``np.asarray(rows)`` materialises them. Position
    of compact index ``c``: ``c`` plus the number of ``j`` with ``dropped[j] - j <= c``.
    """

    ndim = 1
    dtype = np.dtype(np.int64)

    def __init__(self, n_total: int, dropped: np.ndarray) -> None:
        self.n_total = int(n_total)
        self.dropped = np.asarray(dropped, dtype=np.int64)
        self._shift = self.dropped - np.arange(self.dropped.size, dtype=np.int64)

    @property
    def size(self) -> int:
        return self.n_total - int(self.dropped.size)

    @property
    def shape(self) -> tuple[int]:
        return (self.size,)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index):
        if isinstance(index, slice):
            index = np.arange(*index.indices(self.size), dtype=np.int64)
        c = np.asarray(index)
        if c.dtype.kind not in "iu":
            raise IndexError("usable rows are indexed by integers or slices")
        c = c.astype(np.int64)
        if c.size and (c.min() < -self.size or c.max() >= self.size):
            raise IndexError(f"index out of range for {self.size} usable rows")
        c = np.where(c < 0, c + self.size, c)
        out = c + np.searchsorted(self._shift, c, side="right")
        return int(out) if out.ndim == 0 else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        keep = np.ones(self.n_total, dtype=bool)
        keep[self.dropped] = False
        out = np.flatnonzero(keep).astype(np.int64)
        return out if dtype is None else out.astype(dtype)


class _Lazy(enum.Enum):
    """A side array that exists but is read from the shards only when asked for (an enum
    member, so that it stays itself through pickling)."""

    UNREAD = 0


class Embeddings:
    """An (N, D) embedding set with optional ``ids`` and ``labels``.

    ``rows`` holds the positions (into the source) of the usable rows: all of them, unless
    non-finite rows were dropped with ``drop_nonfinite=True``. Methods work on the usable
    rows in order (:meth:`array` for small data, :meth:`iter_chunks` streamed); results are
    mapped back to source positions.

    Per-row state is held only when asked for, so a set of 10^9 rows costs the driver
    O(shards + dropped rows): ``nonfinite_rows`` (sparse) is what the load keeps; ``rows``
    (int64 per usable row) is computed on first use (:attr:`usable_rows` is the same
    positions without the array, :meth:`positions` maps compact indices); ``ids`` and
    ``labels`` of a file are read on first use (within the memory budget), and workers
    read the range they need with :meth:`side_for` / :meth:`sides`; ``norms`` are
    streamed on demand. Small inputs keep the ids and labels the load read
    (:mod:`prunekit.io.sides`).

    ``name`` is how messages and output files call the set (its path, or ``<array>``);
    ``path`` the file, directory or glob it was read from (None for arrays); ``reader`` the
    :class:`~prunekit.io.source.EmbeddingSource` that reads its rows. (``source`` and
    ``source_obj``, their old names, still read for one release with a DeprecationWarning.)
    """

    def __init__(
        self,
        n_total: int,
        dim: int,
        dtype: np.dtype,
        reader: EmbeddingSource,
        path: Path | None = None,
        key: str = DEFAULT_KEY,
        ids: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        rows: np.ndarray | None = None,
        nonfinite_rows: np.ndarray | None = None,
        fingerprint: str = "",
        _norms: np.ndarray | None = None,
    ) -> None:
        self.n_total, self.dim, self.dtype = n_total, dim, dtype
        self.reader, self.path, self.key = reader, path, key
        self._ids: np.ndarray | _Lazy | None = ids
        self._labels: np.ndarray | _Lazy | None = labels
        self._rows = None if rows is None else np.asarray(rows)
        self.nonfinite_rows = nonfinite_rows
        self.fingerprint = fingerprint
        self._norms = _norms
        self._check()

    def _check(self) -> None:
        """The invariants that hold however an Embeddings is made (the data pass is _finish's)."""
        src, name = self.reader, self.name
        if (self.n_total, self.dim) != (src.n_total, src.dim) or np.dtype(self.dtype) != src.dtype:
            raise PrunekitError(
                f"{name}: n_total/dim/dtype ({self.n_total}, {self.dim}, {self.dtype}) disagree "
                f"with its source ({src.n_total}, {src.dim}, {src.dtype})."
            )
        for what in SIDES:
            held = getattr(self, f"_{what}")
            _check_side(None if isinstance(held, _Lazy) else held, what, self.n_total, name)
        if self._rows is not None:
            rows = self._rows
            if rows.ndim != 1 or rows.dtype.kind not in "iu" or (
                    rows.size and (rows[0] < 0 or rows[-1] >= self.n_total or np.any(np.diff(rows) <= 0))):
                raise PrunekitError(f"{name}: rows must be ascending positions in [0, {self.n_total}).")

    # -- per-row state, held only when asked for ----------------------------------------------

    @property
    def rows(self) -> np.ndarray:
        """Positions (int64, ascending) of the usable rows; computed on first use."""
        if self._rows is None and self.nonfinite_rows is not None:
            keep = np.ones(self.n_total, dtype=bool)
            keep[self.nonfinite_rows] = False
            self._rows = np.flatnonzero(keep).astype(np.int64)
        return self._rows  # type: ignore[return-value]

    @rows.setter
    def rows(self, value: np.ndarray | None) -> None:
        self._rows = None if value is None else np.asarray(value)

    @property
    def usable_rows(self) -> np.ndarray | UsableRows:
        """:attr:`rows` without materialising them (:class:`UsableRows`) unless they are."""
        if self._rows is not None or self.nonfinite_rows is None:
            return self.rows
        return UsableRows(self.n_total, self.nonfinite_rows)

    def positions(self, compact: np.ndarray) -> np.ndarray:
        """Source positions of the usable rows at compact indices ``compact`` (``rows[compact]``)."""
        return np.asarray(self.usable_rows[np.asarray(compact, dtype=np.int64)], dtype=np.int64)

    @property
    def has_ids(self) -> bool:
        """Whether the set has ids (known without reading them)."""
        return self._ids is not None

    @property
    def has_labels(self) -> bool:
        """Whether the set has labels (known without reading them)."""
        return self._labels is not None

    @property
    def ids(self) -> np.ndarray | None:
        """ids (int64, or an object array of ``str``) of every source row, or None; a file's
        are read on first use and kept (refused when they would exceed the memory budget)."""
        if isinstance(self._ids, _Lazy):
            self._ids = self._read_whole("ids")
        return self._ids

    @ids.setter
    def ids(self, value: np.ndarray | None) -> None:
        self._ids = value

    @property
    def labels(self) -> np.ndarray | None:
        """Integer labels (int64) of every source row, or None; read on first use like ids."""
        if isinstance(self._labels, _Lazy):
            self._labels = self._read_whole("labels")
        return self._labels

    @labels.setter
    def labels(self, value: np.ndarray | None) -> None:
        self._labels = value

    def _read_whole(self, what: str) -> np.ndarray:
        check_budget(
            self.n_total * 8,
            f"holding the {what} of the {self.n_total} rows of {self.name} (8 bytes or more each)",
            "raise it with --memory, or write the scores as a folder (-o scores/), whose "
            "parts are written where the rows are scored.",
        )
        return self.sides().read(what, 0, self.n_total)  # type: ignore[return-value]

    def sides(self) -> SideReader:
        """What a worker needs to read the ids/labels of its rows (pickles small when they are
        not held in memory): ``emb.sides().read("ids", start, stop)``."""
        names = tuple(w for w in SIDES if getattr(self, f"_{w}") is not None)
        held = {w: getattr(self, f"_{w}") for w in names
                if not isinstance(getattr(self, f"_{w}"), _Lazy)}
        return SideReader(self.reader, names, held)

    def side_for(self, name: str, start: int, stop: int) -> np.ndarray | None:
        """Entries ``start:stop`` of ``ids`` or ``labels`` (None when the set has none),
        read from the shards that hold them unless the whole array is in memory."""
        return self.sides().read(name, start, stop)

    @property
    def n(self) -> int:
        """Number of usable rows."""
        if self._rows is not None:
            return int(self._rows.shape[0])
        return self.n_total - (0 if self.nonfinite_rows is None else int(self.nonfinite_rows.size))

    @property
    def name(self) -> str:
        """How messages and output files call the set: its path, or ``<array>``."""
        return str(self.path) if self.path is not None else "<array>"

    @property
    def source(self) -> str:
        """Deprecated: :attr:`name`."""
        _renamed("source", "name")
        return self.name

    @property
    def source_obj(self) -> EmbeddingSource:
        """Deprecated: :attr:`reader`."""
        _renamed("source_obj", "reader")
        return self.reader

    @property
    def norms(self) -> np.ndarray:
        """Euclidean norm (float32) of every source row; streamed on first use."""
        if self._norms is None:
            self._norms = scan.norms(self.reader)
        return self._norms

    @norms.setter
    def norms(self, value: np.ndarray) -> None:
        self._norms = value

    def iter_chunks(self, chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(global start, block)`` over all source rows in the files' dtype.

        Blocks follow ``reader.chunks(chunk_rows)``: at most ``chunk_rows`` rows, never
        spanning two shards.
        """
        src = self.reader
        for ref in src.chunks(chunk_rows):
            yield ref.global_start, src.read(ref)

    def array(self, dtype: np.dtype | type = np.float32) -> np.ndarray:
        """The usable rows as one C-contiguous ``(n, D)`` array of ``dtype``.

        Refuses (PrunekitError) when the array would exceed the memory budget.
        """
        need = self.n * self.dim * np.dtype(dtype).itemsize
        check_budget(
            need,
            f"holding the {self.n} x {self.dim} rows of {self.name} as {np.dtype(dtype).name}",
            "raise it with --memory (e.g. --memory 16G), or use a streamed form of the "
            "method (for herding/k-center: --within clusters).",
        )
        out = np.empty((self.n, self.dim), dtype=dtype)
        if self.n == self.n_total:
            for start, block in self.iter_chunks():
                out[start : start + block.shape[0]] = block
            return out
        # Dropped rows: copy each chunk's surviving rows to their compact place.
        dropped, pos = self.dropped_rows(), 0
        for start, block in self.iter_chunks():
            lo, hi = np.searchsorted(dropped, [start, start + block.shape[0]])
            keep = np.ones(block.shape[0], dtype=bool)
            keep[dropped[lo:hi] - start] = False
            n_keep = int(keep.sum())
            out[pos : pos + n_keep] = block[keep]
            pos += n_keep
        return out

    def dropped_rows(self) -> np.ndarray:
        """Sorted positions of the rows that are not usable (the non-finite ones dropped)."""
        if self.nonfinite_rows is not None:
            return np.asarray(self.nonfinite_rows, dtype=np.int64)
        if self._rows is None:
            return np.zeros(0, dtype=np.int64)
        keep = np.zeros(self.n_total, dtype=bool)
        keep[self._rows] = True
        return np.flatnonzero(~keep).astype(np.int64)

    @classmethod
    def from_array(
        cls,
        x: np.ndarray,
        *,
        ids: np.ndarray | list | None = None,
        labels: np.ndarray | list | None = None,
        drop_nonfinite: bool = False,
        name: str = "<array>",
    ) -> Embeddings:
        """Wrap an in-memory array (validated like a file)."""
        x = np.asarray(x)
        check_matrix(x.shape, x.dtype, name, DEFAULT_KEY)
        emb = cls(
            n_total=x.shape[0],
            dim=x.shape[1],
            dtype=x.dtype,
            reader=MemorySource(x, name),
            ids=normalize_ids(ids),
            labels=None if labels is None else np.asarray(labels),
        )
        _finish(emb, name, drop_nonfinite)
        return emb

    def __repr__(self) -> str:
        usable = "" if self.n == self.n_total else f", usable={self.n}"
        return (f"Embeddings({self.name!r}, n_total={self.n_total}, dim={self.dim}, "
                f"dtype={np.dtype(self.dtype).name}{usable}, key={self.key!r}, "
                f"ids={self.has_ids}, labels={self.has_labels}, "
                f"fingerprint={self.fingerprint[:12]!r})")


def _renamed(old: str, new: str) -> None:
    warnings.warn(f"Embeddings.{old} is now Embeddings.{new}; the old name goes in the next "
                  "release.", DeprecationWarning, stacklevel=3)


def load_embeddings(
    path: str | os.PathLike,
    *,
    key: str | None = None,
    id_key: str | None = None,
    drop_nonfinite: bool = False,
    progress: bool = False,
    allow_external: bool | None = None,
) -> Embeddings:
    """Read an embedding set: one file, a directory of shards or a glob of shards.

    Files: HDF5 (dataset ``key``, optional ``ids``/``labels``), ``.npy`` (read by offset),
    ``.npz`` and Parquet (an embedding column ``key``, ids from ``id_key``; see
    :mod:`prunekit.io.source` for the defaults and clip-retrieval's layout). Raises
    :class:`PrunekitError` with a fix for every malformed input. Rows containing NaN/inf
    are an error unless ``drop_nonfinite`` is set, in which case they are skipped and
    ``rows`` records the positions that remain. ``key``/``id_key`` None: the run context's
    (``prunekit.runtime(key=..., id_key=...)``, the CLI's ``--key``/``--id-key``). HDF5
    external links, external storage and virtual datasets are refused unless
    ``allow_external`` (None: the run context's, ``--allow-external``).
    """
    src = open_source(path, key=key, id_key=id_key, allow_external=allow_external)
    emb = Embeddings(
        n_total=src.n_total,
        dim=src.dim,
        dtype=src.dtype,
        reader=src,
        path=Path(path),
        key=src.shards[0].key,
    )
    emb._ids = emb._labels = _Lazy.UNREAD  # checked and (small inputs) read by _finish
    _finish(emb, str(path), drop_nonfinite, progress=progress)
    return emb


def _finish(emb: Embeddings, name: str, drop_nonfinite: bool, progress: bool = False) -> None:
    """Check ids/labels, then the streamed pass: non-finite rows, largest norm, fingerprint."""
    if isinstance(emb._ids, _Lazy):  # a source's: checked shard by shard, in bounded memory
        found = check_sides(emb.reader, name, budget=memory_budget(), progress=progress)
        emb._ids = (found.ids if found.ids is not None else _Lazy.UNREAD) if found.has_ids \
            else None
        emb._labels = (found.labels if found.labels is not None else _Lazy.UNREAD) \
            if found.has_labels else None
    else:
        _check_side(emb._ids, "ids", emb.n_total, name)
        _check_side(emb._labels, "labels", emb.n_total, name)
        if emb._labels is not None:
            if emb._labels.dtype.kind not in "iu":
                raise PrunekitError(
                    f"{name} ['labels'] must be integers, got dtype {emb._labels.dtype}.")
            emb._labels = emb._labels.astype(np.int64)
        if emb._ids is not None:
            check_unique(emb._ids, name)
    emb.fingerprint, emb.nonfinite_rows, max_norm = scan.scan(emb.reader, progress=progress)
    if emb.nonfinite_rows.size and not drop_nonfinite:
        shown = ", ".join(map(str, emb.nonfinite_rows[:MAX_ROWS_NAMED]))
        more = "" if emb.nonfinite_rows.size <= MAX_ROWS_NAMED else ", ..."
        raise PrunekitError(
            f"{name} has {emb.nonfinite_rows.size} rows with NaN/inf (rows {shown}{more}). "
            "Fix them, or pass --drop-nonfinite to skip them (selections still index the original rows)."
        )
    emb._rows = None  # made from nonfinite_rows on first use
    if emb.n == 0:
        raise PrunekitError(f"{name} has no finite rows left after dropping NaN/inf rows.")
    if max_norm > MAX_NORM:  # known from the scan, cached or not
        _check_range(emb, name)


# Finite values beyond this overflow float32 squared distances (faiss aborts on them).
MAX_NORM = 1e15


def _check_range(emb: Embeddings, name: str) -> None:
    """Refuse finite rows too large to compute with (a streamed pass finds them)."""
    huge = scan.rows_above(emb.reader, MAX_NORM, emb.nonfinite_rows)  # an inf norm counts too
    if huge.size:
        shown = ", ".join(map(str, huge[:MAX_ROWS_NAMED]))
        raise PrunekitError(
            f"{name} has {huge.size} rows with a norm above {MAX_NORM:.0e} (rows {shown}); values "
            "this large overflow the distance computations. Rescale the embeddings (e.g. divide "
            "by their largest norm) before scoring."
        )


def _check_side(values: np.ndarray | None, what: str, n: int, name: str) -> None:
    if values is None:
        return
    if values.ndim != 1 or values.shape[0] != n:
        raise PrunekitError(
            f"{name} ['{what}'] has shape {values.shape} but the embeddings have {n} rows; "
            f"'{what}' must be 1-D with one entry per row."
        )


def as_embeddings(x: object) -> Embeddings:
    """``x`` itself when it is an :class:`Embeddings`; else an array-like wrapped (and validated).

    Public functions that take embeddings accept an ``Embeddings`` or anything
    ``numpy.asarray`` turns into an (N, D) numeric array, as scikit-learn estimators do.
    """
    if isinstance(x, Embeddings):
        return x
    if isinstance(x, (str, os.PathLike)):
        raise PrunekitError(
            f"got the path {x!s} where embeddings were expected; load it with "
            "prunekit.load_embeddings(path) first."
        )
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise PrunekitError(f"cannot use {type(x).__name__} as embeddings: {exc}") from exc
    return Embeddings.from_array(arr)
