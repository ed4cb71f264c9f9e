"""``prunekit select``: turn a scores file into a selection file."""

from __future__ import annotations

import os

import click

from prunekit.cli.common import check_output, drop_option, key_option, open_embeddings, seed_option
from prunekit.cli.engine_options import engine_options, running_on
from prunekit.errors import PrunekitError
from prunekit.methods.dedup import check_eps, select_eps
from prunekit.params import INT64_MAX
from prunekit.selection.quotas import kept_count
from prunekit.selection.scores import load_scores
from prunekit.selection.subset import BALANCES, FILLS, labels_for
from prunekit.selection.subset import select as run_select


def parse_drop(text: str | None) -> list[int] | float | None:
    """``"3,7"`` -> [3, 7]; ``"0.25"`` -> 0.25 (a fraction of the clusters)."""
    if text is None:
        return None
    text = text.strip()
    if "," not in text and "." in text:
        try:
            return float(text)
        except ValueError:
            pass
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise PrunekitError(
            f"--drop-clusters '{text}' is neither a list of cluster ids (3,7) "
            "nor a fraction of the clusters (0.25)."
        ) from None
    big = next((v for v in ids if not -INT64_MAX - 1 <= v <= INT64_MAX), None)
    if big is not None:  # cluster and label ids are int64
        raise PrunekitError(f"--drop-clusters id {big} is not a 64-bit integer "
                            "(cluster ids are int64).")
    return ids


@click.command()
@click.argument("scores", metavar="[SCORES]", default="scores.h5", required=False,
                type=click.Path(dir_okay=True))
@click.option("--pr", type=float, default=None,
              help="Fraction REMOVED, in [0, 1): --pr 0.8 keeps round(0.2 * N) rows "
                   "(N = rows with a score). Required unless --oversample (then 0).")
@click.option("--eps", type=float, default=None,
              help="semdedup scores only, instead of --pr: remove exactly the near-duplicates "
                   "SemDeDup removes at this cosine-distance threshold (keeps score >= eps).")
@click.option("--output", "-o", default="selection.h5", show_default=True,
              type=click.Path(dir_okay=True),
              help="Selection file to write (HDF5, atomic), or a folder of Parquet parts for a "
                   "path ending in '/' or without suffix.")
@click.option("--balance", type=click.Choice(BALANCES), default="none", show_default=True,
              help="none: top scores overall; clusters: the same quota per k-means cluster "
                   "(water-filling); proportional: the same fraction per cluster; labels: "
                   "the same quota per label.")
@click.option("--invert", is_flag=True,
              help="Keep the LOWEST scores first (k-means: nearest to the centroid; loss: L^-1).")
@click.option("--drop-clusters", "drop", default=None, metavar="IDS|FRACTION",
              help="Remove whole clusters first (labels with --balance labels): ids '3,7' or "
                   "a fraction '0.25' of them, drawn with --seed. kept is still "
                   "round((1 - pr) * N), capped at what remains.")
@click.option("--oversample", is_flag=True,
              help="No pruning: repeat items of small clusters (labels with --balance labels) "
                   "until each reaches the largest one; writes 'counts'.")
@click.option("--fill", type=click.Choice(FILLS), default="error", show_default=True,
              help="Greedy scores (herding, kcenter) rank only the rows they picked: when more "
                   "rows must be kept, 'error' refuses and 'random' fills from the unpicked "
                   "rows at random (--seed).")
@seed_option("Seed for --drop-clusters FRACTION and --fill random.")
@click.option("--labels-from", "labels_path", default=None, type=click.Path(dir_okay=False),
              metavar="EMB", help="Embeddings file whose 'labels' --balance labels uses when the "
                                  "scores file carries none.")
@key_option
@drop_option
@engine_options
def select(scores: str, pr: float | None, eps: float | None, output: str, balance: str, invert: bool,
           drop: str | None, oversample: bool, fill: str, seed: int, labels_path: str | None,
           key: str, drop_nonfinite: bool, engine: str, workers: int | None,
           ray_address: str | None) -> None:
    """Select the rows to keep from SCORES (default scores.h5) into a selection file.

    \b
    Examples:
      prunekit select --pr 0.5 --balance clusters              # Cb, furthest first
      prunekit select --pr 0.5 --balance clusters --invert     # Cb, nearest first
      prunekit select herding.h5 --pr 0.8 -o herding-sel.h5    # the first 20 % picks
      prunekit select --pr 0.5 --drop-clusters 3,7             # mode removal
      prunekit select --oversample --balance clusters          # balanced repeats
    --key and --drop-nonfinite apply to the --labels-from file. A scores folder is read
    part by part on --engine (never whole) and gives the same selection.
    """
    _check_output(output, scores, labels_path)
    if eps is not None:
        if pr is not None or balance != "none" or invert or drop or oversample:
            raise PrunekitError("--eps selects by threshold alone; leave out --pr, --balance, "
                                "--invert, --drop-clusters and --oversample.")
        check_eps(eps, "--eps")
        sc = load_scores(scores)
        try:
            sel = select_eps(sc, eps)
        except PrunekitError as exc:
            raise PrunekitError(f"{scores}: {exc}") from exc
        sel.params["scores"] = scores
        sel.save(output)
        click.echo(f"{output}: kept {sel.n_kept} of {sel.params['n_eligible']} scored rows "
                   f"(semdedup eps {eps:g}: {sel.params['removed']} near-duplicates removed)")
        return
    if pr is None:
        if not oversample:
            raise PrunekitError("--pr is required: the fraction of rows to REMOVE, e.g. --pr 0.5.")
        pr = 0.0
    kept_count(pr, 1)  # checks the range before any file is read
    drop_clusters = parse_drop(drop)
    if os.path.isdir(scores) and labels_path is None:
        with running_on(engine, workers, ray_address):
            _select_folder(scores, output, pr, balance=balance, invert=invert,
                           drop_clusters=drop_clusters, oversample=oversample, seed=seed, fill=fill)
        return
    sc = load_scores(scores)
    labels = None
    if labels_path is not None:
        emb = open_embeddings(labels_path, key, drop_nonfinite)
        labels = labels_for(sc, emb, name=f"--labels-from {labels_path}")
    try:
        sel = run_select(sc, pr, balance=balance, invert=invert, drop_clusters=drop_clusters,
                         oversample=oversample, seed=seed, labels=labels, fill=fill)
    except PrunekitError as exc:
        raise PrunekitError(f"{scores}: {exc}") from exc
    sel.params["scores"] = scores
    sel.save(output)
    draws = None if sel.counts is None else int(sel.counts.sum())
    click.echo(_summary(output, sel.n_kept, sel.params, pr, draws))


def _check_output(output: str, scores: str, labels_path: str | None) -> None:
    """Before any work: the output file, or folder, may not replace or lie in an input."""
    from prunekit.io.dataset import check_output_dir, wants_dataset

    special = os.path.exists(output) and not (os.path.isdir(output) or os.path.isfile(output))
    if wants_dataset(output) and not special:  # a device or FIFO gets the file checks' word
        check_output_dir(output, inputs=[scores, labels_path], what="--output",
                         input_dirs=[scores if os.path.isdir(scores) else None])
    else:
        check_output(output, inputs=[scores, labels_path], what="--output")


def _select_folder(scores: str, output: str, pr: float, **options) -> None:
    """A scores folder, streamed (:func:`prunekit.selection.streamed.select_folder`)."""
    from prunekit.selection.streamed import select_folder

    try:
        res = select_folder(scores, output, pr, params={"scores": scores}, **options)
    except PrunekitError as exc:
        raise PrunekitError(f"{scores}: {exc}") from exc
    if res.note:
        click.echo(f"note: {res.note}", err=True)
    click.echo(_summary(output, res.n_kept, res.params, pr, res.draws))


def _summary(output: str, n_kept: int, params: dict, pr: float, draws: int | None) -> str:
    """The line ``select`` prints."""
    line = (f"{output}: kept {n_kept} of {params['n_eligible']} scored rows (pr {pr:g}, "
            f"balance {params['balance']}")
    line += ", inverted)" if params["invert"] else ")"
    if params["dropped"]:
        line += f"; dropped {params['group_by']}s {params['dropped']}"
    if draws is not None:
        line += f"; {draws} draws with repeats"
    return line
