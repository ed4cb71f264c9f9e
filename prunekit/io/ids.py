"""Matching rows of two files by their ids: the one implementation the project shares.

ids are int64 or strings (:func:`prunekit.io.h5io.decode_ids`). Integers match integers and
strings match strings; an integer id never matches the string of its digits.
"""

from __future__ import annotations

import numpy as np


def _keys(ids: np.ndarray) -> np.ndarray:
    """ids as a sortable array: int64, or numpy unicode for strings."""
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu":
        return ids.astype(np.int64)
    return np.asarray([str(v) for v in ids.tolist()], dtype=str) if ids.size else np.zeros(0, dtype=str)


def id_positions(wanted: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(positions, found)``: for each value of ``wanted``, its position in ``ids``.

    ``found[j]`` is False where ``wanted[j]`` is not among ``ids`` (its position is then
    meaningless). ``ids`` must be unique. O((n + m) log n), vectorised.
    """
    want, have = _keys(wanted), _keys(ids)
    positions = np.zeros(want.size, dtype=np.int64)
    found = np.zeros(want.size, dtype=bool)
    if not want.size or not have.size or (want.dtype.kind == "i") != (have.dtype.kind == "i"):
        return positions, found
    order = np.argsort(have, kind="stable")
    ranked = have[order]
    at = np.minimum(np.searchsorted(ranked, want), ranked.size - 1)
    found = ranked[at] == want
    positions = order[at].astype(np.int64)
    return positions, found
