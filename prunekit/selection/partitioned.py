"""Scores and selections as partitioned folders (see :mod:`prunekit.io.dataset`).

The folder holds the same content as the HDF5 file, column for dataset and manifest key
for attribute: loading either gives equal objects. Per-row datasets become columns
(``ids`` -> ``id``, ``labels`` -> ``label``, ``indices`` -> ``position``, ``counts`` ->
``count``); ``centroids`` is ``centroids.npy``; a greedy ``order`` is the side table
``order-NNNNN.parquet``. An in-memory object is cut into parts of ``PART_ROWS`` positions;
a selection's parts cover the same position ranges as the scores' parts. ``score`` writes
parts aligned with its input shards (``bounds``), from the workers where a method can
(:class:`ScoresPartSink`), else from the gathered scores; both give the same columns.
Scores with clusters record ``cluster_counts`` (rows per cluster) in the manifest.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.dataset import (
    PartFile,
    PartInfo,
    PartRange,
    PartSpec,
    PartsReader,
    PartWriter,
    part_bounds,
    run_id_for,
)
from prunekit.io.dataset.writer import disk_errors
from prunekit.io.provenance import params_json
from prunekit.io.sides import SideReader
from prunekit.selection.scores import Scores
from prunekit.selection.subset import Selection

# Scores field -> column name in the parts.
SCORE_COLUMNS = {
    "ids": "id",
    "score": "score",
    "cluster": "cluster",
    "centroid_distance": "centroid_distance",
    "labels": "label",
}


def save_scores_parts(
    sc: Scores,
    path: str | os.PathLike,
    command: list[str] | None = None,
    *,
    bounds: Sequence[tuple[int, int]] | None = None,
    run_id: str | None = None,
) -> Path:
    """Write ``sc`` as a partitioned folder at ``path`` (atomically); returns the path.

    ``bounds``: the parts' position ranges (default: every ``PART_ROWS`` positions);
    ``run_id``: the run's id (default: from the content, :func:`scores_run_id` otherwise).
    """
    identity = {
        "kind": "scores",
        "n_total": sc.n_total,
        "method": sc.method,
        "source_fingerprint": sc.source_fingerprint,
        "params": params_json(sc.params),
        "score": hashlib.blake2b(sc.score.tobytes(), digest_size=16).hexdigest(),
    }
    src = sc.source if os.path.exists(sc.source) else None
    with PartWriter(
        path,
        kind="scores",
        run_id=run_id or run_id_for(identity),
        inputs=[src],
        input_dirs=[src if src and os.path.isdir(src) else None],
    ) as w:
        infos = write_scores_into(w, sc, bounds)
        return w.finalize(
            infos, n_total=sc.n_total, attrs=scores_attrs(sc), params=sc.params, command=command
        )


def write_scores_into(
    w: PartWriter, sc: Scores, bounds: Sequence[tuple[int, int]] | None = None
) -> list[PartInfo]:
    """Parts of in-memory scores (cut at ``bounds``), centroids and order into ``w``."""
    infos = []
    for i, (a, b) in enumerate(part_bounds(sc.n_total) if bounds is None else bounds):
        cols = {"position": np.arange(a, b, dtype=np.int64)}
        cols.update(
            {c: getattr(sc, f)[a:b] for f, c in SCORE_COLUMNS.items() if getattr(sc, f) is not None}
        )
        infos.append(w.write_part(i, cols, a, b))
    if sc.centroids is not None:
        w.add_array("centroids", sc.centroids)
    if sc.order is not None:
        w.add_table("order", {"position": sc.order})
    return infos


def scores_attrs(sc: Scores, cluster_counts: np.ndarray | None = None) -> dict:
    """The manifest attributes of scores (``cluster_counts`` computed when not given)."""
    attrs = {"method": sc.method, "source": sc.source, "source_fingerprint": sc.source_fingerprint}
    if cluster_counts is None and sc.cluster is not None:
        k = 0 if sc.centroids is None else sc.centroids.shape[0]
        cluster_counts = np.bincount(sc.cluster[sc.cluster >= 0], minlength=k)
    if cluster_counts is not None:
        attrs["cluster_counts"] = [int(c) for c in cluster_counts]
    return attrs


def scores_run_id(n_total: int, method: str, fingerprint: str, params: dict) -> str:
    """The run id of a ``score`` command, known before it computes: from what it was given
    (the source's fingerprint, the method and its parameters), so the same command writes
    the same bytes whichever engine ran it and whether workers or the driver wrote the parts."""
    return run_id_for(
        {
            "kind": "scores",
            "n_total": n_total,
            "method": method,
            "source_fingerprint": fingerprint,
            "params": params_json(params),
        }
    )


@dataclass(frozen=True)
class ScoresPartSink:
    """What a worker needs to write scores parts itself: the writer's :class:`PartSpec` and
    the reader of the ids/labels of its rows (both pickle small)."""

    spec: PartSpec
    sides: SideReader | None = None

    def open(self, part: PartRange) -> ScoresPart:
        """Start part ``part`` (its ids and labels are read now, once)."""
        return ScoresPart(self, part)


class ScoresPart:
    """One scores part being written where its rows are scored, batch by batch in position
    order: ``write(start, score=..., cluster=..., centroid_distance=...)``, then ``close()``
    (its :class:`PartInfo`) or ``abort()``. Columns as :func:`write_scores_into` writes them."""

    def __init__(self, sink: ScoresPartSink, part: PartRange) -> None:
        self.part = part
        read = sink.sides.read if sink.sides is not None else (lambda *a: None)
        self.ids = read("ids", part.start, part.stop)
        self.labels = read("labels", part.start, part.stop)
        self.file = PartFile(sink.spec, part.index, part.start, part.stop)

    def write(self, start: int, **columns: np.ndarray) -> None:
        """Rows ``start..start + n`` of the part: per-row ``score`` and, as the method has
        them, ``cluster`` and ``centroid_distance``; ``id``/``label`` are added here."""
        n = len(columns["score"])
        a, b = start - self.part.start, start - self.part.start + n
        cols = {"position": np.arange(start, start + n, dtype=np.int64)}
        if self.ids is not None:
            cols["id"] = self.ids[a:b]
        cols["score"] = np.asarray(columns["score"], dtype=np.float64)
        for name in ("cluster", "centroid_distance"):
            if columns.get(name) is not None:
                cols[name] = columns[name]
        if self.labels is not None:
            cols["label"] = self.labels[a:b]
        with disk_errors(Path(self.file.spec.staging) / self.file.name):
            self.file.write(cols)

    def close(self) -> PartInfo:
        with disk_errors(Path(self.file.spec.staging) / self.file.name):
            return self.file.close()

    def abort(self) -> None:
        self.file.abort()


def load_scores_parts(path: str | os.PathLike) -> Scores:
    """Read a partitioned scores folder into a validated :class:`Scores`."""
    r = PartsReader(path, kind="scores")
    m = r.manifest
    cols = r.read_columns()
    order = r.table("order")
    kwargs = {f: cols[c] for f, c in SCORE_COLUMNS.items() if c in cols}
    try:
        return Scores(
            **kwargs,
            method=_str(m, "method", "unknown"),
            n_total=r.n_total,
            centroids=r.array("centroids"),
            order=None if order is None else order["position"],
            source=_str(m, "source", ""),
            source_fingerprint=_str(m, "source_fingerprint", ""),
            params=m.get("params", {}),
        )
    except PrunekitError as exc:
        raise PrunekitError(f"scores folder {path}: {exc}") from exc


def save_selection_parts(
    sel: Selection, path: str | os.PathLike, command: list[str] | None = None
) -> Path:
    """Write ``sel`` as a partitioned folder at ``path`` (atomically); returns the path."""
    identity = {
        "kind": "selection",
        "n_total": sel.n_total,
        "pr": sel.pr,
        "seed": sel.seed,
        "method": sel.method,
        "source_fingerprint": sel.source_fingerprint,
        "indices": _digest(sel),
        "params": params_json(sel.params),
    }
    scores = sel.params.get("scores")
    scores = scores if isinstance(scores, str) and os.path.exists(scores) else None
    with PartWriter(
        path,
        kind="selection",
        run_id=run_id_for(identity),
        inputs=[scores],
        input_dirs=[scores if scores and os.path.isdir(scores) else None],
    ) as w:
        infos = []
        for i, (a, b) in enumerate(part_bounds(sel.n_total)):
            lo, hi = np.searchsorted(sel.indices, [a, b])
            cols = {"position": sel.indices[lo:hi]}
            if sel.ids is not None:
                cols["id"] = sel.ids[lo:hi]
            if sel.counts is not None:
                cols["count"] = sel.counts[lo:hi]
            infos.append(w.write_part(i, cols, a, b))
        attrs = {
            "method": sel.method,
            "pr": float(sel.pr),
            "n_kept": sel.n_kept,
            "seed": sel.seed,
            "source_fingerprint": sel.source_fingerprint,
        }
        return w.finalize(
            infos, n_total=sel.n_total, attrs=attrs, params=sel.params, command=command
        )


def load_selection_parts(path: str | os.PathLike) -> Selection:
    """Read a partitioned selection folder into a validated :class:`Selection`."""
    r = PartsReader(path, kind="selection")
    m = r.manifest
    where = f"selection folder {path}"
    n_kept, pr, seed = m.get("n_kept"), m.get("pr", 0.0), m.get("seed")
    if n_kept != r.n_rows:
        raise PrunekitError(
            f"{where}: 'n_kept' is {n_kept!r} but the parts hold {r.n_rows} rows; "
            "rewrite it with prunekit."
        )
    if isinstance(pr, bool) or not isinstance(pr, (int, float)):
        raise PrunekitError(
            f"{where}: 'pr' must be a number, got {pr!r}; rewrite it with prunekit."
        )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise PrunekitError(f"{where}: 'seed' must be an integer or null, got {seed!r}.")
    cols = r.read_columns()
    try:
        return Selection(
            indices=cols["position"],
            n_total=r.n_total,
            pr=pr,
            method=_str(m, "method", "unknown"),
            seed=seed,
            ids=cols.get("id"),
            counts=cols.get("count"),
            source_fingerprint=_str(m, "source_fingerprint", ""),
            params=m.get("params", {}),
        )
    except PrunekitError as exc:
        raise PrunekitError(f"{where}: {exc}") from exc


def _str(m: dict, key: str, default: str) -> str:
    v = m.get(key, default)
    return default if v is None else str(v)


def _digest(sel: Selection) -> str:
    """Which rows a selection keeps (its indices and counts), for its run id."""
    h = hashlib.blake2b(sel.indices.tobytes(), digest_size=16)
    if sel.counts is not None:
        h.update(sel.counts.tobytes())
    return h.hexdigest()
