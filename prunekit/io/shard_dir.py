"""Writing a folder of HDF5 shards that appears complete under its name, or not at all.

A sharded output is ``part_00000.h5``, ``part_00001.h5``, ... in one directory, which
:func:`prunekit.io.source.open_source` reads as one row space (shards in natural order, no
gap in the numbering). :func:`atomic_dir` gives a temporary sibling directory (named like
every temporary entry of :mod:`prunekit.io.atomic`, ``.prunekit-tmp.<pid>.<random>``) into
which the caller writes the shards, each atomically; it is renamed onto the output at the
end. A failed or interrupted run removes it, and a later run in the same parent removes
those of processes that no longer run.

Which existing directory may be replaced (the rule of :func:`check_shard_dir`): a missing
or empty one, or a complete earlier sharded output -- only files ``part_NNNNN.h5`` numbered
from 0 without a gap, each an HDF5 file whose ``params`` attribute records ``shard_rows``.
Anything else (a stray file, a hidden file, a sub-folder) is refused, so a directory of the
user's data is never deleted. A non-empty directory is replaced by two renames (old aside,
new in place) and the old one is removed afterwards.

This module knows the folder layout only; how a folder is read is :mod:`prunekit.io.source`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

import h5py

from prunekit.errors import PrunekitError
from prunekit.io.atomic import (
    check_output,
    interrupts_deferred,
    make_dirs,
    remove_dirs,
    stale_temps,
    swap_dir,
    temp_name,
)

SHARD_FILE = re.compile(r"part_(\d{5,})\.h5")
ROWS_OPTION = "--shard-rows"  # how prunekit commands name the shard size in messages


def shard_name(i: int) -> str:
    """The file name of shard ``i`` (zero-padded so that names sort like numbers)."""
    return f"part_{i:05d}.h5"


def shard_ranges(n: int, rows: int) -> list[tuple[int, int]]:
    """Rows ``[i * rows, (i + 1) * rows)`` of ``n`` for each shard i (the last may be short)."""
    if rows < 1:
        raise PrunekitError(f"{ROWS_OPTION} must be >= 1 (got {rows}).")
    return [(a, min(a + rows, n)) for a in range(0, n, rows)]


def check_shard_dir(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike | None] = (),
                    input_dirs: Iterable[str | os.PathLike | None] = (),
                    what: str = "--output") -> Path:
    """Refuse a shard directory that is a file, holds an input or other data; return it.

    The checks of :func:`prunekit.io.atomic.check_output` apply to the shard files it will
    hold. Call it before any work, and again right before :func:`atomic_dir`.
    """
    p = Path(path)
    real = Path(os.path.realpath(p))
    if real.exists() and not real.is_dir():
        raise PrunekitError(
            f"{what} {p} is not a directory; with {ROWS_OPTION} the output is a directory of "
            f"shards. Choose a directory path, or leave out {ROWS_OPTION} for one file."
        )
    inputs, input_dirs = list(inputs), list(input_dirs)
    for src in [*inputs, *input_dirs]:
        if src is not None and Path(src).exists():
            sreal = Path(os.path.realpath(src))
            if sreal == real or real in sreal.parents:
                raise PrunekitError(f"{what} {p} holds {src}, which this command reads; "
                                    "choose another output directory.")
    check_output(p / shard_name(0), what=what, inputs=inputs, input_dirs=input_dirs)
    if real.is_dir():
        entries = sorted(os.listdir(real))
        if entries and not is_shard_output(real, entries):
            more = f" and {len(entries) - 1} more" if len(entries) > 1 else ""
            raise PrunekitError(
                f"{what} {p} is a non-empty directory (it holds '{entries[0]}'{more}) but not a "
                f"complete earlier {ROWS_OPTION} output; choose a new or empty directory."
            )
    return p


def is_shard_output(d: Path, entries: list[str] | None = None) -> bool:
    """``d`` holds exactly shards 0..k-1 of a sharded output, each recording ``shard_rows``."""
    entries = sorted(os.listdir(d)) if entries is None else entries
    found = [SHARD_FILE.fullmatch(e) for e in entries]
    if not all(found) or sorted(int(m.group(1)) for m in found) != list(range(len(entries))):  # type: ignore[union-attr]
        return False
    return all(_records_shard_rows(d / e) for e in entries)


def _records_shard_rows(f: Path) -> bool:
    """A regular HDF5 file (not a link) whose ``params`` attribute holds ``shard_rows``."""
    if not f.is_file() or f.is_symlink() or not h5py.is_hdf5(f):
        return False
    try:
        with h5py.File(f, "r") as h:
            params = json.loads(h.attrs.get("params", "{}"))
    except (OSError, ValueError):
        return False
    return isinstance(params, dict) and "shard_rows" in params


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; it becomes ``path`` on success.

    On any exception (KeyboardInterrupt included) the temporary directory and any parent
    this call created are removed and ``path`` is left as it was. Call
    :func:`check_shard_dir` first: an existing non-empty ``path`` is replaced.
    """
    final = Path(os.path.realpath(path))
    created = make_dirs(final.parent)
    tmp = temp_name(final.parent)
    try:
        remove_stale_dirs(final.parent)
        tmp.mkdir()
        yield tmp
        with interrupts_deferred():
            _swap(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_dirs(created)
        if isinstance(exc, OSError):
            raise PrunekitError(f"cannot write {path}: {exc.strerror or exc}.") from exc
        raise


def _swap(tmp: Path, final: Path) -> None:
    """Put ``tmp`` under the name ``final``, replacing what is there."""
    if not (final.is_dir() and any(final.iterdir())):
        os.rename(tmp, final)  # onto nothing or an empty directory: one atomic rename
        return
    shutil.rmtree(swap_dir(tmp, final), ignore_errors=True)


def remove_stale_dirs(parent: str | os.PathLike) -> list[Path]:
    """Remove temporary directories in ``parent`` left by processes that no longer run.

    Only real directories of this user whose name carries a dead pid count; a link or
    another user's directory that merely carries the name is left alone.
    """
    removed = []
    for entry in stale_temps(parent, stat.S_ISDIR):
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(Path(entry.path))
    return removed


__all__ = ["SHARD_FILE", "atomic_dir", "check_shard_dir", "is_shard_output", "remove_stale_dirs",
           "shard_name", "shard_ranges"]
