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
from collections.abc import Sequence
from dataclasses import dataclass
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
    "PartRange",
    "PartWriter",
    "PartsReader",
    "check_output_dir",
    "chunk_parts",
    "is_dataset",
    "output_parts",
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


@dataclass(frozen=True)
class PartRange:
    """Part ``index`` of a command's output: positions ``start..stop``, computed from
    ``chunks`` (consecutive row chunks of one input shard, ``prunekit.io.source.ChunkRef``)."""

    index: int
    start: int
    stop: int
    chunks: tuple


def chunk_parts(chunks: Sequence, part_rows: int | None = None) -> list[PartRange]:
    """Group a source's row chunks (in order) into parts aligned with its shards.

    A part never spans two shards and holds whole chunks, at most ``part_rows`` positions
    (``PART_ROWS`` unless given) but at least one chunk; so the boundaries come from the
    data (shard sizes, chunk size) alone, never from workers or memory, and a task that
    computes a part's chunks computes exactly the chunks of the single-file path.
    """
    part_rows = PART_ROWS if part_rows is None else part_rows
    out: list[PartRange] = []
    cur: list = []

    def flush() -> None:
        out.append(PartRange(len(out), cur[0].global_start, cur[-1].global_stop, tuple(cur)))
        cur.clear()

    for ref in chunks:
        if cur and (ref.shard != cur[0].shard or ref.global_stop - cur[0].global_start > part_rows):
            flush()
        cur.append(ref)
    if cur:
        flush()
    return out


def output_parts(src) -> list[PartRange]:
    """The parts of a folder output of ``src`` (an ``EmbeddingSource``, e.g.
    ``emb.reader``): :func:`chunk_parts` of its engine chunks (``chunk_rows_for(src.dim)``).
    Every writer of a command's parts and the cost model use these, so a part computed by
    one task is the part the folder records."""
    from prunekit.runtime.engine import chunk_rows_for  # late: the runtime imports io

    return chunk_parts(src.chunks(chunk_rows_for(src.dim)))
