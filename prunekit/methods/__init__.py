"""Scoring methods behind one interface, a name registry and one declaration per method.

A method is a function ``fn(emb, *, seed, progress, **params) -> MethodResult`` that scores
the usable rows of ``emb`` (compact order, positions 0..n-1), registered in its own module
with everything the rest of prunekit asks of it::

    @register("kmeans", params=(Param("k", "int", 24, "Number of clusters.", low=1), ...),
              cost=kmeans_cost, probe=kmeans_probe, summary=Summary(detail=kmeans_detail))
    def kmeans_scores(emb, *, seed=0, progress=True, k=24, ...): ...

* ``params``: the :class:`~prunekit.params.Param` spec; :func:`score` validates against
  it and the CLI builds its options from it. Each Param's default must equal the
  function's keyword default (checked here, at import).
* ``cost``: the cost model ``cost(m, params) -> Cost`` (:mod:`prunekit.runtime.costs`),
  which ``prunekit plan`` and ``score --dry-run`` print;
* ``probe``: ``probe(dim, n, params) -> {name: rate}``, the kernels the cost model wants
  timed on this machine (:mod:`prunekit.runtime.probe`);
* ``summary``: what ``prunekit score`` and ``pk.inspect`` say about a result
  (:class:`Summary`).

:func:`score` maps the result back to source positions and wraps it in a
:class:`~prunekit.selection.scores.Scores`; :func:`score_to_folder` writes a partitioned
folder instead: a method whose function takes ``parts`` (a
:class:`~prunekit.selection.partitioned.ScoresPartSink`) writes the parts from its workers
and returns their records (every method here: k-means, random, loss from a position-aligned
file or joined by id, and the per-cluster methods); a result without records (herding or
k-center's one global order, loss from a file read whole) is gathered and written from the
driver in the same parts. Adding a method is adding one module (and importing it below).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from inspect import Parameter, signature
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.embeddings import Embeddings, as_embeddings
from prunekit.params import Param, validate
from prunekit.seeds import check_seed
from prunekit.selection.scores import Scores

if TYPE_CHECKING:
    from prunekit.runtime.costs import Cost, CostModel
    from prunekit.runtime.probe import ProbeFn

MethodFn = Callable[..., "MethodResult"]
CostFn = Callable[["CostModel", dict[str, Any]], "Cost"]
# Arguments a method function takes besides its declared parameters (``parts``: only the
# methods that write a folder's parts from their workers).
COMMON_ARGS = ("seed", "progress", "parts")


@dataclass(frozen=True)
class Summary:
    """What is said about a method's result.

    ``detail(params)``: the parenthesis ``prunekit score`` prints after "scored n of N
    rows", from the result's params (``" (k=24, inertia ...)"``; "" for nothing).
    ``inspect(scores, kept)``: the entries ``pk.inspect`` adds to its report for scores of
    this method (``kept``: the selection's positions in the scores); ``render(report)``:
    the text lines of those entries (called on every report of a selection of this method,
    so it looks for its entries).
    """

    detail: Callable[[dict[str, Any]], str] | None = None
    inspect: Callable[[Scores, np.ndarray], dict[str, Any]] | None = None
    render: Callable[[dict[str, Any]], list[str]] | None = None


@dataclass(frozen=True)
class Method:
    """A registered scoring method: its function, parameter spec, cost model, probe, summary."""

    name: str
    fn: MethodFn
    params: tuple[Param, ...]
    cost: CostFn | None = None
    probe: ProbeFn | None = None
    summary: Summary = Summary()

    @property
    def headline(self) -> str:
        """The first line of the function's docstring."""
        return (self.fn.__doc__ or "").strip().split("\n")[0]

    def detail(self, params: dict[str, Any]) -> str:
        """What ``prunekit score`` adds after its count ("" when the method says nothing)."""
        return self.summary.detail(params) if self.summary.detail else ""

    @property
    def writes_parts(self) -> bool:
        """Whether the function takes ``parts`` (writes a folder's parts from its workers)."""
        return "parts" in signature(self.fn).parameters


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
    # Written by the workers (``parts`` given): the parts' records and rows per cluster; the
    # per-row arrays above are then None.
    parts: list | None = None
    counts: np.ndarray | None = None
    # Side tables whose parts the workers wrote (a greedy ``order``): name -> the arguments
    # of ``PartWriter.add_table_parts`` (``types``, ``rows``, ``parts``).
    tables: dict | None = None


def register(name: str, params: tuple[Param, ...] = (), *, cost: CostFn | None = None,
             probe: ProbeFn | None = None,
             summary: Summary | None = None) -> Callable[[MethodFn], MethodFn]:
    """Class-free registration: ``@register("kmeans", params=(...), cost=..., ...)`` on the
    method function. A spec that disagrees with the function is a ``TypeError`` at import."""

    def deco(fn: MethodFn) -> MethodFn:
        check_declaration(name, fn, tuple(params))
        REGISTRY[name] = Method(name, fn, tuple(params), cost, probe, summary or Summary())
        return fn

    return deco


def check_declaration(name: str, fn: MethodFn, params: tuple[Param, ...]) -> None:
    """The function's keyword arguments are ``seed``, ``progress`` and exactly the declared
    parameters, each with the Param's default (same value and type): ``pk.score`` fills in
    the Param's default, a direct call the function's, and they must not drift apart."""
    args = signature(fn).parameters
    where = f"method '{name}' ({fn.__module__}.{fn.__qualname__})"
    declared = {p.name for p in params}
    for p in params:
        arg = args.get(p.name)
        if arg is None or arg.kind is not Parameter.KEYWORD_ONLY:
            raise TypeError(f"{where} declares parameter {p.name} but takes no keyword-only "
                            f"argument {p.name}.")
        if arg.default is Parameter.empty or type(arg.default) is not type(p.default) \
                or arg.default != p.default:
            shown = "none" if arg.default is Parameter.empty else repr(arg.default)
            raise TypeError(f"{where}: parameter {p.name} defaults to {p.default!r} in its Param "
                            f"but to {shown} in the function; make them equal.")
    extra = [a for a in args.values() if a.kind is Parameter.KEYWORD_ONLY
             and a.name not in declared and a.name not in COMMON_ARGS]
    if extra:
        raise TypeError(f"{where} takes keyword argument(s) {', '.join(a.name for a in extra)} "
                        "that its params do not declare.")


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

    ``emb`` is an :class:`~prunekit.io.embeddings.Embeddings` or anything array-like of shape
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
    n = emb.n_total
    dropped = emb.dropped_rows()
    usable = None
    if dropped.size:
        usable = np.ones(n, dtype=bool)  # 1 byte per row, not rows' 8
        usable[dropped] = False

    def scatter(values: np.ndarray | None, fill: Any, dtype: Any) -> np.ndarray | None:
        if values is None:
            return None
        if usable is None:
            return np.array(values, dtype=dtype)
        out = np.full(n, fill, dtype=dtype)
        out[usable] = values
        return out

    return Scores(
        score=scatter(res.score, np.nan, np.float64),
        method=method,
        n_total=n,
        cluster=scatter(res.cluster, -1, np.int64),
        centroids=res.centroids,
        centroid_distance=scatter(res.centroid_distance, np.nan, np.float64),
        order=None if res.order is None else emb.positions(res.order),
        ids=emb.ids,
        labels=emb.labels,
        source=emb.name,
        source_fingerprint=emb.fingerprint,
        params=_kept_params(params),
    )


@dataclass(frozen=True)
class ScoresFolder:
    """What :func:`score_to_folder` wrote: the folder, the method, rows scored and the
    params (as in the folder's manifest)."""

    path: Path
    method: str
    n_total: int
    n_scored: int
    params: dict[str, Any]


def score_to_folder(
    emb: Embeddings | Any, method: str, path: str | os.PathLike, *, seed: int = 0,
    progress: bool = True, command: list[str] | None = None, **params: Any,
) -> ScoresFolder:
    """Score ``emb`` like :func:`score` and write a partitioned scores folder at ``path``.

    The parts line up with the input's shards (split every ``PART_ROWS`` positions at
    chunk boundaries: :func:`prunekit.io.dataset.output_parts`) and hold the columns the
    HDF5 file would. A method that writes parts from its workers sends each row range's
    scores, ids and labels straight to its part, so the driver holds O(k D + parts); a
    result that comes back without records is gathered and written from the driver. The
    run id comes from the inputs (:func:`~prunekit.selection.partitioned.scores_run_id`),
    so the same command gives the same parts on every engine. The folder may not be, hold
    or lie in an input (the embeddings, a file a parameter names).
    """
    from prunekit.io.dataset import PartWriter, output_parts
    from prunekit.io.dataset.layout import pyarrow_modules
    from prunekit.io.source import shard_dirs
    from prunekit.selection.partitioned import (
        ScoresPartSink,
        scores_attrs,
        scores_run_id,
        write_scores_into,
    )

    spec = get_method(method)
    seed = check_seed(seed)
    values = validate(method, spec.params, params)
    pyarrow_modules()  # the install line before any work
    emb = as_embeddings(emb)
    files = [v for p in spec.params if p.kind == "path" for v in [values.get(p.name)] if v]
    src_path = None if emb.path is None else str(emb.path)
    run_id = scores_run_id(emb.n_total, method, emb.fingerprint, {"seed": seed, **values})
    bounds = [(p.start, p.stop) for p in output_parts(emb.reader)]
    with PartWriter(path, kind="scores", run_id=run_id, inputs=[src_path, *files],
                    input_dirs=shard_dirs(src_path) if src_path else []) as w:
        extra = {"parts": ScoresPartSink(w.spec, emb.sides())} if spec.writes_parts else {}
        res = spec.fn(emb, seed=seed, progress=progress, **extra, **values)
        kept = _kept_params({"seed": seed, **values, **res.params})
        if res.parts is None:  # gathered: written from here, in the same parts
            sc = _to_scores(emb, method, res, kept)
            infos, attrs = write_scores_into(w, sc, bounds), scores_attrs(sc)
        else:
            infos = res.parts
            attrs = {"method": method, "source": emb.name, "source_fingerprint": emb.fingerprint}
            if res.counts is not None:
                attrs["cluster_counts"] = [int(c) for c in res.counts]
            if res.centroids is not None:
                w.add_array("centroids", res.centroids)
            for name, table in (res.tables or {}).items():
                w.add_table_parts(name, table["types"], table["rows"], table["parts"])
        out = w.finalize(infos, n_total=emb.n_total, attrs=attrs, params=kept, command=command)
    return ScoresFolder(out, method, emb.n_total, emb.n, kept)


def _kept_params(params: dict) -> dict:
    """The params a scores file records: arrays and other scores left out."""
    return {k: v for k, v in params.items() if not isinstance(v, (np.ndarray, Scores))}


# Importing the modules registers the methods.
from prunekit.methods import herding, kcenter, kmeans, loss, random, semdedup  # noqa: E402,F401
