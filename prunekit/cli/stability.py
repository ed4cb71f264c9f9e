"""``prunekit stability``: how much does pruning change where the closed-form flow goes?"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import click
import numpy as np

from .. import __version__
from ..atomic import write_bytes, write_text
from ..errors import PrunekitError
from ..flow.ode import SOLVERS
from ..flow.plot import require_matplotlib, stability_figure
from ..flow.study import (
    check_prs,
    dimension_study,
    draw_sources,
    random_subsets,
    scored_subsets,
    selection_subset,
    stability_rows,
)
from ..scores import load_scores
from ..selection import BALANCES, load_selection
from .common import drop_option, key_option, open_embeddings, quiet_option

GMM_DEFAULTS = {"n": 1000, "components": 10, "spread": 0.5}
DEFAULT_SOURCES = 256


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _is_value(token: str) -> bool:
    return not token.startswith("-")


def expand_greedy(args: Sequence[str], greedy: dict[str, Callable[[str], bool]]) -> list[str]:
    """Rewrite ``--pr 0.25 0.5`` as ``--pr 0.25 --pr 0.5`` for the options in ``greedy``.

    After an option's own value, following tokens that its predicate accepts are taken as
    more values of the same option; anything else (another option, DATA) ends the run.
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        tok = args[i]
        out.append(tok)
        i += 1
        if tok == "--":
            out.extend(args[i:])
            break
        name = tok.split("=", 1)[0]
        if name not in greedy:
            continue
        if "=" not in tok and i < len(args):
            out.append(args[i])
            i += 1
        while i < len(args) and greedy[name](args[i]):
            out += [name, args[i]]
            i += 1
    return out


class GreedyCommand(click.Command):
    """A command whose multi-value options also accept several values after one flag."""

    greedy = {"--pr": _is_number, "--dims": _is_number, "--selection": _is_value}

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, expand_greedy(args, self.greedy))


def _split(values: Sequence[str], cast: Callable[[str], float | int], option: str) -> list:
    out = []
    for v in values:
        for part in v.replace(",", " ").split():
            try:
                out.append(cast(part))
            except ValueError as exc:
                raise PrunekitError(f"{option} takes numbers, got '{part}'.") from exc
    return out


def _load_sources(path: str, dim: int) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise PrunekitError(f"sources file not found: {p}. Give an .npy file of shape (M, {dim}).")
    try:
        x0 = np.load(p, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise PrunekitError(f"cannot read sources file {p} as .npy: {exc}") from exc
    if x0.ndim != 2 or x0.shape[1] != dim or x0.shape[0] == 0 or x0.dtype.kind != "f":
        raise PrunekitError(
            f"sources file {p} holds a {x0.dtype} array of shape {x0.shape}; it must be float, "
            f"(M, {dim}) to match the data's dimension."
        )
    if not np.isfinite(x0).all():
        raise PrunekitError(f"sources file {p} has NaN/inf values; every source must be finite.")
    return x0


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


@click.command(cls=GreedyCommand)
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
@click.option("--n-sources", type=int, help=f"Draw M noise points x0 ~ N(0, I) [default: {DEFAULT_SOURCES}].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sources, random subsets and synthetic data.")
@click.option("--steps", type=int, default=100, show_default=True, help="Euler/Heun steps K on t_k = k/K.")
@click.option("--solver", type=click.Choice(SOLVERS), default="euler", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True,
              help="Compute precision.")
@click.option("--block", type=int, help="Training points per block (default: sized to ~64 MiB of logits).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the JSON here (default: print it).")
@click.option("--plot", type=click.Path(dir_okay=False), help="Also draw the curves into this PNG (needs prunekit[plot]).")
@click.option("--dims", multiple=True, metavar="D ...", help="Sweep these dimensions on synthetic data (DATA = gmm): --dims 16 256 4096.")
@click.option("--n", "n", type=int, help=f"--dims: points of the mixture [default: {GMM_DEFAULTS['n']}].")
@click.option("--components", type=int, help=f"--dims: mixture components [default: {GMM_DEFAULTS['components']}].")
@click.option("--spread", type=float, help=f"--dims: spread around component means [default: {GMM_DEFAULTS['spread']}].")
@quiet_option
def stability(**o) -> None:
    """Integrate the closed-form flow of DATA and of subsets of it from the same noise.

    For each subset: the fraction of noise points whose assigned training point stays the
    same (among those whose full-set point was kept) and the deviation of the paths. With
    --pr the subsets are built here (random, or from --scores like `prunekit select`), so
    one call gives a whole curve. `prunekit stability gmm --dims 16 256 4096 --pr 0.5 0.8`
    sweeps the dimension on a synthetic Gaussian mixture.
    """
    o["pr"] = check_prs(_split(o["pr"], float, "--pr")) if o["pr"] else []
    o["dims"] = _split(o["dims"], int, "--dims")
    _check_combinations(o)
    if o["plot"]:
        require_matplotlib()
    settings = {k: o[k] for k in ("steps", "solver", "dtype", "seed")}
    run = {"steps": o["steps"], "solver": o["solver"], "dtype": o["dtype"], "progress": not o["quiet"]}
    if o["dims"]:
        gmm = {k: GMM_DEFAULTS[k] if o[k] is None else o[k] for k in GMM_DEFAULTS}
        n_sources = DEFAULT_SOURCES if o["n_sources"] is None else o["n_sources"]
        rows = dimension_study(o["dims"], o["pr"], n_sources=n_sources, seed=o["seed"], **gmm, **run)
        settings.update(data="gmm", dims=o["dims"], gmm=gmm, n_sources=n_sources, subsets="random")
    else:
        rows, more = _data_rows(o, run)
        settings.update(more)
    _write(o, rows, settings)


def _data_rows(o: dict, run: dict) -> tuple[list[dict], dict]:
    emb = open_embeddings(o["data"], o["key"], o["drop_nonfinite"])
    if o["selection"]:
        subsets = [
            selection_subset(sel, emb, path, {"selection": path, "method": sel.method})
            for path, sel in ((p, load_selection(p)) for p in o["selection"])
        ]
        how = "selection"
    elif o["scores"]:
        subsets = scored_subsets(load_scores(o["scores"]), emb, o["pr"], balance=o["balance"],
                                 invert=o["invert"], seed=o["seed"], name=f"--scores {o['scores']}")
        how = "scores"
    else:
        subsets = random_subsets(emb, o["pr"], seed=o["seed"])
        how = "random"
    if o["sources"]:
        x0 = _load_sources(o["sources"], emb.dim)
    else:
        x0 = draw_sources(DEFAULT_SOURCES if o["n_sources"] is None else o["n_sources"], emb.dim, o["seed"])
    x1 = emb.array(np.float64 if emb.dtype == np.float64 else np.float32)
    rows = stability_rows(x1, subsets, x0, block=o["block"], **run)
    settings = {
        "data": o["data"], "key": o["key"], "n_train": emb.n, "dim": emb.dim,
        "n_sources": int(x0.shape[0]), "sources": o["sources"], "subsets": how,
        "scores": o["scores"], "balance": o["balance"], "invert": o["invert"],
    }
    return rows, settings


def _write(o: dict, rows: list[dict], settings: dict) -> None:
    """Render everything first, then write: a failure leaves no file behind."""
    doc = {"prunekit_version": __version__, "command": list(sys.argv), "settings": settings, "rows": rows}
    text = json.dumps(doc, indent=2) + "\n"
    png = stability_figure(rows, title=_title(settings)) if o["plot"] else None
    if o["output"]:
        write_text(o["output"], text)
        click.echo(_table(rows))
        click.echo(f"wrote {o['output']}")
    else:
        click.echo(text, nl=False)
    if png is not None:
        write_bytes(o["plot"], png)
        click.echo(f"wrote {o['plot']}", err=not o["output"])


def _title(s: dict) -> str:
    what = f"synthetic GMM ({s['gmm']['n']} points)" if s["data"] == "gmm" else f"{s['data']} ({s['n_train']} x {s['dim']})"
    return f"closed-form flow: {what}, {s['n_sources']} sources, {s['solver']} K={s['steps']}, {s['dtype']}"
