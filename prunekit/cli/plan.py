"""``prunekit plan``: the predicted passes, time and memory of ``score`` before running it."""

from __future__ import annotations

import json

import click

from prunekit.cli.common import key_option
from prunekit.cli.score import _method_params, _option, _spec_by_name
from prunekit.methods import available, get_method
from prunekit.params import INT64_MAX
from prunekit.runtime.plan import DEFAULT_RAY_WORKERS, plan


@click.command("plan")
@click.argument("emb", metavar="EMB", type=click.Path())
@click.option("--method", "-m", required=True, help=f"Scoring method: {', '.join(available())}.")
@click.option("--workers", "-w", "ray_workers", type=click.IntRange(1, INT64_MAX), default=DEFAULT_RAY_WORKERS,
              show_default=True, help="Size of the Ray cluster to predict for.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@click.option("--output", "-o", default="scores.h5", show_default=True,
              help="The output score would write: a folder (ends in '/', no suffix) adds the "
                   "writing of its parts.")
@key_option
@click.pass_context
def plan_command(ctx: click.Context, emb: str, method: str, ray_workers: int, as_json: bool,
                 output: str, key: str, **options) -> None:
    """Predict each step of `score EMB --method M` here and on a Ray cluster.

    A few seconds' probe of this machine (reading EMB, GEMM speed) gives the rates; the
    load pass is free when its result is cached. Nothing is written.

    \b
    Examples:
      prunekit plan shards/ --method kmeans --k 1000
      prunekit plan emb.h5 -m herding --within scores.h5 --workers 16 --memory 8G
    """
    get_method(method)
    params = _method_params(ctx, method, options)
    p = plan(emb, method, ray_workers=ray_workers, key=key, output=output, **params)  # --id-key: run context
    click.echo(json.dumps(p.to_dict(), indent=2) if as_json else p.table())


plan_command.params.extend(_option(p) for p in _spec_by_name().values())
