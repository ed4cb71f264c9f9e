"""``kmeans``: cluster, then score each item by its distance to its own centroid.

Larger score = kept first, so the natural order keeps the items FURTHEST from their
centroid (hard, atypical); ``select --invert`` keeps the nearest (prototypical) ones.
Together with ``select --balance clusters`` this is the paper's balanced clustering (Cb).
"""

from __future__ import annotations

from ..cluster import BACKENDS
from ..cluster import kmeans as run_kmeans
from ..embeddings import Embeddings
from ..params import Param
from . import MethodResult, register

DEFAULT_K = 24
DEFAULT_ITERS = 25

PARAMS = (
    Param("k", "int", DEFAULT_K, "Number of clusters.", low=1),
    Param("iters", "int", DEFAULT_ITERS, "Lloyd iterations.", low=1, high=100_000),
    Param("spherical", "bool", True,
          "Spherical: rows L2-normalised, centroids renormalised, score = 1 - cos; "
          "Euclidean: score = ||x - c||.", negation="euclidean"),
    Param("backend", "choice", "auto", "Lloyd implementation (auto = faiss when installed).",
          choices=BACKENDS),
    Param("restarts", "int", 1, "Independent seedings; the lowest inertia wins.", low=1, high=1000),
)


@register("kmeans", params=PARAMS)
def kmeans_scores(
    emb: Embeddings,
    *,
    seed: int = 0,
    progress: bool = True,
    k: int = DEFAULT_K,
    iters: int = DEFAULT_ITERS,
    spherical: bool = True,
    backend: str = "auto",
    restarts: int = 1,
) -> MethodResult:
    """Spherical (default) or Euclidean k-means; score = distance to the own centroid.

    The distance is 1 - cos(x, c) when spherical, ||x - c|` otherwise (see
    :func:`prunekit.cluster.kmeans`). Writes ``cluster``, ``centroids`` and
    ``centroid_distance`` too.
    """
    res = run_kmeans(
        emb.array(), int(k), iters=int(iters), seed=seed, spherical=bool(spherical),
        backend=backend, restarts=int(restarts), progress=progress, copy=False,
    )
    return MethodResult(
        score=res.distance,
        cluster=res.labels,
        centroids=res.centroids,
        centroid_distance=res.distance,
        params={
            "k": int(k), "iters": int(iters), "spherical": bool(spherical), "backend": backend,
            "restarts": int(restarts), "backend_used": res.backend, "inertia": res.inertia,
            "best_restart": res.restart,
        },
    )
