"""Input formats behind one registry: which file a path holds, and how it is read and written.

Each format is one class (:class:`~prunekit.io.formats.base.Format`) with the same small
interface -- ``sniff``, ``describe``, ``open`` (a shard reader: rows ``[a, b)``, ``shape``,
``dtype``), ``ids``, ``labels``, ``keys`` and ``write`` -- in one module:
:mod:`~prunekit.io.formats.npy`, :mod:`~prunekit.io.formats.npz`,
:mod:`~prunekit.io.formats.hdf5` and :mod:`~prunekit.io.formats.parquet`;
:mod:`~prunekit.io.formats.clip_retrieval` is a layout over ``.npy`` shards and Parquet
metadata. :mod:`prunekit.io.source` asks this registry and knows no format by name.

A file's format comes from its content (:func:`format_for`), tried in registration order;
a folder's shards are the files whose suffix a format claims (:func:`format_of_name`).
Adding a format is one module with a :class:`Format` subclass passed to
:func:`register_format`.
"""

from __future__ import annotations

import os
from pathlib import Path

from prunekit.errors import PrunekitError
from prunekit.io.formats.base import (
    DEFAULT_KEY,
    SIDES,
    SUPPORTED_DTYPES,
    Description,
    Format,
    Shard,
    ShardReader,
    check_dtype,
    check_matrix,
    checked_ids,
    checked_labels,
    read_head,
)

_FORMATS: dict[str, Format] = {}  # by name, in sniffing order


def register_format(fmt: Format | type[Format]) -> Format | type[Format]:
    """Add a format (an instance, or a class that is instantiated); it is sniffed after the
    formats registered before it. Returns its argument, so it can decorate a class. A name
    or a suffix another format has is a ValueError."""
    inst = fmt() if isinstance(fmt, type) else fmt
    if not isinstance(inst, Format) or not inst.name:
        raise TypeError(f"{fmt!r} is not a Format with a name")
    if inst.name in _FORMATS:
        raise ValueError(f"a format named {inst.name!r} is registered already")
    taken = {s: f.name for f in _FORMATS.values() for s in f.suffixes}
    clash = [s for s in inst.suffixes if s.lower() in taken]
    if clash:
        raise ValueError(f"suffix {clash[0]!r} belongs to format {taken[clash[0].lower()]!r}")
    _FORMATS[inst.name] = inst
    return fmt


def unregister_format(name: str) -> None:
    """Remove a registered format (a plug-in's, or one a test added)."""
    _FORMATS.pop(name, None)


def formats() -> list[Format]:
    """The registered formats in sniffing order."""
    return list(_FORMATS.values())


def format_named(name: str) -> Format:
    """The format called ``name`` (as recorded in ``Shard.kind``), or whose suffix it is
    (``"hdf5"``, ``".npy"``)."""
    if name in _FORMATS:
        return _FORMATS[name]
    suffix = "." + name.lower().lstrip(".")
    for fmt in _FORMATS.values():
        if suffix in fmt.suffixes:
            return fmt
    raise PrunekitError(f"unknown file format '{name}' (known: {', '.join(_FORMATS)}).")


def format_of_name(path: str | os.PathLike) -> Format | None:
    """The format claiming ``path``'s suffix (case-insensitive), or None: what a folder
    listing takes as a shard."""
    suffix = Path(path).suffix.lower()
    return next((f for f in _FORMATS.values() if suffix in f.suffixes), None)


def suffixes() -> dict[str, str]:
    """Every shard suffix with the name of its format."""
    return {s: f.name for f in _FORMATS.values() for s in f.suffixes}


def format_for(path: str | os.PathLike) -> Format:
    """The format of ``path`` from its content. ``path`` must be a regular file (opened
    non-blocking, so a FIFO is refused by name); a file no format recognises is an error."""
    p = Path(path)
    head = read_head(p)
    for fmt in _FORMATS.values():
        if fmt.sniff(p, head):
            return fmt
    raise PrunekitError(
        f"embeddings file {p} is neither HDF5 nor .npy/.npz/Parquet. "
        "Save the matrix with h5py (dataset 'embeddings') or numpy.save."
    )


from prunekit.io.formats.hdf5 import HDF5Format  # noqa: E402
from prunekit.io.formats.npy import NpyFormat  # noqa: E402
from prunekit.io.formats.npz import NpzFormat  # noqa: E402
from prunekit.io.formats.parquet import ParquetFormat  # noqa: E402

# The built-in formats, in sniffing order (Parquet's and HDF5's signatures first).
for _cls in (ParquetFormat, HDF5Format, NpyFormat, NpzFormat):
    register_format(_cls)

__all__ = [
    "DEFAULT_KEY", "SIDES", "SUPPORTED_DTYPES", "Description", "Format", "HDF5Format",
    "NpyFormat", "NpzFormat", "ParquetFormat", "Shard", "ShardReader", "check_dtype",
    "check_matrix", "checked_ids", "checked_labels", "format_for", "format_named",
    "format_of_name", "formats", "register_format", "suffixes", "unregister_format",
]
