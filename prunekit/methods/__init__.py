"""Scoring methods behind one interface and a name registry.

A method is a function ``fn(emb, *, seed, progress, **params) -> MethodResult`` that scores
the usable rows of ``emb`` (``emb.array()``, compact order). :func:`score` maps the result
back to source positions and wraps it in a :class:`~prunekit.scores.Scores`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..embeddings import Embeddings
from ..errors import PrunekitError
from ..scores import Scores

MethodFn = Callable[..., "MethodResult"]
REGISTRY: dict[str, MethodFn] = {}


@dataclass
class MethodResult:
    """A method's output over the n usable rows (compact order, positions 0..n-1)."""

    score: np.ndarray
    cluster: np.ndarray | None = None
    centroids: np.ndarray | None = None
    centroid_distance: np.ndarray | None = None
    order: np.ndarray | None = None
    params: dict[str, Any] = field(default_factory=dict)  # resolved settings (e.g. sigma)


def register(name: str) -> Callable[[MethodFn], MethodFn]:
    """Class-free registration: ``@register("kmeans")`` on the method function."""

    def deco(fn: MethodFn) -> MethodFn:
        REGISTRY[name] = fn
        return fn

    return deco


def available() -> list[str]:
    """Names of the registered methods."""
    return sorted(REGISTRY)


def score(
    emb: Embeddings, method: str, *, seed: int = 0, progress: bool = True, **params: Any
) -> Scores:
    """Score every usable row of ``emb`` with ``method`` (see :func:`available`)."""
    if method not in REGISTRY:
        raise PrunekitError(f"unknown method '{method}'; choose one of: {', '.join(available())}.")
    res = REGISTRY[method](emb, seed=seed, progress=progress, **params)
    return _to_scores(emb, method, res, {"seed": seed, **params, **res.params})


def _to_scores(emb: Embeddings, method: str, res: MethodResult, params: dict) -> Scores:
    """Scatter compact results to source positions; unscored rows get NaN / -1."""
    rows, n = emb.rows, emb.n_total

    def scatter(values: np.ndarray | None, fill: Any, dtype: Any) -> np.ndarray | None:
        if values is None:
            return None
        out = np.full(n, fill, dtype=dtype)
        out[rows] = values
        return out

    return Scores(
        score=scatter(res.score, np.nan, np.float64),
        method=method,
        n_total=n,
        cluster=scatter(res.cluster, -1, np.int64),
        centroids=res.centroids,
        centroid_distance=scatter(res.centroid_distance, np.nan, np.float64),
        order=None if res.order is None else rows[np.asarray(res.order, dtype=np.int64)],
        ids=emb.ids,
        labels=emb.labels,
        source=emb.source,
        source_fingerprint=emb.fingerprint,
        params={k: v for k, v in params.items() if not isinstance(v, (np.ndarray, Scores))},
    )


# Importing the modules registers the methods.
from . import herding, kcenter, kmeans, loss, random  # noqa: E402,F401
