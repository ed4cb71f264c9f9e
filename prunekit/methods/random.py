"""``random``: seeded uniform scores, the baseline every criterion must beat."""

from __future__ import annotations

import numpy as np

from prunekit.io.embeddings import Embeddings
from prunekit.methods import MethodResult, register
from prunekit.runtime.costs import Cost, CostModel, Step


def random_cost(m: CostModel, p: dict) -> Cost:
    """No pass over the data: n draws (about 20 ns each); the scores and positions."""
    return Cost([Step("draw scores", 0, m.n * 2e-8, m.n * 2e-8, 0)], 8 * m.n * 2)


@register("random", params=(), cost=random_cost)
def random_scores(emb: Embeddings, *, seed: int = 0, progress: bool = True) -> MethodResult:
    """Uniform scores in [0, 1); top-k of them is a uniform random subset."""
    return MethodResult(score=np.random.default_rng(seed).random(emb.n))
