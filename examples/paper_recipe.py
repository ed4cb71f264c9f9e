"""The paper's recipe on an image folder: embed -> k-means -> balanced select -> encode ->
train -> sample -> compare, with the prunekit commands.

What it shows: every step of "Exploring and Exploiting Stability in Latent Flow Matching"
on a folder of images, run as the `prunekit` commands a user would type (called in this
process). The folder is scikit-learn's bundled digits written as PNG files in one
sub-folder per class. The paper embeds with CLIP ViT-B/32; no pretrained weights are
downloaded here, so by default the encoder is a CLIP STAND-IN: a tiny, randomly
initialised CLIP model built and saved locally. It exercises the real loading and
preprocessing path, but its features are not CLIP's; pass `--clip PATH|REPO_ID` with real
weights (a save_pretrained folder or a repo in the local Hugging Face cache) for the real
thing. It then trains an LFM on all images and one on the balanced half, and prints how
similar their samples from the same noise seeds are.

Run:  python examples/paper_recipe.py [--quick] [--out DIR] [--clip WEIGHTS]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from prunekit.cli import main as prunekit_cli


def prunekit(*args: str) -> None:
    """Run one `prunekit ...` command line in this process (errors raise)."""
    print("$ prunekit " + " ".join(args))
    prunekit_cli.main(args=list(args), prog_name="prunekit", standalone_mode=False)


def write_folder(root: Path, n: int) -> None:
    """The first n digits as 16x16 grayscale PNGs in sub-folders 0..9 (their classes)."""
    d = load_digits()
    for i in range(n):
        folder = root / str(d.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).resize((16, 16), Image.BILINEAR)
        im.save(folder / f"{i:04d}.png")


def clip_stand_in(folder: Path) -> None:
    """A tiny randomly initialised CLIP with its image processor (32x32 inputs), saved."""
    import torch
    from transformers.utils import logging

    logging.set_verbosity_error()  # no advice about optional packages, no bars
    logging.disable_progress_bar()
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    tower = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    text = dict(tower, vocab_size=64, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                pad_token_id=1)
    config = CLIPConfig(vision_config=dict(tower, image_size=32, patch_size=8), text_config=text,
                        projection_dim=32)
    CLIPModel(config).eval().save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="300 images, a few training steps")
    ap.add_argument("--out", default=None, help="working folder [default: a temporary one]")
    ap.add_argument("--clip", default=None, help="real CLIP weights (folder or cached repo id)")
    args = ap.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="prunekit-recipe-"))
    n, vae_steps, steps, n_samples = (300, 20, 40, 32) if args.quick else (1797, 300, 1500, 256)

    write_folder(out / "images", n)
    weights = args.clip
    if weights is None:
        weights = str(out / "clip-stand-in")
        clip_stand_in(Path(weights))
        print(f"encoder: a tiny randomly initialised CLIP stand-in in {weights} (not CLIP's features)")
    p = str(out)
    prunekit("lfm", "embed", f"{p}/images", "-o", f"{p}/clip.h5", "--encoder", "clip",
             "--weights", weights, "--labels", "--quiet")
    prunekit("score", f"{p}/clip.h5", "--method", "kmeans", "--k", "10", "-o", f"{p}/kmeans.h5", "--quiet")
    prunekit("select", f"{p}/kmeans.h5", "--pr", "0.5", "--balance", "clusters", "-o", f"{p}/sel.h5")
    prunekit("lfm", "train-vae", f"{p}/images", "-o", f"{p}/vae", "--image-size", "16",
             "--steps", str(vae_steps), "--quiet")
    prunekit("lfm", "encode", f"{p}/images", "--vae", f"{p}/vae", "-o", f"{p}/latents.h5", "--quiet")
    for run, extra in (("full", []), ("pruned", ["--selection", f"{p}/sel.h5"])):
        prunekit("lfm", "train", f"{p}/latents.h5", *extra, "--model", "tiny", "--steps", str(steps),
                 "--lr", "1e-3", "-o", f"{p}/runs/{run}", "--quiet")
    prunekit("lfm", "sample", f"{p}/runs/pruned", "--n", "16", "--steps", "20", "-o",
             f"{p}/samples.h5", "--png", f"{p}/samples.png", "--quiet")
    prunekit("lfm", "compare", f"{p}/runs/full", f"{p}/runs/pruned", "--n", str(n_samples),
             "--steps", "20", "-o", f"{p}/compare.json", "--quiet")
    report = json.loads((out / "compare.json").read_text())
    print(f"result: {out / 'compare.json'}")
    return report


if __name__ == "__main__":
    main()
