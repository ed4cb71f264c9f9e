"""Scoring methods behind one interface, a name registry and one parameter spec per method.

A method is a function ``fn(emb, *, seed, progress, **params) -> MethodResult`` that scores
the usable rows of ``emb`` (compact order, positions 0..n-1), registered with the
:class:`~prunekit.params.Param` spec of its parameters::

    @register("kmeans", params=(Param("k", "int", 24, "Number of clusters.", low=1), ...))
    def kmeans_scores(emb, *, seed, progress, k, ...): ...

:func:`score` validates the parameters against the spec, maps the result back to source
positions and wraps it in a :class:`~prunekit.scores.Scores`. The CLI builds its options
from the same specs, so adding a method is adding one module (and importing it below).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..embeddings import Embeddings, as_embeddings
from ..errors import PrunekitError
from ..params import Param, validate
from ..scores import Scores
from ..seeds import check_seed

MethodFn = Callable[..., "MethodResult"]


@dataclass(frozen=True)
class Method:
    """A registered scoring method: its function, parameter spec and one-line summary."""

    name: str
    fn: MethodFn
    params: tuple[Param, ...]

    @property
    def summary(self) -> str:
        return (self.fn.__doc__ or "").strip().split("\n")[0]


REGISTRY: dict[str, Method] = {}


@dataclass
class MethodResult:
    """A method's output over the n usable rows (compact order, positions 0..n-1)."""

    score: np.ndarray
    cluster: np.ndarray | None = None
    centroids: np.ndarray | None = None
    centroid_distance: np.ndarray | None = None
    order: np.ndarray | None = None
    params: dict[str, Any] = field(default_factory=dict)  # resolved settings (e.g. sigma)


def register(name: str, params: tuple[Param, ...] = ()) -> Callable[[MethodFn], MethodFn]:
    """Class-free registration: ``@register("kmeans", params=(...))`` on the method function."""

    def deco(fn: MethodFn) -> MethodFn:
        REGISTRY[name] = Method(name, fn, tuple(params))
        return fn

    return deco


def available() -> list[str]:
    """Names of the registered methods."""
    return sorted(REGISTRY)


def get_method(name: str) -> Method:
    """The registered method ``name``, or an error listing the choices."""
    if name not in REGISTRY:
        raise PrunekitError(f"unknown method '{name}'; choose one of: {', '.join(available())}.")
    return REGISTRY[name]


def score(
    emb: Embeddings | Any, method: str, *, seed: int = 0, progress: bool = True, **params: Any
) -> Scores:
    """Score every usable row of ``emb`` with ``method`` (see :func:`available`).

    ``emb`` is an :class:`~prunekit.embeddings.Embeddings` or anything array-like of shape
    (N, D). ``params`` are the method's parameters (``prunekit.methods.REGISTRY[name].params``
    lists them); they are checked before any work starts.
    """
    spec = get_method(method)
    seed = check_seed(seed)
    values = validate(method, spec.params, params)
    emb = as_embeddings(emb)
    res = spec.fn(emb, seed=seed, progress=progress, **values)
    return _to_scores(emb, method, res, {"seed": seed, **values, **res.params})


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
from . import herding, kcenter, kmeans, loss, random, semdedup  # noqa: E402,F401
