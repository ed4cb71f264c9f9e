"""Literal, slow reference implementations of the quota definitions (paper-notes.md)."""

from __future__ import annotations

from fractions import Fraction


def ref_balanced(sizes: list[int], kept: int) -> list[int]:
    """The definition, literally: scan levels, then hand out the remainder one by one."""
    level = 0
    while level < max(sizes) and sum(min(n, level + 1) for n in sizes) <= kept:
        level += 1
    quotas = [min(n, level) for n in sizes]
    rest = kept - sum(quotas)
    room = sorted((c for c, n in enumerate(sizes) if n > level), key=lambda c: (-sizes[c], c))
    for c in room[:rest]:
        quotas[c] += 1
    assert sum(quotas) == kept
    return quotas


def ref_proportional(sizes: list[int], kept: int) -> list[int]:
    """Floors of kept * n_c / N in exact rationals, then largest remainders."""
    total = sum(sizes)
    shares = [Fraction(kept * n, total) for n in sizes]
    quotas = [int(s) for s in shares]
    order = sorted(range(len(sizes)), key=lambda c: (-(shares[c] - quotas[c]), -sizes[c], c))
    for c in order[: kept - sum(quotas)]:
        quotas[c] += 1
    return quotas
