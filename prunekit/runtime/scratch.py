"""Private scratch folders: where a pass leaves files for the engine's tasks to read.

Grouping rows by cluster, joining a file to the embeddings by id, checking ids in hash
buckets and semdedup's own k-means all write large intermediate files that tasks on other
threads, processes or Ray nodes read back. :class:`scratch_folder` is the one place that
decides where they go:

* **In the run's work directory** (``WORK/scratch/NAME``) when the run has one (``score``:
  the hidden folder beside the output, :mod:`prunekit.runtime.resume`). Files there survive
  a crash, so ``--resume`` can reuse them, and they lie beside the output, on storage every
  node of a Ray cluster sees when the output does. The folder is made 0700 and checked like
  the work directory itself (a real directory of ours, not a symlink, not writable by
  others), so nothing planted there is read or written through. Under ``scratch/`` no
  folder can meet a record of the same name.
* **Else in a temporary folder** (``tempfile.mkdtemp``: ``$TMPDIR/prunekit-NAME-*``, 0700),
  always removed at the end; on a Ray cluster of several machines ``TMPDIR`` must name
  storage every node sees.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path
from types import TracebackType

from prunekit.runtime.context import current_work_dir
from prunekit.runtime.resume import secure_dir


class scratch_folder:  # lower case: used like a function, ``with scratch_folder(...)``
    """``with scratch_folder(name) as folder:`` a private folder (see the module docstring).

    ``resume=False``: the folder belongs to the block. In the work directory a crashed
    run's leftovers are removed first; the folder is removed when the block ends, also by
    an error.

    ``resume=True``: in the work directory the folder is the run's progress: kept as found
    (its files are checked by whoever reuses them) and left when the block ends, to go with
    the work directory once the output is written. A temporary folder is still removed at
    the end (by an error at once).

    :meth:`remove_with` hands the removal at the end of the block to an object the caller
    returns: the folder then lasts as long as that object.
    """

    def __init__(self, name: str, *, resume: bool = False) -> None:
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            raise ValueError(f"a scratch folder's name is one path component, got {name!r}")
        self.name, self.resume = name, resume
        self.path: Path | None = None
        self._kept = False  # in the work directory with resume: never removed here
        self._owner: object = None

    def __enter__(self) -> Path:
        work = current_work_dir()
        if work.enabled:
            folder = work.scratch(f"scratch/{self.name}/-").parent  # made 0700 and checked
            if not self.resume:
                shutil.rmtree(folder, ignore_errors=True)  # a crashed run's (a real folder)
                folder = work.scratch(f"scratch/{self.name}/-").parent
            self._kept = self.resume
        else:
            folder = Path(tempfile.mkdtemp(prefix=f"prunekit-{self.name}-"))
        self.path = folder
        return folder

    def remove_with(self, owner: object) -> None:
        """Remove the folder once ``owner`` is garbage collected, not when the block ends
        without an error (the caller returns ``owner``, which reads files in the folder)."""
        self._owner = owner

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        owner, self._owner = self._owner, None
        if self.path is None or self._kept:
            return
        if owner is not None and kind is None:
            weakref.finalize(owner, shutil.rmtree, str(self.path), True)
        else:
            shutil.rmtree(self.path, ignore_errors=True)  # a symlink is not followed


def private_subfolder(folder: Path, name: str) -> Path:
    """``folder / name``, made 0700 or checked (a real folder of ours, as in the work
    directory); kept when it exists, so a resumed run finds its files."""
    path = folder / name
    secure_dir(path)
    return path
