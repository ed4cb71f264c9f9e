"""``.npy`` shards: one (N, D) array, read by file offset; ids only through clip-retrieval
metadata files (:mod:`prunekit.io.formats.clip_retrieval`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.atomic import atomic_path, open_regular
from prunekit.io.formats import clip_retrieval
from prunekit.io.formats.base import (
    DEFAULT_KEY,
    SUPPORTED_DTYPES,
    Description,
    Format,
    Shard,
    check_matrix,
)
from prunekit.io.formats.parquet import id_column
from prunekit.io.npzio import load_npy, read_npy_header

MAGIC = b"\x93NUMPY"
KEY = "array"  # what errors call the rows of an .npy file


def npy_file_header(p: Path) -> tuple[tuple, np.dtype, bool, int]:
    """``(shape, dtype, fortran_order, data offset)`` of a .npy file, without loading it:
    the header (:func:`prunekit.io.npzio.read_npy_header`, the one parser) of a regular
    file, object arrays and files shorter than their header promises refused."""
    with os.fdopen(open_regular(p, "shard"), "rb") as fh:
        shape, fortran, dtype, offset = read_npy_header(fh, str(p))
        size = os.fstat(fh.fileno()).st_size
    if dtype.hasobject:
        raise PrunekitError(f"{p} holds Python objects, which prunekit never unpickles; "
                            f"embeddings must be {SUPPORTED_DTYPES}.")
    need = offset + float(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if need > size:  # a header promising more rows than the file holds
        raise PrunekitError(f"{p} is truncated: its header gives shape {shape} ({need:.0f} bytes) "
                            f"but the file has {size} bytes. Save it again with numpy.save.")
    return shape, dtype, fortran, offset


class NpyReader:
    """Rows of a C-order .npy by ``pread`` (Fortran order: a memory map)."""

    def __init__(self, s: Shard) -> None:
        self.fd = -1
        self.shape, self.dtype, fortran, self.offset = npy_file_header(Path(s.path))
        self.dim = self.shape[1]
        self.rowbytes = self.dim * self.dtype.itemsize
        self.mm = load_npy(s.path, mmap=True) if fortran else None
        self.fd = open_regular(s.path, "shard")
        self.path = s.path

    def read(self, a: int, b: int) -> np.ndarray:
        if self.mm is not None:
            return np.array(self.mm[a:b])
        out = np.empty((b - a, self.dim), dtype=self.dtype)
        buf = memoryview(out.reshape(-1).view(np.uint8))
        off, done = self.offset + a * self.rowbytes, 0
        while done < len(buf):
            got = os.preadv(self.fd, [buf[done:]], off + done)
            if got == 0:
                raise PrunekitError(f"shard {self.path} is truncated (rows {a}:{b} past its end).")
            done += got
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    __del__ = close


class NpyFormat(Format):
    """``.npy`` (numpy.save): the array is the rows; ids from clip-retrieval metadata."""

    name = "npy"
    suffixes = (".npy",)
    label = ".npy"
    magic = MAGIC

    def describe(self, path: Path, key: str, id_key: str | None = None, *,
                 allow_external: bool = False) -> Description:
        shape, dtype = npy_file_header(path)[:2]
        check_matrix(shape, dtype, str(path), KEY)
        meta = clip_retrieval.metadata_for(path)
        ids_key = id_column(meta, id_key) if meta else None
        return Description(KEY, (shape[0], shape[1]), dtype, ids_key,
                           str(meta) if meta else None)

    def open(self, shard: Shard, dim: int, dtype: np.dtype) -> NpyReader:
        return NpyReader(shard)

    def ids(self, shard: Shard) -> np.ndarray:
        return clip_retrieval.read_ids(shard)

    def write(self, path: str | os.PathLike, rows: np.ndarray, *, key: str = DEFAULT_KEY,
              ids: np.ndarray | None = None, labels: np.ndarray | None = None) -> Path:
        """``rows`` with :func:`numpy.save`; an .npy file has no room for ids or labels."""
        if ids is not None or labels is not None:
            raise PrunekitError(f"{path}: an .npy file holds the rows only; write ids and labels "
                                "to an .h5, .npz or .parquet file instead.")
        rows = np.asarray(rows)
        check_matrix(rows.shape, rows.dtype, str(path), KEY)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, rows, allow_pickle=False)
        return Path(path)
