"""Quota arithmetic: water-filling (Cb), largest remainder (Cp), oversampling, kept counts."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from quota_refs import ref_balanced, ref_proportional

from prunekit.errors import PrunekitError
from prunekit.selection.quotas import (
    balanced_quotas,
    kept_count,
    oversample_counts,
    proportional_quotas,
    water_level,
)


@pytest.mark.parametrize(
    "sizes, kept, expected",
    [
        ([2, 10, 5, 7], 15, [2, 5, 4, 4]),  # level 4 (sum 14), +1 to the largest (10)
        ([2, 10, 5, 7], 24, [2, 10, 5, 7]),  # everything
        ([2, 10, 5, 7], 0, [0, 0, 0, 0]),
        ([2, 10, 5, 7], 4, [1, 1, 1, 1]),
        ([3, 3, 3], 4, [2, 1, 1]),  # equal sizes: the lower id first
        ([1, 1, 10], 6, [1, 1, 4]),  # small clusters kept whole, the rest spills over
        ([5, 0, 5], 3, [2, 0, 1]),  # an empty cluster never gets anything
        ([4, 9, 9, 2], 11, [3, 3, 3, 2]),  # exact fill at level 3
        ([4, 9, 9, 2], 12, [3, 4, 3, 2]),
        ([4, 9, 9, 2], 13, [3, 4, 4, 2]),
        ([4, 9, 9, 2], 14, [4, 4, 4, 2]),
        ([7], 3, [3]),
    ],
)
def test_water_filling_hand_made(sizes, kept, expected):
    assert balanced_quotas(np.array(sizes), kept).tolist() == expected


def test_water_level_is_floor_of_lambda():
    # sizes (2, 10, 5, 7), kept 15: 2 + 3 * lambda = 15 -> lambda = 13/3 -> level 4
    assert water_level(np.array([2, 10, 5, 7]), 15) == 4
    assert water_level(np.array([2, 10, 5, 7]), 24) == 10
    assert water_level(np.array([2, 10, 5, 7]), 2) == 0


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=12).filter(lambda s: sum(s) > 0),
    frac=st.floats(0.0, 1.0),
)
def test_water_filling_matches_definition(sizes, frac):
    kept = int(round(frac * sum(sizes)))
    got = balanced_quotas(np.array(sizes), kept)
    assert got.tolist() == ref_balanced(sizes, kept)
    assert got.sum() == kept and np.all(got <= sizes) and np.all(got >= 0)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 5000),
    k=st.integers(1, 60),
    pr=st.floats(0.0, 0.999),
    seed=st.integers(0, 2**16),
)
def test_totals_exact_for_many_n_k_pr(n, k, pr, seed):
    sizes = np.bincount(np.random.default_rng(seed).integers(0, k, n), minlength=k)
    kept = kept_count(pr, n)
    for fn in (balanced_quotas, proportional_quotas):
        got = fn(sizes, kept)
        assert got.sum() == kept
        assert np.all((got >= 0) & (got <= sizes))
    # balanced: clusters not kept whole differ by at most one
    b = balanced_quotas(sizes, kept)
    partial = b[b < sizes]
    if partial.size:
        assert partial.max() - partial.min() <= 1
        assert np.all(b[b == sizes] <= partial.min() + 1)  # whole ones lie below the level


@pytest.mark.parametrize(
    "sizes, kept, expected",
    [
        ([2, 10, 5, 7], 12, [1, 5, 2, 4]),  # shares 1, 5, 2.5, 3.5: tie -> larger cluster (7)
        ([3, 3, 4], 5, [2, 1, 2]),  # shares 1.5, 1.5, 2: tie, equal size -> lower id
        ([10, 10, 10], 3, [1, 1, 1]),
        ([1, 1, 1, 1], 2, [1, 1, 0, 0]),
        ([6, 0, 3], 3, [2, 0, 1]),
        ([5, 5], 10, [5, 5]),
    ],
)
def test_proportional_hand_made(sizes, kept, expected):
    assert proportional_quotas(np.array(sizes), kept).tolist() == expected


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 1000), min_size=1, max_size=15).filter(lambda s: sum(s) > 0),
    frac=st.floats(0.0, 1.0),
)
def test_proportional_matches_exact_rationals(sizes, frac):
    kept = int(round(frac * sum(sizes)))
    got = proportional_quotas(np.array(sizes), kept)
    assert got.tolist() == ref_proportional(sizes, kept)
    shares = np.array([Fraction(kept * n, sum(sizes)) for n in sizes])
    assert all(abs(g - s) < 1 for g, s in zip(got.tolist(), shares, strict=True))


def test_proportional_equals_paper_rule_when_kept_is_exact():
    # pr = 0.9 on N = 100: (1 - pr) n_c in exact decimals is 0.3, 2.5, 6.2 -> 0 + 2 + 6 = 8,
    # two left over to the largest remainders (0.3 vs 0.5 vs 0.2 -> clusters 1 then 0).
    sizes = np.array([3, 25, 62, 10])
    assert kept_count(0.9, 100) == 10
    assert proportional_quotas(sizes, 10).tolist() == [0, 3, 6, 1]


def test_kept_count():
    assert kept_count(0.5, 1797) == 898  # round half to even, as Python rounds
    assert kept_count(0.5, 11) == 6  # 5.5 -> 6
    assert kept_count(0.0, 7) == 7
    assert kept_count(0.999, 10) == 1  # at least one
    assert kept_count(0.8, 1000) == 200
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(PrunekitError, match="outside"):
            kept_count(bad, 10)
    with pytest.raises(PrunekitError, match="no eligible"):
        kept_count(0.5, 0)


def test_oversampling_counts():
    base, extra = oversample_counts(np.array([3, 1, 5, 0, 2]))
    # the largest group has 5: 5 = 1 * 3 + 2, 5 * 1, 1 * 5, nothing, 2 * 2 + 1
    assert base.tolist() == [1, 5, 1, 0, 2]
    assert extra.tolist() == [2, 0, 0, 0, 1]


@settings(max_examples=100, deadline=None)
@given(sizes=st.lists(st.integers(0, 30), min_size=1, max_size=8))
def test_oversampling_every_group_reaches_the_largest(sizes):
    base, extra = oversample_counts(np.array(sizes))
    for n, b, e in zip(sizes, base.tolist(), extra.tolist(), strict=True):
        if n == 0:
            assert b == e == 0
        else:  # as even as possible: repeats differ by at most one
            assert n * b + e == max(sizes) and 0 <= e < n and b >= 1


def test_bad_sizes_rejected():
    with pytest.raises(ValueError):
        balanced_quotas(np.array([1.5, 2.0]), 1)
    with pytest.raises(ValueError):
        balanced_quotas(np.array([3, 4]), 8)
