"""``prunekit lfm train``: train a latent flow-matching model on (a selection of) a latent store."""

from __future__ import annotations

import click

from prunekit.cli.common import quiet_option
from prunekit.cli.params import options_from
from prunekit.params import pick
from prunekit_lfm.specs import TRAIN_PARAMS

from .options import device_option


@click.command()
@click.argument("latents", type=click.Path(dir_okay=False))
@options_from(pick(TRAIN_PARAMS, "selection", "model"))
@click.option("-o", "--output", "run_dir", required=True, type=click.Path(file_okay=False),
              help="Run directory (must be new or empty, unless --resume).")
@options_from(p for p in TRAIN_PARAMS if p.name not in ("selection", "model"))
@click.option("--resume", is_flag=True, help="Continue the run in RUN_DIR from its last checkpoint (same settings).")
@device_option()
@quiet_option
def train(latents: str, run_dir: str, resume: bool, device: str, quiet: bool, **settings) -> None:
    """Train a velocity model on LATENTS (t = 0 noise, t = 1 data; linear path, MSE on x1 - x0).

    Multi-GPU: torchrun --nproc_per_node N $(which prunekit) lfm train ... (the global
    batch is split over the processes; only rank 0 writes).
    """
    from ..devices import pick_device
    from ..models import PRESETS
    from ..runs import read_log
    from ..train import Dist
    from ..train import train as run_training

    config = run_training(latents, run_dir, resume=resume, progress=not quiet,
                          device=pick_device(device), **settings)  # TRAIN_PARAMS, checked there
    if Dist.from_env().main:
        log = read_log(run_dir)
        last = f", last loss {log[-1]['loss']:.4f}" if log else ""
        preset = config.model.get("preset")
        name = preset if preset and config.model["spec"] == PRESETS[preset] else (
            f"custom model (from preset {preset})" if preset else "custom model")
        click.echo(f"{run_dir}: {name} trained {config.steps_done} steps on {config.n_train} latents{last}")
