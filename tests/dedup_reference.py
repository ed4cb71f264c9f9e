"""SemDeDup scores of a whole in-memory set, one cluster after another.

The reference the method's grouped, engine-mapped path is compared with: the same
per-cluster kernel (:func:`prunekit.methods.dedup.semdedup_cluster`) and keep orders, but
every row in memory and a plain loop over the clusters.
"""

from __future__ import annotations

import numpy as np

from prunekit.methods import dedup


def semdedup_reference(x, clusters, distance, *, keep: str = "hard", seed: int = 0,
                       block_bytes: int = dedup.BLOCK_BYTES) -> np.ndarray:
    """SemDeDup scores (float64, one per row of ``x``) with ``clusters`` and ``distance``
    (each row's distance to its centroid, for the orders ``hard``/``easy``)."""
    clusters = np.asarray(clusters, dtype=np.int64)
    distance = np.asarray(distance, dtype=np.float64)
    score = np.empty(len(x), dtype=np.float64)
    for c in np.unique(clusters):
        rows = np.flatnonzero(clusters == c)
        order = dedup.keep_order(distance[rows], keep, seed=seed, cluster=int(c))
        score[rows] = dedup.semdedup_cluster(dedup.normalized(x, rows), order,
                                             block_bytes=block_bytes)
    return score
