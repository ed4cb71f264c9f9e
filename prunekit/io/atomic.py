"""Atomic file writes, and the checks every input and output path passes before any work.

A file appears under its final name complete, or not at all: it is written to a temporary
file in the same directory and renamed. Temporary files follow one pattern,
``.prunekit-tmp.<pid>.<random>``, independent of the final name (so a long name never
overflows NAME_MAX); they are created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` under an
unpredictable name (:func:`create_temp`), so a file or link planted in a shared folder is
never written through. A later write into the same directory removes our temporary files
whose process is gone (a SIGKILL cannot run cleanup code).

:func:`check_output` is called by every command on each output path *before* it reads or
computes anything: an output may never be a symbolic link, replace one of the files the
command reads (shards behind links, metadata, files in a directory it reads), or be a
special file (device, FIFO, directory). :func:`check_input` is the matching check of an
input path: a regular file (a FIFO would block the command forever).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import signal
import socket
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from prunekit.errors import PrunekitError

TMP_PREFIX = ".prunekit-tmp."
STDOUT_NAMES = ("-", "/dev/stdout")
NAME_MAX = 255  # bytes in one path component on Linux/macOS file systems
PATH_MAX = 4096  # bytes in a whole path on Linux
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
TEMP_TRIES = 16  # fresh random names tried when one is taken


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

    * it must not be a symbolic link (:func:`refuse_link`: one planted in a shared folder
      would redirect the write onto its target);
    * it must not be a file the command reads: one of ``inputs`` after links, and, for an
      input that is an embedding source (a file, a directory or a glob of shards), each of
      its shards after links and their metadata files
      (:func:`prunekit.io.source.read_paths`); nor lie inside one of ``input_dirs`` (e.g. a
      run directory the command reads) or be the target of a link inside one;
    * an existing path must be a regular file;
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
    refuse_link(p, what)
    real = Path(os.path.realpath(p.parent)) / p.name  # the name itself is not a link
    files, dirs = read_set(inputs, input_dirs)
    if real in files:
        raise PrunekitError(
            f"{what} {p} is the command's input {files[real]}; writing it would destroy the input. "
            "Choose another output path."
        )
    for dreal, d in dirs.items():
        if real == dreal or dreal in real.parents:
            raise PrunekitError(
                f"{what} {p} lies inside {d}, which this command reads; choose a path outside it."
            )
    if real.exists() and not real.is_file():
        kind = "a directory" if real.is_dir() else "a special file (device, FIFO or socket)"
        raise PrunekitError(f"{what} {p} is {kind}; prunekit writes regular files only. Choose a file path.")
    _check_parent(real.parent, p, what)
    return p


def refuse_link(path: str | os.PathLike, what: str = "output") -> None:
    """PrunekitError when ``path`` is a symbolic link: outputs never write through links.

    In a shared folder another user can plant ``out.h5 -> ~victim/precious``; following it
    would replace the target. The message names the link and its target.
    """
    p = Path(path)
    if not p.is_symlink():
        return
    try:
        target = os.readlink(p)
    except OSError:
        target = "?"
    raise PrunekitError(
        f"{what} {p} is a symbolic link to {target}; prunekit does not write through links "
        "(someone else may have planted it). Pass the target path itself if you mean to replace it."
    )


def read_set(inputs: Iterable[str | os.PathLike | None] = (),
             input_dirs: Iterable[str | os.PathLike | None] = ()
             ) -> tuple[dict[Path, str], dict[Path, str]]:
    """Every file and folder a command reads, resolved: ``({file: input}, {folder: input})``.

    An input expands to the files its source reads (shards after links, metadata files); a
    folder in ``input_dirs`` adds the targets of the links inside it (at any depth).
    """
    from prunekit.io.source import read_paths  # the source module imports this one

    files: dict[Path, str] = {}
    dirs: dict[Path, str] = {}
    for src in inputs:
        if src is None or is_stdout(src):
            continue
        own = Path(os.path.realpath(src))
        found, folders = read_paths(src)
        for f in found:
            files.setdefault(f, str(src) if f == own else f"{src} (which reads {f})")
        for d in folders:
            dirs.setdefault(d, str(src))
    for d in input_dirs:
        if d is None or not Path(d).is_dir():
            continue
        dirs.setdefault(Path(os.path.realpath(d)), str(d))
        for link, target in _links_below(Path(d)):
            where = f"{d} (through the link {link})"
            (dirs if target.is_dir() else files).setdefault(target, where)
    return files, dirs


def _links_below(d: Path) -> Iterator[tuple[Path, Path]]:
    """``(link, resolved target)`` of each symbolic link under ``d`` (links not descended)."""
    stack = [d]
    while stack:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.is_symlink():
                    target = Path(os.path.realpath(entry.path))
                    if target.exists():
                        yield Path(entry.path), target
                elif entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))


def check_input(path: str | os.PathLike, what: str = "input file") -> Path:
    """``path`` when it is a regular file (after links); else a PrunekitError naming it.

    Every file prunekit reads passes here (or through :func:`open_regular`) before it is
    opened: a FIFO would block the command forever, a device would give endless bytes.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        if p.is_symlink():
            raise PrunekitError(
                f"{what} {p} is a broken symbolic link (to {os.readlink(p)}); fix or remove it."
            ) from None
        raise PrunekitError(f"{what} not found: {p}. Check the path.") from None
    except OSError as exc:
        raise PrunekitError(f"cannot open {what} {p}: {exc.strerror}.") from exc
    _require_regular(st, p, what)
    return p


def open_regular(path: str | os.PathLike, what: str = "input file") -> int:
    """A read-only descriptor of ``path``, which must be a regular file (after links).

    Opened non-blocking, so a FIFO swapped in after :func:`check_input` cannot block the
    open; the descriptor's own ``fstat`` decides, then blocking mode is restored.
    """
    p = check_input(path, what)
    try:
        fd = os.open(p, os.O_RDONLY | _NONBLOCK | _CLOEXEC)
    except OSError as exc:
        raise PrunekitError(f"cannot open {what} {p}: {exc.strerror}.") from exc
    try:
        _require_regular(os.fstat(fd), p, what)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _require_regular(st: os.stat_result, p: Path, what: str) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise PrunekitError(f"{what} {p} is a directory; give a file.")
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(
            st.st_mode) else "a device"
        raise PrunekitError(
            f"{what} {p} is {kind}, not a regular file (reading it could block or never end); "
            "give a regular file."
        )


def create_exclusive(path: str | os.PathLike, mode: int = 0o600) -> int:
    """Create ``path`` as a new file; return a descriptor open for writing.

    ``O_CREAT | O_EXCL | O_NOFOLLOW``: whatever already exists under that name (a file, or
    a symbolic link planted by someone else, dangling or not) raises FileExistsError and is
    neither followed nor touched. ``mode`` is filtered by the umask.
    """
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, mode)


def create_temp(directory: str | os.PathLike, mode: int = 0o600) -> tuple[int, Path]:
    """A new temporary file in ``directory``: ``(descriptor open for writing, path)``.

    The name is ``.prunekit-tmp.<pid>.<64 random bits>`` (unpredictable, so nobody can plant
    it in advance) and the file is made by :func:`create_exclusive`; a taken name is
    skipped. :func:`remove_stale_temps` removes it if the process dies.
    """
    for _ in range(TEMP_TRIES):
        path = temp_name(directory)
        try:
            return create_exclusive(path, mode), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(directory))


def temp_name(directory: str | os.PathLike, pid: int | None = None) -> Path:
    """A fresh temporary name in ``directory``: ``.prunekit-tmp.<pid>.<host>.<64 random bits>``.

    Only the name: whoever creates the entry must do so exclusively (a file with
    :func:`create_exclusive`, a directory with ``mkdir``). :func:`temp_pid` reads the pid
    back. ``<host>`` tags this machine, so a folder shared by several machines (a cluster's
    output folder) never sees one machine clean up another's live temporary files.
    """
    pid = os.getpid() if pid is None else int(pid)
    return Path(directory) / f"{TMP_PREFIX}{pid}.{host_tag()}.{secrets.token_hex(8)}"


def host_tag() -> str:
    """Eight hex digits naming this machine (a hash of its host name)."""
    return hashlib.blake2b(socket.gethostname().encode(), digest_size=4).hexdigest()


def temp_pid(name: str) -> int | None:
    """The pid in a temporary name :func:`temp_name` made on this machine, else None."""
    if not name.startswith(TMP_PREFIX):
        return None
    parts = name[len(TMP_PREFIX):].split(".")
    if len(parts) != 3 or not parts[0].isdigit() or parts[1] != host_tag():
        return None
    return int(parts[0])


def private_dir(path: str | os.PathLike) -> Path:
    """``path`` as a directory only this user can use (caches, keys, work files).

    Created with mode 0700 (parents as needed) when missing; when it exists it must be a
    real directory, not a symbolic link, owned by this user, and loses any group/other
    permissions. Anything else is a PrunekitError naming the path.
    """
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(p, 0o700)
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _CLOEXEC)
    except OSError as exc:
        kind = "a symbolic link" if p.is_symlink() else "not a usable directory"
        raise PrunekitError(f"{p} is {kind} ({exc.strerror}); prunekit keeps private files "
                            "there. Remove it or point XDG_CACHE_HOME elsewhere.") from exc
    try:
        st = os.fstat(fd)
        if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
            raise PrunekitError(f"{p} belongs to another user (uid {st.st_uid}); prunekit keeps "
                                "private files there. Remove it or point XDG_CACHE_HOME elsewhere.")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
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

    ``path`` may not be a symbolic link (:func:`refuse_link`); the rename replaces the
    directory entry itself, never a link's target. The temporary file is made by
    :func:`create_temp` (exclusive, unpredictable name) in the same directory, so the final
    ``os.replace`` is an atomic rename on POSIX; it must still be a regular file of ours
    when it is renamed. On any exception (KeyboardInterrupt included) the temporary file
    and any directory this call created are removed and ``path`` is left untouched.
    """
    refuse_link(path)
    final = Path(os.path.realpath(Path(path).parent)) / Path(path).name
    created = make_dirs(final.parent)
    try:
        remove_stale_temps(final.parent)
        try:
            fd, tmp_path = create_temp(final.parent, 0o666)
        except OSError as exc:
            raise PrunekitError(f"cannot write {path}: {exc.strerror} ({final.parent}).") from exc
        os.close(fd)  # created with the umask's mode, like any new file
    except BaseException:
        remove_dirs(created)
        raise
    try:
        yield tmp_path
        _check_ours(tmp_path, path)
        os.replace(tmp_path, final)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        remove_dirs(created)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
            raise PrunekitError(f"cannot write {path}: {os.strerror(exc.errno)}.") from exc
        raise


def _check_ours(tmp: Path, path: str | os.PathLike) -> None:
    """The temporary file about to be renamed is a regular file of this user (writers may
    replace it by their own rename, but nobody else may swap in a link)."""
    st = os.lstat(tmp)
    if not stat.S_ISREG(st.st_mode) or (hasattr(os, "geteuid") and st.st_uid != os.geteuid()):
        raise PrunekitError(
            f"the temporary file {tmp} of {path} was replaced by someone else while it was "
            "written; nothing was renamed. Write into a folder only you can change."
        )


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
    """Delete our temporary files in ``directory`` whose writing process no longer runs.

    Only regular files of this user count: a link or another user's file that merely
    carries the name is left alone.
    """
    removed = []
    for entry in stale_temps(directory, stat.S_ISREG):
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def stale_temps(directory: str | os.PathLike,
                is_kind: Callable[[int], bool]) -> Iterator[os.DirEntry]:
    """The entries of ``directory`` named by :func:`temp_name` for a process that no longer
    runs, of this user and of the kind ``is_kind`` says (``stat.S_ISREG``, ``stat.S_ISDIR``);
    a directory that cannot be listed has none."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            pid = temp_pid(entry.name)
            if pid is not None and owned_entry(entry, is_kind) and not pid_alive(pid):
                yield entry


def owned_entry(entry: os.DirEntry, is_kind: Callable[[int], bool]) -> bool:
    """Whether ``entry`` itself (a link is not followed) is of the kind ``is_kind`` says
    (``stat.S_ISREG``, ``stat.S_ISDIR``) and belongs to this user."""
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    return is_kind(st.st_mode) and (not hasattr(os, "geteuid") or st.st_uid == os.geteuid())


def swap_dir(new: Path, final: Path) -> Path:
    """Rename the directory ``new`` onto the existing ``final``: ``final`` is moved aside first
    (and put back when the rename fails). Returns where it went, for the caller to delete."""
    aside = temp_name(final.parent)
    os.rename(final, aside)
    try:
        os.rename(new, final)
    except BaseException:
        os.rename(aside, final)
        raise
    return aside


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (this process always does)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_dirs(directory: Path) -> list[Path]:
    """``mkdir -p``; returns the directories it created, deepest last (for :func:`remove_dirs`).

    When one cannot be made, those made before it are removed again.
    """
    missing = []
    probe = directory
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    made: list[Path] = []
    for d in reversed(missing):
        try:
            d.mkdir()
            made.append(d)
        except FileExistsError:
            pass
        except OSError as exc:
            remove_dirs(made)
            raise PrunekitError(f"cannot create directory {d}: {exc.strerror}.") from exc
    return list(reversed(missing))


def remove_dirs(created: list[Path]) -> None:
    """Remove the directories :func:`make_dirs` created, deepest first, where still empty."""
    for d in reversed(created):
        with contextlib.suppress(OSError):
            d.rmdir()  # only if still empty


# The names io/dataset/writer.py imports.
_alive, _make_dirs, _remove_dirs = pid_alive, make_dirs, remove_dirs


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
