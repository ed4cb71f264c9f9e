"""``prunekit lfm train``: train a latent flow-matching model on (a selection of) a latent store."""

from __future__ import annotations

import click

from prunekit.cli.common import quiet_option

from .options import device_option, seed_option


@click.command()
@click.argument("latents", type=click.Path(dir_okay=False))
@click.option("--selection", type=click.Path(dir_okay=True), default=None,
              help="Selection file or folder; its rows are matched to the latents by id (by position "
                   "without ids).")
@click.option("--model", default="tiny", show_default=True,
              help="Preset (tiny, small, DiT-S/2, DiT-B/2, DiT-L/2, DiT-XL/2, unet-tiny, unet) or a JSON config.")
@click.option("-o", "--output", "run_dir", required=True, type=click.Path(file_okay=False),
              help="Run directory (must be new or empty, unless --resume).")
@click.option("--steps", type=int, default=1000, show_default=True, help="Total optimizer steps.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Global batch (all processes).")
@click.option("--lr", type=float, default=1e-4, show_default=True)
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--ema", type=float, default=0.9999, show_default=True, help="EMA decay (warmed up early on).")
@click.option("--grad-clip", type=float, default=1.0, show_default=True, help="Gradient-norm clip; 0 = off.")
@click.option("--conditional", is_flag=True, help="Condition on the latents' labels (classifier-free guidance).")
@click.option("--cfg-dropout", type=float, default=0.1, show_default=True,
              help="Probability of replacing a label by the null label (conditional runs).")
@click.option("--t-schedule", type=click.Choice(["uniform", "logit_normal"]), default="uniform", show_default=True)
@seed_option()
@click.option("--checkpoint-every", type=int, default=1000, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in RUN_DIR from its last checkpoint (same settings).")
@device_option()
@quiet_option
def train(latents: str, selection: str | None, model: str, run_dir: str, steps: int, batch_size: int,
          lr: float, weight_decay: float, ema: float, grad_clip: float, conditional: bool,
          cfg_dropout: float, t_schedule: str, seed: int, checkpoint_every: int, resume: bool,
          device: str, quiet: bool) -> None:
    """Train a velocity model on LATENTS (t = 0 noise, t = 1 data; linear path, MSE on x1 - x0).

    Multi-GPU: torchrun --nproc_per_node N $(which prunekit) lfm train ... (the global
    batch is split over the processes; only rank 0 writes).
    """
    from ..devices import pick_device
    from ..models import PRESETS
    from ..runs import read_log
    from ..train import Dist
    from ..train import train as run_training

    config = run_training(
        latents, run_dir, model=model, selection=selection, steps=steps, batch_size=batch_size,
        lr=lr, weight_decay=weight_decay, ema=ema, grad_clip=grad_clip, conditional=conditional,
        cfg_dropout=cfg_dropout, t_schedule=t_schedule, seed=seed, resume=resume,
        checkpoint_every=checkpoint_every, progress=not quiet, device=pick_device(device),
    )
    if Dist.from_env().main:
        log = read_log(run_dir)
        last = f", last loss {log[-1]['loss']:.4f}" if log else ""
        preset = config.model.get("preset")
        name = preset if preset and config.model["spec"] == PRESETS[preset] else (
            f"custom model (from preset {preset})" if preset else "custom model")
        click.echo(f"{run_dir}: {name} trained {config.steps_done} steps on {config.n_train} latents{last}")
