"""``prunekit inspect``: what a selection keeps, per cluster and label, and how representative it is."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import click

from prunekit.cli.common import drop_option, key_option, quiet_option, seed_option
from prunekit.cli.engine_options import engine_options, running_on
from prunekit.io.provenance import jsonable
from prunekit.report.command import html_options, html_page, page_wanted
from prunekit.selection.inspection import as_report
from prunekit.selection.inspection import inspect as run_inspect
from prunekit.selection.quality import MMD_SAMPLE


@click.command()
@click.argument("selection", type=click.Path(dir_okay=True))
@click.option("--scores", "scores_path", default=None, type=click.Path(dir_okay=True),
              help="Scores file the selection was made from: kept per cluster (and label).")
@click.option("--embeddings", "emb_path", default=None, type=click.Path(),
              help="Embeddings (any feature space, matched by ids or positions): RFF-MMD of "
                   "kept vs full, next to random subsets of the same size; labels if present.")
@key_option
@drop_option
@click.option("--random-draws", default=5, show_default=True, type=click.IntRange(1, 10_000),
              help="Random subsets averaged for the comparison.")
@click.option("--rff-dim", default=512, show_default=True, type=click.IntRange(1, 1 << 20),
              help="Random Fourier features of the MMD estimate.")
@click.option("--mmd-sample", default=MMD_SAMPLE, show_default=True, type=click.IntRange(min=0),
              help="Estimate the MMD on a seeded sample of at most this many rows per side "
                   "(with a jackknife error bar); 0 = every row.")
@seed_option("Seed of the random subsets, the samples, the sigma sample and the features.")
@engine_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@quiet_option
@html_options
def inspect(selection: str, scores_path: str | None, emb_path: str | None, key: str,
            drop_nonfinite: bool, random_draws: int, rff_dim: int, mmd_sample: int, seed: int,
            engine: str, workers: int | None, ray_address: str | None, as_json: bool,
            quiet: bool, **page: Any) -> None:
    """What SELECTION keeps: per cluster / label before and after, and its RFF-MMD.

    Compare criteria before training: a lower MMD than random subsets of the same size
    means the kept set represents the full set better than chance. The MMD is one streamed
    pass of chunk tasks (--engine); every engine gives the same report. A selection folder
    (with a scores folder) is read part by part, never whole, and gives the same report.
    """
    run = html_page if page_wanted(page) else run_inspect
    extra = dict(page, quiet=quiet) if run is html_page else {"progress": not quiet}
    # Only the MMD runs on the engine: without --embeddings no cluster is started.
    where = running_on(engine, workers, ray_address) if emb_path else contextlib.nullcontext()
    with where:
        report = run(selection, scores=scores_path, embeddings=emb_path, key=key,
                     drop_nonfinite=drop_nonfinite, random_draws=random_draws, seed=seed,
                     rff_dim=rff_dim, mmd_sample=mmd_sample or None, **extra)
    report = as_report(report)  # the page's build returns the report's dict
    click.echo(json.dumps(jsonable(report.to_dict()), indent=1) if as_json else report.render())
