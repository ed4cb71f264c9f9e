"""``prunekit lfm sample`` (one model or coarse-to-fine) and ``prunekit lfm c2f-sweep``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from prunekit.cli.common import quiet_option
from prunekit.errors import PrunekitError
from prunekit.io.atomic import check_output, write_text

from .options import INDEX, check_suffix, parse_ints, sampling_options

DEFAULT_SWEEP = "0,0.3,0.5,0.7,0.9,1"


def sampling_config(**options) -> Any:
    """The sampling options (:data:`~prunekit_lfm.specs.SAMPLING_PARAMS`) of a command's
    ``options`` as one validated SamplingConfig; ``--labels`` comes as text (comma lists)."""
    from prunekit_lfm.sampling import SamplingConfig
    from prunekit_lfm.specs import SAMPLING_PARAMS

    given = {p.name: options[p.name] for p in SAMPLING_PARAMS}
    return SamplingConfig(**{**given, "labels": parse_ints(given["labels"], "--labels")})


@click.command()
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@sampling_options
@click.option("--coarse", type=click.Path(file_okay=False), default=None,
              help="Coarse run: used while t < t_switch (coarse-to-fine).")
@click.option("--fine", type=click.Path(file_okay=False), default=None,
              help="Fine run: used from t_switch to t = 1 (RUN_DIR may stand for it).")
@click.option("--t-switch", type=float, default=None,
              help="Switching time in [0, 1]: 0 = fine model only, 1 = coarse only. Default 0.7.")
@click.option("--start", type=INDEX, default=0, show_default=True,
              help="Index of the first sample.")
@click.option("--vae", type=click.Path(file_okay=False), default=None,
              help="Decode with this VAE folder instead of the run's own.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="samples.h5",
              show_default=True, help="Samples file (HDF5).")
@click.option("--png", type=click.Path(dir_okay=False), default=None,
              help="Also write a PNG grid of the decoded images.")
@quiet_option
def sample(run_dir, n, seed, steps, solver, cfg, labels, ema, batch_size, device, coarse, fine,
           t_switch, start, vae, output, png, quiet):
    """Sample a trained run, or two runs coarse-to-fine, from per-index noise.

    Sample i starts from noise drawn from (seed, i), the same for any --n and batch
    size, so two runs sampled with one seed are paired sample by sample.
    Coarse-to-fine (--coarse RUN_A --fine RUN_B --t-switch 0.7): RUN_A integrates while
    t < t_switch, RUN_B from there to t = 1 (t = 0 noise, t = 1 data).

    The samples file holds `latents`, `images` (uint8, when the run has a VAE), `indices`,
    `labels`, the seed, and the cost: network calls, FLOPs and wall time.
    """
    from prunekit_lfm.generate import check_sample_memory, check_sample_space, draw, to_uint8
    from prunekit_lfm.sampling import check_t_switch

    if fine is not None and run_dir is not None and Path(fine) != Path(run_dir):
        raise PrunekitError(f"RUN_DIR {run_dir} and --fine {fine} disagree; give one of them.")
    fine = fine or run_dir
    c2f = coarse is not None
    if t_switch is not None and not c2f:
        raise PrunekitError("--t-switch needs --coarse RUN_A (and --fine RUN_B or RUN_DIR).")
    if c2f and fine is None:
        raise PrunekitError("coarse-to-fine needs both --coarse RUN_A and --fine RUN_B (or RUN_DIR).")
    if fine is None:
        raise PrunekitError("give a RUN_DIR, or --coarse RUN_A --fine RUN_B for coarse-to-fine.")
    t_switch = check_t_switch(0.7 if t_switch is None else t_switch) if c2f else None
    check_suffix(png, "--png", (".png",))
    read = dict(inputs=[vae], input_dirs=[fine, coarse, vae])
    check_output(output, what="--output", **read)
    if png:
        check_output(png, what="--png", **read)
    config = sampling_config(steps=steps, solver=solver, cfg=cfg, seed=seed, device=device,
                             labels=labels, batch_size=batch_size, ema=ema)
    check_sample_memory(fine, n, decode=True)
    check_sample_space(output, png, fine, n)
    samples, res = draw(fine, n, config, coarse=coarse, t_switch=t_switch, vae=vae, start=start,
                        progress=not quiet)
    if png and samples.images is None:
        raise PrunekitError("--png needs decoded images, but the run has no VAE; pass --vae DIR.")
    images = None if samples.images is None else to_uint8(samples.images)
    runs = {"coarse_run": coarse, "fine_run": fine} if c2f else {"run": fine}
    if samples.params.get("vae"):
        runs["vae"] = samples.params["vae"]
    _write(output, png, res, images, runs)
    _report(output, res, png)


def _write(output, png, res, images, runs) -> None:
    """The samples file and the grid: both or (on an interrupt or a failed write) neither."""
    from prunekit_lfm.generate import grid_bytes, samples_file_bytes, save_grid
    from prunekit_lfm.guards import check_space, writing
    from prunekit_lfm.sampling import save_samples

    writes = [(output, samples_file_bytes(res.latents.numpy(), images))]
    if png:
        writes.append((png, grid_bytes(images)))
    check_space(writes, "lfm sample")  # the exact sizes; h5py can crash on a full disk
    with writing(output, "samples file"):
        save_samples(output, res, images=images, runs=runs)
    if png:
        try:
            with writing(png, "PNG grid"):
                save_grid(png, images)
        except BaseException:
            Path(output).unlink(missing_ok=True)
            raise


def _report(output: str, res: Any, png: str | None) -> None:
    from prunekit_lfm.generate import fmt_flops

    p = res.params
    head = f"wrote {output}: {len(res.indices)} samples, {p['steps']} {p['solver']} steps"
    if "t_switch" in p:
        head += f", coarse-to-fine at t_switch={p['t_switch']:g} ({p['coarse_steps']} coarse steps)"
    click.echo(head)
    for name, m in res.cost.models.items():
        calls = f"{m.calls} call" + ("" if m.calls == 1 else "s")
        click.echo(f"  {name}: {calls}, {fmt_flops(m.flops)} ({fmt_flops(m.flops_per_row)} per latent)")
    click.echo(f"  total: {fmt_flops(res.cost.flops)}, wall {res.cost.wall_s:.2f} s")
    if png:
        click.echo(f"wrote {png}")


@click.command(context_settings={"ignore_unknown_options": False, "allow_extra_args": True})
@click.option("--coarse", type=click.Path(file_okay=False), required=True, help="Coarse (small) run.")
@click.option("--fine", type=click.Path(file_okay=False), required=True, help="Fine (large) run.")
@click.option("--t-switch", "t_switches", multiple=True,
              help=f"Switching times in [0, 1]: space-separated after one flag, comma list, or "
                   f"repeated. Default: {DEFAULT_SWEEP}.")
@sampling_options
@click.option("--auto", "tol", type=float, default=None,
              help="Pick the cheapest t_switch whose mean latent cosine similarity to fine-only "
                   "is >= TOL (0 = fine only when none is).")
@click.option("--repeats", type=int, default=1, show_default=True,
              help="Time every setting this many times; wall times are medians.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Also write the sweep as JSON.")
@quiet_option
@click.pass_context
def c2f_sweep(ctx, coarse, fine, t_switches, n, seed, steps, solver, cfg, labels, ema, batch_size,
              device, tol, repeats, output, quiet):
    """Cost and fidelity of coarse-to-fine sampling at several switching times.

    For each t_switch (t = 0 noise, t = 1 data; the coarse run integrates while t <
    t_switch) the same samples are drawn as with the fine run alone and compared: cost
    as a ratio to fine-only (FLOPs = per-call FLOPs x calls, and wall time), and the
    same-seed cosine similarity and MSE of the latents.

    Example: prunekit lfm c2f-sweep --coarse runs/s --fine runs/xl --t-switch 0 0.3 0.5 0.7 0.9 1
    """
    from prunekit_lfm.c2f import MAX_REPEATS, check_tol, parse_t_switches, sweep
    from prunekit_lfm.generate import check_sample_memory, fmt_flops, load_models

    extra = list(ctx.args)  # the values after the first one of "--t-switch 0 0.3 0.5"
    for value in extra:
        try:
            float(value)
        except ValueError:
            raise PrunekitError(f"unexpected argument '{value}'; see --help.") from None
    ts = parse_t_switches(list(t_switches) + extra if t_switches or extra else [DEFAULT_SWEEP])
    if tol is not None:
        check_tol(tol)
    if not 1 <= repeats <= MAX_REPEATS:
        raise PrunekitError(f"--repeats must be a positive integer up to {MAX_REPEATS}, got {repeats}.")
    if output is not None:
        check_output(output, what="--output", input_dirs=[coarse, fine])
    config = sampling_config(steps=steps, solver=solver, cfg=cfg, seed=seed, device=device,
                             labels=labels, batch_size=batch_size, ema=ema)
    for run in (fine, coarse):  # the fine-only samples stay beside each coarse-to-fine set
        check_sample_memory(run, n, decode=False, copies=3)
    models, _ = load_models(fine, coarse, config=config)
    result = sweep(models["coarse"], models["fine"], ts, n, config, tol=tol, repeats=repeats,
                   progress=not quiet)
    result.params.update({"coarse_run": coarse, "fine_run": fine})
    click.echo(f"coarse {coarse} / fine {fine}: one coarse call costs "
               f"{result.flops_per_call_ratio:.4f} of a fine one; fine-only "
               f"{fmt_flops(result.fine_flops)}, {result.fine_wall_s:.2f} s")
    click.echo(result.table())
    if tol is not None:
        click.echo(f"auto (mean cosine >= {tol}): t_switch = {result.auto:g}")
    if output:
        write_text(output, json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n")
        click.echo(f"wrote {output}")
