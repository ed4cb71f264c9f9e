"""Old names of a module's objects, still given for one release with a warning."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any


def renamed(module: str, old: str, new: Any, now: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` (define it last): the name ``old`` gives ``new`` with a
    DeprecationWarning that says ``module.old is now {now}``; any other name is missing."""

    def __getattr__(name: str) -> Any:
        if name == old:
            warnings.warn(f"{module}.{old} is now {now}; the old name goes in the next release.",
                          DeprecationWarning, stacklevel=2)
            return new
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
