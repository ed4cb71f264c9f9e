"""The memory budget: how much a command may hold beyond a few bytes per row.

Commands keep O(N) small per-row arrays (scores, clusters, ids) plus at most the budget:
chunks being read, a sample, one cluster's rows. The budget is, in order of precedence, the
run context's ``memory`` (the ``--memory 4G`` option, ``prunekit.runtime(memory="4G")``;
see :mod:`prunekit.runtime.context`), the ``PRUNEKIT_MEMORY`` environment variable, or
``min(25 % of available memory, 8 GiB)``.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import warnings

from prunekit.errors import PrunekitError
from prunekit.runtime.context import get_runtime, runtime, set_runtime
from prunekit.runtime.memory import available_memory, human

ENV = "PRUNEKIT_MEMORY"
DEFAULT_SHARE = 0.25
DEFAULT_CAP = 8 << 30
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
# The smallest --memory a command accepts: below it no command holds even its working
# chunk, so a smaller value is a typo (1K for 1G). The library and PRUNEKIT_MEMORY take
# any positive size (tests exercise the refusals with small data).
MIN_OPTION_BUDGET = 1 << 20
MAX_SIZE = 2**63 - 1  # sizes are int64 byte counts downstream


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
        value = float(m.group(1)) * _UNITS[m.group(2).lower()]
        if not math.isfinite(value) or value > MAX_SIZE:
            raise PrunekitError(f"{what} {text!r} is larger than any memory (at most 8 EiB).")
        value = int(value)
    if value > MAX_SIZE:
        raise PrunekitError(f"{what} {text!r} is larger than any memory (at most 8 EiB).")
    if value <= 0:
        raise PrunekitError(f"{what} must be a positive size, got {text!r}.")
    return value


def parse_memory_option(text: str) -> int:
    """``--memory``: :func:`parse_size`, refusing less than :data:`MIN_OPTION_BUDGET`."""
    value = parse_size(text, "--memory")
    if value < MIN_OPTION_BUDGET:
        raise PrunekitError(
            f"--memory {text} ({value} bytes) is below the minimum of {human(MIN_OPTION_BUDGET)}; "
            "a command holds at least one chunk of rows. Write it like 512M or 4G."
        )
    return value


def default_budget() -> int:
    """``min(25 % of available memory, 8 GiB)``."""
    return int(min(DEFAULT_SHARE * available_memory(), DEFAULT_CAP))


def memory_budget() -> int:
    """The budget in bytes now in force (the run context's, else the environment's/default)."""
    memory = get_runtime().memory
    if memory is not None:
        return memory
    env = os.environ.get(ENV)
    if env:
        return parse_size(env, ENV)
    return default_budget()


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"prunekit.runtime.budget.{old} is deprecated; use {new}.",
                  DeprecationWarning, stacklevel=3)


def set_budget(value: int | str | None) -> None:
    """Deprecated: set (or with None, clear) the budget of the current run context."""
    _deprecated("set_budget()", "prunekit.runtime(memory=...)")
    set_runtime(memory=value)


def budget(value: int | str | None) -> contextlib.AbstractContextManager:
    """Deprecated: ``with prunekit.runtime(memory=value)``; yields the budget in bytes."""
    _deprecated("budget()", "prunekit.runtime(memory=...)")
    return _budget(value)


@contextlib.contextmanager
def _budget(value: int | str | None):
    with runtime(memory=value):
        yield memory_budget()


def check_budget(nbytes: float, what: str, fix: str) -> None:
    """Refuse (PrunekitError) when ``what`` needs more than the budget; ``fix`` says what to do."""
    limit = memory_budget()
    if nbytes > limit:
        raise PrunekitError(
            f"{what} needs {human(nbytes)} but the memory budget is {human(limit)}; {fix}"
        )
