"""What a selection keeps: per cluster and label before and after, and how representative it is.

:func:`inspect` is ``prunekit inspect`` as one call: a JSON-ready report; :func:`render`
turns it into the text the command prints.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.embeddings import Embeddings, load_embeddings
from prunekit.methods import REGISTRY, Summary
from prunekit.selection.quality import MMD_SAMPLE, group_counts, mmd_report
from prunekit.selection.scores import Scores, load_scores
from prunekit.selection.subset import Selection, load_selection, resolve_rows

MAX_ROWS_SHOWN = 40

PathOr = str | os.PathLike


def _check_scores(sel: Selection, sc: Scores, sel_name: str, sc_name: str) -> None:
    if sel.source_fingerprint and sc.source_fingerprint and sel.source_fingerprint != sc.source_fingerprint:
        raise PrunekitError(
            f"{sel_name} was made from other embeddings than {sc_name} (source fingerprints "
            f"{sel.source_fingerprint[:12]} vs {sc.source_fingerprint[:12]}). "
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
) -> dict[str, Any]:
    """The inspect report of a selection as a JSON-ready dict.

    Always: ``n_total``, ``n_kept``, ``pr``, ``method``, ``params`` (and ``draws`` when it
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
    """
    names = (_named(selection, "selection"), _named(scores, "scores"), _named(embeddings, "embeddings"))
    sel = selection if isinstance(selection, Selection) else load_selection(selection)
    sc = scores if isinstance(scores, Scores) or scores is None else load_scores(scores)
    emb = embeddings
    if emb is not None and not isinstance(emb, Embeddings):
        emb = load_embeddings(emb, key=key, id_key=id_key, drop_nonfinite=drop_nonfinite)
    return inspect_selection(sel, scores=sc, emb=emb, names=names, random_draws=random_draws,
                             seed=seed, rff_dim=rff_dim, mmd_sample=mmd_sample,
                             progress=progress)


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
) -> dict[str, Any]:
    """:func:`inspect` on loaded objects; ``names`` say how errors call them."""
    out: dict[str, Any] = {
        "selection": names[0],
        "n_total": sel.n_total,
        "n_kept": sel.n_kept,
        "pr": sel.pr,
        "method": sel.method,
        "params": sel.params,
    }
    if sel.counts is not None:
        out["draws"] = int(sel.counts.sum())
    labels = None
    if scores is not None:
        _check_scores(sel, scores, names[0], names[1])
        rows = resolve_rows(sel, scores.n_total, scores.ids, selection_name=names[0], target_name=names[1])
        before = np.flatnonzero(scores.eligible)
        if scores.cluster is not None:
            out["clusters"] = group_counts(scores.cluster, before, rows)
        part = _summary(scores.method).inspect  # what the method adds (semdedup: duplicates)
        if part is not None:
            out.update(part(scores, rows))
        if scores.labels is not None:
            labels = (scores.labels, before, rows)
    if emb is not None:
        rows = resolve_rows(sel, emb.n_total, emb.ids, selection_name=names[0], target_name=names[2])
        if labels is None and emb.labels is not None:
            labels = (emb.labels, emb.rows, rows)
        out["mmd"] = mmd_report(emb, rows, random_draws=random_draws, seed=seed,
                                n_features=rff_dim, sample=mmd_sample, progress=progress)
        out["mmd"]["same_embeddings"] = (
            not sel.source_fingerprint or sel.source_fingerprint == emb.fingerprint
        )
    if labels is not None:
        out["labels"] = group_counts(*labels)
    return out


def _summary(method: str) -> Summary:
    """The method's summary declaration (none for a method not registered here)."""
    m = REGISTRY.get(method)
    return Summary() if m is None else m.summary


def _table(title: str, g: dict[str, Any]) -> list[str]:
    n = len(g["ids"])
    kept = np.array(g["kept"])
    lines = [f"{title}: {n}, coverage {g['coverage']:.3f} (kept per {title[:-1]}: "
             f"min {kept.min()}, max {kept.max()})"]
    head = f"  {title[:-1]:>8} {'before':>8} {'kept':>8}" + (f" {'draws':>8}" if "draws" in g else "")
    lines.append(head)
    for i in range(min(n, MAX_ROWS_SHOWN)):
        row = f"  {g['ids'][i]:>8} {g['before'][i]:>8} {g['kept'][i]:>8}"
        lines.append(row + (f" {g['draws'][i]:>8}" if "draws" in g else ""))
    if n > MAX_ROWS_SHOWN:
        lines.append(f"  ... {n - MAX_ROWS_SHOWN} more (--json for all)")
    return lines


def render(report: dict[str, Any]) -> str:
    """The report as text."""
    p = report["params"]
    lines = [
        f"{report['selection']}: kept {report['n_kept']} of {report['n_total']} rows "
        f"(pr {report['pr']:g}, method {report['method']}, balance {p.get('balance', '?')}"
        + (", inverted)" if p.get("invert") else ")")
    ]
    if "draws" in report:
        lines.append(f"  oversampled: {report['draws']} draws")
    for name in ("clusters", "labels"):
        if name in report:
            lines += _table(name, report[name])
    render_part = _summary(report["method"]).render
    if render_part is not None:
        lines += render_part(report)
    if "mmd" in report:
        m = report["mmd"]
        err = "" if m.get("kept_error") is None else f" +- {m['kept_error']:.5f}"
        rand = ("" if m["random_mean"] is None else
                f"   random subsets of {m['n_kept']}: {m['random_mean']:.5f} +- "
                f"{m['random_std']:.5f} ({len(m['random'])} draws)")
        lines.append(
            f"RFF-MMD to the full set (sigma {m['sigma']:.4g}, {m['n_features']} features): "
            f"kept {m['kept']:.5f}{err}{rand}"
        )
        if m.get("n_sample", m["n_full"]) < m["n_full"] or m.get("kept_error") is not None:
            lines.append(f"  (estimated on a seeded sample of {m['n_sample']} of {m['n_full']} rows; "
                         "+- is the jackknife standard error)")
        if not m["same_embeddings"]:
            lines.append("  (these embeddings are not the ones the selection was made from)")
    return "\n".join(lines)
