"""``prunekit score``: score every item of an embeddings file with one method.

The method options are generated from the methods' parameter specs
(:mod:`prunekit.params`): one ``--flag`` per parameter name, shared by the methods that
take it. A flag given to a method that does not take it is an error.
"""

from __future__ import annotations

import os

import click
from click.core import ParameterSource

from prunekit.cli.common import (
    drop_option,
    key_option,
    open_embeddings,
    quiet_option,
    seed_option,
)
from prunekit.cli.engine_options import engine_options, running_on
from prunekit.cli.params import option
from prunekit.errors import PrunekitError
from prunekit.io.atomic import check_output
from prunekit.io.dataset import check_output_dir, wants_dataset
from prunekit.io.dataset.layout import pyarrow_modules
from prunekit.io.source import shard_dirs
from prunekit.methods import REGISTRY, available, get_method, score_to_folder
from prunekit.methods import score as run_score
from prunekit.params import Param, ParamError, validate
from prunekit.runtime.context import runtime
from prunekit.runtime.resume import open_work_dir, work_dir_for


def _methods_taking(name: str) -> list[str]:
    return [m for m in available() if any(p.name == name for p in REGISTRY[m].params)]


def _spec_by_name() -> dict[str, Param]:
    """One Param per parameter name across methods (the first declaration describes it)."""
    out: dict[str, Param] = {}
    for m in available():
        for p in REGISTRY[m].params:
            first = out.setdefault(p.name, p)
            if first.kind != p.kind or first.cli_flag != p.cli_flag:
                raise TypeError(f"parameter {p.name} is declared differently by two methods")
    return out


def _shown(p: Param) -> object:
    """A default as the user types it (``spherical``, not ``True``, for a flag pair)."""
    if p.kind == "bool" and p.negation:
        return p.name if p.default else p.negation
    return p.default


def _default_text(name: str) -> str:
    defaults = {m: next(_shown(p) for p in REGISTRY[m].params if p.name == name)
                for m in _methods_taking(name)}
    values = set(map(repr, defaults.values()))
    if values == {"None"}:
        return ""
    if len(values) == 1:
        return f" [default: {next(iter(defaults.values()))}]"
    return " [default: " + "; ".join(f"{m}: {v}" for m, v in defaults.items()) + "]"


def _option(p: Param) -> click.Option:
    """The click option of one parameter; its default is None so 'given' is detectable."""
    tag = "[" + ", ".join(_methods_taking(p.name)) + "] "
    return option(p, help=tag + p.help + _default_text(p.name), default=None)


def _method_params(ctx: click.Context, method: str, options: dict) -> dict:
    """The method options the user gave, checked to apply to ``method``."""
    spec = _spec_by_name()
    given = [name for name in spec if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)]
    allowed = {p.name for p in get_method(method).params}
    wrong = [spec[name].cli_flag for name in given if name not in allowed]
    if wrong:
        takes = ", ".join(p.cli_flag for p in get_method(method).params) or "no method options"
        raise PrunekitError(
            f"{', '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not apply to method "
            f"'{method}'; it takes: {takes}."
        )
    params = {name: options[name] for name in given}
    try:  # check values before any file is read
        validate(method, get_method(method).params, params)
    except ParamError as exc:
        raise PrunekitError(exc.cli_message()) from exc
    return params


def _input_files(emb: str, params: dict) -> list[str]:
    """EMB and every file a method parameter names (an output may replace none of them)."""
    spec = _spec_by_name()
    return [emb] + [v for k, v in params.items() if spec[k].kind == "path"]


@click.command()
@click.argument("emb", metavar="EMB", type=click.Path())
@click.option("--method", "-m", required=True,
              help=f"Scoring method: {', '.join(available())} (see docs/methods.md).")
@click.option("--output", "-o", default="scores.h5", show_default=True, type=click.Path(),
              help="Scores to write, atomically: an HDF5 file, or a folder of Parquet parts "
                   "when the path ends in '/', is a folder or has no suffix (scores/): "
                   "each part is written by the task that computed it (docs/formats.md).")
@key_option
@drop_option
@quiet_option
@seed_option("Seed of every random choice (k-means++ seeding, sigma sample, Fourier features).")
@engine_options
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run of the same command: reuse the chunks and "
                   "clusters it finished (kept in .prunekit-work/ beside the output).")
@click.option("--dry-run", is_flag=True,
              help="Print the plan (passes, predicted time and peak memory of each step, here "
                   "and on --workers Ray workers) and stop; nothing is read beyond a probe.")
@click.pass_context
def score(ctx: click.Context, emb: str, method: str, output: str, key: str, drop_nonfinite: bool,
          quiet: bool, seed: int, engine: str, workers: int | None, ray_address: str | None,
          resume: bool, dry_run: bool, **options) -> None:
    """Score every item of EMB with one method; larger score = kept first.

    \b
    Examples:
      prunekit score emb.h5 --method kmeans --k 24          # distance to own centroid
      prunekit score emb.h5 -m herding --max-keep 5000 -o herding.h5
      prunekit score emb.h5 -m herding --within scores.h5   # herd inside each k-means cluster
      prunekit score emb.h5 -m kcenter --metric cosine --within scores.h5
      prunekit score emb.h5 -m loss --from losses.csv
      prunekit score shards/ -m kmeans --k 1000 -o scores/  # a folder of Parquet parts
    Options marked [method] apply to that method only; giving one to another method is an error.
    """
    get_method(method)
    params = _method_params(ctx, method, options)
    folder = wants_dataset(output)
    check = check_output_dir if folder else check_output
    check(output, inputs=_input_files(emb, params), input_dirs=shard_dirs(emb))
    if folder:
        pyarrow_modules()  # the install line now, not after the work
    if dry_run:
        from prunekit.runtime.plan import DEFAULT_RAY_WORKERS, plan

        click.echo(plan(emb, method, ray_workers=workers or DEFAULT_RAY_WORKERS, key=key,
                        output=output, **params).table())
        return
    try:
        with running_on(engine, workers, ray_address):  # the load pass runs on the engine too
            embeddings = open_embeddings(emb, key, drop_nonfinite)
            path = work_dir_for(
                output, fingerprint=embeddings.fingerprint, method=method,
                params={"seed": seed, "drop_nonfinite": drop_nonfinite, **_identity(params)})
            # The work directory stays locked until the output is written: one run at a time.
            with open_work_dir(path, resume=resume, output=output) as work, \
                    runtime(work_dir=work):
                if folder:
                    result = score_to_folder(embeddings, method, output, seed=seed,
                                             progress=not quiet, **params)
                else:
                    result = run_score(embeddings, method, seed=seed, progress=not quiet,
                                       **params)
                    result.save(output)
                work.remove()
    except ParamError as exc:
        raise PrunekitError(exc.cli_message()) from exc
    click.echo(f"{output}: {method} scored {embeddings.n} of {embeddings.n_total} rows"
               f"{get_method(method).detail(result.params)}")


score.params.extend(_option(p) for p in _spec_by_name().values())


def _identity(params: dict) -> dict:
    """Parameters as they key the work directory: a file parameter by its identity."""
    from prunekit.runtime.resume import file_identity

    spec = _spec_by_name()
    out = {}
    for name, value in params.items():
        if spec[name].kind == "path" and value is not None and os.path.isfile(value):
            value = file_identity(value)
        out[name] = value
    return out

