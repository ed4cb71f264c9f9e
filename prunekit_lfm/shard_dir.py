"""A directory of embedding shards that appears complete under its name, or not at all.

``prunekit lfm embed --shard-rows N`` writes ``part_00000.h5``, ``part_00001.h5``, ... into
a directory the core reads as one input (:func:`prunekit.io.source.open_source`: shards in
natural order, no gap in the numbering). Each shard is written atomically into a temporary
sibling directory (``.prunekit-tmp.<pid>.<random>``, the pattern of
:mod:`prunekit.io.atomic`), which is renamed onto the output at the end; a failed or
interrupted run removes it, and a later run in the same parent removes those of killed
processes.

Which existing directory may be replaced (the rule): a missing or empty one, or a complete
earlier output of a sharded writer -- only files ``part_NNNNN.h5`` numbered from 0 without a
gap, each an HDF5 file whose ``params`` attribute records ``shard_rows``. Anything else (a
stray file, a hidden file, a sub-folder) is refused, so a directory of the user's data is
never deleted. A non-empty directory is replaced by two renames (old aside, new in place)
and the old one is removed afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import h5py

from prunekit.errors import PrunekitError
from prunekit.io.atomic import TMP_PREFIX, check_output, interrupts_deferred

SHARD_FILE = re.compile(r"part_(\d{5,})\.h5")


def shard_name(i: int) -> str:
    """The file name of shard ``i`` (zero-padded so that names sort like numbers)."""
    return f"part_{i:05d}.h5"


def shard_ranges(n: int, rows: int) -> list[tuple[int, int]]:
    """Rows ``[i * rows, (i + 1) * rows)`` of ``n`` for each shard i (the last may be short)."""
    if rows < 1:
        raise PrunekitError(f"--shard-rows must be >= 1 (got {rows}).")
    return [(a, min(a + rows, n)) for a in range(0, n, rows)]


def check_shard_dir(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike | None] = (),
                    input_dirs: Iterable[str | os.PathLike | None] = (),
                    what: str = "--output") -> Path:
    """Refuse a shard directory that is a file, holds an input or other data; return it.

    The checks of :func:`prunekit.io.atomic.check_output` apply to the shard files it will hold.
    """
    p = Path(path)
    real = Path(os.path.realpath(p))
    if real.exists() and not real.is_dir():
        raise PrunekitError(
            f"{what} {p} is not a directory; with --shard-rows the output is a directory of "
            "shards. Choose a directory path, or leave out --shard-rows for one file."
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
        if entries and not _earlier_output(real, entries):
            raise PrunekitError(
                f"{what} {p} is a non-empty directory (it holds '{entries[0]}'"
                f"{f' and {len(entries) - 1} more' if len(entries) > 1 else ''}) but not a "
                "complete earlier --shard-rows output; choose a new or empty directory."
            )
    return p


def _earlier_output(d: Path, entries: list[str]) -> bool:
    """``entries`` are exactly shards 0..k-1 of a sharded output, each recording shard_rows."""
    found = [SHARD_FILE.fullmatch(e) for e in entries]
    if not all(found) or sorted(int(m.group(1)) for m in found) != list(range(len(entries))):  # type: ignore[union-attr]
        return False
    for e in entries:
        f = d / e
        if not f.is_file() or f.is_symlink() or not h5py.is_hdf5(f):
            return False
        try:
            with h5py.File(f, "r") as h:
                params = json.loads(h.attrs.get("params", "{}"))
        except (OSError, ValueError):
            return False
        if not isinstance(params, dict) or "shard_rows" not in params:
            return False
    return True


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; it becomes ``path`` on success.

    On any exception (KeyboardInterrupt included) the temporary directory and any parent
    this call created are removed and ``path`` is left as it was. Call
    :func:`check_shard_dir` first: an existing non-empty ``path`` is replaced.
    """
    final = Path(os.path.realpath(path))
    created = _make_parents(final.parent)
    tmp = final.parent / f"{TMP_PREFIX}{os.getpid()}.{secrets.token_hex(6)}"
    try:
        _remove_stale(final.parent)
        tmp.mkdir()
        yield tmp
        with interrupts_deferred():
            _swap(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in reversed(created):
            with contextlib.suppress(OSError):
                d.rmdir()
        if isinstance(exc, OSError):
            raise PrunekitError(f"cannot write {path}: {exc.strerror or exc}.") from exc
        raise


def _swap(tmp: Path, final: Path) -> None:
    """Put ``tmp`` under the name ``final``, replacing what is there."""
    if not (final.is_dir() and any(final.iterdir())):
        os.rename(tmp, final)  # onto nothing or an empty directory: one atomic rename
        return
    old = final.parent / f"{TMP_PREFIX}{os.getpid()}.{secrets.token_hex(6)}"
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _make_parents(d: Path) -> list[Path]:
    """``mkdir -p d``; the directories created, outermost first."""
    missing = []
    while not d.exists() and d.parent != d:
        missing.append(d)
        d = d.parent
    created = []
    for m in reversed(missing):
        try:
            m.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            for c in reversed(created):
                with contextlib.suppress(OSError):
                    c.rmdir()
            raise PrunekitError(f"cannot create directory {m}: {exc.strerror}.") from exc
        created.append(m)
    return created


def _remove_stale(parent: Path) -> None:
    """Remove temporary directories left in ``parent`` by processes that no longer run."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            pid = entry.name[len(TMP_PREFIX):].split(".", 1)[0]
            if (entry.name.startswith(TMP_PREFIX) and entry.is_dir(follow_symlinks=False)
                    and pid.isdigit() and not _running(int(pid))):
                shutil.rmtree(entry.path, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ["atomic_dir", "check_shard_dir", "shard_name", "shard_ranges"]
