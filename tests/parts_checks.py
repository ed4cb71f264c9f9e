"""What the tests of worker-written parts share: sharded test embeddings and an exact
column-by-column comparison."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np


def write_h5_shards(d: Path, x: np.ndarray, ids: np.ndarray, labels: np.ndarray,
                    sizes: tuple[int, ...]) -> Path:
    """``x``, ``ids`` and ``labels`` cut into HDF5 shards of ``sizes`` rows in folder ``d``."""
    d.mkdir()
    a = 0
    for i, n in enumerate(sizes):
        with h5py.File(d / f"emb_{i}.h5", "w") as f:
            f["embeddings"], f["ids"], f["labels"] = x[a : a + n], ids[a : a + n], labels[a : a + n]
        a += n
    return d


def assert_columns_equal(a: dict, b: dict) -> None:
    """The same columns with the same dtypes and bytes (object columns by value)."""
    assert sorted(a) == sorted(b)
    for c in a:
        assert a[c].dtype == b[c].dtype, c
        if a[c].dtype.kind == "O":
            assert a[c].tolist() == b[c].tolist(), c
        else:
            assert a[c].tobytes() == b[c].tobytes(), c
