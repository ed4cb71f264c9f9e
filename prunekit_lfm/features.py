"""Feature extractors for quality metrics and same-seed similarity, chosen by name.

* ``pixels`` — the flattened pixels (trivial; no learned features).
* ``digits-classifier`` — the penultimate layer of a small CNN trained (seeded, CPU
  seconds) on the training split of scikit-learn's bundled digits; ``digits-classifier:PATH``
  loads one saved with :func:`save_digits_classifier`. It is a digits-specific stand-in
  for Inception and is named as such in every report.
* ``torchscript:PATH`` — any local TorchScript module, which is how Inception, DINOv2 or
  CLIP are used: export the network to a file once, point at it; nothing is downloaded.

Every extractor takes images as float arrays in [0, 1], shaped (N, H, W) or (N, C, H, W),
and returns (N, D) float64 features.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.io.atomic import atomic_path
from prunekit.runtime.progress import track

from .guards import check_finite, error_line, require_safe_torch_load, run_user_model

CLASSIFIER_SIZE = 8  # the digits classifier sees 8 x 8 grayscale images (the native size)
CLASSIFIER_DESCRIPTION = (
    "digits classifier features (a small CNN trained on scikit-learn digits), not Inception"
)
BATCH = 256


@dataclass
class FeatureExtractor:
    """A named function images -> features; ``description`` is what reports print."""

    name: str
    description: str
    fn: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, images: np.ndarray, *, progress: bool = False) -> np.ndarray:
        x = as_image_batch(images)
        out = []
        with torch.no_grad():
            starts = range(0, x.shape[0], BATCH)
            for s in track(starts, total=len(starts), desc=f"features ({self.name})", progress=progress):
                feats = self.fn(x[s : s + BATCH])
                out.append(feats.reshape(feats.shape[0], -1).double().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0))


def as_image_batch(images: np.ndarray) -> torch.Tensor:
    """(N, H, W) or (N, C, H, W) numbers in [0, 1] -> float32 tensor (N, C, H, W)."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[0] == 0:
        raise PrunekitError(f"images must be a non-empty (N, H, W) or (N, C, H, W) array, got shape {x.shape}.")
    return torch.from_numpy(np.ascontiguousarray(x))


def get_extractor(spec: str, *, seed: int = 0, progress: bool = False) -> FeatureExtractor:
    """The extractor named by ``spec`` (see the module docstring for the names)."""
    if spec == "pixels":
        return FeatureExtractor("pixels", "flattened pixels", lambda x: x)
    if spec == "digits-classifier":
        model = digits_classifier(seed=seed, progress=progress)
        return _classifier_extractor(model, spec)
    if spec.startswith("digits-classifier:"):
        return _classifier_extractor(load_digits_classifier(spec.split(":", 1)[1]), spec)
    if spec.startswith("torchscript:"):
        return torchscript_extractor(spec.split(":", 1)[1])
    raise PrunekitError(
        f"unknown feature extractor '{spec}'. Use pixels, digits-classifier[:PATH] or "
        "torchscript:PATH (a local TorchScript file, e.g. an exported Inception/DINOv2/CLIP)."
    )


# --------------------------------------------------------------------------- TorchScript


def torchscript_extractor(path: str | os.PathLike) -> FeatureExtractor:
    """Features from a local TorchScript module.

    The module receives float32 images (N, 3, H, W) in [0, 1] (grayscale is repeated to
    three channels) and returns (N, D) features (any trailing shape is flattened). Resizing
    and normalisation to the network's expectations belong inside the exported module.
    """
    p = Path(path)
    if not p.is_file():
        raise PrunekitError(
            f"TorchScript feature file not found: {p}. Export the network with "
            "torch.jit.script/trace(...).save(PATH) and give that path (see docs/evaluation.md)."
        )
    try:
        with warnings.catch_warnings():  # torch >= 2.9 flags TorchScript as deprecated; it still loads
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(p), map_location="cpu").eval()
    except (RuntimeError, ValueError) as exc:
        raise PrunekitError(f"cannot load TorchScript feature file {p}: {exc}") from exc

    def fn(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        out = run_user_model(module, x, f"TorchScript feature model {p}")
        if not isinstance(out, torch.Tensor):
            raise PrunekitError(f"TorchScript module {p} must return one tensor of features.")
        return out

    return FeatureExtractor(f"torchscript:{p}", f"TorchScript features from {p}", fn)


# --------------------------------------------------------------------------- digits classifier


class DigitsCNN(nn.Module):
    """Two conv blocks (16 and 32 channels) and a 64-d feature layer before the 10-way classifier."""

    def __init__(self, feature_dim: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * (CLASSIFIER_SIZE // 4) ** 2, feature_dim), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [0, 1], any size and channel count -> (N, 64) features."""
        return self.body(_to_classifier_input(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _to_classifier_input(x: torch.Tensor) -> torch.Tensor:
    """Grayscale (channel mean), resized to 8 x 8 (antialiased when shrinking)."""
    x = x.mean(dim=1, keepdim=True) if x.shape[1] != 1 else x
    if x.shape[-2:] != (CLASSIFIER_SIZE, CLASSIFIER_SIZE):
        shrink = x.shape[-1] > CLASSIFIER_SIZE
        x = F.interpolate(x, size=(CLASSIFIER_SIZE, CLASSIFIER_SIZE), mode="bilinear",
                          align_corners=False, antialias=shrink)
    return x


def digits_split(seed: int = 0, test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Train / held-out positions into scikit-learn's 1797 digits, stratified by label, seeded."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    labels = load_digits().target
    train, test = train_test_split(
        np.arange(labels.size), test_size=test_fraction, random_state=seed, stratify=labels
    )
    return np.sort(train), np.sort(test)


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as (N, 8, 8) float32 in [0, 1] and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


@dataclass
class DigitsClassifier:
    """A trained :class:`DigitsCNN` with how it was made and how well it does."""

    model: DigitsCNN
    seed: int
    test_accuracy: float
    epochs: int


def train_digits_classifier(
    seed: int = 0, *, epochs: int = 12, progress: bool = False
) -> DigitsClassifier:
    """Train the CNN on the training split of :func:`digits_split` (seeded, deterministic).

    Accuracy is measured on the held-out split of the same seed.
    """
    images, labels = digits_images()
    train, test = digits_split(seed)
    x, y = torch.from_numpy(images[:, None]), torch.from_numpy(labels)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    train_t = torch.from_numpy(train)
    for _ in track(range(epochs), total=epochs, desc="digits classifier", progress=progress):
        order = train_t[torch.randperm(train_t.numel(), generator=gen)]
        for s in range(0, order.numel(), 64):
            idx = order[s : s + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(x[test]).argmax(1) == y[test]).float().mean())
    return DigitsClassifier(model, seed, acc, epochs)


@functools.lru_cache(maxsize=4)
def digits_classifier(seed: int = 0, progress: bool = False) -> DigitsClassifier:
    """:func:`train_digits_classifier`, cached per process (it is deterministic)."""
    return train_digits_classifier(seed, progress=progress)


def save_digits_classifier(clf: DigitsClassifier, path: str | os.PathLike) -> Path:
    """Write the classifier (weights + provenance) atomically to ``path`` (a .pt file)."""
    payload = {
        "kind": "prunekit-digits-classifier",
        "state_dict": clf.model.state_dict(),
        "seed": clf.seed,
        "test_accuracy": clf.test_accuracy,
        "epochs": clf.epochs,
        "description": CLASSIFIER_DESCRIPTION,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_digits_classifier(path: str | os.PathLike) -> DigitsClassifier:
    """Read a file written by :func:`save_digits_classifier`."""
    p = Path(path)
    if not p.is_file():
        raise PrunekitError(f"digits classifier file not found: {p}. `prunekit demo` writes one under DIR/data/.")
    require_safe_torch_load(f"digits classifier file {p}")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign files
        raise PrunekitError(f"cannot read digits classifier file {p}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("kind") != "prunekit-digits-classifier":
        raise PrunekitError(f"{p} is not a digits classifier written by prunekit.")
    model = DigitsCNN()
    try:
        model.load_state_dict(payload["state_dict"])
    except (KeyError, RuntimeError, TypeError, AttributeError) as exc:
        raise PrunekitError(f"digits classifier file {p} does not hold the classifier's weights "
                            f"({error_line(exc)}); write it again with prunekit.") from exc
    check_finite(model.state_dict().items(), f"digits classifier file {p}")
    model.eval()
    return DigitsClassifier(model, int(payload["seed"]), float(payload["test_accuracy"]), int(payload["epochs"]))


def _classifier_extractor(clf: DigitsClassifier, name: str) -> FeatureExtractor:
    return FeatureExtractor(name, CLASSIFIER_DESCRIPTION, clf.model.features)
