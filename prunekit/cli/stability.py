"""``prunekit stability``: how much does pruning change where the closed-form flow goes?"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from prunekit.cli.common import (
    MultiValueCommand,
    check_output,
    drop_option,
    is_number,
    is_value,
    key_option,
    quiet_option,
    seed_option,
    split_values,
)
from prunekit.cli.engine_options import engine_options, running_on
from prunekit.errors import PrunekitError
from prunekit.flow.ode import SOLVERS
from prunekit.flow.plot import require_matplotlib
from prunekit.flow.study import (
    DEFAULT_SOURCES,
    GMM_DEFAULTS,
    MAX_STEPS,
    STABILITY_SAMPLE,
    StabilityStudy,
    StudyOptionError,
    check_prs,
    check_study,
)
from prunekit.flow.study import stability as run_stability
from prunekit.io.atomic import is_stdout, write_bytes, write_text
from prunekit.io.source import shard_dirs
from prunekit.params import INT64_MAX
from prunekit.selection.subset import BALANCES

POSITIVE = click.IntRange(min=1)
# Counts that reach int64 arrays and their upper bounds (checked before any work).
COUNTS = ("n_sources", "block", "sample", "n", "components")
# The options check_study looks at (the command checks them before starting an engine).
CHECKED = ("selections", "prs", "scores", "balance", "invert", "sources", "n_sources", "dims",
           *GMM_DEFAULTS)


class StabilityCommand(MultiValueCommand):
    several = {"--pr": is_number, "--dims": is_number, "--selection": is_value}


@click.command(cls=StabilityCommand)
@click.argument("data")
@key_option
@drop_option
@click.option("--selection", "selection", multiple=True, type=click.Path(dir_okay=False), metavar="FILE ...",
              help="Selection file(s) to compare with the full set: --selection A.h5 B.h5 (put DATA first).")
@click.option("--pr", "pr", multiple=True, metavar="P ...",
              help="Pruned fraction(s) to build subsets for: --pr 0.25 0.5 0.75 (or 0.25,0.5,0.75).")
@click.option("--scores", type=click.Path(dir_okay=False), help="Choose the --pr subsets from this scores file (default: random).")
@click.option("--balance", type=click.Choice(BALANCES), default="none", show_default=True,
              help="With --scores: how quotas are spread, as in `prunekit select`.")
@click.option("--invert", is_flag=True, help="With --scores: keep the lowest scores first.")
@click.option("--sources", type=click.Path(dir_okay=False), help="Noise points x0 as an (M, d) .npy file, used as they are.")
@click.option("--n-sources", type=POSITIVE, help=f"Draw M noise points x0 ~ N(0, I) [default: {DEFAULT_SOURCES}].")
@seed_option("Seed of the sources, random subsets and synthetic data (each its own stream).")
@click.option("--steps", type=POSITIVE, default=100, show_default=True,
              help=f"Euler/Heun steps K on t_k = k/K (at most {MAX_STEPS}).")
@click.option("--solver", type=click.Choice(SOLVERS), default="euler", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True,
              help="Compute precision.")
@click.option("--sample", "sample", type=click.IntRange(min=0), default=STABILITY_SAMPLE, show_default=True,
              help="Data with more usable rows are represented by a seeded uniform sample of this "
                   "many (the subsets keep their rows in it); 0 = every row.")
@click.option("--block", type=POSITIVE, help="Training points per block (default: sized to ~64 MiB of logits).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write the JSON here ('-' or nothing: print it).")
@click.option("--plot", type=click.Path(dir_okay=False), help="Also draw the curves into this PNG (needs prunekit[plot]).")
@click.option("--dims", multiple=True, metavar="D ...", help="Sweep these dimensions on synthetic data (DATA = gmm): --dims 16 256 4096.")
@click.option("--n", "n", type=POSITIVE, help=f"--dims: points of the mixture [default: {GMM_DEFAULTS['n']}].")
@click.option("--components", type=POSITIVE, help=f"--dims: mixture components [default: {GMM_DEFAULTS['components']}].")
@click.option("--spread", type=float, help=f"--dims: spread around component means [default: {GMM_DEFAULTS['spread']}].")
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
    o["pr"] = check_prs(split_values(o["pr"], float, "--pr")) if o["pr"] else []
    o["dims"] = split_values(o["dims"], int, "--dims")
    inputs = [o["data"], *o["selection"], o["scores"], o["sources"]]
    dirs = shard_dirs(o["data"]) if o["data"] else []
    if o["output"]:
        check_output(o["output"], inputs=inputs, input_dirs=dirs, what="--output", allow_stdout=True)
    if o["plot"]:
        check_output(o["plot"], inputs=inputs, input_dirs=dirs, what="--plot")
        if o["output"] and Path(o["plot"]).resolve() == Path(o["output"]).resolve():
            raise PrunekitError("--plot and --output name the same file; give the figure its own path.")
    kw = _study_options(o)
    try:
        check_study(o["data"], **{k: kw[k] for k in CHECKED})
    except StudyOptionError as exc:
        raise PrunekitError(exc.cli_message()) from exc
    if o["plot"]:
        require_matplotlib()
    with running_on(o["engine"], o["workers"], o["ray_address"]):
        study = run_stability(o["data"], **kw)
    _write(o, study)


def _check_bounds(o: dict) -> None:
    """Counts within int64, and no more steps than change the result (see MAX_STEPS)."""
    for name in COUNTS:
        if o[name] is not None and o[name] > INT64_MAX:
            raise PrunekitError(f"--{name.replace('_', '-')} {o[name]} is not a 64-bit integer "
                                "(at most 2**63 - 1).")
    if o["steps"] > MAX_STEPS:
        raise PrunekitError(f"--steps {o['steps']} is above {MAX_STEPS}: memory does not grow with "
                            "the steps but the work does, and more steps change the result less "
                            "than float32 resolves.")


def _study_options(o: dict) -> dict[str, Any]:
    """The keyword arguments of pk.stability from the command's options."""
    return {
        "selections": o["selection"], "prs": o["pr"], "scores": o["scores"],
        "balance": o["balance"], "invert": o["invert"], "sources": o["sources"],
        "n_sources": o["n_sources"], "seed": o["seed"], "steps": o["steps"],
        "solver": o["solver"], "dtype": o["dtype"], "block": o["block"], "key": o["key"],
        "drop_nonfinite": o["drop_nonfinite"], "sample": o["sample"] or None, "dims": o["dims"],
        **{k: o[k] for k in GMM_DEFAULTS}, "progress": not o["quiet"],
    }


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
