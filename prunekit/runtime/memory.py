"""Memory checks before large allocations: refuse with the number instead of a MemoryError.

:func:`check_fits` compares the bytes a step is about to allocate with the memory this
machine can give (``MemAvailable`` of ``/proc/meminfo``, capped by a cgroup limit when one
is set; ``PRUNEKIT_AVAILABLE_MEMORY`` in bytes overrides both, e.g. to leave room for other
jobs). It guards allocations that must fit in memory at all; the per-command budget for
work beyond a few bytes per row (``--memory``) is :mod:`prunekit.runtime.budget`, derived from the
same estimate.
"""

from __future__ import annotations

import os
from pathlib import Path

from prunekit.errors import PrunekitError

ENV_AVAILABLE = "PRUNEKIT_AVAILABLE_MEMORY"
# The share of available memory one allocation may take: the rest is for copies,
# temporaries and everything else running.
USABLE_SHARE = 0.8


def human(nbytes: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(nbytes) < 1024 or unit == "PiB":
            return f"{nbytes:.0f} B" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


def available_memory() -> int:
    """Bytes of memory a process can allocate now (a best estimate)."""
    env = os.environ.get(ENV_AVAILABLE)
    if env:
        try:
            return int(float(env))
        except ValueError:
            raise PrunekitError(f"{ENV_AVAILABLE}={env!r} is not a number of bytes.") from None
    avail = _meminfo_available()
    limit = _cgroup_limit()
    if limit is not None:
        avail = min(avail, limit) if avail is not None else limit
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 1 << 62  # unknown platform: do not refuse
    return int(avail)


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    return None


def check_fits(nbytes: float, what: str, budget: int | None = None) -> None:
    """Refuse (PrunekitError) when allocating ``nbytes`` for ``what`` would not fit.

    ``budget`` (bytes) defaults to 80 % of :func:`available_memory`. The message names the
    size needed and the size available, so the user can shrink the request.
    """
    limit = int(USABLE_SHARE * available_memory()) if budget is None else int(budget)
    if nbytes > limit:
        raise PrunekitError(
            f"{what} needs {human(nbytes)} of memory but only {human(limit)} can be used here; "
            "ask for less (fewer points, steps or dimensions) or use a machine with more memory."
        )
