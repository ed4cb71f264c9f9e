"""A small diffusers ``AutoencoderKL`` trained here, for data without a pretrained VAE.

Two sizes, both with 4 latent channels:

* ``small`` -- channels (16, 32), downsampling f = 2: 16x16 images -> 8x8x4 latents;
  made for the bundled 8x8 digits (upsampled to 16x16), trains in under a minute on a CPU.
* ``base``  -- channels (64, 128, 256, 256), f = 8 (Stable Diffusion's layout, narrower):
  256x256 images -> 32x32x4 latents.

Loss: mean squared reconstruction error of a posterior sample plus ``kl_weight`` times the
mean KL divergence to N(0, I). After training, ``scaling_factor`` in the config is set to
1 / std of the posterior means, so encoded latents have unit variance.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunekit.errors import PrunekitError
from prunekit.runtime.progress import counter

from .guards import check_finite, check_space, convert_command, writing

VAE_SIZES: dict[str, dict[str, Any]] = {
    "small": {"block_out_channels": (16, 32), "layers_per_block": 1, "norm_num_groups": 8},
    "base": {"block_out_channels": (64, 128, 256, 256), "layers_per_block": 2, "norm_num_groups": 32},
}
WEIGHTS = "diffusion_pytorch_model.safetensors"
PICKLED = "diffusion_pytorch_model.bin"  # a pickle: never opened


def vae_config(size: str, in_channels: int = 3, sample_size: int = 32) -> dict[str, Any]:
    """The AutoencoderKL keyword arguments of a named size."""
    if size not in VAE_SIZES:
        raise PrunekitError(f"unknown VAE size '{size}'; use one of {', '.join(VAE_SIZES)}.")
    spec = VAE_SIZES[size]
    n = len(spec["block_out_channels"])
    return {
        "in_channels": in_channels,
        "out_channels": in_channels,
        "down_block_types": ("DownEncoderBlock2D",) * n,
        "up_block_types": ("UpDecoderBlock2D",) * n,
        "block_out_channels": spec["block_out_channels"],
        "layers_per_block": spec["layers_per_block"],
        "norm_num_groups": spec["norm_num_groups"],
        "latent_channels": 4,
        "sample_size": sample_size,
        "scaling_factor": 1.0,
    }


def downsampling(size: str) -> int:
    """The spatial downsampling factor f of a named size (image side / latent side)."""
    return 2 ** (len(VAE_SIZES[size]["block_out_channels"]) - 1)


def train_vae(
    images: np.ndarray,
    size: str = "small",
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 2e-3,
    kl_weight: float = 1e-4,
    seed: int = 0,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> Any:
    """Train an AutoencoderKL on images [N, 3, H, W] in [-1, 1]; returns it in eval mode.

    Deterministic for a given seed on a given device (initialisation, batch order and
    posterior samples all come from seeded generators).
    """
    from diffusers import AutoencoderKL

    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    if x.ndim != 4 or x.shape[0] == 0:
        raise PrunekitError(f"images must be a non-empty [N, C, H, W] array, got shape {tuple(x.shape)}.")
    f = downsampling(size) if size in VAE_SIZES else 1
    if x.shape[-1] % f or x.shape[-2] % f:
        raise PrunekitError(f"image size {tuple(x.shape[-2:])} must be divisible by the VAE's factor {f}.")
    dev = torch.device(device or "cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**vae_config(size, x.shape[1], x.shape[-1])).to(dev)
    gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=dev).manual_seed(seed + 1)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    vae.train()
    with counter(steps, desc="train VAE", progress=progress) as bar:
        for _ in range(steps):
            idx = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=gen)
            batch = x[idx].to(dev)
            post = vae.encode(batch).latent_dist
            recon = vae.decode(post.sample(generator=noise_gen)).sample
            loss = (recon - batch).pow(2).mean() + kl_weight * post.kl().mean() / post.mean[0].numel()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    vae.eval()
    vae.register_to_config(scaling_factor=_unit_scale(vae, x, batch_size))
    return vae


@torch.no_grad()
def _unit_scale(vae: Any, x: torch.Tensor, batch_size: int) -> float:
    """1 / std of the posterior means over (up to 2048 of) the training images."""
    dev = next(vae.parameters()).device
    sub = x[: min(2048, x.shape[0])]
    means = torch.cat([vae.encode(sub[i : i + batch_size].to(dev)).latent_dist.mean.cpu()
                       for i in range(0, sub.shape[0], batch_size)])
    std = float(means.std())
    return 1.0 / std if std > 0 else 1.0


def save_vae(vae: Any, directory: str | os.PathLike) -> Path:
    """Save with ``save_pretrained`` (config.json + safetensors); the folder appears atomically."""
    final = Path(directory)
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise PrunekitError(f"VAE folder {final} exists and is not empty; choose a new folder.")
    check_space([(final / WEIGHTS, vae_bytes(vae))], "the VAE")
    with writing(final, "VAE folder"):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            vae.save_pretrained(str(tmp), safe_serialization=True)
            if final.exists():
                final.rmdir()
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def vae_bytes(vae: Any) -> int:
    """Bytes of the VAE's weights file (its tensors; the header is small)."""
    return sum(t.numel() * t.element_size() for t in vae.state_dict().values())


def planned_vae_bytes(size: str, in_channels: int = 3, sample_size: int = 32) -> int:
    """Bytes the weights of a VAE of a named size will take (built on the meta device: no memory)."""
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        return vae_bytes(AutoencoderKL(**vae_config(size, in_channels, sample_size)))


def load_vae(directory: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """An AutoencoderKL from a local folder (``config.json`` + safetensors weights), in eval mode.

    Accepts a folder holding the VAE directly or a pipeline folder with a ``vae/``
    subfolder (e.g. a Stable Diffusion snapshot). Never downloads and never unpickles: a
    folder with only ``diffusion_pytorch_model.bin`` is refused with the command that
    converts it. The weights must cover every parameter (diffusers would initialise a
    missing one at random) and be finite.
    """
    from diffusers import AutoencoderKL
    from diffusers.utils import logging as diffusers_logging

    d = Path(directory)
    if (d / "vae" / "config.json").is_file() and not (d / "config.json").is_file():
        d = d / "vae"
    if not d.is_dir() or not (d / "config.json").is_file():
        raise PrunekitError(
            f"VAE folder {directory} must be a directory with config.json and weights "
            "(write one with `prunekit lfm train-vae` or point at a diffusers AutoencoderKL folder)."
        )
    _check_weights_file(d)
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # its warnings are ours to raise, as one line
    try:
        vae, info = AutoencoderKL.from_pretrained(str(d), use_safetensors=True,  # never a .bin
                                                  local_files_only=True, low_cpu_mem_usage=False,
                                                  output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise PrunekitError(f"cannot load the VAE from {d}: {_first_line(exc)}") from exc
    finally:
        diffusers_logging.set_verbosity(level)
    where = f"the VAE weights {_weights_name(d)}"
    missing = sorted(info.get("missing_keys") or [])
    mismatched = info.get("mismatched_keys") or []
    if missing or mismatched:
        first = missing[0] if missing else mismatched[0][0]
        raise PrunekitError(
            f"{where} lack {len(missing) + len(mismatched)} of the model's tensors (first: '{first}'); "
            "diffusers would initialise them at random. Give the complete weights of this VAE."
        )
    check_finite(vae.state_dict().items(), where)
    return vae.to(device).eval()


def _check_weights_file(d: Path) -> None:
    """Refuse a folder whose weights are pickled only, or absent, before diffusers looks."""
    if any(d.glob("diffusion_pytorch_model*.safetensors")):
        return
    if (d / PICKLED).is_file():
        raise PrunekitError(
            f"VAE folder {d} holds only {PICKLED}, a pickle; prunekit loads safetensors only, since "
            "opening a pickle can run code. If you trust the file, convert it once (torch >= 2.6): "
            + convert_command(d, PICKLED, WEIGHTS)
        )
    raise PrunekitError(
        f"VAE folder {d} has no weights file ({WEIGHTS}); without it the VAE would be random. "
        "Point at the complete folder (config.json and weights)."
    )


def _weights_name(d: Path) -> Path:
    """The weights file to name in messages (the single file, or the folder when sharded)."""
    return d / WEIGHTS if (d / WEIGHTS).is_file() else d


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
