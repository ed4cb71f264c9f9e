"""``kmeans``: cluster, then score each item by its distance to its own centroid.

Larger score = kept first, so the natural order keeps the items FURTHEST from their
centroid (hard, atypical); ``select --invert`` keeps the nearest (prototypical) ones.
Together with ``select --balance clusters`` this is the paper's balanced clustering (Cb).
"""

from __future__ import annotations

from ..budget import check_budget, memory_budget
from ..cluster import BACKENDS, SamplePlan, kmeans_streamed, sample_plan
from ..embeddings import Embeddings
from ..engine import current as current_engine
from ..params import Param
from ..resume import current as current_work
from . import MethodResult, register

DEFAULT_K = 24
DEFAULT_ITERS = 25

PARAMS = (
    Param("k", "int", DEFAULT_K, "Number of clusters.", low=1),
    Param("iters", "int", DEFAULT_ITERS, "Lloyd iterations (on the sample held in memory).",
          low=1, high=100_000),
    Param("spherical", "bool", True,
          "Spherical: rows L2-normalised, centroids renormalised, score = 1 - cos; "
          "Euclidean: score = ||x - c||.", negation="euclidean"),
    Param("backend", "choice", "auto", "Lloyd implementation (auto = faiss when installed).",
          choices=BACKENDS),
    Param("restarts", "int", None,
          "Independent seedings; the lowest inertia wins. Default: from the problem size "
          "(10 for small and medium data, down to 1 for large).", low=1, high=1000, nullable=True),
    Param("sample", "int", None,
          "Rows held in memory for seeding and Lloyd. Default: all rows when they fit half "
          "the memory budget, else max(65536, 256 k) rows within it.", low=1, nullable=True),
    Param("full_passes", "int", 0,
          "Streamed Lloyd passes over all rows after the sample's Lloyd iterations.",
          low=0, high=1000),
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
    restarts: int | None = None,
    sample: int | None = None,
    full_passes: int = 0,
) -> MethodResult:
    """Spherical (default) or Euclidean k-means; score = distance to the own centroid.

    The distance is 1 - cos(x, c) when spherical, ||x - c|| otherwise. Seeding and Lloyd
    run on a sample held in memory (all rows when they fit), then every row is assigned in
    one streamed pass (see :func:`prunekit.cluster.kmeans_streamed`). Writes ``cluster``,
    ``centroids`` and ``centroid_distance`` too.
    """
    if sample is None:
        plan = sample_plan(emb.n, int(k), emb.dim, emb.dtype.itemsize, memory_budget())
    else:
        rows = min(int(sample), emb.n)
        check_budget(rows * emb.dim * (4 + emb.dtype.itemsize), f"a k-means sample of {rows} rows",
                     "give a smaller --sample (or leave it out), or raise --memory.")
        plan = SamplePlan(rows, emb.n, "all rows" if rows == emb.n else
                          "uniform without replacement, seeded by (seed, 'kmeans-sample')")
    res = kmeans_streamed(
        emb.source_obj, emb.rows, int(k), plan=plan, iters=int(iters), seed=seed,
        spherical=bool(spherical), backend=backend, restarts=restarts,
        full_passes=int(full_passes), engine=current_engine(), work=current_work(),
        progress=progress,
    )
    return MethodResult(
        score=res.distance,
        cluster=res.labels,
        centroids=res.centroids,
        centroid_distance=res.distance,
        params={
            "k": int(k), "iters": int(iters), "spherical": bool(spherical), "backend": backend,
            "restarts": restarts, "restarts_used": res.restarts, "full_passes": int(full_passes),
            "backend_used": res.backend, "inertia": res.inertia, "best_restart": res.restart,
            **plan.params(),
        },
    )
