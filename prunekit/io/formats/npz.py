"""``.npz`` shards: rows in array ``key`` (or the only array besides ``ids``/``labels``),
optional ``ids`` and ``labels``; headers read without decompressing, members loaded whole
after a memory check (small data only), never unpickled (:mod:`prunekit.io.npzio`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.atomic import atomic_path
from prunekit.io.formats.base import (
    DEFAULT_KEY,
    SIDES,
    Description,
    Format,
    Shard,
    check_matrix,
    checked_ids,
    checked_labels,
)
from prunekit.io.h5io import normalize_ids
from prunekit.io.npzio import load_npz_array, npz_header, npz_names, npz_shape

MAGIC = b"PK\x03\x04"


class NpzReader:
    """The rows of an ``.npz`` member, loaded whole at open."""

    def __init__(self, s: Shard) -> None:
        self.x = load_npz_array(s.path, s.key)
        self.shape, self.dtype = self.x.shape, self.x.dtype

    def read(self, a: int, b: int) -> np.ndarray:
        return self.x[a:b]

    def close(self) -> None:
        self.x = None


class NpzFormat(Format):
    """``.npz`` (numpy.savez): arrays ``embeddings`` (or ``key``), ``ids``, ``labels``."""

    name = "npz"
    suffixes = (".npz",)
    label = ".npz"
    magic = MAGIC

    def describe(self, path: Path, key: str, id_key: str | None = None, *,
                 allow_external: bool = False) -> Description:
        names = npz_names(path)
        data_names = [n for n in names if n not in SIDES]
        if key not in names:
            if key == DEFAULT_KEY and len(data_names) == 1:
                key = data_names[0]  # np.savez(path, x) stores 'arr_0'
            else:
                raise PrunekitError(
                    f"embeddings file {path} has no array '{key}' (arrays: "
                    f"{', '.join(names) or 'none'}). Pass --key NAME to read another array."
                )
        shape, dtype = npz_header(path, key)  # from the header: nothing decompressed yet
        check_matrix(shape, dtype, str(path), key)
        ids_name = id_key or "ids"
        return Description(key, (shape[0], shape[1]), dtype,
                           ids_name if ids_name in names else None,
                           labels="labels" if "labels" in names else None)

    def open(self, shard: Shard, dim: int, dtype: np.dtype) -> NpzReader:
        return NpzReader(shard)

    def ids(self, shard: Shard) -> np.ndarray:
        return checked_ids(load_npz_array(shard.path, shard.id_key), shard)  # type: ignore[arg-type]

    def labels(self, shard: Shard) -> np.ndarray | None:
        if "labels" not in npz_names(shard.path):
            return None
        return checked_labels(load_npz_array(shard.path, "labels"), shard)

    def keys(self, path: Path, *, allow_external: bool = False) -> dict[str, list[int]]:
        """Shapes from the headers: nothing decompressed or unpickled."""
        return {name: list(npz_shape(path, name)) for name in npz_names(path)}

    def write(self, path: str | os.PathLike, rows: np.ndarray, *, key: str = DEFAULT_KEY,
              ids: np.ndarray | None = None, labels: np.ndarray | None = None) -> Path:
        """Arrays ``key``, ``ids`` (int64 or unicode text, never objects), ``labels``
        (int64), uncompressed."""
        rows = np.asarray(rows)
        check_matrix(rows.shape, rows.dtype, str(path), key)
        arrays = {key: rows}
        if ids is not None:
            norm = normalize_ids(ids)
            arrays["ids"] = norm if norm.dtype.kind == "i" else norm.astype(str)  # type: ignore[union-attr]
        if labels is not None:
            arrays["labels"] = np.asarray(labels, dtype=np.int64)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        return Path(path)
