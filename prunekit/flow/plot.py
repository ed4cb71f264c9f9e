"""Figures of stability rows: unchanged fraction and path deviation against pr.

matplotlib comes from the optional ``plot`` extra; it is drawn with the Agg canvas
directly, so no global backend is switched and no display is needed.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from prunekit.errors import PrunekitError

INSTALL = 'pip install "prunekit[plot]"'


def require_matplotlib() -> None:
    """Fail early, before any work, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise PrunekitError(f"--plot needs matplotlib, which is not installed ({exc}). Install it with: {INSTALL}") from exc


def _series(rows: Sequence[dict]) -> dict[str, list[dict]]:
    """Rows grouped into curves: by dimension in a dimension sweep, else by ``criterion``
    when rows carry one, else by method (with balance and inversion)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if "dim" in r:
            name = f"d = {r['dim']}"
        elif "criterion" in r:
            name = str(r["criterion"])
        else:
            name = str(r.get("method", "subset"))
            if r.get("balance", "none") != "none":
                name += f" ({r['balance']})"
            if r.get("invert"):
                name += ", inverted"
        groups.setdefault(name, []).append(r)
    return {k: sorted(v, key=lambda r: r["pr"]) for k, v in groups.items()}


def _fraction(row: dict) -> tuple[float, float]:
    """Unchanged fraction and its binomial standard error over the retained sources."""
    p, n = row["unchanged_fraction"], row["n_retained"]
    if p is None or n == 0:
        return float("nan"), 0.0
    return p, (p * (1 - p) / n) ** 0.5


def stability_figure(rows: Sequence[dict], *, title: str = "") -> bytes:
    """A PNG with two panels: unchanged fraction vs pr, and path deviation vs pr.

    One curve per dimension (a ``--dims`` sweep) or per selection method. Error bars on the
    fraction are one binomial standard error, sqrt(p (1 - p) / n_retained).
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    for i, (name, group) in enumerate(_series(rows).items()):
        color = f"C{i % 10}"
        pr = [r["pr"] for r in group]
        frac, err = zip(*(_fraction(r) for r in group), strict=True)
        left.errorbar(pr, frac, yerr=err, fmt="o-", color=color, capsize=3, label=name)
        right.plot(pr, [r["path_deviation_median"] for r in group], "o-", color=color)
        right.plot(pr, [r["path_deviation_p95"] for r in group], "s--", color=color, alpha=0.6)
    left.set(xlabel="pr (fraction removed)", ylabel="unchanged assignment", ylim=(0, 1.02),
             title="assignment unchanged (target kept)")
    right.set(xlabel="pr (fraction removed)", ylabel="path deviation (RMS per coordinate)",
              title="full vs pruned paths, all sources")
    right.plot([], [], "o-", color="0.3", label="median")
    right.plot([], [], "s--", color="0.3", alpha=0.6, label="95th percentile")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
