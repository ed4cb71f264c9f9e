"""``prunekit plan``: the predicted passes, time and memory of ``score`` (and, asked, of the
``select`` and ``export`` after it) before running it."""

from __future__ import annotations

import json

import click

from prunekit.cli.common import key_option
from prunekit.cli.score import _method_params, _option, _spec_by_name
from prunekit.methods import available, get_method
from prunekit.params import INT64_MAX
from prunekit.runtime.pipeline_costs import BALANCES, EXPORT_FORMATS
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
@click.option("--select", "select_pr", type=float, default=None, metavar="PR",
              help="Plan the select after score too: `select OUTPUT --pr PR` (the fraction "
                   "removed, in [0, 1)).")
@click.option("--balance", type=click.Choice(BALANCES), default=None,
              help="With --select: the select's --balance (default none).")
@click.option("--export", "export_fmt", type=click.Choice(EXPORT_FORMATS), default=None,
              help="With --select: plan `export --format FMT` of the selection as well.")
@key_option
@click.pass_context
def plan_command(ctx: click.Context, emb: str, method: str, ray_workers: int, as_json: bool,
                 output: str, select_pr: float | None, balance: str | None,
                 export_fmt: str | None, key: str, **options) -> None:
    """Predict each step of `score EMB --method M` here and on a Ray cluster.

    A few seconds' probe of this machine (reading EMB, GEMM speed) gives the rates; the
    load pass is free when its result is cached. With --select (and --export) the plan
    goes on with the select (and export) of the scores. Nothing is written.

    \b
    Examples:
      prunekit plan shards/ --method kmeans --k 1000
      prunekit plan emb.h5 -m herding --within scores.h5 --workers 16 --memory 8G
      prunekit plan shards/ -m kmeans --k 100 -o km/ --select 0.5 --balance clusters --export npy
    """
    get_method(method)
    params = _method_params(ctx, method, options)
    p = plan(emb, method, ray_workers=ray_workers, key=key, output=output,  # --id-key: run context
             select=select_pr, balance=balance, export=export_fmt, **params)
    click.echo(json.dumps(p.to_dict(), indent=2) if as_json else p.table())


plan_command.params.extend(_option(p) for p in _spec_by_name().values())
