"""``prunekit lfm embed``: images to an embeddings file with a pretrained image encoder."""

from __future__ import annotations

from pathlib import Path

import click

from prunekit.cli.common import quiet_option
from prunekit.io.atomic import check_output

from .options import POSITIVE, device_option


@click.command()
@click.argument("images")
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Embeddings file to write (.h5, the core's format); with --shard-rows a "
                   "directory of shards.")
@click.option("--encoder", default="clip", show_default=True,
              help="clip (the paper's), dinov2 (CLS token), siglip, or torchscript:PATH.")
@click.option("--weights", default=None, metavar="PATH|REPO_ID",
              help="Folder written by save_pretrained, or a repo id in the local Hugging Face "
                   "cache (never downloaded) [default: clip openai/clip-vit-base-patch32, dinov2 "
                   "facebook/dinov2-base, siglip google/siglip-base-patch16-224].")
@click.option("--normalize/--no-normalize", default=None,
              help="L2-normalise each embedding [default: on for clip, dinov2, siglip; off for "
                   "torchscript]. Recorded in the file's attributes.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32",
              show_default=True, help="Storage type of the embeddings.")
@click.option("--labels", is_flag=True,
              help="Store labels: first-level sub-folder names (sorted, numbered from 0), the "
                   "digits' classes, an array file's 'labels', or the shards' 'cls' members.")
@click.option("--batch-size", type=POSITIVE, default=64, show_default=True)
@click.option("--size", type=click.IntRange(1, 16384), default=None,
              help="[torchscript] Input side in pixels [default: 224].")
@click.option("--key", default="images", show_default=True, help="Dataset holding the images in an HDF5 file.")
@click.option("--shard-rows", type=POSITIVE, default=None, metavar="N",
              help="Write OUTPUT as a directory of shards part_00000.h5, part_00001.h5, ... of N "
                   "rows each (the core reads the directory as one input). An existing OUTPUT "
                   "directory is replaced only when empty or an earlier --shard-rows output.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run from OUTPUT.parts/ (same inputs and options).")
@device_option()
@quiet_option
def embed(images: str, output: str, encoder: str, weights: str | None, normalize: bool | None,
          dtype: str, labels: bool, batch_size: int, size: int | None, key: str,
          shard_rows: int | None, resume: bool, device: str, quiet: bool) -> None:
    """Embed IMAGES with a pretrained image encoder into an embeddings file.

    IMAGES: 'digits', a folder of images (searched recursively; ids = relative file
    names), an .npy / HDF5 image array, or WebDataset tar shards (a .tar file, a brace
    pattern such as 'shards/{000..009}.tar', or a folder of .tar files; ids = keys).

    \b
    Examples:
      prunekit lfm embed photos/ -o emb.h5                       # CLIP ViT-B/32 from the cache
      prunekit lfm embed photos/ -o emb.h5 --encoder dinov2 --weights ./dinov2-base
      prunekit lfm embed 'shards/{000..009}.tar' -o emb.h5 --dtype float16 --labels
      prunekit lfm embed photos/ -o emb/ --shard-rows 1000000   # emb/part_00000.h5, ...

    Several GPUs: torchrun --nproc_per_node W $(which prunekit) lfm embed ... (batches
    are shared out over the processes; the file is the same as one process writes).
    """
    from prunekit.io.shard_dir import check_shard_dir, shard_ranges

    from ..distributed import process_group
    from ..embed import TORCHSCRIPT, embed_to_file, load_encoder, open_inputs

    weights_dir = weights if weights and Path(weights).is_dir() else None
    script = encoder[len(TORCHSCRIPT):] if encoder.startswith(TORCHSCRIPT) else None
    check = check_output if shard_rows is None else check_shard_dir
    check(output, what="--output", inputs=[images, script], input_dirs=[images, weights_dir])
    with process_group(device) as (dist, dev):
        model = load_encoder(encoder, weights, device=dev, size=size)
        inputs = open_inputs(images, labels=labels, key=key)
        embed_to_file(inputs, model, output, batch_size=batch_size, normalize=normalize, dtype=dtype,
                      resume=resume, progress=not quiet, dist=dist, shard_rows=shard_rows)
    if not dist.main:  # rank 0 wrote the file
        return
    norm = model.normalize_default if normalize is None else normalize
    shards = "" if shard_rows is None else (
        f" in {len(shard_ranges(inputs.n, shard_rows))} shards of up to {shard_rows} rows")
    click.echo(f"{output}: {inputs.n} embeddings{shards} from {model.kind} ({model.weights}), "
               f"{'L2-normalised' if norm else 'not normalised'}, {dtype}, "
               f"labels: {'yes' if inputs.labels is not None else 'no'}")
