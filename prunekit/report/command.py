"""What ``prunekit inspect --html DIR`` does besides the text report: check, build, write, warn."""

from __future__ import annotations

from typing import Any

import click

from prunekit.errors import PrunekitError
from prunekit.report.build import build, input_paths
from prunekit.report.page import check_dir

MAX_NAMED = 3
MAPS = ("pca", "tsne", "none")


def html_options(f: Any) -> Any:
    """The options of the HTML page; they reach the command as keyword arguments."""
    options = [
        click.option("--html", "html", default=None, metavar="DIR", type=click.Path(file_okay=False),
                     help="Also write a self-contained page DIR/index.html: bars per cluster, "
                          "score distributions, MMD, a 2-D map, images (docs/inspect.md)."),
        click.option("--images", default=None, metavar="ROOT",
                     help="Where the ids' images are (a folder, or WebDataset .tar shards): "
                          "thumbnails of kept and removed rows on the page."),
        click.option("--thumbs", "per_strip", default=6, show_default=True, metavar="N",
                     type=click.IntRange(1, 100),
                     help="Each cluster's kept and removed strips show its N rows nearest to "
                          "the centroid and its N furthest."),
        click.option("--compare", multiple=True, type=click.Path(dir_okay=False),
                     help="Another selection or scores file whose MMD the page shows beside "
                          "this one (repeat the option for more)."),
        click.option("--map", "map_kind", default="pca", show_default=True,
                     type=click.Choice(MAPS), help="2-D map of a seeded sample on the page."),
        click.option("--map-sample", default=3000, show_default=True,
                     type=click.IntRange(1, 100_000), help="Rows drawn for the map."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def page_wanted(page: dict[str, Any]) -> bool:
    """Is a page asked for? Page options without --html are an error."""
    if page["html"] is None:
        given = [n for n, v in (("--images", page["images"]), ("--compare", page["compare"]))
                 if v]
        if given:
            raise PrunekitError(f"{' and '.join(given)} add to the HTML page; give --html DIR too.")
        return False
    return True


def html_page(selection: str, *, html: str, map_kind: str, quiet: bool = False,
              **kw: Any) -> dict[str, Any]:
    """Build the page of ``selection`` into ``out``; return pk.inspect's summary.

    The folder is checked before any work and written only at the end. Images that cannot
    be shown are gaps on the page and a count on stderr; when none of them can be shown
    the command fails (exit 2) and writes nothing: the image root does not fit the ids.
    """
    inputs, dirs = input_paths(selection, kw.get("scores"), kw.get("embeddings"),
                               kw.get("images"), kw.get("compare", ()))
    out = html
    kw["compare"] = list(kw.get("compare", ()))
    check_dir(out, inputs=inputs, input_dirs=dirs)
    report = build(selection, map=map_kind, progress=not quiet, **kw)
    slots, gaps = report.thumbs(), report.gaps
    if kw.get("images") is not None and slots and report.n_shown == 0:
        raise PrunekitError(
            f"none of the {len(gaps)} images could be shown from {kw['images']} "
            f"({_named(gaps)}); check that --images is the folder or the shards the ids name.")
    path = report.render_html(out)
    if gaps:
        click.echo(f"warning: {len(gaps)} images could not be shown ({_named(gaps)}); the page "
                   "names each gap.", err=True)
    if not quiet:
        click.echo(f"page: {path}", err=True)
    return report.summary


def _named(gaps: list[tuple[Any, str]]) -> str:
    shown = "; ".join(f"{i}: {r}" for i, r in gaps[:MAX_NAMED])
    return shown + (f"; {len(gaps) - MAX_NAMED} more" if len(gaps) > MAX_NAMED else "")
