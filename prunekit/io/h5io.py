"""Small HDF5 helpers shared by the file types: opening and reading with clear errors, ids,
typed attributes, atomic writes.

Every HDF5 file prunekit reads is opened by :func:`open_h5`, which refuses what would make
a read reach another file: external links, datasets with external raw storage and virtual
datasets (a crafted file could otherwise read ``/etc/hostname`` into a result). Embeddings
may opt in (``allow_external=True``, ``pk.runtime(allow_external=True)``,
``--allow-external``); dangling links are an error either way.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.atomic import atomic_path, check_input, interrupts_deferred


def open_h5(path: str | os.PathLike, what: str, *, allow_external: bool = False) -> h5py.File:
    """Open an HDF5 file for reading, or raise a PrunekitError that names it.

    The file must be a regular file (:func:`~prunekit.io.atomic.check_input`) and pass
    :func:`check_links`: no external links, external storage or virtual datasets unless
    ``allow_external``, no dangling links.
    """
    p = Path(path)
    check_input(p, f"{what} file")
    if not h5py.is_hdf5(p):
        raise PrunekitError(f"{what} file {p} is not an HDF5 file. Write it with prunekit or h5py.")
    try:
        f = h5py.File(p, "r")
    except OSError as exc:  # truncated or locked files
        raise PrunekitError(f"cannot read {what} file {p}: {exc}") from exc
    try:
        check_links(f, f"{what} file {p}", allow_external,
                    OPT_IN if what == "embeddings" else REWRITE)
    except BaseException:
        f.close()
        raise
    return f


OPT_IN = "if you trust it, pass --allow-external (library: allow_external=True)"
REWRITE = "rewrite it with its data inside the file"


def check_links(f: h5py.File, where: str, allow_external: bool = False,
                fix: str = REWRITE) -> None:
    """Walk every link of ``f`` (hard links only are descended, so loops end) and refuse:

    * an external link, a dataset stored in external files, a virtual dataset (which reads
      its source files), unless ``allow_external``;
    * a soft or external link whose target does not exist (it would fail later as a
      traceback in whatever lists the file).
    """
    links: list[tuple[bytes, int]] = []
    f.id.links.visit(lambda name, info: links.append((name, info.type)), info=True)
    for name, kind in links:  # refuse external links before anything resolves a soft link
        if kind not in (h5py.h5l.TYPE_HARD, h5py.h5l.TYPE_SOFT) and not allow_external:
            target = f.get(name, getlink=True)
            shown = (f"{target.filename}:{target.path}" if isinstance(target, h5py.ExternalLink)
                     else "a user-defined target")
            raise PrunekitError(f"{where}: '{_text(name)}' is an external link to {shown}; "
                                f"prunekit does not follow links out of a file; {fix}.")
    for name, kind in links:
        if kind == h5py.h5l.TYPE_HARD:
            _check_dataset(f[name], where, allow_external, fix)
        elif not _resolves(f, name):
            link = f.get(name, getlink=True)
            target = getattr(link, "path", "?")
            if isinstance(link, h5py.ExternalLink):
                target = f"{link.filename}:{link.path}"
            raise PrunekitError(f"{where}: the link '{_text(name)}' points to {target}, which does "
                                "not exist (or links back to itself); remove the link or restore "
                                "its target.")


def _resolves(f: h5py.File, name: bytes) -> bool:
    """Whether the soft or external link ``name`` leads to an object (a loop does not)."""
    try:
        return f.get(name) is not None
    except (KeyError, RuntimeError, OSError, ValueError):
        return False


def _check_dataset(obj: object, where: str, allow_external: bool, fix: str) -> None:
    if not isinstance(obj, h5py.Dataset) or allow_external:
        return
    name = _text(obj.name or "?")
    if obj.is_virtual:
        sources = sorted({m.file_name for m in obj.virtual_sources()})
        raise PrunekitError(f"{where}: dataset '{name}' is a virtual dataset reading "
                            f"{', '.join(sources)}; prunekit does not read other files through "
                            f"one; {fix}.")
    if obj.external:
        files = ", ".join(str(e[0]) for e in obj.external)
        raise PrunekitError(f"{where}: dataset '{name}' keeps its data in the external file(s) "
                            f"{files}; prunekit does not read them; {fix}.")


def _text(name: str | bytes) -> str:
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else name


def require(f: h5py.File, name: str, what: str) -> h5py.Dataset:
    """The dataset ``name`` of ``f``, or an error listing the datasets that exist."""
    if name not in f or not isinstance(f[name], h5py.Dataset):
        have = ", ".join(sorted(k for k in f.keys() if isinstance(f[k], h5py.Dataset))) or "none"
        raise PrunekitError(
            f"{what} file {f.filename} has no dataset '{name}' (datasets: {have})."
        )
    return f[name]


def read_dataset(f: h5py.File, name: str, what: str, rows: slice | None = None) -> np.ndarray:
    """The dataset ``name`` as an array (whole, or its ``rows``); a group, a corrupt chunk or
    an unreadable type under that name is a PrunekitError naming the file and the dataset."""
    obj = f.get(name)
    if obj is None:
        have = ", ".join(sorted(k for k in f.keys() if isinstance(f[k], h5py.Dataset))) or "none"
        raise PrunekitError(f"{what} file {f.filename}: dataset '{name}' is missing (datasets: {have}).")
    if not isinstance(obj, h5py.Dataset):
        raise PrunekitError(
            f"{what} file {f.filename}: '{name}' is a group, not a dataset; rewrite the file with prunekit."
        )
    if obj.shape is None:  # h5py.Empty: a dataset without a dataspace
        raise PrunekitError(f"{what} file {f.filename}: '{name}' is an empty HDF5 dataset (null "
                            "dataspace, no shape); rewrite the file with prunekit.")
    try:
        return np.asarray(obj[()] if rows is None else obj[rows])
    except (OSError, TypeError, ValueError, KeyError) as exc:
        raise PrunekitError(f"cannot read '{name}' of {what} file {f.filename}: {exc}") from exc


def read_optional(f: h5py.File, name: str, what: str) -> np.ndarray | None:
    """:func:`read_dataset`, or None when ``name`` is absent."""
    return read_dataset(f, name, what) if name in f else None


def read_ids(f: h5py.File, what: str) -> np.ndarray | None:
    """The ``ids`` dataset decoded (int64 or str), None when absent; must be 1-D."""
    raw = read_optional(f, "ids", what)
    if raw is None:
        return None
    if raw.ndim != 1:
        raise PrunekitError(f"{what} file {f.filename}: 'ids' must be 1-D, got shape {raw.shape}.")
    return decode_ids(raw, f"{what} file {f.filename} ['ids']")


def attr_int(attrs: Any, name: str, where: str, default: int | None = None) -> int | None:
    """An integer attribute; a value of another type (``n_total="abc"``, 2.5) is an error."""
    value = attrs.get(name, default)
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise PrunekitError(f"{where}: attribute '{name}' must be an integer, got {value!r}.")


def attr_float(attrs: Any, name: str, where: str, default: float | None = None) -> float | None:
    """A real-number attribute; a string or an array is an error."""
    value = attrs.get(name, default)
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return None if value is None else float(value)
    raise PrunekitError(f"{where}: attribute '{name}' must be a number, got {value!r}.")


def attr_str(attrs: Any, name: str, default: str | None = None) -> str | None:
    """A string attribute, decoded from bytes if needed."""
    value = attrs.get(name, default)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    return None if value is None else str(value)


def decode_ids(raw: np.ndarray, where: str = "ids") -> np.ndarray:
    """ids as stored -> int64 array or object array of ``str`` (same shape).

    Bytes must be UTF-8; unsigned integers must fit int64; anything else (floats, bools,
    nested arrays) is refused. ``where`` names the file and dataset in errors.
    """
    raw = np.asarray(raw)
    if raw.dtype.kind == "O" and raw.size and all(_is_int(v) for v in raw.flat):
        values = [int(v) for v in raw.flat]  # Python ints in an object array
        _check_int64(min(values), where)
        _check_int64(max(values), where)
        return np.array(values, dtype=np.int64).reshape(raw.shape)
    if raw.dtype.kind == "u" and raw.size:
        _check_int64(int(raw.max()), where)
    if raw.dtype.kind in "iu":
        return raw.astype(np.int64)
    if raw.dtype.kind == "U":
        return raw.astype(object)
    if raw.dtype.kind in "SO":
        values = raw.ravel().tolist()
        try:
            text = [v.decode("utf-8") if isinstance(v, bytes) else _id_str(v) for v in values]
        except (UnicodeDecodeError, TypeError):
            raise _bad_text_id(values, where) from None
        out = np.empty(len(text), dtype=object)
        out[:] = text
        return out.reshape(raw.shape)
    raise PrunekitError(f"{where}: ids must be integers or strings, got dtype {raw.dtype}.")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_int64(v: int, where: str) -> None:
    info = np.iinfo(np.int64)
    if not info.min <= v <= info.max:
        raise PrunekitError(f"{where}: id {v} does not fit in int64 (integer ids are int64); "
                            "store the ids as strings.")


def _id_str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(type(v).__name__)
    return v


def _bad_text_id(values: list, where: str) -> PrunekitError:
    """The error for the first id that is neither a string nor UTF-8 bytes."""
    for i, v in enumerate(values):
        if isinstance(v, bytes):
            try:
                v.decode("utf-8")
            except UnicodeDecodeError:
                return PrunekitError(f"{where}: id number {i} ({v[:40]!r}) is not UTF-8 text; "
                                     "store ids as UTF-8 strings or integers.")
        elif not isinstance(v, str):
            return PrunekitError(f"{where}: id number {i} ({v!r:.40}) is not a string; ids must "
                                 "be all UTF-8 strings or all integers.")
    return PrunekitError(f"{where}: ids must be UTF-8 strings or integers.")


def normalize_ids(ids: Any) -> np.ndarray | None:
    """Any 1-D sequence of ids -> the canonical form (int64 or object array of str)."""
    if ids is None:
        return None
    return decode_ids(np.asarray(ids))


def write_ids(group: h5py.Group, name: str, ids: np.ndarray) -> None:
    """Store ids as int64 or as variable-length UTF-8 strings."""
    if ids.dtype.kind in "iu":
        group.create_dataset(name, data=ids.astype(np.int64))
    else:
        group.create_dataset(name, data=[str(v) for v in ids], dtype=h5py.string_dtype("utf-8"))


@contextlib.contextmanager
def atomic_h5(path: str | os.PathLike) -> Iterator[h5py.File]:
    """An HDF5 file open for writing that appears under ``path`` only when complete.

    The file is closed before the rename. Ctrl-C while it is written is held until the
    file is closed (h5py would swallow it in its close) and then removes the file.
    """
    with atomic_path(path) as tmp, interrupts_deferred(), h5py.File(tmp, "w") as f:
        yield f
