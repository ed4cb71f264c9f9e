"""``build``: everything the HTML page of a selection shows, as one report object.

The counts and the MMD come from :func:`prunekit.inspect`; the score distributions, the
eps curve, the 2-D map, the duplicate groups and the thumbnails are computed here, each
reading only what it shows (see :mod:`prunekit.report.data`, :mod:`~prunekit.report.views`
and :mod:`~prunekit.report.thumbs`). A selection folder and a scores folder are streamed
part by part beside each pass, never loaded: the page holds per-group counts, a window of
rows, the map's sample and the rows shown, and equals the page of the same HDF5 files.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.embeddings import Embeddings, load_embeddings
from prunekit.report import data, thumbs, views
from prunekit.runtime.memory import check_fits
from prunekit.selection.quality import MMD_SAMPLE
from prunekit.selection.scores import Scores
from prunekit.selection.subset import Selection, load_selection

PathOr = str | os.PathLike


@dataclass
class Thumb:
    """One image on the page: the row it shows, or the gap where it could not."""

    row: int
    id: Any
    kept: bool
    note: str = ""
    png: bytes | None = None
    size: tuple[int, int] = (0, 0)
    gap: str | None = None


@dataclass(frozen=True)
class FolderMeta:
    """A selection folder's attributes, without its rows (which are streamed when needed)."""

    path: str
    n_total: int
    n_kept: int
    pr: float
    method: str
    params: dict[str, Any]
    source_fingerprint: str


def folder_meta(path: PathOr) -> FolderMeta:
    """The attributes of the selection folder ``path``, checked as loading it checks them."""
    from prunekit.io.dataset import PartsReader
    from prunekit.selection.streamed import selection_meta

    r = PartsReader(path, kind="selection")
    m = selection_meta(r, path)
    return FolderMeta(os.fspath(path), m.n_total, r.n_rows, m.pr, m.method, m.params,
                      m.source_fingerprint)


def _loaded(sel: Selection | FolderMeta, why: str) -> Selection:
    """The selection in memory (a folder whose positions do not name the rows: by ids)."""
    if isinstance(sel, Selection):
        return sel
    check_fits(96.0 * sel.n_kept, f"matching the rows of {sel.path} to {why} by id in memory")
    return load_selection(sel.path)


@dataclass
class InspectReport:
    """What a selection keeps, as the numbers and images of one page.

    ``summary`` is :func:`prunekit.inspect`'s report; the other fields are the page's own
    views (None or empty where the inputs do not allow them, with the reason in ``notes``).
    :meth:`render_html` writes the page; in a notebook the object shows itself.
    """

    summary: dict[str, Any]
    name: str
    rule: str
    stats: data.ScoreStats | None = None
    compare: list[dict[str, Any]] = field(default_factory=list)
    map: views.MapData | None = None
    strips: list[dict[str, Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    images: str | None = None
    inputs: list[str] = field(default_factory=list)
    input_dirs: list[str] = field(default_factory=list)

    def thumbs(self) -> list[Thumb]:
        """Every image slot of the page, in page order."""
        out = [t for s in self.strips for t in s["kept"] + s["removed"]]
        for g in self.groups:
            out += ([g["anchor"]] if g["anchor"] is not None else []) + g["removed"]
        return out

    @property
    def gaps(self) -> list[tuple[Any, str]]:
        """(id, reason) of each distinct image that could not be shown."""
        seen = {}
        for t in self.thumbs():
            if t.gap is not None:
                seen.setdefault(str(t.id), (t.id, t.gap))
        return list(seen.values())

    @property
    def n_shown(self) -> int:
        return len({str(t.id) for t in self.thumbs() if t.png is not None})

    def html(self) -> str:
        """The whole page as one self-contained HTML document."""
        from prunekit.report.page import render_page

        return render_page(self)

    def render_html(self, path: PathOr) -> Path:
        """Write the page as ``path/index.html`` (atomically; see :func:`page.write_dir`)."""
        from prunekit.report.page import write_dir

        return write_dir(path, self.html(), inputs=self.inputs, input_dirs=self.input_dirs)

    def _repr_html_(self) -> str:
        from prunekit.report.page import render_body

        return render_body(self)


def as_dict(result: Any) -> dict[str, Any]:
    """``pk.inspect``'s result as a dict (a dict, or an object that converts to one)."""
    if isinstance(result, dict):
        return result
    for name in ("to_dict", "as_dict"):
        if callable(getattr(result, name, None)):
            return getattr(result, name)()
    if dataclasses.is_dataclass(result):
        return dataclasses.asdict(result)
    raise TypeError(f"cannot read pk.inspect's result of type {type(result).__name__}")


def build(
    selection: Selection | PathOr,
    *,
    scores: Scores | PathOr | None = None,
    embeddings: Embeddings | PathOr | None = None,
    images: Any = None,
    compare: list[Any] | tuple = (),
    key: str | None = None,
    drop_nonfinite: bool = False,
    random_draws: int = 5,
    rff_dim: int = 512,
    mmd_sample: int | None = MMD_SAMPLE,
    map: str = "pca",
    map_sample: int = 3000,
    clusters_shown: int = 6,
    per_strip: int = 6,
    dup_groups: int = 8,
    max_pixels: int = thumbs.MAX_PIXELS,
    seed: int = 0,
    progress: bool = False,
    name: str | None = None,
) -> InspectReport:
    """The report of ``selection`` (paths or loaded objects), ready for :meth:`render_html`.

    ``scores``: the scores file it was made from (per-cluster bars, score distributions,
    the eps curve of semdedup, thumbnails per cluster). ``embeddings``: the MMD against
    random subsets (:func:`prunekit.inspect`), the 2-D ``map`` (``pca``, ``tsne`` or
    ``none``) of ``map_sample`` seeded rows, duplicate groups. ``images``: where the ids'
    images are (a folder, WebDataset ``.tar`` shards, or a mapping/function id -> array).
    ``compare``: further selections or scores files (a scores file is selected at this
    selection's pr and balance; a (name, item) pair names it) whose MMD is shown side by
    side. ``name``: the selection's name on the page (default: its path).
    """
    from prunekit.report.figures import require_plot

    require_plot()
    if map not in views.MAPS:
        raise PrunekitError(f"unknown map '{map}'; choose one of: {', '.join(views.MAPS)}.")
    for what, v, low in (("map_sample", map_sample, 1), ("clusters_shown", clusters_shown, 0),
                         ("per_strip", per_strip, 0), ("dup_groups", dup_groups, 0),
                         ("max_pixels", max_pixels, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise PrunekitError(f"{what} must be an integer >= {low}, got {v!r}.")
    if compare and embeddings is None:
        raise PrunekitError("--compare needs --embeddings: the criteria are compared by their "
                            "MMD to the full set.")
    provider = None
    if images is not None:
        thumbs.require_pillow()
        provider = thumbs.open_provider(images)
    if isinstance(selection, (str, os.PathLike)) and os.path.isdir(selection):
        sel: Selection | FolderMeta = folder_meta(selection)
    else:
        sel = selection if isinstance(selection, Selection) else load_selection(selection)
    emb = embeddings
    if emb is not None and not isinstance(emb, Embeddings):
        emb = load_embeddings(emb, key=key, drop_nonfinite=drop_nonfinite)
    opts = dict(random_draws=random_draws, seed=seed, rff_dim=rff_dim, mmd_sample=mmd_sample,
                progress=progress)
    summary = as_dict(_inspect()(selection, scores=scores, embeddings=emb, **opts))
    report = InspectReport(summary=summary, name=name or _name(selection, "selection"),
                           rule=data.quota_rule(sel, summary),
                           images=None if provider is None else provider.name)
    report.inputs, report.input_dirs = input_paths(selection, scores, embeddings, images, compare)
    if emb is not None:
        kept_emb = _kept_in_emb(emb, sel, report.name)
        if map != "none":
            report.map = views.project(emb, kept_emb, method=map, sample=map_sample, seed=seed)
        report.compare = _compare(report, sel, emb, compare, opts)
    else:
        report.notes.append("No embeddings given: no MMD, no map, no duplicate groups "
                            "(--embeddings).")
    if scores is None:
        report.notes.append("No scores given: no per-cluster counts, score distributions or "
                            "images per cluster (--scores).")
    else:
        _from_scores(report, sel, scores, emb, provider, clusters_shown, per_strip, dup_groups,
                     max_pixels, seed)
    return report


def _inspect() -> Any:
    """The public ``pk.inspect`` (imported late: this module is imported by ``prunekit``)."""
    import prunekit

    return prunekit.inspect


def _name(obj: Any, default: str) -> str:
    return str(obj) if isinstance(obj, (str, os.PathLike)) else default


def input_paths(*items: Any) -> tuple[list[str], list[str]]:
    """Paths the command reads (files) and folders it reads (an output may not land there)."""
    files, dirs = [], []
    for item in items[:4] + tuple(items[4]):
        item = item[1] if isinstance(item, tuple) and len(item) == 2 else item
        if isinstance(item, (str, os.PathLike)):
            (dirs if Path(item).is_dir() else files).append(str(item))
    return files, dirs


def _kept_in_emb(emb: Embeddings, sel: Selection | FolderMeta, name: str) -> data.KeptRows:
    """The kept rows in the embeddings' row space (a folder's positions name them when the
    sizes agree, as ``pk.inspect`` checks; otherwise they are matched by id in memory)."""
    if isinstance(sel, FolderMeta) and sel.n_total == emb.n_total:
        return data.KeptRows(folder=sel.path, n=sel.n_kept)
    return data.KeptRows(views.kept_in(emb, _loaded(sel, "the embeddings"), name))


def _kept_in_scores(sel: Selection | FolderMeta, rows: data.RowArrays) -> data.KeptRows:
    """The kept rows in the scores' row space (see :func:`_kept_in_emb`)."""
    if isinstance(sel, FolderMeta) and sel.n_total == rows.n_total:
        return data.KeptRows(folder=sel.path, n=sel.n_kept)
    return data.KeptRows(data.kept_positions(_loaded(sel, "the scores"), rows))


def _compare(report: InspectReport, sel: Selection | FolderMeta, emb: Embeddings, compare: Any,
             opts: dict[str, Any]) -> list[dict[str, Any]]:
    """The MMD row of this selection and of each item of ``compare`` (same embeddings, seed).

    A scores folder is selected part by part into a scratch folder, removed at the end.
    """
    rows = []
    if "mmd" in report.summary:
        rows.append(_mmd_row(report.name, "this selection", sel, report.summary["mmd"]))
    work = tempfile.mkdtemp(prefix="prunekit-report-") if compare else None
    try:
        for item in compare:
            name, other, how = views.compare_selection(item, sel, opts["seed"], work)
            res = as_dict(_inspect()(other, embeddings=emb, **opts))
            meta = folder_meta(other) if isinstance(other, (str, os.PathLike)) else other
            rows.append(_mmd_row(name, how, meta, res["mmd"]))
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    return rows


def _mmd_row(name: str, how: str, sel: Selection | FolderMeta,
             mmd: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "how": how, "method": sel.method, "pr": sel.pr, "n_kept": sel.n_kept,
            "balance": sel.params.get("balance", "-"), **mmd}


def _from_scores(report: InspectReport, sel: Selection | FolderMeta, scores: Any,
                 emb: Embeddings | None,
                 provider: thumbs.ImageProvider | None, clusters_shown: int, per_strip: int,
                 dup_groups: int, max_pixels: int, seed: int) -> None:
    """Score distributions, eps curve, thumbnails per cluster and duplicate groups."""
    with data.RowArrays(scores) as rows:
        kept = _kept_in_scores(sel, rows)
        groups = report.summary.get("clusters")
        shown = [] if provider is None else \
            _largest(groups, clusters_shown) if rows.has("cluster") else [data.ALL_ROWS]
        aligned = emb is not None and emb.n_total == rows.n_total and (
            not rows.fingerprint or not emb.fingerprint or rows.fingerprint == emb.fingerprint)
        n_dup = 6 * dup_groups if aligned and rows.has("cluster") else 0
        report.stats, cand = data.scan(rows, kept, shown=shown, per_strip=per_strip,
                                       n_duplicates=n_dup, seed=seed)
        data.set_cut(report.stats, sel.params)
        links = []
        if rows.method == "semdedup" and n_dup:
            links = views.nearest_kept(emb, rows, kept, cand.duplicates)
        elif rows.method == "semdedup":
            report.notes.append("Duplicate groups need the embeddings the scores were made from "
                                "(--embeddings).")
        ids = _ids(rows, emb if aligned else None)
        _strips(report, groups, cand, ids)
        _groups(report, views.group_links(links, dup_groups, per_strip), ids)
    if provider is not None:
        _fill_thumbs(report, provider, max_pixels)


def _largest(groups: dict[str, Any] | None, n: int) -> list[int]:
    if not groups:
        return []
    order = np.lexsort((np.array(groups["ids"]), -np.array(groups["before"])))[:n]
    return [int(groups["ids"][i]) for i in order]


def _ids(rows: data.RowArrays, emb: Embeddings | None):
    """A function: positions -> their ids (the scores', the embeddings', or the positions)."""
    def lookup(pos: list[int]) -> list[Any]:
        if not pos:
            return []
        if rows.has("ids"):
            return rows.take("ids", np.array(pos)).tolist()
        if emb is not None and emb.has_ids:  # only the rows shown are read
            return np.concatenate([emb.side_for("ids", p, p + 1) for p in pos]).tolist()
        return list(pos)

    return lookup


def _strips(report: InspectReport, groups: dict[str, Any] | None, cand: data.Candidates,
            ids: Any) -> None:
    where = {int(c): i for i, c in enumerate(groups["ids"])} if groups else {}
    notes = {"centroid distance": "d {:.4g}", "score": "score {:.4g}", "random": ""}
    for c, sides in cand.strips.items():
        if c in where:
            size, kept = groups["before"][where[c]], groups["kept"][where[c]]
        else:
            size, kept = report.stats.n_eligible, report.stats.n_kept
        strip = {"cluster": c, "before": size, "kept_count": kept, "by": cand.by}
        for side in ("kept", "removed"):
            picked = sides[side]
            names = ids([p for p, _ in picked])
            sign = -1.0 if cand.by == "score" else 1.0  # score strips sort on -score
            strip[side] = [Thumb(p, i, side == "kept", notes[cand.by].format(sign * d))
                           for (p, d), i in zip(picked, names, strict=True)]
        report.strips.append(strip)


def _groups(report: InspectReport, grouped: list[dict[str, Any]], ids: Any) -> None:
    for g in grouped:
        removed = g["removed"]
        names = ids([x.row for x in removed])
        anchor = None
        if g["anchor"] is not None:
            anchor = Thumb(g["anchor"], ids([g["anchor"]])[0], True, "kept")
        report.groups.append({
            "cluster": g["cluster"], "n": g["n"], "anchor": anchor,
            "removed": [Thumb(x.row, i, False, "no kept row in the cluster" if x.cosine is None
                              else f"cos {x.cosine:.4f}") for x, i in zip(removed, names, strict=True)],
        })


def _fill_thumbs(report: InspectReport, provider: thumbs.ImageProvider, max_pixels: int) -> None:
    """Fetch and shrink every image the page shows (one fetch for all)."""
    slots = report.thumbs()
    made = thumbs.load_thumbs(provider, [t.id for t in slots], max_pixels=max_pixels)
    for t in slots:
        got = made[t.id]
        if isinstance(got, thumbs.Gap):
            t.gap = got.reason
        else:
            t.png, t.size = got, thumbs.png_size(got)
