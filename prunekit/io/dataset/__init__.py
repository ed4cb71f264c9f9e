"""Partitioned outputs: per-row results as a folder of Parquet parts plus a manifest.

At scale the driver cannot gather every per-row array; each worker writes the part of the
rows it computed (:func:`write_part`, given the driver's :class:`PartSpec`) and the driver,
holding O(parts), finalises the folder (:class:`PartWriter`). :class:`PartsReader` streams
the parts back in bounded batches, checking each against the manifest. pyarrow (the
``parquet`` extra) is imported only when a dataset is written or read. The layout is
documented in docs/formats.md ("Partitioned outputs").
"""

from __future__ import annotations

import os
from pathlib import Path

from prunekit.io.dataset.layout import FORMAT, PART_ROWS, VERSION, run_id_for
from prunekit.io.dataset.reader import BATCH_ROWS, PartsReader, is_dataset
from prunekit.io.dataset.writer import (
    PartFile,
    PartInfo,
    PartSpec,
    PartWriter,
    check_output_dir,
    write_part,
)

__all__ = [
    "BATCH_ROWS",
    "FORMAT",
    "PART_ROWS",
    "VERSION",
    "PartFile",
    "PartInfo",
    "PartSpec",
    "PartWriter",
    "PartsReader",
    "check_output_dir",
    "is_dataset",
    "part_bounds",
    "run_id_for",
    "wants_dataset",
    "write_part",
]


def wants_dataset(path: str | os.PathLike) -> bool:
    """Whether ``save(path)`` writes a partitioned folder rather than one HDF5 file.

    A folder when the path ends in ``/``, is an existing folder, or has no suffix
    (``out/``, ``scores``); any suffix (``scores.h5``) keeps the single HDF5 file.
    """
    s = os.fspath(path)
    return s.endswith(("/", os.sep)) or os.path.isdir(s) or Path(s).suffix == ""


def part_bounds(n_total: int, part_rows: int | None = None) -> list[tuple[int, int]]:
    """Position ranges of the parts of an in-memory object (one empty part for no rows);
    ``PART_ROWS`` positions each unless ``part_rows`` says otherwise."""
    part_rows = PART_ROWS if part_rows is None else part_rows
    return [(a, min(a + part_rows, n_total)) for a in range(0, max(n_total, 1), part_rows)]
