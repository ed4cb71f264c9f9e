"""Evaluating trained models: same-seed similarity between two models, and sample fidelity.

* :func:`paired_similarity` pairs the outputs of two models by sample index (same noise)
  and measures each pair — cosine similarity and MSE of the latents, PSNR and SSIM of the
  decoded images, cosine similarity of image features — next to a baseline of unrelated
  pairs of the same class (sample i of one set against the next sample of its class in
  the other, :func:`prunekit_lfm.metrics.within_class_pairs`; for unconditional runs
  simply sample (i + 1) mod n), so a number can be read against what another noise seed
  gives for the same label.
* :func:`fidelity` compares generated images with real ones in a feature space: Fréchet
  distance (FD), k-NN precision and recall (k = 3) and their F-score. (The core's
  "quality" of a selection is another thing: the MMD of kept rows to the full set,
  :mod:`prunekit.selection.quality`.)
Samples come from :func:`prunekit_lfm.generate.draw` (load runs, sample, decode).

Images are float arrays in [0, 1] here; the plug-in's [-1, 1] images go through
:func:`~prunekit_lfm.generate.to_unit` first. Time convention of the samplers: t = 0 noise, t = 1 data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from prunekit.params import ParamError

from . import metrics
from ._renamed import renamed
from .features import FeatureExtractor
from .generate import DecodedSamples, to_unit

__all__ = ["fidelity", "paired_similarity", "to_unit"]

# Fixed histogram ranges, so pairs and baseline are binned alike (PSNR takes the data's).
_RANGES = {"latent_cosine": (-1.0, 1.0), "ssim": (-1.0, 1.0), "feature_cosine": (-1.0, 1.0)}


# --------------------------------------------------------------------------- similarity


def paired_similarity(
    a: DecodedSamples, b: DecodedSamples, extractor: FeatureExtractor | None = None, *, bins: int = 20
) -> dict[str, Any]:
    """Per-pair similarity of ``a`` and ``b`` (same indices) and of unrelated pairs.

    Returns ``{"n": n, "features": description, "measures": {name: {"pairs": summary,
    "baseline": summary}}}``; summaries hold mean, median, std, min, max and a histogram
    (:func:`prunekit_lfm.metrics.summarize`). Pixel and feature measures need images.
    """
    if not np.array_equal(a.indices, b.indices) or a.seed != b.seed:
        raise ParamError(
            "'{}' and '{}' were not drawn from the same noise (seed {} vs {}, or different sample "
            "indices); sample both with the same {seed} and {n}.", a.name, b.name, a.seed, b.seed)
    if not np.array_equal(a.labels, b.labels):
        raise ParamError("'{}' and '{}' were sampled with different labels; pair runs sampled with "
                         "the same {labels} (or both unconditional).", a.name, b.name)
    n = a.latents.shape[0]
    other = metrics.within_class_pairs(a.labels)
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
        "baseline": "sample i of a vs the next sample of the same class in b (cyclic per class)",
        "baseline_pairs": int(other[0].size),
        "features": None if extractor is None or "feature_cosine" not in pairs else extractor.description,
        "measures": measures,
    }


def _both(fn, x: np.ndarray, y: np.ndarray, other: tuple[np.ndarray, np.ndarray]
          ) -> tuple[np.ndarray, np.ndarray]:
    """fn on the same-index pairs and on the unrelated pairs (x[rows[j]], y[partners[j]])."""
    rows, partners = other
    return fn(x, y), fn(x[rows], y[partners])


def _joint_range(u: np.ndarray, v: np.ndarray) -> tuple[float, float] | None:
    both = np.concatenate([u, v])
    both = both[np.isfinite(both)]
    return None if both.size == 0 else (float(both.min()), float(both.max()))


# --------------------------------------------------------------------------- fidelity


def fidelity(
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


__getattr__ = renamed(__name__, "quality", fidelity, "fidelity (FD, precision, recall)")
