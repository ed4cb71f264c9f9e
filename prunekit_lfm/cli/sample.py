"""``prunekit lfm sample`` (one model or coarse-to-fine) and ``prunekit lfm c2f-sweep``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click
import numpy as np

from prunekit.atomic import atomic_path, write_text
from prunekit.cli.common import quiet_option
from prunekit.errors import PrunekitError

DEFAULT_SWEEP = "0,0.3,0.5,0.7,0.9,1"


def parse_ints(values: tuple[str, ...], what: str) -> list[int] | None:
    """Repeated options and comma lists ("1,2" "3") -> [1, 2, 3]; None when empty."""
    out = []
    for value in values:
        for part in value.replace(",", " ").split():
            try:
                out.append(int(part))
            except ValueError:
                raise PrunekitError(f"{what} value '{part}' is not an integer.") from None
    return out or None


def pick_device(device: str) -> str:
    """``auto`` -> cuda when available, else cpu."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PrunekitError(f"--device {device}: CUDA is not available here. Use --device cpu.")
    return device


def check_output(path: str | None, what: str, suffixes: tuple[str, ...] = ()) -> None:
    """Fail before any work when an output path cannot be written."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise PrunekitError(f"{what} {p} is a directory; give a file name.")
    if suffixes and p.suffix.lower() not in suffixes:
        raise PrunekitError(f"{what} {p} must end in {' or '.join(suffixes)}.")


def load_models(
    run_dir: str | None, coarse: str | None, fine: str | None, *, ema: bool, device: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Models and configs by role: {"model"} alone, or {"coarse", "fine"} for coarse-to-fine.

    RUN_DIR doubles as the fine run when only --coarse is given.
    """
    from prunekit_lfm.runs import check_same_latents, load_run

    if fine is not None and run_dir is not None and Path(fine) != Path(run_dir):
        raise PrunekitError(f"RUN_DIR {run_dir} and --fine {fine} disagree; give one of them.")
    fine = fine or (run_dir if coarse is not None else None)
    if coarse is None and fine is None:
        if run_dir is None:
            raise PrunekitError("give a RUN_DIR, or --coarse RUN_A --fine RUN_B for coarse-to-fine.")
        model, config = load_run(run_dir, ema=ema, device=device)
        return {"model": model}, {"model": config}
    if coarse is None or fine is None:
        raise PrunekitError("coarse-to-fine needs both --coarse RUN_A and --fine RUN_B (or RUN_DIR).")
    models, configs = {}, {}
    for role, path in (("coarse", coarse), ("fine", fine)):
        models[role], configs[role] = load_run(path, ema=ema, device=device)
    check_same_latents(configs["coarse"], configs["fine"], coarse, fine)
    return models, configs


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Decoded images [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3]."""
    x = np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return x.transpose(0, 2, 3, 1)


def save_grid(path: str, images: np.ndarray) -> None:
    """uint8 images [N, H, W, 3] as one PNG grid, ceil(sqrt(N)) per row, 2 px gaps."""
    from PIL import Image

    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    gap = 2
    grid = np.full((rows * (h + gap) + gap, cols * (w + gap) + gap, c), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        r, q = divmod(i, cols)
        top, left = gap + r * (h + gap), gap + q * (w + gap)
        grid[top : top + h, left : left + w] = im
    with atomic_path(path) as tmp:
        Image.fromarray(grid.squeeze(-1) if c == 1 else grid).save(tmp, format="PNG")


def vae_dir(vae: str | None, configs: dict[str, Any]) -> str | None:
    """The VAE folder to decode with: --vae, else the (fine) run's own, checked to exist."""
    config = configs.get("fine") or configs["model"]
    folder = vae or config.vae
    if vae and not Path(vae).is_dir():
        raise PrunekitError(f"--vae {vae}: folder not found; give the VAE folder the latents were encoded with.")
    if folder and not Path(folder).is_dir():
        raise PrunekitError(
            f"VAE folder {folder} (from the run's config.json) not found; pass --vae DIR to decode "
            "with the VAE the latents were encoded with."
        )
    return folder or None


def fmt_flops(flops: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}FLOPs"
    return f"{flops:.3g} FLOPs"


common_options = [
    click.option("--n", "n", type=int, default=64, show_default=True, help="Number of samples."),
    click.option("--seed", type=int, default=0, show_default=True,
                 help="Noise seed: sample i starts from noise drawn from (seed, i)."),
    click.option("--steps", type=int, default=60, show_default=True,
                 help="ODE steps on the uniform grid t_k = k/steps (t = 0 noise, t = 1 data)."),
    click.option("--solver", type=click.Choice(["euler", "heun"]), default="euler", show_default=True,
                 help="Euler (1 call per step) or Heun (2 calls per step)."),
    click.option("--cfg", type=float, default=1.0, show_default=True,
                 help="Guidance scale: v = v_uncond + cfg (v_cond - v_uncond); 1 = no guidance."),
    click.option("--labels", multiple=True,
                 help="Class labels (conditional runs): one for all samples or one per sample; "
                      "comma list or repeated. Default: sample i gets label i mod classes."),
    click.option("--ema/--no-ema", default=True, show_default=True, help="Use the EMA weights."),
    click.option("--batch-size", type=int, default=64, show_default=True, help="Samples per batch."),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
]


def with_options(options):
    def deco(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn

    return deco


@click.command()
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@with_options(common_options)
@click.option("--coarse", type=click.Path(file_okay=False), default=None,
              help="Coarse run: used while t < t_switch (coarse-to-fine).")
@click.option("--fine", type=click.Path(file_okay=False), default=None,
              help="Fine run: used from t_switch to t = 1 (RUN_DIR may stand for it).")
@click.option("--t-switch", type=float, default=None,
              help="Switching time in [0, 1]: 0 = fine model only, 1 = coarse only. Default 0.7.")
@click.option("--start", type=int, default=0, show_default=True, help="Index of the first sample.")
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
    from prunekit_lfm.sampling import check_t_switch, sample_c2f, save_samples
    from prunekit_lfm.sampling import sample as run_sample

    c2f = coarse is not None or fine is not None
    if t_switch is not None and not c2f:
        raise PrunekitError("--t-switch needs --coarse RUN_A (and --fine RUN_B or RUN_DIR).")
    t_switch = check_t_switch(0.7 if t_switch is None else t_switch)
    check_output(output, "--output")
    check_output(png, "--png", (".png",))
    label_list = parse_ints(labels, "--labels")
    device = pick_device(device)
    models, configs = load_models(run_dir, coarse, fine, ema=ema, device=device)
    folder = vae_dir(vae, configs)
    if png and not folder:
        raise PrunekitError("--png needs decoded images, but the run has no VAE; pass --vae DIR.")
    common = dict(seed=seed, steps=steps, solver=solver, cfg=cfg, labels=label_list,
                  batch_size=batch_size, start=start, progress=not quiet)
    if c2f:
        res = sample_c2f(models["coarse"], models["fine"], n, t_switch=t_switch, **common)
        runs = {"coarse_run": coarse, "fine_run": fine or run_dir}
    else:
        res = run_sample(models["model"], n, **common)
        runs = {"run": run_dir}
    images = None
    if folder:
        from prunekit_lfm.latents import decode
        from prunekit_lfm.vae import load_vae

        vae_model = load_vae(folder, device=device)
        images = to_uint8(decode(res.latents.numpy(), vae_model, batch_size=batch_size,
                                 progress=not quiet))
        runs["vae"] = folder
    save_samples(output, res, images=images, runs=runs)
    if png:
        save_grid(png, images)
    _report(output, res, png)


def _report(output: str, res: Any, png: str | None) -> None:
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
@with_options(common_options)
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
    from prunekit_lfm.c2f import check_tol, parse_t_switches, sweep

    extra = list(ctx.args)  # the values after the first one of "--t-switch 0 0.3 0.5"
    for value in extra:
        try:
            float(value)
        except ValueError:
            raise PrunekitError(f"unexpected argument '{value}'; see --help.") from None
    ts = parse_t_switches(list(t_switches) + extra if t_switches or extra else [DEFAULT_SWEEP])
    if tol is not None:
        check_tol(tol)
    check_output(output, "--output")
    models, configs = load_models(None, coarse, fine, ema=ema, device=pick_device(device))
    result = sweep(models["coarse"], models["fine"], ts, n, seed=seed, steps=steps, solver=solver,
                   cfg=cfg, labels=parse_ints(labels, "--labels"), batch_size=batch_size, tol=tol,
                   repeats=repeats, progress=not quiet)
    result.params.update({"coarse_run": coarse, "fine_run": fine, "ema": ema})
    click.echo(f"coarse {coarse} / fine {fine}: one coarse call costs "
               f"{result.flops_per_call_ratio:.4f} of a fine one; fine-only "
               f"{fmt_flops(result.fine_flops)}, {result.fine_wall_s:.2f} s")
    click.echo(result.table())
    if tol is not None:
        click.echo(f"auto (mean cosine >= {tol}): t_switch = {result.auto:g}")
    if output:
        write_text(output, json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n")
        click.echo(f"wrote {output}")
