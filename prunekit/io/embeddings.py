"""Embedding sets: one validated, fingerprinted row space over a file or many shards.

An :class:`Embeddings` keeps its rows on disk, behind an
:class:`~prunekit.io.source.EmbeddingSource` (``emb.reader``: a file, a directory or a glob
of ``.npy``/``.h5``/``.npz``/``.parquet`` shards), and holds in memory only a few bytes per
row: ``rows`` (the usable positions), ``ids``, ``labels`` and, on demand, ``norms``. Methods
stream it with :meth:`Embeddings.iter_chunks` (or ``reader.chunks()``/``read()`` in an
engine); :meth:`Embeddings.array` materialises the matrix for small data and refuses, with
the number, when that would exceed the memory budget (:mod:`prunekit.runtime.budget`).

Loading makes one streamed pass (non-finite rows, norms, fingerprint; see
:mod:`prunekit.io.scan`), which is cached for sharded and large inputs.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io import scan
from prunekit.io.h5io import normalize_ids
from prunekit.io.source import (
    CHUNK_ROWS,
    DEFAULT_KEY,
    EmbeddingSource,
    MemorySource,
    check_matrix,
    open_source,
)
from prunekit.runtime.budget import check_budget

MAX_ROWS_NAMED = 10

__all__ = ["CHUNK_ROWS", "DEFAULT_KEY", "Embeddings", "as_embeddings", "load_embeddings"]


@dataclass
class Embeddings:
    """An (N, D) embedding set with optional ``ids`` and ``labels``.

    ``rows`` holds the positions (into the source) of the usable rows: all of them, unless
    non-finite rows were dropped with ``drop_nonfinite=True``. Methods work on the usable
    rows in order (:meth:`array` for small data, :meth:`iter_chunks` streamed); results are
    mapped back to source positions.

    ``name`` is how messages and output files call the set (its path, or ``<array>``);
    ``path`` the file, directory or glob it was read from (None for arrays); ``reader`` the
    :class:`~prunekit.io.source.EmbeddingSource` that reads its rows. (``source`` and
    ``source_obj``, their old names, still read for one release with a DeprecationWarning.)
    """

    n_total: int
    dim: int
    dtype: np.dtype
    reader: EmbeddingSource = field(repr=False)
    path: Path | None = None
    key: str = DEFAULT_KEY
    ids: np.ndarray | None = None
    labels: np.ndarray | None = None
    rows: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    nonfinite_rows: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    fingerprint: str = ""
    _norms: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        """The invariants that hold however an Embeddings is made (the data pass is _finish's)."""
        src, name = self.reader, self.name
        if (self.n_total, self.dim) != (src.n_total, src.dim) or np.dtype(self.dtype) != src.dtype:
            raise PrunekitError(
                f"{name}: n_total/dim/dtype ({self.n_total}, {self.dim}, {self.dtype}) disagree "
                f"with its source ({src.n_total}, {src.dim}, {src.dtype})."
            )
        _check_side(self.ids, "ids", self.n_total, name)
        _check_side(self.labels, "labels", self.n_total, name)
        if self.rows is not None:
            rows = np.asarray(self.rows)
            if rows.ndim != 1 or rows.dtype.kind not in "iu" or (
                    rows.size and (rows[0] < 0 or rows[-1] >= self.n_total or np.any(np.diff(rows) <= 0))):
                raise PrunekitError(f"{name}: rows must be ascending positions in [0, {self.n_total}).")

    @property
    def n(self) -> int:
        """Number of usable rows."""
        return int(self.rows.shape[0])

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
        pos = 0
        for start, block in self.iter_chunks():
            keep = self.rows[(self.rows >= start) & (self.rows < start + block.shape[0])]
            out[pos : pos + keep.size] = block[keep - start]
            pos += keep.size
        return out

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
        usable = "" if self.rows is None or self.n == self.n_total else f", usable={self.n}"
        return (f"Embeddings({self.name!r}, n_total={self.n_total}, dim={self.dim}, "
                f"dtype={np.dtype(self.dtype).name}{usable}, key={self.key!r}, "
                f"ids={self.ids is not None}, labels={self.labels is not None}, "
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
        ids=src.ids(),
        labels=src.labels(),
    )
    _finish(emb, str(path), drop_nonfinite, progress=progress)
    return emb


def _finish(emb: Embeddings, name: str, drop_nonfinite: bool, progress: bool = False) -> None:
    """Check ids/labels, then the streamed pass: non-finite rows, norms, fingerprint."""
    _check_side(emb.ids, "ids", emb.n_total, name)
    _check_side(emb.labels, "labels", emb.n_total, name)
    if emb.labels is not None:
        if emb.labels.dtype.kind not in "iu":
            raise PrunekitError(f"{name} ['labels'] must be integers, got dtype {emb.labels.dtype}.")
        emb.labels = emb.labels.astype(np.int64)
    if emb.ids is not None:
        uniq, counts = np.unique(emb.ids.astype(str) if emb.ids.dtype == object else emb.ids,
                                 return_counts=True)
        if uniq.size != emb.ids.size:
            dup = uniq[counts > 1][:MAX_ROWS_NAMED]
            raise PrunekitError(
                f"{name} ['ids'] has duplicate ids (e.g. {', '.join(map(str, dup))}); ids must be unique."
            )
    emb.fingerprint, emb.nonfinite_rows, emb._norms, max_norm = scan.scan(
        emb.reader, progress=progress)
    if emb.nonfinite_rows.size and not drop_nonfinite:
        shown = ", ".join(map(str, emb.nonfinite_rows[:MAX_ROWS_NAMED]))
        more = "" if emb.nonfinite_rows.size <= MAX_ROWS_NAMED else ", ..."
        raise PrunekitError(
            f"{name} has {emb.nonfinite_rows.size} rows with NaN/inf (rows {shown}{more}). "
            "Fix them, or pass --drop-nonfinite to skip them (selections still index the original rows)."
        )
    keep = np.ones(emb.n_total, dtype=bool)
    keep[emb.nonfinite_rows] = False
    emb.rows = np.flatnonzero(keep).astype(np.int64)
    if emb.rows.size == 0:
        raise PrunekitError(f"{name} has no finite rows left after dropping NaN/inf rows.")
    if max_norm > MAX_NORM:  # known from the scan, cached or not
        _check_range(emb, name)


# Finite values beyond this overflow float32 squared distances (faiss aborts on them).
MAX_NORM = 1e15


def _check_range(emb: Embeddings, name: str) -> None:
    """Refuse finite rows too large to compute with (their norms are streamed if not held)."""
    norms = emb.norms[emb.rows]
    huge = emb.rows[~(norms <= MAX_NORM)]  # an overflowed (inf) norm counts too
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
