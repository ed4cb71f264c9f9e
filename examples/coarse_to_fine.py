"""Coarse-to-fine sampling with the Python API only: a small model early, a larger one late.

What it shows: on scikit-learn's bundled digits (no download), train a small VAE, encode
the digits to latents, train a tiny and a larger latent flow-matching model, then sample
the same noise seeds three ways -- the large model alone, the small one alone, and
coarse-to-fine (small model while t < t_switch, large model after; t = 0 is noise, t = 1
data) -- and print how close the coarse-to-fine samples are to the large model's and what
fraction of its FLOPs they cost. Every step is a library call; no command line.

Run:  python examples/coarse_to_fine.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from prunekit_lfm.c2f import similarity
from prunekit_lfm.latents import LatentStore, encode, load_images, save_latents
from prunekit_lfm.runs import load_run
from prunekit_lfm.sampling import SamplingConfig, sample, sample_c2f
from prunekit_lfm.train import train
from prunekit_lfm.vae import save_vae, train_vae


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few training steps (seconds, rough models)")
    ap.add_argument("--out", default=None, help="working folder [default: a temporary one]")
    args = ap.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="prunekit-c2f-"))
    vae_steps, lfm_steps, n, steps = (10, 20, 8, 8) if args.quick else (300, 2000, 64, 40)
    # The fine model: the 'small' preset (about 14x tiny's FLOPs); 4 tiny layers when quick.
    fine_model = {"preset": "tiny", "num_layers": 4} if args.quick else "small"

    # 1. Images -> a small VAE -> latents (the latent store the trainer reads).
    images, ids, labels = load_images("digits", size=16)
    if args.quick:
        images, ids, labels = images[:400], ids[:400], labels[:400]
    vae = train_vae(images, size="small", steps=vae_steps, seed=0, progress=False, device="cpu")
    save_vae(vae, out / "vae")
    z = encode(images, vae, progress=False)
    store = LatentStore(latents=z, ids=ids, labels=labels, scale_factor=vae.config.scaling_factor,
                        vae=str(out / "vae"), image_size=16, source="digits")
    save_latents(out / "latents.h5", store)
    print(f"{store.n} digits -> latents {store.shape} with a VAE trained for {vae_steps} steps")

    # 2. A tiny (coarse) and a larger (fine) model on the same latents.
    for name, preset in (("coarse", "tiny"), ("fine", fine_model)):
        train(str(out / "latents.h5"), str(out / name), model=preset, steps=lfm_steps,
              batch_size=64, lr=1e-3, seed=0, progress=False, device="cpu")
    coarse, _ = load_run(out / "coarse")
    fine, _ = load_run(out / "fine")

    # 3. The same noise seeds, three ways.
    config = SamplingConfig(steps=steps, seed=0, device="cpu")
    ref = sample(fine, n, config, progress=False)
    small = sample(coarse, n, config, progress=False)
    mixed = sample_c2f(coarse, fine, n, config, t_switch=0.7, progress=False)
    cos_mixed, _ = similarity(mixed.latents, ref.latents)
    cos_small, _ = similarity(small.latents, ref.latents)
    ratio = mixed.cost.flops / ref.cost.flops
    print(f"same-seed cosine to the fine model: coarse-to-fine (t_switch 0.7) "
          f"{np.mean(cos_mixed):.3f}, coarse alone {np.mean(cos_small):.3f}")
    print(f"coarse-to-fine costs {ratio:.2f} of the fine model's FLOPs "
          f"({mixed.cost.flops / 1e9:.3f} vs {ref.cost.flops / 1e9:.3f} GFLOPs for {n} samples)")
    return {"cos_c2f": float(np.mean(cos_mixed)), "cos_coarse": float(np.mean(cos_small)),
            "flops_ratio": ratio}


if __name__ == "__main__":
    main()
