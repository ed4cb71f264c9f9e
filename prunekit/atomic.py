"""Atomic file writes and the checks every output path passes before any work starts.

A file appears under its final name complete, or not at all: it is written to a temporary
file in the same directory and renamed. Temporary files follow one pattern,
``.prunekit-tmp.<pid>.<random>``, independent of the final name (so a long name never
overflows NAME_MAX), and a later write into the same directory removes the ones whose
process is gone (a SIGKILL cannot run cleanup code).

:func:`check_output` is called by every command on each output path *before* it reads or
computes anything: an output may never replace one of the command's inputs, a file inside
a directory the command reads, or a special file (device, FIFO, directory).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import signal
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import PrunekitError

TMP_PREFIX = ".prunekit-tmp."
STDOUT_NAMES = ("-", "/dev/stdout")
NAME_MAX = 255  # bytes in one path component on Linux/macOS file systems
PATH_MAX = 4096  # bytes in a whole path on Linux


def is_stdout(path: str | os.PathLike) -> bool:
    """``-`` or ``/dev/stdout``: the user asks for the output on standard output."""
    return str(path) in STDOUT_NAMES


def check_output(
    path: str | os.PathLike,
    *,
    inputs: Iterable[str | os.PathLike | None] = (),
    input_dirs: Iterable[str | os.PathLike | None] = (),
    what: str = "output",
    allow_stdout: bool = False,
) -> Path:
    """Refuse an output path that would destroy data or cannot be written; return it.

    * it must not resolve (after symlinks) to one of ``inputs`` nor lie inside one of
      ``input_dirs`` (e.g. a run directory the command reads);
    * an existing path must be a regular file (a symlink to one is written through);
    * the parent must be a directory (or not exist yet) and be writable.

    ``-``/``/dev/stdout`` is accepted only with ``allow_stdout``.
    """
    if is_stdout(path):
        if allow_stdout:
            return Path(str(path))
        raise PrunekitError(f"{what} '{path}' cannot be standard output for this command; give a file path.")
    p = Path(path)
    if str(path) == "" or p.name in ("", ".", ".."):
        raise PrunekitError(f"{what} path '{path}' names no file; give a file name such as out.h5.")
    for part in p.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise PrunekitError(
                f"{what} path component '{part[:40]}...' is longer than {NAME_MAX} bytes; shorten it."
            )
    if len(os.fsencode(os.path.abspath(p))) > PATH_MAX:
        raise PrunekitError(f"{what} path '{str(p)[:40]}...' is longer than {PATH_MAX} bytes; shorten it.")
    real = Path(os.path.realpath(p))
    for src in inputs:
        if src is not None and not is_stdout(src) and Path(src).exists() and real == Path(os.path.realpath(src)):
            raise PrunekitError(
                f"{what} {p} is the command's input {src}; writing it would destroy the input. "
                "Choose another output path."
            )
    for d in input_dirs:
        if d is not None and Path(d).is_dir():
            dreal = Path(os.path.realpath(d))
            if real == dreal or dreal in real.parents:
                raise PrunekitError(
                    f"{what} {p} lies inside {d}, which this command reads; choose a path outside it."
                )
    if real.exists() and not real.is_file():
        kind = "a directory" if real.is_dir() else "a special file (device, FIFO or socket)"
        raise PrunekitError(f"{what} {p} is {kind}; prunekit writes regular files only. Choose a file path.")
    _check_parent(real.parent, p, what)
    return p


def _check_parent(parent: Path, p: Path, what: str) -> None:
    """The first existing ancestor must be a writable directory."""
    probe = parent
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise PrunekitError(f"{what} {p}: {probe} is not a directory; choose another output path.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PrunekitError(
            f"{what} {p}: directory {probe} is not writable (read-only file system or no permission)."
        )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    A symlink at ``path`` is written through (its target is replaced, the link kept). The
    temporary file lives in the target's directory so the final ``os.replace`` is an
    atomic rename on POSIX. On any exception (KeyboardInterrupt included) the temporary
    file and any directory this call created are removed and ``path`` is left untouched.
    """
    final = Path(os.path.realpath(path))
    created = _make_dirs(final.parent)
    try:
        remove_stale_temps(final.parent)
        tmp_path = final.parent / f"{TMP_PREFIX}{os.getpid()}.{secrets.token_hex(6)}"
        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as exc:
            raise PrunekitError(f"cannot write {path}: {exc.strerror} ({final.parent}).") from exc
        os.close(fd)  # created with the umask's mode, like any new file
    except BaseException:
        _remove_dirs(created)
        raise
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        _remove_dirs(created)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
            raise PrunekitError(f"cannot write {path}: {exc.strerror}.") from exc
        raise


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, then raise KeyboardInterrupt there.

    Some libraries (h5py closing a file, finalizers) swallow an exception raised inside
    them and print "Exception ignored"; a write that must either complete or vanish runs
    in this block, so the interrupt arrives where the caller's cleanup can see it. Only
    the main thread receives signals; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Delete our temporary files in ``directory`` whose writing process no longer runs."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            if not entry.name.startswith(TMP_PREFIX):
                continue
            pid = entry.name[len(TMP_PREFIX):].split(".", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _make_dirs(directory: Path) -> list[Path]:
    """``mkdir -p``; returns the directories it created, deepest last."""
    missing = []
    probe = directory
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            pass
        except OSError as exc:
            raise PrunekitError(f"cannot create directory {d}: {exc.strerror}.") from exc
    return list(reversed(missing))


def _remove_dirs(created: list[Path]) -> None:
    for d in reversed(created):
        with contextlib.suppress(OSError):
            d.rmdir()  # only if still empty


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (``-``/``/dev/stdout``: print it)."""
    if is_stdout(path):
        import sys

        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a binary file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
