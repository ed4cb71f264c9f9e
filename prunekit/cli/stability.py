"""``prunekit stability``: how much does pruning change where the closed-form flow goes?"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from prunekit._version import __version__
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
from prunekit.flow.plot import require_matplotlib, stability_figure
from prunekit.flow.study import DEFAULT_SOURCES, STABILITY_SAMPLE, check_prs, dimension_study
from prunekit.flow.study import stability as run_stability
from prunekit.io.atomic import is_stdout, write_bytes, write_text
from prunekit.io.provenance import jsonable
from prunekit.io.source import shard_dirs
from prunekit.selection.subset import BALANCES

GMM_DEFAULTS = {"n": 1000, "components": 10, "spread": 0.5}
POSITIVE = click.IntRange(min=1)


class StabilityCommand(MultiValueCommand):
    several = {"--pr": is_number, "--dims": is_number, "--selection": is_value}


def _check_combinations(o: dict) -> None:
    """Options that do not go together, caught before any work."""
    if o["dims"]:
        if o["data"] != "gmm":
            raise PrunekitError("--dims sweeps synthetic Gaussian-mixture data: pass DATA as the word 'gmm'.")
        for name in ("selection", "scores", "sources"):
            if o[name]:
                raise PrunekitError(f"--{name} does not apply to a --dims sweep (the data are drawn per dimension).")
        if not o["pr"]:
            raise PrunekitError("--dims needs the pruned fractions: add --pr, e.g. --pr 0.25 0.5 0.75.")
        return
    if o["data"] == "gmm":
        raise PrunekitError("DATA 'gmm' means synthetic data for a --dims sweep; add --dims, e.g. --dims 16 256.")
    used = [k for k in GMM_DEFAULTS if o[k] is not None]
    if used:
        raise PrunekitError(f"--{used[0]} sets the synthetic data of a --dims sweep; drop it or add --dims.")
    if bool(o["selection"]) == bool(o["pr"]):
        raise PrunekitError("give the subsets either as --selection FILE ... or as --pr P ... (one of the two).")
    if o["selection"] and (o["scores"] or o["balance"] != "none" or o["invert"]):
        raise PrunekitError("--scores, --balance and --invert build subsets with --pr; not with --selection.")
    if not o["scores"] and (o["balance"] != "none" or o["invert"]):
        raise PrunekitError("--balance and --invert choose from a scores file: add --scores SCORES.h5.")
    if o["sources"] and o["n_sources"] is not None:
        raise PrunekitError("give either --sources FILE or --n-sources M, not both.")


def _subset_name(row: dict) -> str:
    if "selection" in row:
        return Path(row["selection"]).name
    name = str(row.get("method", ""))
    if row.get("balance", "none") != "none":
        name += f"/{row['balance']}"
    return name + ("/inv" if row.get("invert") else "")


def _table(rows: list[dict]) -> str:
    head = f"{'dim':>6} " if rows and "dim" in rows[0] else ""
    lines = [head + f"{'subset':<22} {'pr':>6} {'kept':>7} {'retained':>8} {'unchanged':>9} "
             f"{'dev.median':>10} {'dev.p95':>9}"]
    for r in rows:
        uf = "n/a" if r["unchanged_fraction"] is None else f"{r['unchanged_fraction']:.4f}"
        lead = f"{r['dim']:>6} " if head else ""
        lines.append(
            lead + f"{_subset_name(r)[:22]:<22} {r['pr']:>6.3f} {r['n_kept']:>7} {r['n_retained']:>8} "
            f"{uf:>9} {r['path_deviation_median']:>10.4g} {r['path_deviation_p95']:>9.4g}"
        )
    return "\n".join(lines)


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
@click.option("--steps", type=POSITIVE, default=100, show_default=True, help="Euler/Heun steps K on t_k = k/K.")
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
    _check_combinations(o)
    if o["plot"]:
        require_matplotlib()
    run = {"steps": o["steps"], "solver": o["solver"], "dtype": o["dtype"], "progress": not o["quiet"]}
    with running_on(o["engine"], o["workers"], o["ray_address"]):
        doc = _study(o, run)
    _write(o, doc)


def _study(o: dict, run: dict) -> dict:
    """The JSON document of a --dims sweep or of a study of DATA."""
    if o["dims"]:
        gmm = {k: GMM_DEFAULTS[k] if o[k] is None else o[k] for k in GMM_DEFAULTS}
        n_sources = DEFAULT_SOURCES if o["n_sources"] is None else o["n_sources"]
        rows = dimension_study(o["dims"], o["pr"], n_sources=n_sources, seed=o["seed"], **gmm, **run)
        settings = {k: o[k] for k in ("steps", "solver", "dtype", "seed")}
        settings.update(data="gmm", dims=o["dims"], gmm=gmm, n_sources=n_sources, subsets="random")
        doc = {"prunekit_version": __version__, "settings": settings, "rows": rows}
    else:
        doc = run_stability(
            o["data"], selections=o["selection"], prs=o["pr"], scores=o["scores"],
            balance=o["balance"], invert=o["invert"], sources=o["sources"], n_sources=o["n_sources"],
            seed=o["seed"], block=o["block"], key=o["key"], drop_nonfinite=o["drop_nonfinite"],
            sample=o["sample"] or None, **run,
        )
        doc["settings"]["data"] = o["data"]
    return doc


def _write(o: dict, doc: dict) -> None:
    """Render everything first, then write: a failure leaves no file behind."""
    doc = {"prunekit_version": doc["prunekit_version"], "command": list(sys.argv),
           "settings": doc["settings"], "rows": doc["rows"]}
    text = json.dumps(jsonable(doc), indent=2) + "\n"
    rows = doc["rows"]
    png = stability_figure(rows, title=_title(doc["settings"])) if o["plot"] else None
    to_file = o["output"] and not is_stdout(o["output"])
    if to_file:
        write_text(o["output"], text)
        click.echo(_table(rows))
        click.echo(f"wrote {o['output']}")
    else:
        click.echo(text, nl=False)
    if png is not None:
        write_bytes(o["plot"], png)
        click.echo(f"wrote {o['plot']}", err=not to_file)


def _title(s: dict) -> str:
    what = f"synthetic GMM ({s['gmm']['n']} points)" if s["data"] == "gmm" else f"{s['data']} ({s['n_train']} x {s['dim']})"
    return f"closed-form flow: {what}, {s['n_sources']} sources, {s['solver']} K={s['steps']}, {s['dtype']}"
