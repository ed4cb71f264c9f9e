"""``prunekit lfm score``: per-item loss or gradient scores from a trained run."""

from __future__ import annotations

import click
import numpy as np

from prunekit.cli.common import quiet_option
from prunekit.io.atomic import check_output

from .options import POSITIVE, device_option, seed_option


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("latents", type=click.Path(dir_okay=False))
@click.option("--criterion", type=click.Choice(["loss", "grad"]), default="loss", show_default=True,
              help="loss: flow-matching loss; grad: squared norm of its gradient w.r.t. the weights.")
@click.option("--t-points", type=click.IntRange(1, 10_000), default=8, show_default=True,
              help="Interior times t_j = (j + 0.5) / T (t = 0 noise, t = 1 data).")
@click.option("--noise-bank", type=click.IntRange(1, 10_000), default=4, show_default=True,
              help="Noise tensors shared by all items (drawn from --seed).")
@seed_option("Seed of the noise bank.")
@click.option("--ema/--no-ema", default=True, show_default=True, help="Use the EMA weights.")
@click.option("--batch-size", type=POSITIVE, default=64, show_default=True, help="Items per forward pass.")
@device_option()
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="scores.h5", show_default=True,
              help="Scores file (HDF5), ready for `prunekit select`.")
@quiet_option
def score(run_dir, latents, criterion, t_points, noise_bank, seed, ema, batch_size, device, output,
          quiet):
    """Score every item of LATENTS by its loss under the model of RUN_DIR.

    Per item: the flow-matching loss (or its squared gradient norm) at T interior times
    and M noise tensors shared by all items, each time normalised by its mean over the
    whole data set, averaged over times. Higher = harder for the model. The output is a
    core scores file: `prunekit select scores.h5 --pr 0.5` keeps the highest-loss half
    ("L"), `--invert` the lowest ("L^-1").

    Several GPUs: torchrun --nproc_per_node W $(which prunekit) lfm score ... (batches
    are shared out over the processes; the file is the same as one process writes).
    """
    from prunekit_lfm.distributed import Shards, process_group
    from prunekit_lfm.guards import check_space, writing
    from prunekit_lfm.scoring import score_items

    check_output(output, what="--output", inputs=[latents], input_dirs=[run_dir])
    with process_group(device) as (dist, dev), Shards.beside(output, dist) as shards:
        scores = score_items(run_dir, latents, criterion=criterion, t_points=t_points,
                             noise_bank=noise_bank, seed=seed, batch_size=batch_size, ema=ema,
                             device=dev, progress=not quiet and dist.main, shards=shards)
        if scores is None:  # not rank 0: rank 0 writes the file
            return
        check_space([(output, 24 * scores.n_total)], "lfm score")  # score, ids and headroom
        with writing(output, "scores file"):
            scores.save(output)
    s = scores.score
    click.echo(
        f"wrote {output}: {criterion} scores of {scores.n_total} items "
        f"(min {np.min(s):.3f}, median {np.median(s):.3f}, max {np.max(s):.3f}; mean 1 by construction)"
    )
