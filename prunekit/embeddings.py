"""Embedding sets: reading HDF5/.npy/.npz, validating, fingerprinting, chunked access.

An :class:`Embeddings` keeps the source on disk (HDF5 datasets and ``.npy`` memory maps are
read in chunks) and loads the whole matrix only when a method asks for it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .errors import PrunekitError
from .h5io import decode_ids, normalize_ids, open_h5

DEFAULT_KEY = "embeddings"
CHUNK_ROWS = 65536
MAX_ROWS_NAMED = 10

Reader = Callable[[int, int], np.ndarray]


@dataclass
class Embeddings:
    """An (N, D) embedding set with optional ``ids`` and ``labels``.

    ``rows`` holds the positions (into the source) of the usable rows: all of them, unless
    non-finite rows were dropped with ``drop_nonfinite=True``. Methods work on
    :meth:`array` (the usable rows, in order); results are mapped back to source positions.
    """

    n_total: int
    dim: int
    dtype: np.dtype
    reader: Reader = field(repr=False)
    path: Path | None = None
    key: str = DEFAULT_KEY
    ids: np.ndarray | None = None
    labels: np.ndarray | None = None
    rows: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    nonfinite_rows: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    fingerprint: str = ""
    norms: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]

    @property
    def n(self) -> int:
        """Number of usable rows."""
        return int(self.rows.shape[0])

    @property
    def source(self) -> str:
        return str(self.path) if self.path is not None else "<array>"

    def iter_chunks(self, chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, block)`` over all source rows, ``chunk_rows`` at a time."""
        for start in range(0, self.n_total, chunk_rows):
            yield start, np.asarray(self.reader(start, min(start + chunk_rows, self.n_total)))

    def array(self, dtype: np.dtype | type = np.float32) -> np.ndarray:
        """The usable rows as one C-contiguous ``(n, D)`` array of ``dtype``."""
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
        _check_matrix(x.shape, x.dtype, name, DEFAULT_KEY)
        emb = cls(
            n_total=x.shape[0],
            dim=x.shape[1],
            dtype=x.dtype,
            reader=lambda a, b: x[a:b],
            ids=normalize_ids(ids),
            labels=None if labels is None else np.asarray(labels),
        )
        _finish(emb, name, drop_nonfinite)
        return emb


def load_embeddings(
    path: str | os.PathLike,
    *,
    key: str = DEFAULT_KEY,
    drop_nonfinite: bool = False,
) -> Embeddings:
    """Read an embedding set from HDF5 (dataset ``key``), ``.npy`` (memory-mapped) or ``.npz``.

    Optional ``ids`` (int64 or UTF-8 strings) and ``labels`` (integers) are read from the
    same HDF5/npz file. Raises :class:`PrunekitError` with a fix for every malformed input.
    Rows containing NaN/inf are an error unless ``drop_nonfinite`` is set, in which case
    they are skipped and ``rows`` records the positions that remain.
    """
    p = Path(path)
    if not p.exists():
        raise PrunekitError(f"embeddings file not found: {p}. Check the path.")
    kind = _sniff(p)
    if kind == "h5":
        emb = _from_h5(p, key)
    elif kind == "npy":
        emb = _from_npy(p)
    else:
        emb = _from_npz(p, key)
    _finish(emb, str(p), drop_nonfinite)
    return emb


def _sniff(p: Path) -> str:
    if p.is_dir():
        raise PrunekitError(f"embeddings path {p} is a directory; give an .h5, .npy or .npz file.")
    if h5py.is_hdf5(p):
        return "h5"
    with open(p, "rb") as fh:
        magic = fh.read(6)
    if magic == b"\x93NUMPY":
        return "npy"
    if magic[:4] == b"PK\x03\x04":
        return "npz"
    raise PrunekitError(
        f"embeddings file {p} is neither HDF5 nor .npy/.npz. "
        "Save the matrix with h5py (dataset 'embeddings') or numpy.save."
    )


def _check_matrix(shape: tuple, dtype: np.dtype, name: str, key: str) -> None:
    where = f"{name} ['{key}']"
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise PrunekitError(f"{where} has non-numeric dtype {dtype}; embeddings must be float16/32/64.")
    if len(shape) != 2:
        raise PrunekitError(
            f"{where} has shape {shape}; embeddings must be 2-D (N items x D dimensions). "
            "Reshape to (N, -1) before saving."
        )
    if shape[0] == 0 or shape[1] == 0:
        raise PrunekitError(f"{where} is empty (shape {shape}); it needs at least one row and column.")


def _from_h5(p: Path, key: str) -> Embeddings:
    with open_h5(p, "embeddings") as f:
        if key not in f or not isinstance(f[key], h5py.Dataset):
            have = ", ".join(sorted(k for k in f if isinstance(f[k], h5py.Dataset))) or "none"
            raise PrunekitError(
                f"embeddings file {p} has no dataset '{key}' (datasets: {have}). "
                "Pass --key NAME to read another dataset."
            )
        d = f[key]
        _check_matrix(d.shape, d.dtype, str(p), key)
        ids = decode_ids(f["ids"][()]) if "ids" in f else None
        labels = np.asarray(f["labels"][()]) if "labels" in f else None
        n, dim, dtype = d.shape[0], d.shape[1], d.dtype

    def reader(a: int, b: int) -> np.ndarray:
        with h5py.File(p, "r") as fh:
            return fh[key][a:b]

    return Embeddings(n, dim, dtype, reader, path=p, key=key, ids=ids, labels=labels)


def _from_npy(p: Path) -> Embeddings:
    try:
        x = np.load(p, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise PrunekitError(f"cannot read {p} as .npy: {exc}") from exc
    _check_matrix(x.shape, x.dtype, str(p), "array")
    return Embeddings(x.shape[0], x.shape[1], x.dtype, lambda a, b: x[a:b], path=p, key="array")


def _from_npz(p: Path, key: str) -> Embeddings:
    try:
        z = np.load(p, allow_pickle=False)
    except ValueError as exc:
        raise PrunekitError(f"cannot read {p} as .npz: {exc}") from exc
    names = list(z.files)
    data_names = [n for n in names if n not in ("ids", "labels")]
    if key not in names:
        if key == DEFAULT_KEY and len(data_names) == 1:
            key = data_names[0]  # np.savez(path, x) stores 'arr_0'
        else:
            raise PrunekitError(
                f"embeddings file {p} has no array '{key}' (arrays: {', '.join(names) or 'none'}). "
                "Pass --key NAME to read another array."
            )
    x = z[key]
    _check_matrix(x.shape, x.dtype, str(p), key)
    ids = decode_ids(z["ids"]) if "ids" in names else None
    labels = z["labels"] if "labels" in names else None
    return Embeddings(
        x.shape[0], x.shape[1], x.dtype, lambda a, b: x[a:b], path=p, key=key, ids=ids, labels=labels
    )


def _finish(emb: Embeddings, name: str, drop_nonfinite: bool) -> None:
    """Check ids/labels, then one chunked pass: non-finite rows, norms, fingerprint."""
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
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{emb.n_total}x{emb.dim}".encode())
    bad: list[np.ndarray] = []
    norms = np.empty(emb.n_total, dtype=np.float64)
    for start, block in emb.iter_chunks():
        block64 = block.astype(np.float64, copy=False)
        finite = np.isfinite(block64).all(axis=1)
        if not finite.all():
            bad.append(start + np.flatnonzero(~finite))
        norms[start : start + block.shape[0]] = np.sqrt(np.einsum("ij,ij->i", block64, block64))
        h.update(np.ascontiguousarray(block, dtype=block.dtype.newbyteorder("<")).tobytes())
    emb.fingerprint = h.hexdigest()
    emb.norms = norms
    emb.nonfinite_rows = np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)
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
