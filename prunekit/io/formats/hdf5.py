"""HDF5 shards: dataset ``key`` (N, D), optional ``ids`` (or ``id_key``) and ``labels``.

Every file is opened by :func:`prunekit.io.h5io.open_h5`, which refuses external links,
external storage and virtual datasets unless the shard records ``allow_external``.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.formats.base import (
    DEFAULT_KEY,
    Description,
    Format,
    Shard,
    check_matrix,
    checked_ids,
    checked_labels,
    read_head,
)
from prunekit.io.h5io import (
    atomic_h5,
    decode_ids,
    normalize_ids,
    open_h5,
    read_dataset,
    read_optional,
    write_ids,
)

WHAT = "embeddings"  # how open_h5's errors name the file (and which fix they offer)


class H5Reader:
    """Rows of one HDF5 dataset, the file held open (h5py serialises reads)."""

    def __init__(self, s: Shard) -> None:
        self.f = open_h5(s.path, WHAT, allow_external=s.allow_external)
        self.d = self.f[s.key]
        self.shape, self.dtype = self.d.shape, self.d.dtype

    def read(self, a: int, b: int) -> np.ndarray:
        return self.d[a:b]

    def close(self) -> None:
        self.f.close()


class HDF5Format(Format):
    """HDF5 (``.h5``/``.hdf5``, recognised by its signature, any name)."""

    name = "h5"  # the shard kind recorded since the first release (scan cache keys)
    suffixes = (".h5", ".hdf5")
    label = "HDF5"

    def sniff(self, path: str | os.PathLike, head: bytes | None = None) -> bool:
        """HDF5's signature may sit after a user block (offset 512, 1024, ...): h5py looks,
        once the path is known to be a regular file."""
        if head is None:
            read_head(path)  # a FIFO or device is refused here, not opened by HDF5
        return bool(h5py.is_hdf5(path))

    def describe(self, path: Path, key: str, id_key: str | None = None, *,
                 allow_external: bool = False) -> Description:
        with open_h5(path, WHAT, allow_external=allow_external) as h:
            if key not in h or not isinstance(h[key], h5py.Dataset):
                have = ", ".join(sorted(k for k in h if isinstance(h[k], h5py.Dataset))) or "none"
                raise PrunekitError(
                    f"embeddings file {path} has no dataset '{key}' (datasets: {have}). "
                    "Pass --key NAME to read another dataset."
                )
            d = h[key]
            check_matrix(d.shape, d.dtype, str(path), key)
            ids_name = id_key or "ids"
            has_ids = ids_name in h
            if id_key and not has_ids:
                raise PrunekitError(f"{path} has no dataset '{id_key}' for ids; check --id-key.")
            return Description(key, (d.shape[0], d.shape[1]), d.dtype,
                               ids_name if has_ids else None,
                               labels="labels" if "labels" in h else None)

    def open(self, shard: Shard, dim: int, dtype: np.dtype) -> H5Reader:
        return H5Reader(shard)

    def ids(self, shard: Shard) -> np.ndarray:
        with open_h5(Path(shard.path), WHAT, allow_external=shard.allow_external) as h:
            raw = read_dataset(h, shard.id_key, WHAT)  # type: ignore[arg-type]
        return checked_ids(raw, shard)

    def labels(self, shard: Shard) -> np.ndarray | None:
        with open_h5(Path(shard.path), WHAT, allow_external=shard.allow_external) as h:
            return checked_labels(read_optional(h, "labels", WHAT), shard)

    def side_range(self, shard: Shard, name: str, a: int, b: int) -> np.ndarray | None:
        """A slice of the dataset: a worker reading a part's ids holds the part's, not the
        shard's. None when the dataset is not one entry per row (the whole read says so)."""
        key = shard.id_key if name == "ids" else "labels"
        with open_h5(Path(shard.path), WHAT, allow_external=shard.allow_external) as h:
            d = h.get(key)  # type: ignore[arg-type]
            if not isinstance(d, h5py.Dataset) or d.shape != (shard.n_rows,):
                return None
            raw = read_dataset(h, key, WHAT, rows=slice(a, b))  # type: ignore[arg-type]
        return decode_ids(raw, f"{shard.path} ['{key}']") if name == "ids" else raw

    def keys(self, path: Path, *, allow_external: bool = False) -> dict[str, list[int]]:
        found: dict[str, list[int]] = {}
        with open_h5(path, WHAT, allow_external=allow_external) as f:
            f.visititems(lambda name, obj: found.__setitem__(name, list(obj.shape))
                         if isinstance(obj, h5py.Dataset) else None)
        return found

    def write(self, path: str | os.PathLike, rows: np.ndarray, *, key: str = DEFAULT_KEY,
              ids: np.ndarray | None = None, labels: np.ndarray | None = None) -> Path:
        """Dataset ``key``, ``ids`` (int64 or UTF-8 strings), ``labels`` (int64)."""
        rows = np.asarray(rows)
        check_matrix(rows.shape, rows.dtype, str(path), key)
        with atomic_h5(path) as f:
            f.create_dataset(key, data=rows)
            if ids is not None:
                write_ids(f, "ids", normalize_ids(ids))  # type: ignore[arg-type]
            if labels is not None:
                f.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
        return Path(path)
