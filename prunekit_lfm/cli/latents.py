"""``prunekit lfm encode`` and ``prunekit lfm train-vae``: images to latents, and a small VAE."""

from __future__ import annotations

from pathlib import Path

import click

from prunekit.cli.common import quiet_option
from prunekit.errors import PrunekitError
from prunekit.io.atomic import check_output

from .options import POSITIVE, device_option, seed_option

SIDE = click.IntRange(1, 16384)


@click.command()
@click.argument("images")
@click.option("--vae", "vae_dir", required=True, type=click.Path(),
              help="Folder of a diffusers AutoencoderKL (config.json + weights).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Latent store to write (.h5).")
@click.option("--size", type=SIDE, default=None,
              help="Image side in pixels before encoding [default: the VAE's sample_size].")
@click.option("--batch-size", type=POSITIVE, default=64, show_default=True)
@click.option("--key", default="images", show_default=True, help="Dataset holding the images in an HDF5 file.")
@device_option()
@quiet_option
def encode(images: str, vae_dir: str, output: str, size: int | None, batch_size: int, key: str,
           device: str, quiet: bool) -> None:
    """Encode IMAGES to VAE latents (posterior mean, scaled) in a latent store.

    IMAGES: 'digits' (scikit-learn's bundled digits), a folder of image files, or an
    .npy / HDF5 array of images. The store keeps ids (file names or positions), labels
    when known, the VAE's scale factor and folder.

    Several GPUs: torchrun --nproc_per_node W $(which prunekit) lfm encode ... (batches
    are shared out over the processes; the file is the same as one process writes).
    """
    from ..distributed import Shards, process_group
    from ..guards import check_space
    from ..latents import LatentStore, encode_batches, ids_bytes, open_images, save_latents
    from ..vae import load_vae

    check_output(output, what="--output", inputs=[images], input_dirs=[vae_dir, images])
    with process_group(device) as (dist, dev), Shards.beside(output, dist) as shards:
        vae = load_vae(vae_dir, device=dev)
        side = size or int(vae.config.sample_size if isinstance(vae.config.sample_size, int) else 0) or 32
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        if side % factor:
            raise PrunekitError(f"--size {side} must be divisible by the VAE's downsampling factor {factor}.")
        source = open_images(images, side, key=key)
        latent = int(vae.config.latent_channels) * (side // factor) ** 2 * 4
        check_space([(output, source.n * latent + ids_bytes(source.ids))], "lfm encode")
        batches = encode_batches(source, vae, batch_size, starts=shards.starts(source.n, batch_size),
                                 progress=not quiet and dist.main)
        z = shards.gather(batches, source.n, batch_size)
        if not dist.main:  # rank 0 writes the file
            return
        labels = source.labels
        store = LatentStore(
            latents=z, ids=source.ids, labels=labels, scale_factor=float(vae.config.scaling_factor or 1.0),
            shift_factor=float(getattr(vae.config, "shift_factor", None) or 0.0),
            vae=str(Path(vae_dir).resolve()), image_size=side, source=str(images),
        )
        save_latents(output, store)
    c, h, w = store.shape
    click.echo(f"{output}: {store.n} latents of {c}x{h}x{w} (images {side}x{side}, "
               f"scale factor {store.scale_factor:.4g}, labels: {'yes' if labels is not None else 'no'})")


@click.command("train-vae")
@click.argument("images")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Folder to write the VAE to.")
@click.option("--size", "vae_size", type=click.Choice(["small", "base"]), default="small", show_default=True,
              help="small: f=2, 16x16 -> 8x8x4; base: f=8, 256x256 -> 32x32x4.")
@click.option("--image-size", type=SIDE, default=None, help="Image side [default: 16 for small, 256 for base].")
@click.option("--steps", type=POSITIVE, default=300, show_default=True)
@click.option("--batch-size", type=POSITIVE, default=64, show_default=True)
@click.option("--lr", type=float, default=2e-3, show_default=True)
@click.option("--kl-weight", type=float, default=1e-4, show_default=True)
@seed_option()
@click.option("--key", default="images", show_default=True, help="Dataset holding the images in an HDF5 file.")
@device_option()
@quiet_option
def train_vae(images: str, output: str, vae_size: str, image_size: int | None, steps: int, batch_size: int,
              lr: float, kl_weight: float, seed: int, key: str, device: str, quiet: bool) -> None:
    """Train a small AutoencoderKL on IMAGES and save it (save_pretrained, safetensors).

    For data without a pretrained VAE (the bundled digits in tests and the demo). The
    config's scaling_factor is set so that encoded latents have unit variance.
    """
    import math

    from ..devices import pick_device
    from ..guards import check_space
    from ..latents import load_images
    from ..vae import WEIGHTS, downsampling, planned_vae_bytes, save_vae
    from ..vae import train_vae as fit

    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PrunekitError(f"output folder {out} exists and is not empty; choose a new folder.")
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        check_output(out / name, what="VAE file", inputs=[images], input_dirs=[images])
    if not (math.isfinite(lr) and lr > 0) or not (math.isfinite(kl_weight) and kl_weight >= 0):
        raise PrunekitError(f"--lr must be a finite number > 0 (got {lr}) and --kl-weight a finite "
                            f"number >= 0 (got {kl_weight}).")
    side = image_size or (16 if vae_size == "small" else 256)
    if side % downsampling(vae_size):
        raise PrunekitError(f"--image-size {side} must be divisible by {downsampling(vae_size)} for --size {vae_size}.")
    check_space([(out / WEIGHTS, planned_vae_bytes(vae_size, 3, side))], "train-vae")  # before training
    x, _, _ = load_images(images, side, key=key)
    dev = pick_device(device)
    vae = fit(x, size=vae_size, steps=steps, batch_size=batch_size, lr=lr, kl_weight=kl_weight,
              seed=seed, progress=not quiet, device=dev)
    save_vae(vae, out)
    f = downsampling(vae_size)
    click.echo(f"{out}: AutoencoderKL ({vae_size}) for {side}x{side} images -> "
               f"{side // f}x{side // f}x4 latents, scaling factor {vae.config.scaling_factor:.4g}")
