"""The page's figures as PNG bytes (matplotlib's Agg canvas; no display, no global backend).

matplotlib is the optional ``plot`` extra: :func:`require_plot` says how to install it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from prunekit.errors import PrunekitError

KEPT, REMOVED, BEFORE = "#1f77b4", "#d62728", "#c7c7c7"
MAX_BARS = 60


def require_plot() -> None:
    """Fail before any work when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise PrunekitError('the HTML report draws its figures with matplotlib, which is not '
                            f'installed ({exc}); install it with: pip install "prunekit[plot]".') from exc


def _figure(w: float, h: float) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    return buf.getvalue()


def group_bars(groups: dict[str, Any], what: str) -> bytes:
    """Before (grey) and kept (blue) per group, largest groups first (at most MAX_BARS)."""
    ids = np.array(groups["ids"])
    before = np.array(groups["before"])
    kept = np.array(groups["kept"])
    order = np.lexsort((np.arange(ids.size), -before))[:MAX_BARS]
    fig, ax = _figure(min(12.0, 3.0 + 0.18 * order.size), 3.2)
    x = np.arange(order.size)
    ax.bar(x, before[order], color=BEFORE, label="before")
    ax.bar(x, kept[order], color=KEPT, width=0.6, label="kept")
    ax.set_xticks(x, [str(v) for v in ids[order]], fontsize=7, rotation=90 if order.size > 20 else 0)
    ax.set_xlabel(f"{what} (largest first)" + (f"; {MAX_BARS} of {ids.size} shown"
                                               if ids.size > MAX_BARS else ""))
    ax.set_ylabel("rows")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def score_histogram(stats: Any) -> bytes:
    """Kept and removed scores on shared bins, the cut as a dashed line."""
    fig, ax = _figure(7.5, 3.2)
    edges = np.array(stats.edges)
    width = np.diff(edges)
    ax.bar(edges[:-1], stats.removed_hist, width=width, align="edge", color=REMOVED, alpha=0.6,
           label=f"removed ({stats.n_removed})")
    ax.bar(edges[:-1], stats.kept_hist, width=width, align="edge", color=KEPT, alpha=0.6,
           label=f"kept ({stats.n_kept})")
    if stats.cut is not None and edges[0] <= stats.cut <= edges[-1]:
        ax.axvline(stats.cut, color="k", ls="--", lw=1.2, label=f"cut {stats.cut:.4g}")
    ax.set_xlabel(f"score ({stats.method}; larger = more worth keeping)")
    ax.set_ylabel("rows")
    if max(stats.kept_hist + stats.removed_hist + [0]) > 50 * max(1, np.median(
            [v for v in stats.kept_hist + stats.removed_hist if v] or [1])):
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    return _png(fig)


def eps_curve(grid: Sequence[float], removed: Sequence[int], n: int, chosen: float | None) -> bytes:
    """Rows SemDeDup removes at each eps (log x)."""
    fig, ax = _figure(7.0, 3.0)
    frac = np.array(removed, dtype=np.float64) / max(n, 1)
    ax.plot(grid, 100 * frac, "o-", ms=3, color=REMOVED)
    if chosen is not None:
        ax.axvline(chosen, color="k", ls="--", lw=1, label=f"this selection: eps {chosen:g}")
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("eps (cosine distance to an earlier item of the cluster)")
    ax.set_ylabel(f"% of {n} rows removed")
    ax.grid(alpha=0.3)
    return _png(fig)


def mmd_chart(rows: Sequence[dict[str, Any]]) -> bytes:
    """Per criterion: the kept set's MMD (dot, error bar) and random subsets' (grey band)."""
    fig, ax = _figure(7.5, 0.9 + 0.45 * len(rows))
    y = np.arange(len(rows))[::-1]
    for yi, r in zip(y, rows, strict=True):
        if r.get("random_mean") is not None:
            lo, hi = r["random_mean"] - r["random_std"], r["random_mean"] + r["random_std"]
            ax.plot([lo, hi], [yi, yi], color=BEFORE, lw=8, solid_capstyle="butt")
            ax.plot(r["random"], [yi] * len(r["random"]), "|", color="grey", ms=10)
        ax.errorbar(r["kept"], yi, xerr=r.get("kept_error") or 0, fmt="o", color=KEPT)
    ax.set_yticks(y, [r["name"] for r in rows], fontsize=8)
    ax.set_xlabel("RFF-MMD to the full set (lower = more representative); grey: random subsets")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def map_scatter(data: Any) -> bytes:
    """The 2-D map: removed (red) under kept (blue)."""
    fig, ax = _figure(6.0, 5.0)
    k = data.kept
    s = 6 if k.size > 1000 else 14
    ax.scatter(data.xy[~k, 0], data.xy[~k, 1], s=s, c=REMOVED, alpha=0.5, lw=0,
               label=f"removed ({int((~k).sum())})")
    ax.scatter(data.xy[k, 0], data.xy[k, 1], s=s, c=KEPT, alpha=0.7, lw=0, label=f"kept ({int(k.sum())})")
    ax.set_title(f"{data.method.upper()} of {k.size} rows drawn at random", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8, markerscale=2)
    return _png(fig)
