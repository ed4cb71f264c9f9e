"""A simulated kill for tests of ``--resume``: fail once a run has recorded some units."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prunekit.runtime import resume


class InjectedFailure(RuntimeError):
    """Raised by :func:`killed_after` in place of a kill."""


@contextlib.contextmanager
def killed_after(units: int) -> Iterator[None]:
    """Inside the block, a work directory raises InjectedFailure right after recording its
    ``units``-th unit (the record is on disk, as after a kill between two units)."""
    count = resume.WorkDir._count

    def counted(self: resume.WorkDir) -> None:
        count(self)
        if self.recorded >= units:
            raise InjectedFailure(f"injected failure after {self.recorded} recorded units")

    resume.WorkDir._count = counted
    try:
        yield
    finally:
        resume.WorkDir._count = count
