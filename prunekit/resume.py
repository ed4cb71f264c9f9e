"""Progress kept beside the output, so that an interrupted ``score`` can continue (``--resume``).

A long run records each finished unit of work (a chunk's assignments, a cluster's pick
order, the running sums of a streamed Lloyd pass) in a hidden work directory next to its
output::

    out/.prunekit-work/scores.h5.<key>/

``key`` hashes the output's real path, the inputs' fingerprint, the method and its
parameters, so progress is only ever reused by the same computation. Every record is
written atomically (temporary file + rename); a unit is either recorded whole or not at
all. With ``--resume`` a run reloads what is recorded and computes only the rest; without
it an old work directory for the same key is discarded. The final output is still written
atomically, and equals the output of an uninterrupted run because every unit's result
depends only on the unit (see :mod:`prunekit.engine`). The directory is removed once the
output exists.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import TMP_PREFIX

WORK_DIR = ".prunekit-work"
# Tests of --resume simulate a kill: after this many recorded units, raise InjectedFailure.
FAIL_AFTER: int | None = None


class InjectedFailure(RuntimeError):
    """Raised after :data:`FAIL_AFTER` recorded units (tests of resuming only)."""


class WorkDir:
    """A run's recorded progress; ``path=None`` records nothing (library calls, short runs)."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = None if path is None else Path(path)
        self.recorded = 0

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def _file(self, name: str) -> Path:
        assert self.path is not None
        return self.path / name

    def load(self, name: str) -> np.ndarray | None:
        """The array recorded as ``name``, or None."""
        if not self.enabled or not self._file(name + ".npy").exists():
            return None
        return np.load(self._file(name + ".npy"), allow_pickle=False)

    def save(self, name: str, value: np.ndarray) -> None:
        """Record an array atomically and count one unit of progress."""
        if not self.enabled:
            return
        final = self._file(name + ".npy")
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f"{TMP_PREFIX}{os.getpid()}.{final.name}"
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(value), allow_pickle=False)
        os.replace(tmp, final)
        self._count()

    def load_json(self, name: str) -> Any:
        if not self.enabled or not self._file(name + ".json").exists():
            return None
        return json.loads(self._file(name + ".json").read_text())

    def save_json(self, name: str, value: Any) -> None:
        if not self.enabled:
            return
        final = self._file(name + ".json")
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f"{TMP_PREFIX}{os.getpid()}.{final.name}"
        tmp.write_text(json.dumps(value))
        os.replace(tmp, final)
        self._count()

    def scratch(self, name: str) -> Path | None:
        """A path for a large scratch file inside the work directory (None when disabled)."""
        if not self.enabled:
            return None
        self._file(name).parent.mkdir(parents=True, exist_ok=True)
        return self._file(name)

    def _count(self) -> None:
        self.recorded += 1
        if FAIL_AFTER is not None and self.recorded >= FAIL_AFTER:
            raise InjectedFailure(f"injected failure after {self.recorded} recorded units")

    def clear(self) -> None:
        """Forget everything recorded (it belongs to another plan of the same computation)."""
        if self.enabled:
            shutil.rmtree(self.path, ignore_errors=True)

    def remove(self) -> None:
        """Delete the work directory (and its parent ``.prunekit-work`` when empty)."""
        if not self.enabled:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()


def work_dir_for(output: str | os.PathLike, *, fingerprint: str, method: str,
                 params: dict[str, Any]) -> Path:
    """The work directory of one computation: beside ``output``, keyed by what it computes."""
    final = Path(os.path.realpath(output))
    ident = json.dumps({"output": str(final), "fingerprint": fingerprint, "method": method,
                        "params": params}, sort_keys=True, default=str)
    key = hashlib.blake2b(ident.encode(), digest_size=8).hexdigest()
    return final.parent / WORK_DIR / f"{final.name}.{key}"


def open_work_dir(path: Path, *, resume: bool) -> WorkDir:
    """The work directory at ``path``: kept with ``resume``, else emptied first."""
    if path.exists() and not resume:
        shutil.rmtree(path, ignore_errors=True)
    return WorkDir(path)


_CURRENT: contextvars.ContextVar[WorkDir | None] = contextvars.ContextVar("prunekit_work_dir",
                                                                         default=None)


def current() -> WorkDir:
    """The work directory made current by :func:`use`, else one that records nothing."""
    wd = _CURRENT.get()
    return wd if wd is not None else WorkDir(None)


@contextlib.contextmanager
def use(work_dir: WorkDir) -> Iterator[WorkDir]:
    """Record progress in ``work_dir`` inside the ``with`` block."""
    token = _CURRENT.set(work_dir)
    try:
        yield work_dir
    finally:
        _CURRENT.reset(token)
