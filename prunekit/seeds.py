"""Seeds: one rule for the whole project, and independent random streams per role.

A seed is an integer with 0 <= seed < 2**63 (what ``numpy.random.SeedSequence`` takes and
what an HDF5 int64 attribute stores). Where one seed feeds several kinds of draws (the
means of a mixture, its points, noise sources, random subsets) each draw gets its own
stream, keyed by the seed and the name of its role, so that no two roles ever share
numbers: the first noise source is not the first mixture mean.
"""

from __future__ import annotations

import numbers
import zlib

import numpy as np

from prunekit.errors import PrunekitError

SEED_MAX = 2**63 - 1


def check_seed(seed: object, what: str = "seed") -> int:
    """``seed`` as an int in [0, 2**63), else a PrunekitError naming ``what``."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise PrunekitError(f"{what} must be an integer in [0, 2**63), got {seed!r}.")
    seed = int(seed)
    if not 0 <= seed <= SEED_MAX:
        raise PrunekitError(f"{what} must lie in [0, 2**63 - 1], got {seed}; use a non-negative integer.")
    return seed


def role_key(role: str) -> int:
    """A fixed 32-bit number for a role name (CRC-32: stable across runs and platforms)."""
    return zlib.crc32(role.encode("utf-8"))


def role_rng(seed: int, role: str, *keys: int) -> np.random.Generator:
    """The generator of one role (and optional further keys, e.g. a chunk) under ``seed``.

    Streams of different roles or keys are independent (distinct SeedSequence entropy).
    """
    seed = check_seed(seed)
    return np.random.default_rng(np.random.SeedSequence([seed, role_key(role), *map(int, keys)]))


def role_seed(seed: int, role: str, *keys: int) -> int:
    """An integer seed for one role, for APIs that take an int (independent like :func:`role_rng`)."""
    seed = check_seed(seed)
    state = np.random.SeedSequence([seed, role_key(role), *map(int, keys)]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1
