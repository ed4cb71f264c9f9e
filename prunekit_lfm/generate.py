"""One sampling path for every command: load runs -> sample -> decode.

``sample``, ``compare`` and the demo draw through :func:`draw`; ``c2f-sweep`` (and the
demo's sweep) load their runs with :func:`load_models`. All take one
:class:`~prunekit_lfm.sampling.SamplingConfig` (device included, so any of them can run
on a GPU). Time convention: t = 0 noise, t = 1 data.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.atomic import atomic_path
from prunekit.params import ParamError
from prunekit.runtime.memory import check_fits

from .devices import pick_device
from .guards import check_space
from .runs import TrainConfig, check_same_latents, load_run, read_config
from .sampling import LatentSamples, SamplingConfig, sample, sample_c2f


@dataclass
class DecodedSamples:
    """Samples of one run (or coarse-to-fine pair of runs), decoded, for fixed indices.

    ``latents`` (n, C, h, w); ``images`` (n, 3, H, W) in [0, 1], or None without a VAE;
    ``indices`` the per-index noise each sample came from; ``labels`` their class labels
    (the null label for unconditional runs).
    """

    name: str
    latents: np.ndarray
    images: np.ndarray | None
    indices: np.ndarray
    labels: np.ndarray
    seed: int
    cost: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


def load_models(run: str | os.PathLike | None, coarse: str | os.PathLike | None, *,
                config: SamplingConfig) -> tuple[dict[str, Any], dict[str, TrainConfig]]:
    """Models and run configs by role: {"model"} alone, or {"coarse", "fine"} (``run`` is fine)."""
    device = pick_device(config.device)
    if coarse is None:
        if run is None:
            raise PrunekitError("give a RUN_DIR, or --coarse RUN_A --fine RUN_B for coarse-to-fine.")
        model, cfg = load_run(run, ema=config.ema, device=device)
        return {"model": model}, {"model": cfg}
    if run is None:
        raise PrunekitError("coarse-to-fine needs both --coarse RUN_A and --fine RUN_B (or RUN_DIR).")
    models, configs = {}, {}
    for role, path in (("coarse", coarse), ("fine", run)):
        models[role], configs[role] = load_run(path, ema=config.ema, device=device)
    check_same_latents(configs["coarse"], configs["fine"], coarse, run)
    return models, configs


def vae_folder(vae: str | os.PathLike | None, run_config: TrainConfig) -> str | None:
    """The VAE folder to decode with: ``vae``, else the run's own, checked to exist."""
    folder = vae or run_config.vae
    if vae and not Path(vae).is_dir():
        raise ParamError("{vae:{}}: folder not found; give the VAE folder the latents were encoded "
                         "with.", vae)
    if folder and not Path(folder).is_dir():
        raise ParamError("VAE folder {} (from the run's config.json) not found; pass {vae:DIR} to "
                         "decode with the VAE the latents were encoded with.", folder)
    return str(folder) if folder else None


def check_sample_memory(run: str | os.PathLike, n: int, *, decode: bool, copies: int = 1) -> None:
    """Refuse before loading anything when n samples (and their images) cannot fit in memory.

    ``copies``: how many sets of latents the command holds at once (a sweep keeps the
    fine-only samples beside the current ones).
    """
    cfg = read_config(run)
    latent = cfg.in_channels * cfg.sample_size**2 * 4  # float32
    side = cfg.image_size or cfg.sample_size * 8
    image = 3 * side * side * (4 + 1) if decode else 0  # float32 decoded + uint8 stored
    check_fits(int(n) * (copies * latent + image), f"{n} samples of run {run}")


def samples_file_bytes(latents: np.ndarray, images: np.ndarray | None) -> int:
    """Bytes of a samples file: latents, uint8 images, indices and labels (int64)."""
    return int(latents.nbytes + (0 if images is None else images.size) + 16 * latents.shape[0])


def grid_bytes(images: np.ndarray) -> int:
    """An upper bound of the PNG grid's size: its raw pixels (zlib adds ~0.1 %; margin covers it)."""
    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    return (rows * (h + 2) + 2) * ((cols * (w + 2) + 2) * c + 1)


def check_sample_space(output: str | os.PathLike, png: str | os.PathLike | None, run: str | os.PathLike,
                       n: int) -> None:
    """Before sampling: refuse when the latents (and images, when their size is known) cannot
    fit on the output's file system. The exact sizes are checked again before writing."""
    cfg = read_config(run)
    latents = int(n) * (cfg.in_channels * cfg.sample_size**2 * 4 + 16)
    image = int(n) * 3 * cfg.image_size**2 if cfg.image_size and cfg.vae else 0
    writes = [(output, latents + image)] + ([(png, image)] if png and image else [])
    check_space(writes, "lfm sample")


def draw(run: str | os.PathLike, n: int, config: SamplingConfig, *,
         coarse: str | os.PathLike | None = None, t_switch: float | None = None,
         vae: str | os.PathLike | None = None, decode_images: bool = True, name: str | None = None,
         start: int = 0, progress: bool = False) -> tuple[DecodedSamples, LatentSamples]:
    """Sample ``run`` (or ``coarse`` then ``run`` as the fine model) and decode with its VAE.

    The VAE is ``vae`` or the one the run was trained with; with neither (or
    ``decode_images=False``) ``images`` is None and only latent measures are available.
    """
    if (coarse is None) != (t_switch is None):
        raise PrunekitError("a coarse run and a switching time go together: give both or neither.")
    models, configs = load_models(run, coarse, config=config)
    folder = vae_folder(vae, configs.get("fine") or configs["model"]) if decode_images else None
    decoder = _load_decoder(folder, config) if folder else None  # a bad VAE stops us before sampling
    if coarse is None:
        res = sample(models["model"], n, config, start=start, progress=progress)
        label = name or str(run)
    else:
        res = sample_c2f(models["coarse"], models["fine"], n, config, t_switch=t_switch, start=start,
                         progress=progress)
        label = name or f"{coarse} -> {run} @ {t_switch:g}"
    latents = res.latents.numpy()
    images = _decode_with(decoder, latents, config, progress) if decoder is not None else None
    params = {**res.params, "ema": config.ema, "vae": folder}
    out = DecodedSamples(label, latents, images, res.indices, res.labels, int(config.seed),
                         res.cost.to_dict(), params)
    return out, res


def decode(latents: np.ndarray, folder: str, config: SamplingConfig, *, progress: bool = False) -> np.ndarray:
    """Latents -> images in [0, 1] with the VAE in ``folder`` on the config's device."""
    return _decode_with(_load_decoder(folder, config), latents, config, progress)


def _load_decoder(folder: str, config: SamplingConfig) -> Any:
    """The VAE of ``folder`` (safetensors only, complete and finite) on the config's device."""
    from .vae import load_vae

    return load_vae(folder, device=pick_device(config.device))


def _decode_with(vae: Any, latents: np.ndarray, config: SamplingConfig, progress: bool) -> np.ndarray:
    from .latents import decode as vae_decode

    return to_unit(vae_decode(latents, vae, batch_size=config.batch_size, progress=progress))


def to_unit(images: np.ndarray) -> np.ndarray:
    """Images in [-1, 1] (the plug-in's convention) -> float32 in [0, 1]."""
    return np.clip((np.asarray(images, dtype=np.float32) + 1.0) / 2.0, 0.0, 1.0)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Images [N, 3, H, W] in [0, 1] -> uint8 [N, H, W, 3]."""
    x = np.clip(np.rint(np.asarray(images, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
    return x.transpose(0, 2, 3, 1)


def save_grid(path: str | os.PathLike, images: np.ndarray) -> None:
    """uint8 images [N, H, W, C] as one PNG grid, ceil(sqrt(N)) per row, 2 px gaps, atomically."""
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


def fmt_flops(flops: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}FLOPs"
    return f"{flops:.3g} FLOPs"
