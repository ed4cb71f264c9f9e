"""Per-item loss and gradient scores from a (partly) trained model, as a core scores file.

For item i with latent x1_i, a fixed grid of interior times t_j = (j + 0.5) / T and a
fixed bank of noise tensors x0_1..x0_M drawn from the seed (shared by all items, so every
item is probed at the same points; t = 0 noise, t = 1 data):

    loss:  r_ij = mean_m  || v(x_t, t_j, y_i) - (x1_i - x0_m) ||^2 / d,
           x_t = (1 - t_j) x0_m + t_j x1_i
    grad:  r_ij = mean_m  || grad_theta of that per-item loss ||^2

Losses differ a lot between times (the target is hardest near t = 0), so each column is
normalised by its mean over the whole data set, then averaged over t:

    score_i = (1 / T) sum_j  r_ij / mean_k r_kj.

The raw matrix is computed first and normalised after, so the scores do not depend on the
order of the data. Higher score = higher loss = kept first ("L"); ``prunekit select
--invert`` keeps the lowest ("L^-1").
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.runtime.progress import counter
from prunekit.selection.scores import Scores

from .cost import device_of
from .distributed import Dist, Shards
from .fm_path import fm_loss

CRITERIA = ("loss", "grad")


def t_grid(t_points: int) -> np.ndarray:
    """The interior times (j + 0.5) / T, j = 0..T-1 (t = 0 noise, t = 1 data)."""
    if int(t_points) != t_points or t_points < 1:
        raise PrunekitError(f"--t-points must be a positive integer, got {t_points}.")
    return (np.arange(t_points) + 0.5) / t_points


def noise_bank(seed: int, size: int, shape: tuple[int, ...]) -> torch.Tensor:
    """``size`` standard normal latents drawn from ``seed`` alone (never from the data)."""
    if int(size) != size or size < 1:
        raise PrunekitError(f"--noise-bank must be a positive integer, got {size}.")
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([int(seed), 0x5C0E]).generate_state(1)[0]))
    return torch.randn((int(size), *shape), generator=g)


def raw_batches(
    model: nn.Module,
    latents: np.ndarray | torch.Tensor,
    labels: np.ndarray | None,
    *,
    criterion: str = "loss",
    t_points: int = 8,
    bank: int = 4,
    seed: int = 0,
    batch_size: int = 64,
    starts: Iterable[int] | None = None,
    progress: bool = True,
) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, rows [start, start + batch_size) of r)`` for each batch start in ``starts``
    (default: every batch, in order).

    r_ij (float64) is the loss or squared gradient norm of item i at t_j, the mean over the
    noise bank. ``labels`` None gives every item the model's null label. The model is put in
    eval mode (no dropout); its weights are not changed. The noise bank and the times are the same for every item, so a batch's rows depend on
    its items only: batches may be computed in any order or by different processes.
    """
    if criterion not in CRITERIA:
        raise PrunekitError(f"unknown criterion '{criterion}'; use one of: {', '.join(CRITERIA)}.")
    if int(batch_size) != batch_size or batch_size < 1:
        raise PrunekitError(f"--batch-size must be a positive integer, got {batch_size}.")
    ts = t_grid(t_points)
    x1_all = torch.as_tensor(np.asarray(latents), dtype=torch.float32)
    bank_x0 = noise_bank(seed, bank, tuple(x1_all.shape[1:]))
    device = device_of(model)
    null = int(getattr(model, "num_classes", 0))
    y_all = (torch.full((x1_all.shape[0],), null, dtype=torch.long) if labels is None
             else torch.as_tensor(np.asarray(labels), dtype=torch.long))
    n = x1_all.shape[0]
    starts = list(range(0, n, batch_size) if starts is None else starts)
    item_fn = Losses(model) if criterion == "loss" else GradNorms(model)
    model.eval()
    total = sum(min(batch_size, n - lo) for lo in starts)
    with counter(total, desc=f"scoring ({criterion})", progress=progress) as bar:
        for lo in starts:
            x1 = x1_all[lo : lo + batch_size].to(device)
            y = y_all[lo : lo + batch_size].to(device)
            out = np.zeros((x1.shape[0], len(ts)), dtype=np.float64)
            for j, t in enumerate(ts):
                tt = torch.full((x1.shape[0],), float(t), device=device)
                acc = torch.zeros(x1.shape[0], dtype=torch.float64)
                for m in range(bank):
                    x0 = bank_x0[m].to(device).expand_as(x1)
                    acc += item_fn(x1, x0, tt, y).double().cpu()
                out[:, j] = (acc / bank).numpy()
            yield lo, out
            bar.update(x1.shape[0])


def normalise(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """score_i = mean_j r_ij / mean_k r_kj, and the column means mean_k r_kj."""
    means = raw.mean(axis=0)
    if not np.all(np.isfinite(raw)):
        raise PrunekitError("the model gives non-finite losses on some items; is the run diverged?")
    if np.any(means <= 0):
        raise PrunekitError("the model fits every item exactly at some t (mean loss 0); scores are undefined.")
    return (raw / means).mean(axis=1), means


class Losses:
    """The per-item flow-matching loss (no gradients)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, x1: torch.Tensor, x0: torch.Tensor, t: torch.Tensor,
                 y: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return fm_loss(self.model, x1, x0, t, y, reduction="none")


class GradNorms:
    """||grad_theta loss_i||^2 per item: one backward pass per item.

    (A vectorised torch.func version, vmap of grad through ``functional_call``, was slower
    on CPU: attention has no batching rule there.)
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.params = list(model.parameters())

    def __call__(self, x1: torch.Tensor, x0: torch.Tensor, t: torch.Tensor,
                 y: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x1.shape[0], dtype=torch.float64)
        frozen = [p for p in self.params if not p.requires_grad]
        for p in frozen:  # gradients w.r.t. every parameter, frozen or not
            p.requires_grad_(True)
        try:
            with torch.enable_grad():
                for i in range(x1.shape[0]):
                    one = slice(i, i + 1)
                    loss = fm_loss(self.model, x1[one], x0[one], t[one], y[one])
                    grads = torch.autograd.grad(loss, self.params, allow_unused=True)
                    out[i] = sum(g.double().pow(2).sum() for g in grads if g is not None).item()
        finally:
            for p in frozen:
                p.requires_grad_(False)
        return out


def score_model(
    model: nn.Module,
    latents: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    criterion: str = "loss",
    t_points: int = 8,
    noise_bank: int = 4,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
    shards: Shards | None = None,
) -> tuple[np.ndarray, dict[str, Any]] | None:
    """Normalised scores (N,) of ``latents`` under ``model`` and the parameters that made them.

    ``shards`` (under torchrun): this process computes its share of the batches and rank 0
    normalises the gathered matrix; the other ranks return None.
    """
    shards = shards or Shards(Dist())
    n = int(np.asarray(latents).shape[0]) if not torch.is_tensor(latents) else int(latents.shape[0])
    blocks = raw_batches(model, latents, labels, criterion=criterion, t_points=t_points,
                         bank=noise_bank, seed=seed, batch_size=batch_size,
                         starts=shards.starts(n, batch_size), progress=progress)
    raw = shards.gather(blocks, n, batch_size)
    if raw is None:  # not rank 0
        return None
    score, means = normalise(raw)
    params = {"criterion": criterion, "t_points": int(t_points), "t_grid": t_grid(t_points).tolist(),
              "noise_bank": int(noise_bank), "seed": int(seed), "t_means": means.tolist()}
    return score, params


def score_items(
    run_dir: str | os.PathLike,
    latents_path: str | os.PathLike,
    *,
    criterion: str = "loss",
    t_points: int = 8,
    noise_bank: int = 4,
    seed: int = 0,
    batch_size: int = 64,
    ema: bool = True,
    device: str | torch.device = "cpu",
    progress: bool = True,
    shards: Shards | None = None,
) -> Scores | None:
    """Score every item of a latent store with the model of ``run_dir`` (see the module docstring).

    The result is a core scores file (method ``loss`` or ``grad``, the store's ids and
    labels), ready for ``prunekit select``. Under torchrun (``shards``) every process
    scores its share of the batches and only rank 0 returns the scores (the others None).
    """
    from .latents import load_latents
    from .runs import load_run

    if criterion not in CRITERIA:
        raise PrunekitError(f"unknown criterion '{criterion}'; use one of: {', '.join(CRITERIA)}.")
    t_grid(t_points)
    if int(noise_bank) != noise_bank or noise_bank < 1:
        raise PrunekitError(f"--noise-bank must be a positive integer, got {noise_bank}.")
    model, config = load_run(run_dir, ema=ema, device=device)
    store = load_latents(latents_path)
    want = (config.in_channels, config.sample_size, config.sample_size)
    if tuple(store.shape) != want:
        raise PrunekitError(
            f"latents file {latents_path} holds latents of shape {store.shape} but run {run_dir} "
            f"was trained on {want}. Score with latents from the same VAE and image size."
        )
    labels = _labels_for(store.labels, config.num_classes, latents_path, run_dir)
    result = score_model(model, store.latents, labels=labels, criterion=criterion,
                         t_points=t_points, noise_bank=noise_bank, seed=seed,
                         batch_size=batch_size, progress=progress, shards=shards)
    if result is None:
        return None
    score, params = result
    params.update({"run": str(run_dir), "ema": bool(ema), "steps_done": int(config.steps_done),
                   "latents": str(latents_path)})
    return Scores(
        score=score, method=criterion, n_total=store.n, ids=store.ids, labels=store.labels,
        source=str(Path(latents_path)), source_fingerprint=store.fingerprint, params=params,
    )


def _labels_for(labels: np.ndarray | None, num_classes: int, latents_path: Any, run_dir: Any) -> np.ndarray | None:
    """Items' own labels for a conditional model; None (the null label) otherwise."""
    if num_classes == 0 or labels is None:
        return None
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise PrunekitError(
            f"latents file {latents_path} ['labels'] has label {int(bad[0])} but run {run_dir} "
            f"knows {num_classes} classes. Score with the latents the run was trained on."
        )
    return labels


