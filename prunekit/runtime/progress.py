"""Progress bars: shown on a terminal, silent under ``--quiet`` or when not a TTY.

The run context's ``progress`` (:mod:`prunekit.runtime.context`; the CLI's ``--quiet``,
``prunekit.runtime(progress=False)``) silences every bar; a call's own ``progress=False``
silences its bars only.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

from prunekit.runtime.context import get_runtime

T = TypeVar("T")


def bar_enabled(progress: bool) -> bool:
    """A bar is drawn only when the call and the run context ask for it, on a terminal."""
    return bool(progress) and get_runtime().progress and sys.stderr.isatty()


def track(
    iterable: Iterable[T], *, total: int | None = None, desc: str = "", progress: bool = True
) -> Iterable[T]:
    """Wrap ``iterable`` in a tqdm bar when enabled, else return it unchanged."""
    if not bar_enabled(progress):
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def counter(total: int, *, desc: str = "", progress: bool = True) -> tqdm:
    """A manual bar (``.update(n)``); disabled bars cost nothing."""
    return tqdm(total=total, desc=desc, leave=False, disable=not bar_enabled(progress))
