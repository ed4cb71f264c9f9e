"""What a selection keeps: per cluster and label before and after, and how representative it is.

:func:`inspect` is ``prunekit inspect`` as one call. It returns an
:class:`InspectionReport`: typed fields (counts, :class:`GroupTable` per cluster and label,
an :class:`MMDBlock`, the method's entries), ``to_dict()`` (what ``--json`` prints) and
``render()`` (the text the command prints). The report reads like that dict too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from prunekit._dictlike import DictLike
from prunekit.errors import PrunekitError
from prunekit.io.embeddings import Embeddings, UsableRows, load_embeddings
from prunekit.methods import REGISTRY, Summary
from prunekit.selection.quality import MMD_SAMPLE, group_counts, mmd_report
from prunekit.selection.scores import Scores, load_scores
from prunekit.selection.subset import Selection, load_selection, resolve_rows

MAX_ROWS_SHOWN = 40

PathOr = str | os.PathLike


def _check_scores(sel_fp: str, sc_fp: str, sel_name: str, sc_name: str) -> None:
    """The selection's and the scores' source fingerprints, when both have one, agree."""
    if sel_fp and sc_fp and sel_fp != sc_fp:
        raise PrunekitError(
            f"{sel_name} was made from other embeddings than {sc_name} (source fingerprints "
            f"{sel_fp[:12]} vs {sc_fp[:12]}). "
            "Pass the scores file the selection was made from."
        )


def _named(obj: Any, default: str) -> str:
    return str(obj) if isinstance(obj, (str, os.PathLike)) else default


def inspect(
    selection: Selection | PathOr,
    *,
    scores: Scores | PathOr | None = None,
    embeddings: Embeddings | PathOr | None = None,
    key: str | None = None,
    id_key: str | None = None,
    drop_nonfinite: bool = False,
    random_draws: int = 5,
    seed: int = 0,
    rff_dim: int = 512,
    mmd_sample: int | None = MMD_SAMPLE,
    progress: bool = False,
) -> InspectionReport:
    """The inspect report of a selection (an :class:`InspectionReport`).

    Its entries (``report.to_dict()``, or ``report[...]`` directly): always: ``n_total``, ``n_kept``, ``pr``, ``method``, ``params`` (and ``draws`` when it
    oversamples). With ``scores`` (the file the selection was made from): ``clusters``
    (and ``labels``) with per-group ``before``/``kept`` counts and coverage, and for
    semdedup scores ``duplicates`` (:func:`prunekit.methods.dedup.duplicate_counts`). With
    ``embeddings`` (any feature space, matched by ids or positions): ``mmd``, the RFF-MMD
    of the kept rows to the full set next to ``random_draws`` uniform subsets of the same
    size, estimated on at most ``mmd_sample`` rows of each side (None: all rows; see
    :func:`prunekit.selection.quality.mmd_report`). Each argument is an object or a path; a
    path of embeddings is read with ``key``/``id_key`` (None: the run context's), so rows
    match the selection by those ids. The MMD's chunk tasks run on the run context's engine
    (:func:`prunekit.runtime`); the report is the same on every engine.

    A selection folder (with a scores folder, or none) is read part by part, never whole;
    the report is the same as for the loaded objects.
    """
    names = (_named(selection, "selection"), _named(scores, "scores"), _named(embeddings, "embeddings"))
    opts = dict(random_draws=random_draws, seed=seed, rff_dim=rff_dim, mmd_sample=mmd_sample,
                progress=progress)
    folder = _is_folder(selection) and (scores is None or _is_folder(scores))
    sel, sc = selection, scores
    if not folder:  # loaded before the embeddings, so a bad selection is named first
        sel = selection if isinstance(selection, Selection) else load_selection(selection)
        sc = scores if isinstance(scores, Scores) or scores is None else load_scores(scores)
    emb = embeddings
    if emb is not None and not isinstance(emb, Embeddings):
        emb = load_embeddings(emb, key=key, id_key=id_key, drop_nonfinite=drop_nonfinite)
    if folder:
        return _inspect_folder(selection, scores, emb, names, opts)
    return inspect_selection(sel, scores=sc, emb=emb, names=names, **opts)


def inspect_selection(
    sel: Selection,
    *,
    scores: Scores | None = None,
    emb: Embeddings | None = None,
    names: tuple[str, str, str] = ("selection", "scores", "embeddings"),
    random_draws: int = 5,
    seed: int = 0,
    rff_dim: int = 512,
    mmd_sample: int | None = MMD_SAMPLE,
    progress: bool = True,
) -> InspectionReport:
    """:func:`inspect` on loaded objects; ``names`` say how errors call them."""
    found: dict[str, Any] = {"extra": {}}
    labels = None
    if scores is not None:
        _check_scores(sel.source_fingerprint, scores.source_fingerprint, names[0], names[1])
        rows = resolve_rows(sel, scores.n_total, scores.ids, selection_name=names[0], target_name=names[1])
        before = np.flatnonzero(scores.eligible)
        if scores.cluster is not None:
            found["clusters"] = GroupTable(**group_counts(scores.cluster, before, rows))
        part = _summary(scores.method).inspect  # what the method adds (semdedup: duplicates)
        if part is not None:
            found["extra"] = dict(part(scores, rows))
        if scores.labels is not None:
            labels = (scores.labels, before, rows)
    if emb is not None:
        rows = resolve_rows(sel, emb.n_total, emb.ids, selection_name=names[0], target_name=names[2])
        if labels is None and emb.labels is not None:
            labels = (emb.labels, emb.rows, rows)
        found["mmd"] = _mmd_block(emb, rows, sel.source_fingerprint, random_draws=random_draws,
                                  seed=seed, rff_dim=rff_dim, mmd_sample=mmd_sample,
                                  progress=progress)
    if labels is not None:
        found["labels"] = GroupTable(**group_counts(*labels))
    draws = None if sel.counts is None else int(sel.counts.sum())
    return InspectionReport(selection=names[0], n_total=sel.n_total, n_kept=sel.n_kept, pr=sel.pr,
                            method=sel.method, params=sel.params, draws=draws, **found)


# -- selection and scores folders, streamed ---------------------------------------------------


class _ByIds(Exception):  # noqa: N818 (a signal, not an error)
    """The selection's ids name other rows than its positions: matched in memory instead."""


def _is_folder(obj: Any) -> bool:
    return isinstance(obj, (str, os.PathLike)) and os.path.isdir(obj)


def _mmd_block(emb: Embeddings, rows, source_fingerprint: str, *, random_draws: int, seed: int,
               rff_dim: int, mmd_sample: int | None, progress: bool) -> MMDBlock:
    """The MMD of the kept ``rows`` (positions, or a :class:`~prunekit.selection.quality.KeptFile`)
    to the full set; whether ``emb`` are the embeddings the selection was made from."""
    mmd = mmd_report(emb, rows, random_draws=random_draws, seed=seed, n_features=rff_dim,
                     sample=mmd_sample, progress=progress)
    same = not source_fingerprint or source_fingerprint == emb.fingerprint
    return MMDBlock(**mmd, same_embeddings=same)


def _inspect_folder(selection: PathOr, scores: PathOr | None, emb: Embeddings | None,
                    names: tuple[str, str, str], opts: dict[str, Any]) -> InspectionReport:
    """:func:`inspect` of a selection folder (and a scores folder), streamed: the counts come
    from one pass over both folders side by side (semdedup's ``duplicates`` too:
    :class:`_DuplicateCounts`), the MMD's kept rows from a scratch file its chunk tasks
    read (:class:`~prunekit.selection.quality.KeptFile`), so memory holds per-group counts,
    one batch and one shard's ids and labels (:class:`_LabelCounts`). Rows are matched by
    position, which equals matching by id when the selection's ids are those of the rows it
    names (checked as they stream: the embeddings' fingerprint covers their vectors, not
    their ids); when they are not, or another method adds entries of its own, the report
    is made from the loaded objects (after a memory check) and is the same.
    """
    from prunekit.io.dataset import PartsReader
    from prunekit.selection.streamed import selection_meta

    r = PartsReader(selection, kind="selection")
    meta = selection_meta(r, selection)
    found: dict[str, Any] = {"extra": {}}
    try:
        if scores is not None:
            rs = PartsReader(scores, kind="scores")
            method = str(rs.manifest.get("method") or "unknown")
            _check_scores(meta.source_fingerprint, str(rs.manifest.get("source_fingerprint") or ""),
                          names[0], names[1])
            if _summary(method).inspect is not None and method not in _STREAMED_ENTRIES:
                raise _ByIds  # the method's entries need the scores and rows in memory
            found.update(_score_tables(r, rs, meta, names, method))
        if emb is not None:
            found.update(_emb_blocks(r, meta, emb, names, "labels" not in found, opts))
    except _ByIds:
        return _in_memory(selection, scores, emb, names, opts)
    draws = None
    if "count" in r.columns:
        draws = sum(int(b["count"].sum()) for b in r.iter_batches(["count"]))
    return InspectionReport(selection=names[0], n_total=meta.n_total, n_kept=r.n_rows,
                            pr=meta.pr, method=meta.method, params=meta.params, draws=draws,
                            **found)


def _in_memory(selection, scores, emb, names, opts) -> InspectionReport:
    """The report from the loaded selection and scores, when they must be matched by id."""
    from prunekit.io.dataset import PartsReader
    from prunekit.runtime.memory import check_fits

    n = PartsReader(selection, kind="selection").n_rows
    total = 0 if scores is None else PartsReader(scores, kind="scores").n_total
    check_fits(96.0 * n + 96.0 * total,
               f"matching {names[0]} to {names[1] if scores else names[2]} by id in memory")
    sc = None if scores is None else load_scores(scores)
    return inspect_selection(load_selection(selection), scores=sc, emb=emb, names=names, **opts)


def _same_rows(meta: Selection, sel_ids: str | None, n_total: int, target_ids: str | None,
               names: tuple[str, str]) -> bool:
    """Whether positions name the rows (ids, when both sides have them, still to be checked
    row by row); refuses the size mismatches :func:`resolve_rows` refuses; raises
    :class:`_ByIds` when only ids can match (string ids of a data set of another size)."""
    if meta.n_total == n_total:
        return sel_ids is not None and target_ids is not None
    if sel_ids is not None and target_ids is not None and target_ids == "string":
        raise _ByIds
    empty = np.zeros(0, dtype=np.int64)
    both = sel_ids is not None and target_ids is not None
    stand_in = Selection(indices=empty, n_total=meta.n_total, pr=meta.pr, ids=empty if both else None)
    resolve_rows(stand_in, n_total, empty if both else None, selection_name=names[0],
                 target_name=names[1])  # raises
    raise AssertionError("resolve_rows accepted a size mismatch")


class _GroupCounts:
    """:func:`~prunekit.selection.quality.group_counts` streamed: per group id the rows
    before, the kept rows and their draws, O(groups)."""

    def __init__(self) -> None:
        self.ids = np.zeros(0, dtype=np.int64)
        self.vals = np.zeros((0, 3), dtype=np.int64)

    def add(self, before: np.ndarray, kept: np.ndarray, weight: np.ndarray) -> None:
        from prunekit.selection.streamed import _merge

        g = np.concatenate([before, kept]).astype(np.int64)
        u, inv = np.unique(g, return_inverse=True)
        nb = before.size
        v = np.stack([np.bincount(inv[:nb], minlength=u.size),
                      np.bincount(inv[nb:], minlength=u.size),
                      np.bincount(inv[nb:], weights=weight, minlength=u.size).astype(np.int64)],
                     axis=1)
        self.ids, self.vals = _merge(self.ids, self.vals, u, v)

    def table(self, repeated: bool) -> GroupTable:
        present = self.vals[:, 0] > 0  # groups of the rows before, as group_counts lists them
        before, kept, draws = self.vals[present].T
        return GroupTable(ids=self.ids[present].tolist(), before=before.tolist(),
                          kept=kept.tolist(), coverage=float(np.mean(kept > 0)) if kept.size else 0.0,
                          draws=draws.tolist() if repeated else None)


def _aligned(sc_batches, sel_batches, sel_cols: list[str]):
    """Each scores batch (every position, ascending) with the selection rows inside it."""
    sel_it = iter(sel_batches)
    rest: dict[str, np.ndarray] | None = None
    for sb in sc_batches:
        end = int(sb["position"][-1]) + 1 if sb["position"].size else 0
        taken = []
        while True:
            if rest is None:
                rest = next(sel_it, None)
                if rest is None:
                    break
            cut = int(np.searchsorted(rest["position"], end))
            taken.append({c: v[:cut] for c, v in rest.items()})
            if cut < rest["position"].size:
                rest = {c: v[cut:] for c, v in rest.items()}
                break
            rest = None
        yield sb, {c: np.concatenate([t[c] for t in taken]) if taken else np.zeros(0, np.int64)
                   for c in sel_cols}


def _score_tables(r, rs, meta: Selection, names, method: str = "") -> dict[str, Any]:
    """Per-cluster and per-label tables of a selection folder over a scores folder (and
    semdedup's ``duplicates`` in ``extra``)."""
    sel_ids = r.columns.get("id")
    by_id = _same_rows(meta, sel_ids, rs.n_total, rs.columns.get("id"), names[:2])
    groups = [c for c in ("cluster", "label") if c in rs.columns]
    counts = {c: _GroupCounts() for c in groups}
    sel_cols = ["position", *[c for c in ("id", "count") if c in r.columns]]
    sc_cols = ["score", *groups, *(["id"] if by_id else [])]
    n_draws = 0
    dups = _DuplicateCounts("cluster" in groups) if method == "semdedup" else None
    for sb, kept in _aligned(rs.iter_batches(sc_cols), r.iter_batches(sel_cols), sel_cols):
        at = kept["position"] - (int(sb["position"][0]) if sb["position"].size else 0)
        if by_id and not _ids_equal(kept["id"], sb["id"][at]):
            raise _ByIds
        if dups is not None:
            dups.add(sb["score"], sb.get("cluster"), at)
        weight = kept["count"] if "count" in kept else np.ones(at.size, dtype=np.int64)
        n_draws += int(weight.sum())
        ok = ~np.isnan(sb["score"])
        for c in groups:
            counts[c].add(sb[c][ok], sb[c][at], weight)
    repeated = n_draws != r.n_rows
    out = {"clusters": counts["cluster"].table(repeated)} if "cluster" in counts else {}
    if "label" in counts:
        out["labels"] = counts["label"].table(repeated)
    if dups is not None:
        out["extra"] = {"duplicates": dups.rows()}
    return out


_STREAMED_ENTRIES = ("semdedup",)  # methods whose inspect entries a folder streams


class _DuplicateCounts:
    """:func:`prunekit.methods.dedup.duplicate_counts` streamed over the scores' batches:
    per eps the scored rows, the rows removed, the clusters they are in (O(k)) and how
    many of the kept rows are removed; the same numbers as on the loaded scores."""

    def __init__(self, clusters: bool) -> None:
        from prunekit.methods.dedup import DEFAULT_EPS

        self.eps = tuple(DEFAULT_EPS)
        self.n = 0
        self.removed = [0] * len(self.eps)
        self.in_selection = [0] * len(self.eps)
        self.clusters = [np.zeros(0, dtype=np.int64) for _ in self.eps] if clusters else None

    def add(self, score: np.ndarray, cluster: np.ndarray | None, kept_at: np.ndarray) -> None:
        """One batch: its scores, clusters and the kept rows in it (batch offsets)."""
        from prunekit.methods.dedup import removed

        s = np.asarray(score, dtype=np.float64)
        self.n += int((~np.isnan(s)).sum())
        at = np.unique(np.asarray(kept_at, dtype=np.int64))  # a row's repeats: one batch
        for j, e in enumerate(self.eps):
            gone = removed(s, e)
            self.removed[j] += int(gone.sum())
            self.in_selection[j] += int(gone[at].sum())
            if self.clusters is not None and cluster is not None:
                self.clusters[j] = np.union1d(self.clusters[j], np.asarray(cluster)[gone])

    def rows(self) -> list[dict]:
        out = []
        for j, e in enumerate(self.eps):
            gone, n = self.removed[j], self.n
            row = {"eps": float(e), "removed": gone, "kept": n - gone,
                   "fraction": float(gone / n) if n else 0.0}
            if self.clusters is not None:
                row["clusters_affected"] = int(self.clusters[j].size)
            row["in_selection"] = self.in_selection[j]
            out.append(row)
        return out


def _ids_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Ids match as :func:`prunekit.io.ids.id_positions` matches them (ints never match str)."""
    if (a.dtype.kind in "iu") != (b.dtype.kind in "iu"):
        return not a.size
    return bool(np.array_equal(a, b))


def _emb_blocks(r, meta: Selection, emb: Embeddings, names, want_labels: bool,
                opts: dict) -> dict[str, Any]:
    """The MMD block (and the labels table from the embeddings): the kept rows go to a
    scratch file as they stream, checked against the embeddings' ids."""
    import shutil
    import tempfile

    from prunekit.selection.quality import write_kept

    ids = _SideByShard(emb, "ids") if emb.has_ids else None
    emb_ids = None if ids is None else ("string" if ids.at(np.zeros(1, np.int64)).dtype == object
                                        else "int64")
    by_id = _same_rows(meta, r.columns.get("id"), emb.n_total, emb_ids, (names[0], names[2]))
    labels = _LabelCounts(emb) if want_labels and emb.has_labels else None
    cols = [c for c in ("id", "count") if c in r.columns and (c == "count" or by_id)]
    n_draws = [0]

    def rows():
        for b in r.iter_batches(cols):
            pos = b["position"]
            if by_id and not _ids_equal(b["id"], ids.at(pos)):
                raise _ByIds
            weight = b["count"] if "count" in b else np.ones(pos.size, dtype=np.int64)
            n_draws[0] += int(weight.sum())
            if labels is not None:
                labels.kept(pos, weight)
            yield pos, weight

    tmp = tempfile.mkdtemp(prefix="prunekit-inspect-")
    try:
        kept = write_kept(emb, rows(), os.path.join(tmp, "kept.rows"))
        out: dict[str, Any] = {"mmd": _mmd_block(emb, kept, meta.source_fingerprint, **opts)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if labels is not None:
        out["labels"] = labels.table(n_draws[0] != r.n_rows)
    return out


class _SideByShard:
    """The embeddings' ``ids`` or ``labels`` at ascending positions, read one shard at a
    time (a held array is sliced): the kept rows' lookups never hold every row's.
    ``on_read(i, values)`` sees each shard's array as it is read."""

    def __init__(self, emb: Embeddings, name: str, on_read=None) -> None:
        self.sides, self.name, self.on_read = emb.sides(), name, on_read
        self.starts = np.array([s.start for s in emb.reader.shards], dtype=np.int64)
        self.stops = np.array([s.stop for s in emb.reader.shards], dtype=np.int64)
        self.shard, self.values = -1, None

    def load(self, i: int) -> np.ndarray:
        """Shard ``i``'s array (read unless it is the one held)."""
        if i != self.shard:
            self.shard, self.values = -1, None  # the previous shard's array is freed first
            self.values = self.sides.read(self.name, int(self.starts[i]), int(self.stops[i]))
            self.shard = int(i)
            if self.on_read is not None:
                self.on_read(self.shard, self.values)
        return self.values  # type: ignore[return-value]

    def at(self, pos: np.ndarray) -> np.ndarray:
        pos = np.asarray(pos, dtype=np.int64)
        if not pos.size:
            return np.zeros(0, dtype=np.int64)
        shard = np.searchsorted(self.starts, pos, side="right") - 1
        out = []
        for i in np.unique(shard):  # ascending positions: shards in order, each read once
            out.append(self.load(int(i))[pos[shard == i] - self.starts[i]])
        return np.concatenate(out) if len(out) > 1 else out[0]


class _LabelCounts:
    """The per-label table of the embeddings' labels, streamed: each shard's labels are
    read once (when a kept row is in it, or at the end), their usable rows counted as
    before, the kept rows' looked up; the numbers of ``group_counts(emb.labels, emb.rows,
    kept)`` without either array."""

    def __init__(self, emb: Embeddings) -> None:
        self.counts, self.usable = _GroupCounts(), emb.usable_rows
        self.side = _SideByShard(emb, "labels", self._before)
        self.seen = np.zeros(self.side.starts.size, dtype=bool)

    def _before(self, i: int, labels: np.ndarray) -> None:
        if not self.seen[i]:
            self.seen[i] = True
            keep = _usable_in(self.usable, int(self.side.starts[i]), int(self.side.stops[i]))
            self.counts.add(labels[keep], np.zeros(0, dtype=np.int64), np.zeros(0))

    def kept(self, pos: np.ndarray, weight: np.ndarray) -> None:
        """Kept rows (ascending positions) and their draws."""
        self.counts.add(np.zeros(0, dtype=np.int64), self.side.at(pos), weight)

    def table(self, repeated: bool) -> GroupTable:
        for i in np.flatnonzero(~self.seen):  # shards without a kept row
            self.side.load(int(i))
        return self.counts.table(repeated)


def _usable_in(usable, a: int, b: int) -> np.ndarray | slice:
    """Offsets in ``a:b`` of the usable rows (``emb.usable_rows``: positions, or
    :class:`~prunekit.io.embeddings.UsableRows` holding only the dropped ones)."""
    if usable is None:
        return slice(None)
    if isinstance(usable, UsableRows):
        keep = np.ones(b - a, dtype=bool)
        d = usable.dropped
        keep[d[np.searchsorted(d, a):np.searchsorted(d, b)] - a] = False
        return keep
    rows = np.asarray(usable, dtype=np.int64)
    return rows[np.searchsorted(rows, a):np.searchsorted(rows, b)] - a


def _summary(method: str) -> Summary:
    """The method's summary declaration (none for a method not registered here)."""
    m = REGISTRY.get(method)
    return Summary() if m is None else m.summary


@dataclass(frozen=True)
class GroupTable:
    """Rows per group (cluster or label) before the selection and kept by it.

    ``ids`` ascending; ``coverage``: the fraction of groups with a kept row; ``draws``
    (oversampled selections only): kept rows counted with their repeats.
    """

    ids: list
    before: list[int]
    kept: list[int]
    coverage: float
    draws: list[int] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"ids": self.ids, "before": self.before, "kept": self.kept, "coverage": self.coverage}
        if self.draws is not None:
            out["draws"] = self.draws
        return out

    def render(self, title: str) -> list[str]:
        """The table as text lines (at most MAX_ROWS_SHOWN groups), headed ``title``."""
        n, one = len(self.ids), title[:-1]
        kept = np.array(self.kept)
        extra = self.draws is not None
        lines = [f"{title}: {n}, coverage {self.coverage:.3f} (kept per {one}: "
                 f"min {kept.min()}, max {kept.max()})",
                 f"  {one:>8} {'before':>8} {'kept':>8}" + (f" {'draws':>8}" if extra else "")]
        for i in range(min(n, MAX_ROWS_SHOWN)):
            row = f"  {self.ids[i]:>8} {self.before[i]:>8} {self.kept[i]:>8}"
            lines.append(row + (f" {self.draws[i]:>8}" if extra else ""))
        if n > MAX_ROWS_SHOWN:
            lines.append(f"  ... {n - MAX_ROWS_SHOWN} more (--json for all)")
        return lines


@dataclass(frozen=True)
class MMDBlock:
    """RFF-MMD of the kept rows to the full set, next to uniform random subsets.

    The fields of :func:`prunekit.selection.quality.mmd_report`, plus ``same_embeddings``:
    whether the embeddings are the ones the selection was made from.
    """

    sigma: float
    n_features: int
    n_kept: int
    n_full: int
    n_sample: int
    kept: float
    kept_error: float | None
    random: list[float]
    random_mean: float | None
    random_std: float | None
    same_embeddings: bool

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def render(self) -> list[str]:
        err = "" if self.kept_error is None else f" +- {self.kept_error:.5f}"
        rand = ("" if self.random_mean is None else
                f"   random subsets of {self.n_kept}: {self.random_mean:.5f} +- "
                f"{self.random_std:.5f} ({len(self.random)} draws)")
        lines = [f"RFF-MMD to the full set (sigma {self.sigma:.4g}, {self.n_features} features): "
                 f"kept {self.kept:.5f}{err}{rand}"]
        if self.n_sample < self.n_full or self.kept_error is not None:
            lines.append(f"  (estimated on a seeded sample of {self.n_sample} of {self.n_full} "
                         "rows; +- is the jackknife standard error)")
        if not self.same_embeddings:
            lines.append("  (these embeddings are not the ones the selection was made from)")
        return lines


_BASE = ("selection", "n_total", "n_kept", "pr", "method", "params", "draws")


@dataclass(frozen=True, eq=False)
class InspectionReport(DictLike):
    """What :func:`inspect` found: counts, per-group tables, MMD and the method's entries.

    :meth:`to_dict` is the JSON-ready report (``prunekit inspect --json``), :meth:`render`
    the text ``prunekit inspect`` prints. The report also reads like that dict
    (``rep["mmd"]["kept"]``, ``rep.get("labels")``, ``dict(rep)``, ``rep == a_dict``);
    each such read builds the dict anew, so call :meth:`to_dict` once to hold or change it.
    ``extra`` holds the entries the selection's method adds (``Summary.inspect`` in
    :mod:`prunekit.methods`; semdedup: ``duplicates``).
    """

    selection: str
    n_total: int
    n_kept: int
    pr: float
    method: str
    params: dict[str, Any]
    draws: int | None = None  # oversampled selections: kept rows with their repeats
    clusters: GroupTable | None = None
    labels: GroupTable | None = None
    mmd: MMDBlock | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def duplicates(self) -> list[dict[str, Any]] | None:
        """SemDeDup's removals per eps (semdedup scores only)."""
        return self.extra.get("duplicates")

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready values, keys in the order ``--json`` prints them."""
        out = {k: getattr(self, k) for k in _BASE[:-1]}
        if self.draws is not None:
            out["draws"] = self.draws
        if self.clusters is not None:
            out["clusters"] = self.clusters.to_dict()
        out.update(self.extra)
        if self.mmd is not None:
            out["mmd"] = self.mmd.to_dict()
        if self.labels is not None:
            out["labels"] = self.labels.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InspectionReport:
        """The report of a :meth:`to_dict` result (e.g. read back from ``--json``)."""
        def table(name: str) -> GroupTable | None:
            return None if d.get(name) is None else GroupTable(**d[name])

        extra = {k: v for k, v in d.items() if k not in (*_BASE, "clusters", "labels", "mmd")}
        return cls(**{k: d.get(k) for k in _BASE}, clusters=table("clusters"),
                   labels=table("labels"), mmd=None if d.get("mmd") is None else MMDBlock(**d["mmd"]),
                   extra=extra)

    def render(self) -> str:
        """The report as the text ``prunekit inspect`` prints."""
        p = self.params
        lines = [
            f"{self.selection}: kept {self.n_kept} of {self.n_total} rows "
            f"(pr {self.pr:g}, method {self.method}, balance {p.get('balance', '?')}"
            + (", inverted)" if p.get("invert") else ")")
        ]
        if self.draws is not None:
            lines.append(f"  oversampled: {self.draws} draws")
        for title, table in (("clusters", self.clusters), ("labels", self.labels)):
            if table is not None:
                lines += table.render(title)
        render_part = _summary(self.method).render
        if render_part is not None:
            lines += render_part(self)
        if self.mmd is not None:
            lines += self.mmd.render()
        return "\n".join(lines)

    def __repr__(self) -> str:
        parts = [k for k in ("clusters", "labels", "mmd") if getattr(self, k) is not None]
        return (f"InspectionReport({self.selection!r}: kept {self.n_kept} of {self.n_total}, "
                f"pr {self.pr:g}, method {self.method!r}; "
                f"{', '.join(parts + list(self.extra)) or 'counts only'})")


def as_report(report: InspectionReport | Mapping[str, Any]) -> InspectionReport:
    """``report`` as an :class:`InspectionReport` (a dict of :meth:`~InspectionReport.to_dict`
    is converted)."""
    return report if isinstance(report, InspectionReport) else InspectionReport.from_dict(report)


def render(report: InspectionReport | Mapping[str, Any]) -> str:
    """The report (object or dict) as the text ``prunekit inspect`` prints."""
    return as_report(report).render()
