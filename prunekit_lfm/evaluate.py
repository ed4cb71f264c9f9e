"""Evaluating trained models: same-seed similarity between two models, and sample quality.

* :func:`paired_similarity` pairs the outputs of two models by sample index (same noise)
  and measures each pair — cosine similarity and MSE of the latents, PSNR and SSIM of the
  decoded images, cosine similarity of image features — next to a baseline of unrelated
  pairs (sample i of one set against sample (i + 1) mod n of the other), so a number can
  be read against what chance gives.
* :func:`quality` compares generated images with real ones in a feature space: Fréchet
  distance, k-NN precision and recall (k = 3) and their F-score.
* :func:`draw` samples a run (or a coarse-to-fine pair of runs) and decodes the latents.

Images are float arrays in [0, 1] here; the plug-in's [-1, 1] images go through
:func:`to_unit` first. Time convention of the samplers: t = 0 noise, t = 1 data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prunekit.errors import PrunekitError

from . import metrics
from .features import FeatureExtractor

# Fixed histogram ranges, so pairs and baseline are binned alike (PSNR takes the data's).
_RANGES = {"latent_cosine": (-1.0, 1.0), "ssim": (-1.0, 1.0), "feature_cosine": (-1.0, 1.0)}


@dataclass
class SampleSet:
    """Samples of one model (or coarse-to-fine pair) for fixed sample indices.

    ``latents`` (n, C, h, w); ``images`` (n, C, H, W) in [0, 1] or None when there is no
    decoder; ``indices`` the per-index noise each sample came from.
    """

    name: str
    latents: np.ndarray
    images: np.ndarray | None
    indices: np.ndarray
    seed: int
    cost: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


def to_unit(images: np.ndarray) -> np.ndarray:
    """Images in [-1, 1] (the plug-in's convention) -> float32 in [0, 1]."""
    return np.clip((np.asarray(images, dtype=np.float32) + 1.0) / 2.0, 0.0, 1.0)


# --------------------------------------------------------------------------- similarity


def paired_similarity(
    a: SampleSet, b: SampleSet, extractor: FeatureExtractor | None = None, *, bins: int = 20
) -> dict[str, Any]:
    """Per-pair similarity of ``a`` and ``b`` (same indices) and of unrelated pairs.

    Returns ``{"n": n, "features": description, "measures": {name: {"pairs": summary,
    "baseline": summary}}}``; summaries hold mean, median, std, min, max and a histogram
    (:func:`prunekit_lfm.metrics.summarize`). Pixel and feature measures need images.
    """
    if not np.array_equal(a.indices, b.indices) or a.seed != b.seed:
        raise PrunekitError(
            f"'{a.name}' and '{b.name}' were not drawn from the same noise (seed {a.seed} vs {b.seed}, "
            "or different sample indices); sample both with the same --seed and --n."
        )
    n = a.latents.shape[0]
    other = metrics.shifted_pairs(n)
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {
        "latent_cosine": _both(metrics.cosine_pairs, a.latents, b.latents, other),
        "latent_mse": _both(metrics.mse_pairs, a.latents, b.latents, other),
    }
    if a.images is not None and b.images is not None:
        pairs["psnr"] = _both(metrics.psnr_pairs, a.images, b.images, other)
        pairs["ssim"] = _both(metrics.ssim_pairs, a.images, b.images, other)
        if extractor is not None:
            fa, fb = extractor(a.images), extractor(b.images)
            pairs["feature_cosine"] = _both(metrics.cosine_pairs, fa, fb, other)
    measures = {}
    for name, (same, unrelated) in pairs.items():
        rng = _RANGES.get(name) or _joint_range(same, unrelated)
        measures[name] = {
            "pairs": metrics.summarize(same, bins, rng),
            "baseline": metrics.summarize(unrelated, bins, rng),
        }
    return {
        "a": a.name,
        "b": b.name,
        "n": int(n),
        "seed": int(a.seed),
        "baseline": "sample i of a vs sample (i + 1) mod n of b",
        "features": None if extractor is None or "feature_cosine" not in pairs else extractor.description,
        "measures": measures,
    }


def _both(fn, x: np.ndarray, y: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """fn on the same-index pairs and on the unrelated pairs (x[i], y[other[i]])."""
    return fn(x, y), fn(x, y[other])


def _joint_range(u: np.ndarray, v: np.ndarray) -> tuple[float, float] | None:
    both = np.concatenate([u, v])
    both = both[np.isfinite(both)]
    return None if both.size == 0 else (float(both.min()), float(both.max()))


# --------------------------------------------------------------------------- quality


def quality(
    generated: np.ndarray,
    real: np.ndarray,
    extractor: FeatureExtractor,
    *,
    k: int = 3,
    real_features: np.ndarray | None = None,
) -> dict[str, Any]:
    """Fréchet distance, precision, recall and F-score of ``generated`` against ``real`` images.

    Both are images in [0, 1]; ``real_features`` skips re-extracting the real set.
    Precision asks how many generated samples fall inside the real manifold, recall how
    many real samples fall inside the generated one.
    """
    g = extractor(generated)
    r = extractor(real) if real_features is None else real_features
    pr = metrics.precision_recall(r, g, k=k)
    return {
        "fd": metrics.frechet_distance(r, g),
        "precision": pr.precision,
        "recall": pr.recall,
        "f_score": pr.f_score,
        "k": k,
        "n_real": pr.n_real,
        "n_generated": pr.n_generated,
        "features": extractor.description,
    }


# --------------------------------------------------------------------------- sampling runs


def draw(
    run: str | os.PathLike,
    n: int,
    *,
    seed: int,
    steps: int = 60,
    solver: str = "euler",
    cfg: float = 1.0,
    coarse: str | os.PathLike | None = None,
    t_switch: float | None = None,
    vae: str | os.PathLike | None = None,
    ema: bool = True,
    batch_size: int = 64,
    name: str | None = None,
    progress: bool = False,
) -> SampleSet:
    """Sample ``run`` (or ``coarse`` then ``run`` as the fine model) and decode with its VAE.

    The VAE is ``vae`` or the one the run was trained with (its config's ``vae``); with
    neither, images are None and only latent measures are available.
    """
    from .latents import decode
    from .runs import check_same_latents, load_run
    from .sampling import sample, sample_c2f
    from .vae import load_vae

    fine, config = load_run(run, ema=ema)
    if coarse is not None:
        if t_switch is None:
            raise PrunekitError("a coarse model needs a switching time: give --t-switch in [0, 1].")
        coarse_model, coarse_config = load_run(coarse, ema=ema)
        check_same_latents(coarse_config, config, coarse, run)
        res = sample_c2f(coarse_model, fine, n, t_switch=t_switch, seed=seed, steps=steps,
                         solver=solver, cfg=cfg, batch_size=batch_size, progress=progress)
        label = name or f"{coarse} -> {run} @ {t_switch:g}"
    else:
        res = sample(fine, n, seed=seed, steps=steps, solver=solver, cfg=cfg, batch_size=batch_size,
                     progress=progress)
        label = name or str(run)
    latents = res.latents.numpy()
    vae_dir = vae or config.vae
    images = None
    if vae_dir:
        images = to_unit(decode(latents, load_vae(vae_dir), batch_size=batch_size))
    return SampleSet(label, latents, images, res.indices, int(seed), res.cost.to_dict(), dict(res.params))
