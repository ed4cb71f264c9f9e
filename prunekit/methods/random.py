"""``random``: seeded uniform scores, the baseline every criterion must beat.

The score of the usable row of compact index ``c`` is draw ``c`` of the stream
``default_rng(seed)``: the in-memory path draws the whole stream, a folder's tasks each
jump to their part's first row (``PCG64.advance``) and draw their slice, so both give the
same scores on any engine and any number of workers, with no per-row array on the driver.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from prunekit.io.embeddings import Embeddings
from prunekit.methods import MethodResult, register
from prunekit.methods.partwise import RowRange, write_score_parts
from prunekit.runtime.costs import Cost, CostModel, Step
from prunekit.selection.partitioned import ScoresPartSink


def random_cost(m: CostModel, p: dict) -> Cost:
    """No pass over the data: n draws (about 20 ns each); the scores and positions (a
    folder output draws them part by part in the tasks: none on the driver)."""
    return Cost([Step("draw scores", 0, m.n * 2e-8, m.n * 2e-8, 0)],
                0 if m.folder else 8 * m.n * 2)


@register("random", params=(), cost=random_cost)
def random_scores(emb: Embeddings, *, seed: int = 0, progress: bool = True,
                  parts: ScoresPartSink | None = None) -> MethodResult:
    """Uniform scores in [0, 1); top-k of them is a uniform random subset."""
    if parts is None:
        return MethodResult(score=np.random.default_rng(seed).random(emb.n))
    written = write_score_parts(emb, parts, _draw_part, seed, desc="random scores",
                                progress=progress)
    return MethodResult(score=None, parts=written.records)  # type: ignore[arg-type]


def draws(seed: int, first: int, count: int) -> np.ndarray:
    """Draws ``first..first + count`` of ``default_rng(seed).random``: one 64-bit step per
    float64, so advancing the bit generator by ``first`` steps lands on draw ``first``."""
    bits = np.random.PCG64(seed)
    bits.advance(first)
    return np.random.Generator(bits).random(count)


def _draw_part(seed: int, ranges: list[RowRange]) -> Iterator[np.ndarray]:
    for r in ranges:
        out = np.empty(r.stop - r.start)
        out[r.ok] = draws(seed, r.first, int(np.count_nonzero(r.ok)))
        yield out
