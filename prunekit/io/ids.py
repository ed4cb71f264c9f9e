"""Matching rows of two files by their ids: the one implementation the project shares.

ids are int64 or strings (:func:`prunekit.io.h5io.decode_ids`). Integers match integers and
strings match strings; an integer id never matches the string of its digits. Strings
compare as numpy compares them: trailing NUL characters do not count.

:func:`id_positions` matches ids held in memory; :func:`id_buckets` spreads ids over hash
buckets, so that ids too many for memory are matched (or checked unique) one bucket at a
time: equal ids always share a bucket.
"""

from __future__ import annotations

import hashlib

import numpy as np

FIBONACCI = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio: mixes an integer's bits


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


def id_buckets(ids: np.ndarray, buckets: int) -> np.ndarray:
    """Each id's bucket (int64, ``0 .. buckets - 1``; ``buckets`` a power of two): the top
    bits of a 64-bit hash, Fibonacci hashing of an integer id, BLAKE2b of a string id's
    UTF-8 bytes (trailing NULs dropped, as numpy compares strings).

    ``ids``: integers, or ``str`` (an object or numpy unicode array). Equal ids land in the
    same bucket on every machine and run, so a bucket of one file meets the same bucket of
    another.
    """
    if buckets == 1:
        return np.zeros(ids.size, dtype=np.int64)
    shift = 64 - (buckets.bit_length() - 1)
    if ids.dtype.kind in "OU":
        return np.fromiter(
            (int.from_bytes(hashlib.blake2b(v.rstrip("\x00").encode("utf-8", "surrogatepass"),
                                            digest_size=8).digest(), "little") >> shift
             for v in ids.tolist()), dtype=np.int64, count=ids.size)
    mixed = np.ascontiguousarray(ids, dtype=np.int64).view(np.uint64) * FIBONACCI  # mod 2**64
    mixed >>= np.uint64(shift)
    return mixed.view(np.int64)  # below 2**16 after the shift
