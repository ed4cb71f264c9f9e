"""The HTML page of an :class:`~prunekit.report.build.InspectReport`, and writing it.

One self-contained file: figures and thumbnails are inline ``data:`` PNGs, the style is
inline, there is no script but one JSON data block (the numbers, for other tools). Numbers
a program may want to read back carry ``data-*`` attributes with full precision.
"""

from __future__ import annotations

import json
import os
import shutil
from html import escape
from pathlib import Path
from typing import Any

from prunekit.errors import PrunekitError
from prunekit.io.atomic import check_output, refuse_link, temp_name
from prunekit.io.provenance import jsonable
from prunekit.report import figures
from prunekit.report.data import ALL_ROWS
from prunekit.report.thumbs import data_uri

MARKER = ".prunekit-report"  # a folder holding this file may be replaced by a new report
MAX_TABLE_ROWS = 2000

STYLE = """
.pkr{font-family:system-ui,sans-serif;max-width:1150px;margin:1.5em auto;padding:0 1em;color:#222}
.pkr h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.pkr table{border-collapse:collapse;font-size:13px;margin:.6em 0}
.pkr td,.pkr th{border:1px solid #ccc;padding:2px 7px;text-align:right}
.pkr td:first-child,.pkr th:first-child{text-align:left}
.pkr img.fig{max-width:100%}
.pkr .rule{background:#f4f6fa;border-left:4px solid #1f77b4;padding:.5em .8em}
.pkr .strip{display:flex;flex-wrap:wrap;gap:4px;align-items:flex-start;margin:.2em 0 .6em}
.pkr .side{font-size:12px;font-weight:600;width:64px}
.pkr figure{margin:0;width:78px;font-size:10px;text-align:center;word-break:break-all}
.pkr figure img{width:66px;height:66px;object-fit:contain;background:#eee}
.pkr figure img.tiny{image-rendering:pixelated}
.pkr figure.kept img{outline:3px solid #1f77b4}
.pkr figure.removed img{outline:3px solid #d62728}
.pkr figure.gap div{width:66px;height:66px;margin:0 auto;background:repeating-linear-gradient(45deg,#eee,#eee 6px,#fbb 6px,#fbb 12px);display:flex;align-items:center;justify-content:center;font-weight:600}
.pkr .note{color:#666;font-size:13px}
.pkr .group{border:1px solid #ddd;padding:4px;margin:4px 0;display:flex;gap:8px;align-items:flex-start}
"""


def render_page(report: Any) -> str:
    """The whole document."""
    title = escape(f"prunekit inspect: {report.name}")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
            f"<meta name='viewport' content='width=device-width'></head>"
            f"<body>{render_body(report)}</body></html>\n")


def render_body(report: Any) -> str:
    """The page's content in one ``div`` (what a notebook shows)."""
    parts = [_header(report)]
    s = report.summary
    for key, what in (("clusters", "cluster"), ("labels", "label")):
        if key in s:
            parts.append(_groups_section(key, what, s[key], s))
    if report.stats is not None:
        parts.append(_scores_section(report.stats))
    if report.stats is not None and report.stats.eps_grid is not None:
        parts.append(_dedup_section(report.stats, s.get("duplicates"), s["params"]))
    if report.compare:
        parts.append(_mmd_section(report.compare))
    if report.map is not None:
        parts.append(_map_section(report.map))
    if report.strips:
        parts.append(_strips_section(report))
    if report.groups:
        parts.append(_dup_groups_section(report))
    gaps = report.gaps
    if gaps:
        items = "".join(f"<li data-id='{escape(str(i))}'><code>{escape(str(i))}</code>: "
                        f"{escape(r)}</li>" for i, r in gaps)
        parts.append(f"<section id='gaps'><h2>Images not shown ({len(gaps)})</h2><ul>{items}</ul>"
                     "</section>")
    blob = json.dumps(jsonable(s), sort_keys=True).replace("</", "<\\/")
    parts.append(f"<script type='application/json' id='prunekit-inspect'>{blob}</script>")
    return f"<div class='pkr'><style>{STYLE}</style>{''.join(parts)}</div>"


def _img(png: bytes, alt: str) -> str:
    return f"<img class='fig' alt='{escape(alt)}' src='{data_uri(png)}'>"


def _header(report: Any) -> str:
    s = report.summary
    p = s["params"]
    line = (f"Kept <b>{s['n_kept']}</b> of {s['n_total']} rows (pr {s['pr']:g}, method "
            f"{escape(str(s['method']))}, balance {escape(str(p.get('balance', '-')))}"
            + (", inverted" if p.get("invert") else "") + ")")
    if "draws" in s:
        line += f"; oversampled to {s['draws']} draws"
    notes = "".join(f"<p class='note'>{escape(n)}</p>" for n in report.notes)
    return (f"<h1>What {escape(report.name)} keeps</h1><p id='summary' data-n-kept='{s['n_kept']}' "
            f"data-n-total='{s['n_total']}'>{line}.</p><p class='rule' id='rule'>{escape(report.rule)}"
            f"</p>{notes}")


def _groups_section(key: str, what: str, g: dict[str, Any], s: dict[str, Any]) -> str:
    order = sorted(range(len(g["ids"])), key=lambda i: (-g["before"][i], i))
    draws = "draws" in g
    head = f"<tr><th>{what}</th><th>before</th><th>kept</th><th>kept %</th>" + \
        ("<th>draws</th>" if draws else "") + "</tr>"
    body = []
    for i in order[:MAX_TABLE_ROWS]:
        b, k = g["before"][i], g["kept"][i]
        d = f"<td>{g['draws'][i]}</td>" if draws else ""
        body.append(f"<tr data-id='{escape(str(g['ids'][i]))}' data-before='{b}' data-kept='{k}'>"
                    f"<td>{escape(str(g['ids'][i]))}</td><td>{b}</td><td>{k}</td>"
                    f"<td>{100 * k / b if b else 0:.1f}</td>{d}</tr>")
    more = len(order) - MAX_TABLE_ROWS
    extra = f"<p class='note'>{more} smaller {what}s not listed (all in the JSON block).</p>" \
        if more > 0 else ""
    kept = [g["kept"][i] for i in order]
    return (f"<section id='{key}'><h2>Kept per {what}</h2><p>{len(order)} {what}s, coverage "
            f"{g['coverage']:.3f} (share with at least one kept row); kept per {what}: min "
            f"{min(kept)}, max {max(kept)}. Sorted by size before selection.</p>"
            f"{_img(figures.group_bars(g, what), f'kept per {what}')}"
            f"<details><summary>table</summary><table class='counts' data-group='{key}'>"
            f"{head}{''.join(body)}</table>{extra}</details></section>")


def _scores_section(st: Any) -> str:
    def rng(r: Any) -> str:
        return "-" if r is None else f"{r[0]:.6g} .. {r[1]:.6g}"

    return (f"<section id='scores'><h2>Scores of kept and removed rows</h2>"
            f"<p>{st.n_eligible} scored rows: {st.n_kept} kept (scores {rng(st.kept_range)}), "
            f"{st.n_removed} removed (scores {rng(st.removed_range)}). {escape(st.cut_note)}</p>"
            f"{_img(figures.score_histogram(st), 'score distribution')}</section>")


def _dedup_section(st: Any, counts: list[dict] | None, params: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr data-eps='{r['eps']!r}' data-removed='{r['removed']}'><td>{r['eps']:g}</td>"
        f"<td>{r['removed']}</td><td>{100 * r['fraction']:.2f}</td>"
        f"<td>{r.get('in_selection', '-')}</td></tr>" for r in counts or [])
    table = ("<table class='eps'><tr><th>eps</th><th>removed</th><th>%</th>"
             f"<th>of them kept by this selection</th></tr>{rows}</table>") if rows else ""
    png = figures.eps_curve(st.eps_grid, st.eps_removed, st.n_eligible, params.get("eps"))
    return ("<section id='dedup'><h2>Near-duplicates: rows removed at each eps</h2><p>SemDeDup "
            "removes a row when its cosine distance to an earlier item of its cluster (keep "
            "order) is below eps; the score stores that distance, so one pass counts every eps."
            f"</p>{_img(png, 'rows removed per eps')}{table}</section>")


def _mmd_section(rows: list[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        err = "" if r.get("kept_error") is None else f" ± {r['kept_error']:.5f}"
        rand = "-" if r.get("random_mean") is None else f"{r['random_mean']:.5f} ± {r['random_std']:.5f}"
        ratio = "-" if not r.get("random_mean") else f"{r['kept'] / r['random_mean']:.3f}"
        body.append(
            f"<tr data-name='{escape(r['name'])}' data-kept='{r['kept']!r}' "
            f"data-random-mean='{r.get('random_mean')!r}' data-random-std='{r.get('random_std')!r}'>"
            f"<td>{escape(r['name'])}</td><td>{escape(r['how'])}</td><td>{escape(str(r['method']))}"
            f"</td><td>{r['n_kept']}</td><td>{r['kept']:.5f}{err}</td><td>{rand}</td>"
            f"<td>{ratio}</td></tr>")
    m = rows[0]
    sampled = (f" Estimated on a seeded sample of {m['n_sample']} of {m['n_full']} rows (± is "
               "the jackknife standard error)." if m.get("n_sample", m["n_full"]) < m["n_full"] else "")
    return ("<section id='mmd'><h2>Is the kept set representative?</h2><p>RFF-MMD of each kept "
            f"set to the full set (sigma {m['sigma']:.4g}, {m['n_features']} features) next to "
            f"{len(m['random'])} uniformly random subsets of the same size: below the random band "
            f"means more representative than chance.{sampled}</p>"
            "<table class='mmd'><tr><th>selection</th><th>how</th><th>method</th><th>kept</th>"
            f"<th>MMD kept</th><th>MMD random</th><th>kept / random</th></tr>{''.join(body)}"
            f"</table>{_img(figures.mmd_chart(rows), 'MMD per criterion')}</section>")


def _map_section(m: Any) -> str:
    return (f"<section id='map'><h2>Map of a random sample</h2><p>{m.rows.size} of {m.n_usable} "
            f"rows drawn with the seed, projected with {m.method.upper()}; kept in blue, removed "
            f"in red.</p>{_img(figures.map_scatter(m), '2-D map')}</section>")


def _thumb(t: Any, cluster: Any = None) -> str:
    side = "kept" if t.kept else "removed"
    attrs = (f"data-row='{t.row}' data-id='{escape(str(t.id))}' data-side='{side}'"
             + ("" if cluster is None else f" data-cluster='{cluster}'"))
    cap = f"{escape(str(t.id))}<br>{escape(t.note)}"
    if t.png is None:
        reason = t.gap or "no image source (--images)"
        return (f"<figure class='thumb gap' {attrs} data-reason='{escape(reason)}' "
                f"title='{escape(reason)}'><div>gap</div><figcaption>{cap}</figcaption></figure>")
    tiny = " class='tiny'" if max(t.size) < 48 else ""
    return (f"<figure class='thumb {side}' {attrs}><img{tiny} alt='{escape(str(t.id))}' "
            f"src='{data_uri(t.png)}'><figcaption>{cap}</figcaption></figure>")


def _strips_section(report: Any) -> str:
    parts = []
    for s in report.strips:
        by = {"centroid distance": "nearest to the centroid first, furthest last",
              "score": "highest scores first, lowest last",
              "random": "drawn at random (the scores have no centroid distances)"}[s["by"]]
        rows = "".join(
            f"<div class='strip' data-cluster='{s['cluster']}' data-side='{side}'><span class='side'>"
            f"{side}</span>{''.join(_thumb(t, s['cluster']) for t in s[side]) or '<i>none</i>'}</div>"
            for side in ("kept", "removed"))
        title = "All rows (the scores have no clusters)" if s["cluster"] == ALL_ROWS else \
            f"Cluster {s['cluster']}"
        parts.append(f"<h3>{title}: kept {s['kept_count']} of {s['before']}</h3>"
                     f"<p class='note'>{by}</p>{rows}")
    return (f"<section id='images'><h2>Images kept and removed</h2><p>The largest clusters, from "
            f"{escape(str(report.images))}. Blue frame: kept, red: removed.</p>"
            f"{''.join(parts)}</section>")


def _dup_groups_section(report: Any) -> str:
    parts = []
    for g in report.groups:
        head = _thumb(g["anchor"], g["cluster"]) if g["anchor"] is not None else \
            "<div class='note'>no kept row in this cluster</div>"
        more = f"<span class='note'>+{g['n'] - len(g['removed'])} more</span>" \
            if g["n"] > len(g["removed"]) else ""
        parts.append(f"<div class='group' data-cluster='{g['cluster']}'>{head}<span>&larr;</span>"
                     f"{''.join(_thumb(t, g['cluster']) for t in g['removed'])}{more}</div>")
    return ("<section id='duplicates'><h2>Duplicate groups</h2><p>The most redundant removed rows "
            "(lowest semdedup score), each next to the kept row most similar to it in its cluster "
            f"(cosine shown).</p>{''.join(parts)}</section>")


def check_dir(out: str | os.PathLike, *, inputs: list[str] = (),
              input_dirs: list[str] = ()) -> Path:
    """Refuse an output folder that is not ours to replace (see :func:`write_dir`)."""
    out = Path(out)
    refuse_link(out, "--html folder")
    check_output(out / "index.html", inputs=inputs, input_dirs=input_dirs, what="--html page")
    real = Path(os.path.realpath(out))
    if real.exists() and not real.is_dir():
        raise PrunekitError(f"--html {out} is a file; give a folder for the page.")
    if real.exists() and any(real.iterdir()) and not (real / MARKER).is_file():
        raise PrunekitError(f"--html {out} is a folder that is not empty and holds no earlier "
                            "report; choose a new or empty folder.")
    for src in list(inputs) + list(input_dirs):
        s = Path(os.path.realpath(src))
        if s == real or real in s.parents:
            raise PrunekitError(f"--html {out} holds the input {src}; replacing the folder would "
                                "delete it. Choose another folder.")
    return real


def write_dir(out: str | os.PathLike, html: str, *, inputs: list[str] = (),
              input_dirs: list[str] = ()) -> Path:
    """Write ``out/index.html`` by building a new folder beside ``out`` and renaming it.

    ``out`` may be new, empty, or a previous report (it holds MARKER); anything else, an
    ``out`` that holds or lies inside one of the inputs, is refused before writing.
    """
    real = check_dir(out, inputs=inputs, input_dirs=input_dirs)
    real.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(real.parent)
    old = tmp.with_name(tmp.name + ".old")
    try:
        tmp.mkdir()
        (tmp / "index.html").write_text(html, encoding="utf-8")
        (tmp / MARKER).write_text("written by prunekit inspect --html; a new report replaces "
                                  "this folder\n")
        if real.exists():
            os.rename(real, old)
        os.rename(tmp, real)
    except BaseException as exc:
        if old.exists() and not real.exists():
            os.rename(old, real)  # put the earlier report back
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise PrunekitError(f"cannot write {out}: {exc.strerror or exc}.") from exc
        raise
    shutil.rmtree(old, ignore_errors=True)
    return real / "index.html"
