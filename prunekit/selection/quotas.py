"""Quota arithmetic: how many items each group (cluster or label) keeps.

Pure integer math on group sizes; no data, no randomness. Groups are numbered
0..K-1 in the order of their ids (lower index = lower id), which is how ties are broken.

* :func:`kept_count` — the kept count of a pruning ratio.
* :func:`balanced_quotas` — balanced clustering (Cb), exact water-filling.
* :func:`proportional_quotas` — proportional clustering (Cp), largest remainder.
* :func:`oversample_counts` — balanced oversampling: repeats per item of each group.
"""

from __future__ import annotations

import numpy as np

from prunekit.errors import PrunekitError


def kept_count(pr: float, n: int) -> int:
    """Items kept when a fraction ``pr`` of ``n`` is removed: ``max(1, round((1 - pr) * n))``.

    ``round`` is Python's (halves to even), evaluated in float64, exactly as the file
    contract writes it. ``pr`` must lie in [0, 1) and ``n`` must be positive.
    """
    pr = float(pr)
    if not 0.0 <= pr < 1.0:
        raise PrunekitError(
            f"pr = {pr} is outside [0, 1); pr is the fraction REMOVED (pr = 0.8 keeps 20 %)."
        )
    if n < 1:
        raise PrunekitError("there are no eligible rows to select from (every score is NaN).")
    return max(1, round((1.0 - pr) * n))


def _sizes(sizes: np.ndarray) -> np.ndarray:
    sizes = np.asarray(sizes)
    if sizes.ndim != 1 or sizes.dtype.kind not in "iu" or (sizes.size and sizes.min() < 0):
        raise ValueError("group sizes must be a 1-D array of non-negative integers")
    return sizes.astype(np.int64)


def _check_total(sizes: np.ndarray, kept: int) -> None:
    if not 0 <= kept <= int(sizes.sum()):
        raise ValueError(f"kept = {kept} is outside [0, {int(sizes.sum())}]")


def _rank_desc(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
    """Group indices sorted by ``primary`` desc, then ``secondary`` desc, then index asc."""
    return np.lexsort((np.arange(primary.size), -secondary, -primary))


def water_level(sizes: np.ndarray, kept: int) -> int:
    """The largest integer level L with sum_c min(n_c, L) <= kept.

    This is floor(lambda) for the real level lambda of the paper's definition. Returns
    max(n_c) when ``kept`` covers every item.
    """
    sizes = _sizes(sizes)
    _check_total(sizes, kept)
    if sizes.size == 0 or kept >= sizes.sum():
        return int(sizes.max(initial=0))
    # With sizes sorted ascending, S(L) = sum_{n_c < L} n_c + L * #{n_c >= L} is piecewise
    # linear; find the segment holding kept, then solve inside it.
    s = np.sort(sizes)
    k = s.size
    prefix = np.concatenate(([0], np.cumsum(s)))
    # S at the breakpoints L = s[j]: prefix[j] + s[j] * (k - j).
    at_break = prefix[:-1] + s * (k - np.arange(k))
    j = int(np.searchsorted(at_break, kept, side="right"))  # breakpoints with S <= kept
    # Level lies in [s[j-1], s[j]); there (k - j) groups are still rising.
    return int((kept - prefix[j]) // (k - j))


def balanced_quotas(sizes: np.ndarray, kept: int) -> np.ndarray:
    """Balanced clustering (Cb) by exact water-filling.

    Every group gets min(n_c, L) for the water level L of :func:`water_level`; the
    remaining ``kept - sum`` items go one each to the groups that still have room
    (n_c > L), largest n_c first, ties to the lower group index. The total is ``kept``.
    """
    sizes = _sizes(sizes)
    level = water_level(sizes, kept)
    quotas = np.minimum(sizes, level)
    rest = kept - int(quotas.sum())
    if rest:
        room = np.flatnonzero(sizes > level)
        # stable sort on -n_c keeps equal sizes in ascending index order
        first = room[np.argsort(-sizes[room], kind="stable")][:rest]
        quotas[first] += 1
    return quotas


def proportional_quotas(sizes: np.ndarray, kept: int) -> np.ndarray:
    """Proportional clustering (Cp): each group keeps the same fraction, total exactly ``kept``.

    Group c's exact share is kept * n_c / N (N = sum n_c), which equals (1 - pr) * n_c
    whenever (1 - pr) * N is a whole number. Every group gets the floor of its share; the
    ``kept - sum`` left-over items go one each to the largest remainders; equal remainders
    go to the larger group, then to the lower group index. Integer arithmetic throughout,
    so the result is exact (no float rounding).
    """
    sizes = _sizes(sizes)
    _check_total(sizes, kept)
    total = int(sizes.sum())
    if total == 0:
        return np.zeros_like(sizes)
    share = sizes * np.int64(kept)  # <= N^2; fits int64 for N up to 3e9
    quotas, remainder = np.divmod(share, total)
    rest = kept - int(quotas.sum())
    if rest:
        quotas[_rank_desc(remainder, sizes)[:rest]] += 1
    return quotas


def oversample_counts(sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Balanced oversampling: every group is drawn as often as the largest one has items.

    Returns ``(base, extra)`` per group: each of the n_c items of group c is repeated
    ``base[c] = m // n_c`` times and the first ``extra[c] = m % n_c`` of them (in the
    group's order) once more, m = max n_c. So group c is drawn exactly m times, as evenly
    as possible. Empty groups get 0 and 0.
    """
    sizes = _sizes(sizes)
    m = sizes.max(initial=0)
    base, extra = np.divmod(m, np.maximum(sizes, 1))
    empty = sizes == 0
    base[empty] = 0
    extra[empty] = 0
    return base, extra
