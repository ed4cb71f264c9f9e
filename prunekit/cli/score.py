"""``prunekit score``: score every item of an embeddings file with one method."""

from __future__ import annotations

import click
from click.core import ParameterSource

from ..errors import PrunekitError
from ..methods import available
from ..methods import score as run_score
from .common import drop_option, key_option, open_embeddings, quiet_option

# The options each method takes (CLI parameter names = library keyword names).
METHOD_OPTIONS: dict[str, tuple[str, ...]] = {
    "random": (),
    "kmeans": ("k", "iters", "spherical", "backend", "restarts"),
    "herding": ("kernel", "rff_dim", "sigma", "max_keep", "within"),
    "kcenter": ("max_keep", "metric", "within"),
    "loss": ("from_file",),
}
ALL_METHOD_OPTIONS = sorted({o for opts in METHOD_OPTIONS.values() for o in opts})


@click.command()
@click.argument("emb", metavar="EMB", type=click.Path(dir_okay=False))
@click.option("--method", "-m", required=True,
              help=f"Scoring method: {', '.join(available())} (see docs/methods.md).")
@click.option("--output", "-o", default="scores.h5", show_default=True, type=click.Path(dir_okay=False),
              help="Scores file to write (HDF5, written atomically).")
@key_option
@drop_option
@quiet_option
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of every random choice (k-means++ seeding, sigma sample, Fourier features).")
@click.option("--k", "k", default=24, show_default=True, type=click.IntRange(min=1),
              help="[kmeans] Number of clusters.")
@click.option("--iters", default=25, show_default=True, type=click.IntRange(min=1),
              help="[kmeans] Lloyd iterations.")
@click.option("--spherical/--euclidean", default=True, show_default=True,
              help="[kmeans] Spherical: rows L2-normalised, centroids renormalised, score = 1 - cos; "
                   "Euclidean: score = ||x - c||.")
@click.option("--backend", type=click.Choice(["auto", "faiss", "sklearn"]), default="auto",
              show_default=True, help="[kmeans] Lloyd implementation (auto = faiss when installed).")
@click.option("--restarts", default=1, show_default=True, type=click.IntRange(min=1),
              help="[kmeans] Independent seedings; the lowest inertia wins.")
@click.option("--kernel", type=click.Choice(["rff", "exact"]), default="rff", show_default=True,
              help="[herding] RBF kernel via random Fourier features, or exact (small sets only).")
@click.option("--rff-dim", default=512, show_default=True, type=click.IntRange(min=1),
              help="[herding] Number of random Fourier features.")
@click.option("--sigma", default="auto", show_default=True,
              help="[herding] RBF bandwidth: a positive number, or 'auto' (median heuristic).")
@click.option("--max-keep", type=click.IntRange(min=1), default=None,
              help="[herding, kcenter] Stop after this many picks (per cluster with --within); "
                   "the rest score -inf. Default: the full order.")
@click.option("--within", type=click.Path(dir_okay=False), default=None,
              help="[herding, kcenter] Pick inside each cluster of this k-means scores file "
                   "(orders merged round by round).")
@click.option("--metric", type=click.Choice(["euclidean", "cosine"]), default="euclidean",
              show_default=True, help="[kcenter] Distance between items.")
@click.option("--from", "from_file", type=click.Path(dir_okay=False), default=None,
              help="[loss] Scores to import: HDF5 ('score', optional 'ids'), .npy, .json or .csv (id,score).")
@click.pass_context
def score(ctx: click.Context, emb: str, method: str, output: str, key: str, drop_nonfinite: bool,
          quiet: bool, seed: int, **options) -> None:
    """Score every item of EMB with one method; larger score = kept first.

    \b
    Examples:
      prunekit score emb.h5 --method kmeans --k 24          # distance to own centroid
      prunekit score emb.h5 -m herding --max-keep 5000 -o herding.h5
      prunekit score emb.h5 -m herding --within scores.h5   # herd inside each k-means cluster
      prunekit score emb.h5 -m kcenter --metric cosine --within scores.h5
      prunekit score emb.h5 -m loss --from losses.csv
    Options marked [method] apply to that method only; giving one to another method is an error.
    """
    if method not in available():
        raise PrunekitError(f"unknown method '{method}'; choose one of: {', '.join(available())}.")
    allowed = METHOD_OPTIONS.get(method, ())
    given = [name for name in ALL_METHOD_OPTIONS
             if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)]
    wrong = [_flag(name) for name in given if name not in allowed]
    if wrong:
        raise PrunekitError(
            f"{', '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not apply to method '{method}'; "
            f"it takes: {', '.join(map(_flag, allowed)) or 'no method options'}."
        )
    params = {name: options[name] for name in allowed if options[name] is not None}
    if method == "loss" and "from_file" not in params:
        raise PrunekitError("method 'loss' needs the file of scores to import: --from FILE.")
    embeddings = open_embeddings(emb, key, drop_nonfinite)
    result = run_score(embeddings, method, seed=seed, progress=not quiet, **params)
    result.save(output)
    click.echo(f"{output}: {method} scored {embeddings.n} of {embeddings.n_total} rows{_detail(result.params)}")


def _flag(name: str) -> str:
    return "--from" if name == "from_file" else "--" + name.replace("_", "-")


def _detail(p: dict) -> str:
    if "inertia" in p:
        return f" (k={p['k']}, inertia {p['inertia']:.6g}, backend {p['backend_used']})"
    if "n_picked" in p:
        extra = f", sigma {p['sigma']:.4g}" if "sigma" in p else ""
        return f" ({p['n_picked']} picked in order{extra})"
    if "matched_by" in p:
        return f" (imported from {p['from_file']}, matched by {p['matched_by']})"
    return ""
