"""``prunekit inspect``: what a selection keeps, per cluster and label, and how representative it is."""

from __future__ import annotations

import json
from typing import Any

import click
import numpy as np

from ..embeddings import Embeddings
from ..errors import PrunekitError
from ..quality import group_counts, mmd_report
from ..scores import Scores, load_scores
from ..selection import Selection, load_selection, resolve_rows
from .common import drop_option, key_option, open_embeddings, quiet_option

MAX_ROWS_SHOWN = 40


def _check_scores(sel: Selection, sc: Scores, sel_path: str, sc_path: str) -> None:
    if sel.source_fingerprint and sc.source_fingerprint and sel.source_fingerprint != sc.source_fingerprint:
        raise PrunekitError(
            f"{sel_path} was made from other embeddings than {sc_path} (source fingerprints "
            f"{sel.source_fingerprint[:12]} vs {sc.source_fingerprint[:12]}). "
            "Pass the scores file the selection was made from."
        )


def inspect_selection(
    sel: Selection,
    *,
    scores: Scores | None = None,
    emb: Embeddings | None = None,
    names: tuple[str, str, str] = ("selection", "scores", "embeddings"),
    random_draws: int = 5,
    seed: int = 0,
    rff_dim: int = 512,
    progress: bool = True,
) -> dict[str, Any]:
    """The inspect report as a JSON-ready dict (see ``prunekit inspect --help``)."""
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
        if scores.labels is not None:
            labels = ("labels", scores.labels, before, rows)
    if emb is not None:
        rows = resolve_rows(sel, emb.n_total, emb.ids, selection_name=names[0], target_name=names[2])
        if labels is None and emb.labels is not None:
            labels = ("labels", emb.labels, emb.rows, rows)
        out["mmd"] = mmd_report(emb, rows, random_draws=random_draws, seed=seed,
                                n_features=rff_dim, progress=progress)
        out["mmd"]["same_embeddings"] = (
            not sel.source_fingerprint or sel.source_fingerprint == emb.fingerprint
        )
    if labels is not None:
        out["labels"] = group_counts(labels[1], labels[2], labels[3])
    return out


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
    if "mmd" in report:
        m = report["mmd"]
        lines.append(
            f"RFF-MMD to the full set (sigma {m['sigma']:.4g}, {m['n_features']} features): "
            f"kept {m['kept']:.5f}   random subsets of {m['n_kept']}: "
            f"{m['random_mean']:.5f} +- {m['random_std']:.5f} ({len(m['random'])} draws)"
        )
        if not m["same_embeddings"]:
            lines.append("  (these embeddings are not the ones the selection was made from)")
    return "\n".join(lines)


@click.command()
@click.argument("selection", type=click.Path(dir_okay=False))
@click.option("--scores", "scores_path", default=None, type=click.Path(dir_okay=False),
              help="Scores file the selection was made from: kept per cluster (and label).")
@click.option("--embeddings", "emb_path", default=None, type=click.Path(dir_okay=False),
              help="Embeddings (any feature space, matched by ids or positions): RFF-MMD of "
                   "kept vs full, next to random subsets of the same size; labels if present.")
@key_option
@drop_option
@click.option("--random-draws", default=5, show_default=True, type=click.IntRange(min=1),
              help="Random subsets averaged for the comparison.")
@click.option("--rff-dim", default=512, show_default=True, type=click.IntRange(min=1),
              help="Random Fourier features of the MMD estimate.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the random subsets, the sigma sample and the features.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@quiet_option
def inspect(selection: str, scores_path: str | None, emb_path: str | None, key: str,
            drop_nonfinite: bool, random_draws: int, rff_dim: int, seed: int, as_json: bool,
            quiet: bool) -> None:
    """What SELECTION keeps: per cluster / label before and after, and its RFF-MMD.

    Compare criteria before training: a lower MMD than random subsets of the same size
    means the kept set represents the full set better than chance.
    """
    sel = load_selection(selection)
    sc = load_scores(scores_path) if scores_path else None
    emb = open_embeddings(emb_path, key, drop_nonfinite) if emb_path else None
    report = inspect_selection(
        sel, scores=sc, emb=emb, names=(selection, scores_path or "", emb_path or ""),
        random_draws=random_draws, seed=seed, rff_dim=rff_dim, progress=not quiet,
    )
    click.echo(json.dumps(report, indent=1) if as_json else render(report))
