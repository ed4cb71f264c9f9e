"""What every input format shares: the shard record, the format interface, the row checks.

A format reads and writes one kind of file. :class:`Format` is its whole interface;
:mod:`prunekit.io.formats` keeps the registry and :mod:`prunekit.io.source` builds one row
space over shards of any registered format without knowing which.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io import DEFAULT_KEY  # noqa: E402,F401  (re-exported)
from prunekit.io.atomic import open_regular
from prunekit.io.h5io import decode_ids

SIDES = ("ids", "labels")  # the side arrays a shard may carry beside its rows
# What a row may hold: floats every kernel computes in, and integers (quantised embeddings).
SUPPORTED_DTYPES = "float16, float32 or float64 (or integers up to 64 bits)"


@dataclass(frozen=True)
class Shard:
    """One file of a source: rows ``start .. start + n_rows`` of the global row space.

    ``path`` (and ``ids_from``) are absolute once a source holds the shard, so a worker
    that runs in another folder reads the same file.
    """

    path: str
    kind: str  # the format's name ("npy" | "h5" | "npz" | "parquet"), or "array" in memory
    key: str
    n_rows: int
    start: int
    ids_from: str | None = None  # a metadata Parquet file holding this shard's ids
    id_key: str | None = None  # the id dataset/column; None: none
    allow_external: bool = False  # HDF5: may follow external links/storage, virtual datasets

    @property
    def stop(self) -> int:
        return self.start + self.n_rows

    @property
    def name(self) -> str:
        return Path(self.path).name


@dataclass(frozen=True)
class Description:
    """What :meth:`Format.describe` finds without reading rows: where the rows are (``key``:
    the dataset, array or column actually used), their ``shape`` and ``dtype``, and the
    side arrays: where the ids are (``id_key`` in the file, or in the file ``ids_from``;
    None: no ids) and the labels' name in the file (``labels``; None: no labels)."""

    key: str
    shape: tuple[int, int]
    dtype: np.dtype
    id_key: str | None = None
    ids_from: str | None = None
    labels: str | None = None


class ShardReader(Protocol):
    """An open shard: ``read(a, b)`` gives rows ``[a, b)`` as an ``(b - a, dim)`` array in
    the stored dtype; ``close()`` releases the file (readers may be shared by threads)."""

    shape: tuple[int, int]
    dtype: np.dtype

    def read(self, a: int, b: int) -> np.ndarray: ...

    def close(self) -> None: ...


class Format:
    """One file format: recognised by content, described and read shard by shard, written.

    Subclasses set ``name`` (recorded in each :class:`Shard` as ``kind`` and in the scan
    cache's keys, so it never changes) and ``suffixes`` (the names a folder listing takes
    as shards), and implement the methods below. Every error a user can cause is a
    :class:`PrunekitError` naming the file, the key and the fix.
    """

    name: ClassVar[str] = ""
    suffixes: ClassVar[tuple[str, ...]] = ()
    label: ClassVar[str] = ""  # how errors and docs name the format
    magic: ClassVar[bytes] = b""  # the bytes a file of the format starts with, when fixed

    def sniff(self, path: str | os.PathLike, head: bytes | None = None) -> bool:
        """Whether ``path`` holds this format, from its content (``head``: its first bytes
        when the caller has read them already from the regular file). By default: whether
        it starts with :attr:`magic`."""
        if not self.magic:
            raise NotImplementedError
        return (read_head(path) if head is None else head)[:len(self.magic)] == self.magic

    def describe(self, path: Path, key: str, id_key: str | None = None, *,
                 allow_external: bool = False) -> Description:
        """Rows, width, dtype and side arrays of ``path`` without reading its rows. ``key``
        names the rows (:data:`DEFAULT_KEY`: the format's default), ``id_key`` the ids
        (None: the format's default names, when present)."""
        raise NotImplementedError

    def open(self, shard: Shard, dim: int, dtype: np.dtype) -> ShardReader:
        """A reader of the shard's rows (described as ``dim`` wide, ``dtype``)."""
        raise NotImplementedError

    def ids(self, shard: Shard) -> np.ndarray:
        """The shard's ids (``shard.id_key`` is set): int64 or an object array of str,
        one per row (:func:`checked_ids`)."""
        raise NotImplementedError

    def labels(self, shard: Shard) -> np.ndarray | None:
        """The shard's labels as stored, one per row (:func:`checked_labels`); None: none."""
        return None

    def side_range(self, shard: Shard, name: str, a: int, b: int) -> np.ndarray | None:
        """Entries ``a:b`` of the shard's ``ids`` (decoded) or ``labels`` (as stored), read
        as a slice; None where the format reads the whole array (the caller slices it)."""
        return None

    def keys(self, path: Path, *, allow_external: bool = False) -> dict[str, list[int]]:
        """Every array the file holds with its shape ({} when the file is one array)."""
        return {}

    def write(self, path: str | os.PathLike, rows: np.ndarray, *, key: str = DEFAULT_KEY,
              ids: np.ndarray | None = None, labels: np.ndarray | None = None) -> Path:
        """Write ``rows`` (and ids, labels) as one file of this format, atomically
        (temporary file + rename); the same arrays give the same bytes. Returns the path."""
        raise PrunekitError(f"prunekit does not write {self.label or self.name} files.")

    def __repr__(self) -> str:
        return f"<format {self.name}: {', '.join(self.suffixes)}>"


HEAD_BYTES = 8  # what sniffing reads of a file


def read_head(path: str | os.PathLike) -> bytes:
    """The first :data:`HEAD_BYTES` of ``path``, a regular file (a FIFO is refused by name,
    never opened in blocking mode)."""
    with os.fdopen(open_regular(path, "shard"), "rb") as fh:
        return fh.read(HEAD_BYTES)


def check_dtype(dtype: np.dtype, where: str) -> None:
    """Refuse what no kernel computes in: complex, structured, object, bool, text, and floats
    wider than 64 bits (longdouble, which also has no portable byte layout)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu" or (dtype.kind == "f" and dtype.itemsize <= 8):
        return
    what = "unsupported" if dtype.kind == "f" else "non-numeric"
    raise PrunekitError(f"{where} has {what} dtype {dtype}; embeddings must be {SUPPORTED_DTYPES}. "
                        "Convert it, e.g. with .astype('float32'), before saving.")


def check_matrix(shape: tuple | None, dtype: np.dtype, name: str, key: str) -> None:
    """A 2-D, non-empty, real-valued matrix, or an error naming the file and key."""
    where = f"{name} ['{key}']"
    check_dtype(dtype, where)
    if shape is None:  # an HDF5 dataset without a dataspace (h5py.Empty)
        raise PrunekitError(f"{where} is an empty HDF5 dataset (null dataspace, no shape); "
                            "store an (N, D) matrix.")
    if len(shape) != 2:
        raise PrunekitError(
            f"{where} has shape {shape}; embeddings must be 2-D (N items x D dimensions). "
            "Reshape to (N, -1) before saving."
        )
    if shape[0] == 0 or shape[1] == 0:
        raise PrunekitError(f"{where} is empty (shape {shape}); it needs at least one row and column.")


def checked_ids(raw: np.ndarray, shard: Shard) -> np.ndarray:
    """Stored ids decoded (UTF-8 bytes to str, integers within int64) and checked to hold
    one entry per row of ``shard``."""
    where = shard.ids_from or shard.path
    ids = decode_ids(raw, f"{where} ['{shard.id_key}']")
    if ids.ndim != 1 or ids.shape[0] != shard.n_rows:
        raise PrunekitError(
            f"{where} ['{shard.id_key}'] has shape {ids.shape} but shard {shard.path} has "
            f"{shard.n_rows} rows; '{shard.id_key}' must be 1-D with one entry per row."
        )
    return ids


def checked_labels(labels: np.ndarray | None, shard: Shard) -> np.ndarray | None:
    """Stored labels checked to hold one entry per row of ``shard`` (None passes)."""
    if labels is not None and (labels.ndim != 1 or labels.shape[0] != shard.n_rows):
        raise PrunekitError(
            f"{shard.path} ['labels'] has shape {labels.shape} but the embeddings have "
            f"{shard.n_rows} rows; 'labels' must be 1-D with one entry per row."
        )
    return labels
