"""``prunekit stability``: how much does pruning change where the closed-form flow goes?"""

from __future__ import annotations

from pathlib import Path

import click

from prunekit.cli.common import (
    MultiValueCommand,
    check_output,
    drop_option,
    is_number,
    is_value,
    key_option,
    quiet_option,
    split_values,
)
from prunekit.cli.engine_options import engine_options, running_on
from prunekit.cli.params import options_from
from prunekit.errors import PrunekitError
from prunekit.flow.plot import require_matplotlib
from prunekit.flow.study import (
    STABILITY_PARAMS,
    STUDY_PARAMS,
    SWEEP_PARAMS,
    StabilityStudy,
    check_options,
)
from prunekit.flow.study import stability as run_stability
from prunekit.io.atomic import is_stdout, write_bytes, write_text
from prunekit.io.source import shard_dirs
from prunekit.params import INT64_MAX

# Counts that reach int64 arrays: click checks their lower bound, this their upper one.
COUNTS = tuple(p.name for p in STABILITY_PARAMS if p.kind == "int" and p.cli_range)


class StabilityCommand(MultiValueCommand):
    several = {"--pr": is_number, "--dims": is_number, "--selection": is_value}


@click.command(cls=StabilityCommand)
@click.argument("data")
@key_option
@drop_option
@options_from(STUDY_PARAMS)
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write the JSON here ('-' or nothing: print it).")
@click.option("--plot", type=click.Path(dir_okay=False), help="Also draw the curves into this PNG (needs prunekit[plot]).")
@options_from(SWEEP_PARAMS)
@engine_options
@quiet_option
def stability(**o) -> None:
    """Integrate the closed-form flow of DATA and of subsets of it from the same noise.

    For each subset: the fraction of noise points whose assigned training point stays the
    same (among those whose full-set point was kept) and the deviation of the paths. With
    --pr the subsets are built here (random, or from --scores like `prunekit select`), so
    one call gives a whole curve. `prunekit stability gmm --dims 16 256 4096 --pr 0.5 0.8`
    sweeps the dimension on a synthetic Gaussian mixture. Blocks of noise points (and
    groups of subsets) run as tasks on --engine; every engine gives the same numbers.
    """
    _check_bounds(o)
    o["prs"] = split_values(o["prs"], float, "--pr")
    o["dims"] = split_values(o["dims"], int, "--dims")
    inputs = [o["data"], *o["selections"], o["scores"], o["sources"]]
    dirs = shard_dirs(o["data"]) if o["data"] else []
    if o["output"]:
        check_output(o["output"], inputs=inputs, input_dirs=dirs, what="--output", allow_stdout=True)
    if o["plot"]:
        check_output(o["plot"], inputs=inputs, input_dirs=dirs, what="--plot")
        if o["output"] and Path(o["plot"]).resolve() == Path(o["output"]).resolve():
            raise PrunekitError("--plot and --output name the same file; give the figure its own path.")
    options = {p.name: o[p.name] for p in STABILITY_PARAMS}
    check_options(o["data"], options)  # before an engine starts (the CLI words its errors)
    if o["plot"]:
        require_matplotlib()
    with running_on(o["engine"], o["workers"], o["ray_address"]):
        study = run_stability(o["data"], key=o["key"], drop_nonfinite=o["drop_nonfinite"],
                              progress=not o["quiet"], **options)
    _write(o, study)


def _check_bounds(o: dict) -> None:
    """Counts within int64 (click has checked that they are positive)."""
    for name in COUNTS:
        if o[name] is not None and o[name] > INT64_MAX:
            raise PrunekitError(f"--{name.replace('_', '-')} {o[name]} is not a 64-bit integer "
                                "(at most 2**63 - 1).")


def _write(o: dict, study: StabilityStudy) -> None:
    """Render everything first, then write: a failure leaves no file behind."""
    text = study.to_json()
    png = study.figure() if o["plot"] else None
    to_file = o["output"] and not is_stdout(o["output"])
    if to_file:
        write_text(o["output"], text)
        click.echo(study.render())
        click.echo(f"wrote {o['output']}")
    else:
        click.echo(text, nl=False)
    if png is not None:
        write_bytes(o["plot"], png)
        click.echo(f"wrote {o['plot']}", err=not to_file)
