"""The demo's report: tables (Markdown and HTML), PNG figures and results.json.

Figures use matplotlib's Agg backend (no display needed). Every number in the tables is
also in ``results.json``; wall-clock timings are kept apart under ``timings`` because they
are the only numbers that change between two runs with the same seed. Fidelity is FD,
precision and recall of generated images against real ones (the core's "quality" of a
selection, its MMD, is another measure).
"""

from __future__ import annotations

import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.flow.plot import stability_figure as core_stability_figure
from prunekit.io.atomic import write_bytes, write_text
from prunekit.io.provenance import jsonable

from ._renamed import renamed
from .demo_results import DemoResults

Table = tuple[list[str], list[list[str]]]
INSPECT_LINK = "the prunekit inspect page"


# --------------------------------------------------------------------------- tables


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    v = float(v)
    if not np.isfinite(v):
        return "inf" if v > 0 else "-"
    return f"{v:.{digits}f}"


def _order(names: Sequence[str], info: dict[str, Any]) -> list[str]:
    """full first, then the larger model, then by criterion and pr."""
    rank = {"full": 0, "fine": 1, "real": 9}
    return sorted(names, key=lambda n: (rank.get(info[n].criterion, 5), info[n].criterion, info[n].pr, n))


def similarity_table(results: DemoResults) -> Table:
    sim = results.evaluation.similarity
    head = ["model", "criterion", "pr", "kept", "latent cos", "(unrelated)", "feature cos", "(unrelated)",
            "SSIM", "(unrelated)", "PSNR dB (median)", "(unrelated)"]
    rows = []
    for name in _order(list(sim), sim):
        r, m = sim[name], sim[name].measures
        rows.append([name, r.criterion, _f(r.pr, 2), _f(r.n_kept),
                     _f(m["latent_cosine"]["pairs"]["mean"]), _f(m["latent_cosine"]["baseline"]["mean"]),
                     _f(m["feature_cosine"]["pairs"]["mean"]), _f(m["feature_cosine"]["baseline"]["mean"]),
                     _f(m["ssim"]["pairs"]["mean"]), _f(m["ssim"]["baseline"]["mean"]),
                     _f(m["psnr"]["pairs"]["median"], 1), _f(m["psnr"]["baseline"]["median"], 1)])
    return head, rows


def fidelity_table(results: DemoResults) -> Table:
    q = results.evaluation.fidelity
    head = ["model", "criterion", "pr", "kept", "FD", "precision", "recall", "F-score"]
    rows = [[name, q[name].criterion, _f(q[name].pr, 2), _f(q[name].n_kept), _f(q[name].fd, 2),
             _f(q[name].precision), _f(q[name].recall), _f(q[name].f_score)]
            for name in _order(list(q), q)]
    return head, rows


def c2f_table(results: DemoResults) -> Table:
    c = results.c2f
    wall = results.timings.get("c2f_wall", {})
    head = ["t_switch", "coarse steps", "fine steps", "FLOPs / fine-only", "speed-up (FLOPs)",
            "wall / fine-only", "latent cos to fine-only", "FD", "precision", "recall", "auto"]
    rows = [[_f(r.t_switch, 2), _f(r.coarse_steps), _f(r.fine_steps), _f(r.flops_ratio),
             f"{1 / r.flops_ratio:.2f}x", _f(wall.get(f"{r.t_switch:g}", {}).get("wall_ratio"), 2),
             _f(r.latent_cos_to_fine_mean), _f(r.fd, 2),
             _f(r.precision), _f(r.recall), "<- picked" if r.t_switch == c.auto_t_switch else ""]
            for r in c.rows]
    return head, rows


def stability_table(results: DemoResults) -> Table:
    head = ["subset", "criterion", "pr", "kept", "retained sources", "unchanged fraction",
            "path deviation (median)", "path deviation (p95)"]
    rows = [[r["model"], r["criterion"], _f(r["pr"], 2), _f(r["n_kept"]), _f(r["n_retained"]),
             _f(r["unchanged_fraction"]), _f(r["path_deviation_median"]), _f(r["path_deviation_p95"])]
            for r in sorted(results.stability.rows, key=lambda r: (r["criterion"], r["pr"]))]
    return head, rows


def selection_table(results: DemoResults) -> Table:
    sel = results.pruning.selections
    head = ["subset", "criterion", "pr", "kept", "clusters present", "digits present", "kept per digit 0-9"]
    rows = [[name, s.criterion, _f(s.pr, 2), _f(s.n_kept), _f(s.clusters_present),
             _f(s.digits_present), " ".join(map(str, s.kept_per_digit))]
            for name, s in sorted(sel.items(), key=lambda kv: (kv[1].criterion, kv[1].pr))]
    return head, rows


def markdown_table(table: Table) -> str:
    head, rows = table
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def html_table(table: Table) -> str:
    head, rows = table
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


# --------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    _plt().close(fig)
    return buf.getvalue()


def sample_grid(images: dict[str, np.ndarray], order: list[str]) -> bytes:
    """Rows = models, columns = the same seeds (sample indices 0, 1, ...)."""
    plt = _plt()
    first = next(iter(images.values()))
    cols, h, w = first.shape[0], first.shape[-2], first.shape[-1]
    pad = 2
    canvas = np.full((len(order) * (h + pad), cols * (w + pad)), 0.2, dtype=np.float32)  # light grey gaps
    for i, name in enumerate(order):
        gray = images[name].mean(axis=1) if images[name].ndim == 4 else images[name]
        for j in range(min(cols, gray.shape[0])):
            canvas[i * (h + pad): i * (h + pad) + h, j * (w + pad): j * (w + pad) + w] = gray[j]
    fig, ax = plt.subplots(figsize=(0.45 * cols + 2.5, 0.45 * len(order) + 0.6))
    ax.imshow(canvas, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks([i * (h + pad) + h / 2 for i in range(len(order))], order, fontsize=7)
    ax.set_xticks([j * (w + pad) + w / 2 for j in range(cols)], [str(j) for j in range(cols)], fontsize=7)
    ax.set_xlabel("sample index (same noise in every row)")
    ax.tick_params(length=0)
    return _png(fig)


def pr_curves(results: DemoResults) -> bytes:
    plt = _plt()
    sim, q = results.evaluation.similarity, results.evaluation.fidelity
    crits = sorted({r.criterion for r in sim.values()} - {"fine", "drop-clusters"})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for crit in crits:
        names = sorted((n for n, r in sim.items() if r.criterion == crit), key=lambda n: sim[n].pr)
        prs = [sim[n].pr for n in names]
        axes[0].plot(prs, [sim[n].measures["feature_cosine"]["pairs"]["mean"] for n in names], "o-", label=crit)
        axes[1].plot(prs, [sim[n].measures["latent_cosine"]["pairs"]["mean"] for n in names], "o-", label=crit)
        axes[2].plot(prs, [q[n].fd for n in names], "o-", label=crit)
    base_f = np.mean([r.measures["feature_cosine"]["baseline"]["mean"] for r in sim.values()])
    base_l = np.mean([r.measures["latent_cosine"]["baseline"]["mean"] for r in sim.values()])
    axes[0].axhline(base_f, color="k", ls="--", lw=1, label="unrelated pairs")
    axes[1].axhline(base_l, color="k", ls="--", lw=1, label="unrelated pairs")
    for name, r in sim.items():
        if r.criterion == "drop-clusters":
            axes[0].plot([r.pr], [r.measures["feature_cosine"]["pairs"]["mean"]], "kx", ms=10, label=name)
            axes[1].plot([r.pr], [r.measures["latent_cosine"]["pairs"]["mean"]], "kx", ms=10, label=name)
            axes[2].plot([r.pr], [q[name].fd], "kx", ms=10, label=name)
    axes[2].axhline(q["full"].fd, color="k", ls="--", lw=1, label="full set")
    axes[2].axhline(q["real training images"].fd, color="grey", ls=":", lw=1, label="real images")
    for ax, title in zip(axes, ["same-seed feature cosine to the full model", "same-seed latent cosine to the full model",
                                "FD to held-out digits (lower is better)"], strict=True):
        ax.set_xlabel("pr (fraction removed)")
        ax.set_xlim(-0.02, 0.82)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=7)
    axes[0].legend(fontsize=7)
    return _png(fig)


def c2f_figure(results: DemoResults) -> bytes:
    plt = _plt()
    c = results.c2f
    rows = c.rows
    cost = [r.flops_ratio for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].plot(cost, [r.latent_cos_to_fine_mean for r in rows], "o-")
    axes[1].plot(cost, [r.fd for r in rows], "o-")
    for ax in axes:
        for r, x in zip(rows, cost, strict=True):
            y = r.latent_cos_to_fine_mean if ax is axes[0] else r.fd
            ax.annotate(f"{r.t_switch:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("FLOPs / fine-only")
        ax.grid(alpha=0.3)
    auto = [r for r in rows if r.t_switch == c.auto_t_switch]
    if auto:
        axes[0].plot([auto[0].flops_ratio], [auto[0].latent_cos_to_fine_mean], "r*", ms=14, label="auto pick")
        axes[0].legend(fontsize=8)
    axes[0].set_ylabel("latent cosine to fine-only (same seed)")
    axes[1].set_ylabel("FD to held-out digits")
    axes[0].set_title("coarse-to-fine: cost vs similarity (labels: t_switch)", fontsize=10)
    axes[1].set_title("coarse-to-fine: cost vs fidelity (FD)", fontsize=10)
    return _png(fig)


def stability_figure(results: DemoResults) -> bytes:
    """The closed-form stability curves, drawn by the core's own figure (one per criterion)."""
    return core_stability_figure(results.stability.rows,
                                 title="closed-form flow on the same embeddings")


# --------------------------------------------------------------------------- the report


def write_report(out: Path, results: DemoResults, grid: dict[str, np.ndarray]) -> None:
    """Write figures, report.md, index.html and results.json into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    order = _grid_order(list(grid))
    figures = {
        "samples.png": sample_grid(grid, order),
        "pr_curves.png": pr_curves(results),
        "c2f.png": c2f_figure(results),
        "stability.png": stability_figure(results),
    }
    for name, data in figures.items():
        write_bytes(out / name, data)
    sections = _sections(results)
    write_text(out / "report.md", _markdown(results, sections))
    write_text(out / "index.html", _html(results, sections))
    write_text(out / "results.json", json.dumps(jsonable(results.to_dict()), indent=2, sort_keys=True) + "\n")


def _grid_order(names: list[str]) -> list[str]:
    head = [n for n in ("full", "fine (larger model)") if n in names]
    c2f = sorted(n for n in names if n.startswith("c2f"))
    rest = sorted(n for n in names if n not in head and n not in c2f)
    return head + c2f + rest


def _sections(results: DemoResults) -> list[tuple[str, str, Table | None, str | None]]:
    """(title, text, table, figure) of each section, shared by the Markdown and HTML output."""
    d, c = results.data, results.c2f
    auto = c.auto_t_switch
    return [
        ("Samples", "Rows are models, columns are sample indices: every cell in a column starts from the "
         "same noise. Stability means the rows look alike column by column.", None, "samples.png"),
        ("Same-seed stability of pruned models",
         "Per model, the mean over sample pairs (same noise) of the similarity to the full-set model, next to "
         "the same measure for unrelated pairs (a sample against the next sample of its class). "
         f"Feature cosine uses {d.features}.", similarity_table(results), "pr_curves.png"),
        ("Fidelity against held-out digits (FD, precision, recall)",
         f"Fréchet distance, precision and recall (k = 3) in the space of {d.features}; "
         f"{results.settings.scale.n_samples} generated samples against {d.n_test} held-out images. "
         "'full, next sampling seed' shows how much the numbers move with the sampling seed alone; "
         "'real training images' is the floor: real images against real images.", fidelity_table(results), None),
        ("Coarse-to-fine sampling",
         f"Coarse = the tiny full-set model, fine = a larger model on the full set. The coarse model runs while "
         f"t < t_switch (t = 0 noise, t = 1 data). Auto-picked t_switch = {auto:g} ({c.auto_rule}): "
         f"{c.auto_row.flops_ratio:.3f} of fine-only FLOPs. Wall-clock ratios are timings of this run (they vary "
         "from run to run and are not in the reproducible numbers).", c2f_table(results), "c2f.png"),
        ("Closed-form stability on the same embeddings", results.stability.what + ".",
         stability_table(results), "stability.png"),
        ("Selections", "Kept items per subset; clusters are the k-means clusters of the embeddings.",
         selection_table(results), None),
    ]


def _intro(results: DemoResults) -> list[str]:
    d, v = results.data, results.vae
    s, settings = results.settings.scale, results.settings
    return [
        f"Data: {d.dataset}, {d.n_train} training / {d.n_test} held-out images ({d.split}), "
        f"{d.image_size}x{d.image_size} pixels.",
        f"VAE: {v.size}, {v.steps} steps, latents {'x'.join(map(str, v.latent_shape))}, "
        f"reconstruction MSE {v.reconstruction_mse_01:.4f} (pixels in [0, 1]).",
        f"Embeddings for pruning: {results.pruning.embeddings}.",
        f"Features for fidelity and similarity: {d.features} (held-out accuracy "
        f"{d.classifier_test_accuracy:.3f}).",
        f"Setting '{s.name}' (effort x{settings.effort:g}, seed {settings.seed}): flow-matching "
        f"models '{s.model}' trained {s.lfm_steps} steps each (batch {s.batch_size}, lr {s.lr:g}), "
        f"sampled with {s.sample_steps} Euler steps; total time {results.timings['total']:.0f} s.",
    ]


def _markdown(results: DemoResults, sections) -> str:
    lines = ["# prunekit demo report", ""] + [f"* {t}" for t in _intro(results)] + [""]
    if results.inspect_page:
        lines += [f"What one selection keeps, image by image: [{INSPECT_LINK}]({results.inspect_page})", ""]
    for title, text, table, fig in sections:
        lines += [f"## {title}", "", text, ""]
        if table is not None:
            lines += [markdown_table(table), ""]
        if fig is not None:
            lines += [f"![{title}]({fig})", ""]
    return "\n".join(lines)


def _html(results: DemoResults, sections) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>prunekit demo report</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style></head><body>",
             "<h1>prunekit demo report</h1><ul>"]
    parts += [f"<li>{html.escape(t)}</li>" for t in _intro(results)]
    parts.append("</ul>")
    if results.inspect_page:
        parts.append(f"<p>What one selection keeps, image by image: <a href='"
                     f"{html.escape(results.inspect_page)}'>{INSPECT_LINK}</a></p>")
    for title, text, table, fig in sections:
        parts.append(f"<h2>{html.escape(title)}</h2><p>{html.escape(text)}</p>")
        if table is not None:
            parts.append(html_table(table))
        if fig is not None:
            parts.append(f"<img src='{fig}' alt='{html.escape(title)}'>")
    parts.append("<p>Every number is in <a href='results.json'>results.json</a>.</p></body></html>\n")
    return "\n".join(parts)


__getattr__ = renamed(__name__, "quality_table", fidelity_table, "fidelity_table")
