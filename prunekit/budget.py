"""The memory budget: how much a command may hold beyond a few bytes per row.

Commands keep O(N) small per-row arrays (scores, clusters, ids) plus at most the budget:
chunks being read, a sample, one cluster's rows. The budget is, in order of precedence,
``set_budget()`` (the ``--memory 4G`` option), the ``PRUNEKIT_MEMORY`` environment variable,
or ``min(25 % of available memory, 8 GiB)``.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

from .errors import PrunekitError
from .memory import available_memory, human

ENV = "PRUNEKIT_MEMORY"
DEFAULT_SHARE = 0.25
DEFAULT_CAP = 8 << 30
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

_override: int | None = None


def parse_size(text: str | int, what: str = "--memory") -> int:
    """``"4G"``, ``"512M"``, ``"1.5GiB"``, ``"2e9"`` -> bytes (K/M/G/T are powers of 1024)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.I)
        if not m:
            raise PrunekitError(
                f"{what} {text!r} is not a size; write it like 4G, 512M or 2.5GiB."
            )
        value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value <= 0:
        raise PrunekitError(f"{what} must be a positive size, got {text!r}.")
    return value


def default_budget() -> int:
    """``min(25 % of available memory, 8 GiB)``."""
    return int(min(DEFAULT_SHARE * available_memory(), DEFAULT_CAP))


def memory_budget() -> int:
    """The budget in bytes now in force."""
    if _override is not None:
        return _override
    env = os.environ.get(ENV)
    if env:
        return parse_size(env, ENV)
    return default_budget()


def set_budget(value: int | str | None) -> None:
    """Set (or with None, clear) the budget for this process."""
    global _override
    _override = None if value is None else parse_size(value)


@contextlib.contextmanager
def budget(value: int | str | None) -> Iterator[int]:
    """Temporarily use ``value`` as the budget (tests, library callers)."""
    global _override
    old = _override
    set_budget(value)
    try:
        yield memory_budget()
    finally:
        _override = old


def check_budget(nbytes: float, what: str, fix: str) -> None:
    """Refuse (PrunekitError) when ``what`` needs more than the budget; ``fix`` says what to do."""
    limit = memory_budget()
    if nbytes > limit:
        raise PrunekitError(
            f"{what} needs {human(nbytes)} but the memory budget is {human(limit)}; {fix}"
        )
