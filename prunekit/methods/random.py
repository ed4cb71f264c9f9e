"""``random``: seeded uniform scores, the baseline every criterion must beat."""

from __future__ import annotations

import numpy as np

from ..embeddings import Embeddings
from . import MethodResult, register


@register("random", params=())
def random_scores(emb: Embeddings, *, seed: int = 0, progress: bool = True) -> MethodResult:
    """Uniform scores in [0, 1); top-k of them is a uniform random subset."""
    return MethodResult(score=np.random.default_rng(seed).random(emb.n))
