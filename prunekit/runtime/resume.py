"""Progress kept beside the output, so that an interrupted ``score`` can continue (``--resume``).

A long run records each finished unit of work (a chunk's assignments, a cluster's pick
order, the running sums of a streamed Lloyd pass) in a hidden work directory next to its
output::

    out/.prunekit-work/scores.h5.<key>/
    out/.prunekit-work/scores.h5.lock

``key`` hashes the output's real path, the inputs' fingerprint, the method and its
parameters, so progress is only ever reused by the same computation. With ``--resume`` a
run reloads what is recorded and computes only the rest; without it an old work directory
for the same key is discarded. The final output is still written atomically, and equals
the output of an uninterrupted run because every unit's result depends only on the unit
(see :mod:`prunekit.runtime.engine`). The directory is removed once the output exists.

Records are not trusted blindly:

* Every record carries a BLAKE2b checksum of its name, its bytes and the run's key (the
  command's fingerprint). A record that does not verify -- damaged, edited, or copied from
  another run -- is deleted and its unit computed again; the run says on stderr (the
  ``prunekit`` logger) how many were discarded. Arrays load without pickle.
* The directories are created with mode 0700; an existing one must be a real directory
  (not a symlink) owned by us and not writable by others, else the run refuses and says
  how to fix it. Records are written to a random temporary name opened with
  ``O_CREAT | O_EXCL | O_NOFOLLOW`` and renamed into place, so a unit is recorded whole or
  not at all and nothing planted in the directory is written through.
* One run at a time writes an output: :func:`open_work_dir` holds an ``flock`` on
  ``<output>.lock``; a second run exits with "another prunekit run is writing OUTPUT".
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.atomic import TMP_PREFIX, create_temp
from prunekit.io.npzio import load_npy
from prunekit.runtime.context import current_work_dir, runtime_yielding

WORK_DIR = ".prunekit-work"
MAGIC = b"PKREC1\n"  # record layout: MAGIC, 32-byte checksum, payload (.npy or JSON bytes)
DIGEST_BYTES = 32

log = logging.getLogger("prunekit")


class WorkDir:
    """A run's recorded progress; ``path=None`` records nothing (library calls, short runs).

    ``recorded`` counts units saved, ``discarded`` records that did not verify. Use
    :func:`open_work_dir` for a locked one; :meth:`close` (or a ``with`` block) releases it.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = None if path is None else Path(path)
        self.recorded = 0
        self.discarded = 0
        self._ready = False
        self._lock: tuple[int, Path] | None = None
        self._made: list[Path] = []  # folders above the work directory we created

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def _file(self, name: str) -> Path:
        assert self.path is not None
        return self.path / name

    # ------------------------------------------------------------------ records

    def load(self, name: str) -> np.ndarray | None:
        """The array recorded as ``name``, or None (also when it does not verify)."""
        payload = self._read(name + ".npy")
        if payload is None:
            return None
        try:
            return load_npy(io.BytesIO(payload))
        except ValueError:  # verified but unreadable: written by another version
            self._discard(self._file(name + ".npy"))
            return None

    def save(self, name: str, value: np.ndarray) -> None:
        """Record an array atomically and count one unit of progress."""
        if not self.enabled:
            return
        buf = io.BytesIO()
        np.save(buf, np.asarray(value), allow_pickle=False)
        self._write(name + ".npy", buf.getvalue())
        self._count()

    def load_json(self, name: str) -> Any:
        """The JSON value recorded as ``name``, or None (also when it does not verify)."""
        payload = self._read(name + ".json")
        if payload is None:
            return None
        try:
            return json.loads(payload)
        except ValueError:
            self._discard(self._file(name + ".json"))
            return None

    def save_json(self, name: str, value: Any) -> None:
        """Record a JSON value atomically and count one unit of progress."""
        if not self.enabled:
            return
        self._write(name + ".json", json.dumps(value).encode())
        self._count()

    def scratch(self, name: str) -> Path | None:
        """A path for a large scratch file inside the work directory (None when disabled)."""
        if not self.enabled:
            return None
        self._ensure(self._file(name).parent)
        return self._file(name)

    def _digest(self, rel: str, payload: bytes) -> bytes:
        """Checksum of a record: the run's key (the command's fingerprint), its name, bytes."""
        assert self.path is not None
        h = hashlib.blake2b(digest_size=DIGEST_BYTES)
        for part in (self.path.name.encode(), rel.encode(), payload):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
        return h.digest()

    def _read(self, rel: str) -> bytes | None:
        """A record's payload when it exists and verifies; a bad one is deleted and counted."""
        if not self.enabled or not os.path.lexists(self.path):
            return None
        self._ensure(self.path)  # an existing directory is checked before it is read
        path = self._file(rel)
        try:
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError:  # a symlink (ELOOP) or worse: never read through it
            self._discard(path)
            return None
        with os.fdopen(fd, "rb") as fh:
            data = fh.read() if stat.S_ISREG(os.fstat(fh.fileno()).st_mode) else b""
        head = len(MAGIC) + DIGEST_BYTES
        payload = data[head:]
        if (len(data) < head or not data.startswith(MAGIC)
                or data[len(MAGIC):head] != self._digest(rel, payload)):
            self._discard(path)
            return None
        return payload

    def _write(self, rel: str, payload: bytes) -> None:
        final = self._file(rel)
        self._ensure(final.parent)
        fd, tmp = create_temp(final.parent)  # O_CREAT|O_EXCL|O_NOFOLLOW, a random name
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(MAGIC + self._digest(rel, payload))
                fh.write(payload)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _discard(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            os.unlink(path)
        self.discarded += 1
        if self._task_copy:  # its count never reaches the driver's close(): say it here
            log.warning("resume record %s did not verify (damaged, edited or from another "
                        "run) and is computed again.", path)

    _task_copy = False

    def __getstate__(self) -> dict:
        """A copy for engine tasks that record their own units (on storage every worker
        shares): the same records and checks, without the driver's lock."""
        return dict(self.__dict__, _lock=None, _made=[], _ready=False, _task_copy=True)

    def _count(self) -> None:
        """One more unit on disk: a run killed after this point resumes from here."""
        self.recorded += 1

    # ------------------------------------------------------------------ directories

    def _ensure(self, directory: Path | None) -> None:
        """Create (0700) or check the work directory and ``directory`` inside it."""
        assert self.path is not None and directory is not None
        if not self._ready:
            self._ensure_parent()
            secure_dir(self.path)
            self._ready = True
        d = self.path
        for part in directory.relative_to(self.path).parts:  # record names may hold a '/'
            d = d / part
            secure_dir(d)

    def _ensure_parent(self) -> None:
        """The folder holding the work directory: ``.prunekit-work`` is made 0700 or checked."""
        assert self.path is not None
        inside = self.path.parent.name == WORK_DIR
        top = self.path.parent.parent if inside else self.path.parent
        missing = []
        while not os.path.lexists(top):
            missing.append(top)
            top = top.parent
        for d in reversed(missing):
            with contextlib.suppress(FileExistsError):
                d.mkdir()
                self._made.append(d)
        if inside:
            secure_dir(self.path.parent)

    def _prune(self) -> None:
        """Remove empty folders: the work directory when nothing is recorded, then its
        parents this run created, so a run that failed before recording leaves nothing."""
        assert self.path is not None
        if self.path.is_dir() and not self.path.is_symlink():
            for root, _, _ in os.walk(self.path, topdown=False):
                with contextlib.suppress(OSError):
                    os.rmdir(root)
        parents = [self.path.parent] if self.path.parent.name == WORK_DIR else []
        for d in (*parents, *reversed(self._made)):
            with contextlib.suppress(OSError):
                d.rmdir()
        self._made = []

    def clear(self) -> None:
        """Forget everything recorded (it belongs to another plan of the same computation)."""
        if self.enabled:
            _remove_tree(self.path)
            self._ready = False

    def remove(self) -> None:
        """Delete the work directory (and its parent ``.prunekit-work`` when empty)."""
        if not self.enabled:
            return
        _remove_tree(self.path)
        self._ready = False
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()

    # ------------------------------------------------------------------ the run lock

    def lock(self, output: str | os.PathLike) -> None:
        """Hold the lock of ``output``'s work directory; refuse when another run holds it."""
        assert self.path is not None
        self._ensure_parent()
        path = self.path.parent / (Path(output).name + ".lock")
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o600)
            except FileNotFoundError:  # the last run removed the empty folder just now
                self._ensure_parent()
                continue
            except OSError as exc:
                raise PrunekitError(
                    f"cannot open the lock {path}: {exc.strerror}; remove it and run again."
                ) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                self._made = []  # the holder uses them
                raise PrunekitError(
                    f"another prunekit run is writing {output} (pid {pid}); wait for it to "
                    "finish, or write to another --output."
                ) from None
            if _same_file(fd, path):
                break
            os.close(fd)  # the previous holder removed this lock file: take the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock = (fd, path)

    def close(self) -> None:
        """Release the lock (removing its file) and say how many records were discarded."""
        if self.discarded:
            log.warning("%d resume record(s) in %s did not verify (damaged, edited or from "
                        "another run) and were computed again.", self.discarded, self.path)
            self.discarded = 0
        if self._lock is None:
            return
        fd, path = self._lock
        self._lock = None
        with contextlib.suppress(OSError):
            os.unlink(path)  # still ours: a run that opened it checks the inode after locking
        os.close(fd)
        self._prune()

    def __enter__(self) -> WorkDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.lstat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def secure_dir(path: Path) -> None:
    """Create ``path`` with mode 0700, or check that the existing one is safe to trust.

    Safe: a real directory (not a symlink), owned by us, not writable by group or others.
    Anything else may hold records another user planted: refuse and say how to fix it.
    """
    try:
        os.mkdir(path, 0o700)
        return
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        why = "is a symbolic link"
    elif not stat.S_ISDIR(st.st_mode):
        why = "is not a directory"
    elif st.st_uid != os.geteuid():
        why = f"belongs to another user (uid {st.st_uid})"
    elif st.st_mode & 0o022:
        why = f"is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
    else:
        return
    raise PrunekitError(
        f"the work directory {path} {why}, so the progress recorded there cannot be trusted. "
        f"Remove it (rm -r '{path}') and run the command again."
    )


def _remove_tree(path: Path) -> None:
    """Delete a work directory; a symlink in its place is unlinked, never followed."""
    if path.is_symlink():
        with contextlib.suppress(OSError):
            path.unlink()
        return
    shutil.rmtree(path, ignore_errors=True)


def _remove_temps(path: Path) -> None:
    """Our temporary files left in a work directory (its lock is held: all are stale)."""
    for root, _, files in os.walk(path):
        for f in files:
            if f.startswith(TMP_PREFIX):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(root, f))


def file_identity(path: str | os.PathLike) -> list:
    """A file's identity in a work directory's key, without reading it: real path, size,
    inode, modification and change times (ns). Writing the file moves its change time even
    when its size and modification time are put back, so a rewritten file never meets the
    records of the old one."""
    st = os.stat(path)
    return [os.path.realpath(path), st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


def work_dir_for(output: str | os.PathLike, *, fingerprint: str, method: str,
                 params: dict[str, Any]) -> Path:
    """The work directory of one computation: beside ``output``, keyed by what it computes."""
    final = Path(os.path.realpath(output))
    ident = json.dumps({"output": str(final), "fingerprint": fingerprint, "method": method,
                        "params": params}, sort_keys=True, default=str)
    key = hashlib.blake2b(ident.encode(), digest_size=8).hexdigest()
    return final.parent / WORK_DIR / f"{final.name}.{key}"


def open_work_dir(path: Path, *, resume: bool, output: str | os.PathLike | None = None) -> WorkDir:
    """The locked work directory at ``path``: kept with ``resume``, else emptied first.

    ``output`` names the file being written in the lock and its message (default: the
    name ``path`` was made from by :func:`work_dir_for`). Close it (``with``) when done.
    """
    path = Path(path)
    work = WorkDir(path)
    shown = output if output is not None else path.parent.parent / path.name.rsplit(".", 1)[0]
    work.lock(shown)
    try:
        if not resume:
            work.clear()
        elif os.path.lexists(path):
            work._ensure(path)  # checked before anything in it is trusted
            _remove_temps(path)
    except BaseException:
        work.close()
        raise
    return work


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"prunekit.runtime.resume.{old} is deprecated; use {new}.",
                  DeprecationWarning, stacklevel=3)


def current() -> WorkDir:
    """Deprecated: :func:`prunekit.runtime.context.current_work_dir`."""
    _deprecated("current()", "prunekit.get_runtime().work_dir")
    return current_work_dir()


def use(work_dir: WorkDir) -> contextlib.AbstractContextManager[WorkDir]:
    """Deprecated: ``with prunekit.runtime(work_dir=work_dir)``."""
    _deprecated("use()", "prunekit.runtime(work_dir=...)")
    return runtime_yielding(work_dir, work_dir=work_dir)
