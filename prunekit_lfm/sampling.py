"""Sampling a trained velocity model, alone or coarse-to-fine, with its cost.

Time convention: t = 0 is noise, t = 1 is data. A sample starts from Gaussian noise at
t = 0 and is integrated to t = 1 on the uniform grid t_k = k / K (see :mod:`.solvers`).

* **Per-index noise.** Sample i's noise depends only on (seed, i), through a generator
  seeded from ``numpy.random.SeedSequence([seed, i])``: the same for any ``n``, batch size
  or starting index, so two models sampled with the same seed start from the same noise
  (the pairing the stability analysis relies on). The last batch is filled up to the
  batch size, so sample i's result is bit-for-bit the same for any ``n`` at a given batch
  size and device; other batch sizes change it by float rounding only.
* **Coarse-to-fine.** Step k (from t_k to t_{k+1}) uses the coarse model when
  t_k < t_switch, the fine one otherwise, decided once per step. t_switch = 0 is exactly
  the fine model alone and t_switch = 1 exactly the coarse model alone.
* **Guidance.** v = v_uncond + cfg (v_cond - v_uncond) on all latent channels, with the
  conditional and unconditional halves evaluated in one batched pass; cfg = 1 is a single
  conditional pass. Unconditional models always get the null label.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.h5io import atomic_h5
from prunekit.progress import counter
from prunekit.provenance import stamp

from .cost import Cost, ModelCost, device_of, forward_flops
from .solvers import check_solver, check_steps, evaluations_per_step, integrate


@dataclass
class SampleResult:
    """Sampled latents (t = 1) with the sample indices, labels and cost that produced them."""

    latents: torch.Tensor  # (n, C, H, W) float32, on the CPU
    indices: np.ndarray  # (n,) int64: sample i was drawn from noise (seed, i)
    labels: np.ndarray  # (n,) int64 class labels used (null label = num_classes)
    seed: int
    cost: Cost
    params: dict[str, Any] = field(default_factory=dict)


def noise(seed: int, indices: Sequence[int] | np.ndarray, shape: Sequence[int]) -> torch.Tensor:
    """Standard normal noise (len(indices), *shape), row j depending only on (seed, indices[j])."""
    rows = []
    for i in np.asarray(indices, dtype=np.int64).tolist():
        state = np.random.SeedSequence([int(seed), int(i)]).generate_state(1, dtype=np.uint64)
        g = torch.Generator().manual_seed(int(state[0]))
        rows.append(torch.randn(tuple(shape), generator=g))
    return torch.stack(rows) if rows else torch.zeros((0, *shape))


def latent_shape(model: nn.Module) -> tuple[int, int, int]:
    """(C, H, W) of the latents ``model`` works on."""
    try:
        return (int(model.in_channels), int(model.sample_size), int(model.sample_size))
    except AttributeError as exc:
        raise PrunekitError(
            "the model has no in_channels/sample_size; build it with prunekit_lfm.models.build_model."
        ) from exc


def resolve_labels(
    labels: Sequence[int] | None, indices: np.ndarray, num_classes: int, cfg: float
) -> np.ndarray:
    """Class label of every sample (int64).

    Unconditional models (``num_classes`` = 0) use the null label and accept no labels
    and no guidance. Conditional models default to label i mod num_classes for sample i;
    one given label applies to all samples, otherwise one label per sample is needed.
    """
    n = len(indices)
    if num_classes == 0:
        if labels is not None and len(labels):
            raise PrunekitError("the model is unconditional (trained without labels); drop --labels.")
        if cfg != 1.0:
            raise PrunekitError(
                f"guidance (--cfg {cfg}) needs a class-conditional model; this one is unconditional. "
                "Use --cfg 1."
            )
        return np.zeros(n, dtype=np.int64)
    if labels is None or len(labels) == 0:
        return (np.asarray(indices, dtype=np.int64) % num_classes).astype(np.int64)
    arr = np.asarray(list(labels), dtype=np.int64)
    if arr.size == 1:
        arr = np.full(n, arr[0], dtype=np.int64)
    if arr.size != n:
        raise PrunekitError(f"--labels gives {arr.size} labels for {n} samples; give one label or exactly {n}.")
    bad = arr[(arr < 0) | (arr >= num_classes)]
    if bad.size:
        raise PrunekitError(
            f"--labels has label {int(bad[0])} outside [0, {num_classes}) (the model's classes)."
        )
    return arr


def check_cfg(cfg: float) -> float:
    if not np.isfinite(cfg):
        raise PrunekitError(f"--cfg must be a finite number, got {cfg}.")
    return float(cfg)


def sample(
    model: nn.Module,
    n: int,
    *,
    seed: int,
    steps: int = 60,
    solver: str = "euler",
    cfg: float = 1.0,
    labels: Sequence[int] | None = None,
    batch_size: int = 64,
    start: int = 0,
    progress: bool = True,
) -> SampleResult:
    """Draw samples ``start .. start + n - 1`` from one model (see the module docstring)."""
    return _run({"model": model}, lambda k: "model", n=n, seed=seed, steps=steps,
                solver=solver, cfg=cfg, labels=labels, batch_size=batch_size, start=start,
                progress=progress, extra={})


def coarse_steps(t_switch: float, steps: int) -> int:
    """Number of steps taken by the coarse model: #{k < K : k/K < t_switch}."""
    return sum(1 for k in range(steps) if k / steps < t_switch)


def check_t_switch(t_switch: float) -> float:
    if not (0.0 <= float(t_switch) <= 1.0):
        raise PrunekitError(
            f"t_switch must lie in [0, 1] (0 = fine model only, 1 = coarse only), got {t_switch}."
        )
    return float(t_switch)


def sample_c2f(
    coarse: nn.Module,
    fine: nn.Module,
    n: int,
    *,
    t_switch: float,
    seed: int,
    steps: int = 60,
    solver: str = "euler",
    cfg: float = 1.0,
    labels: Sequence[int] | None = None,
    batch_size: int = 64,
    start: int = 0,
    progress: bool = True,
) -> SampleResult:
    """Coarse model while t_k < t_switch, fine model after (t = 0 noise, t = 1 data)."""
    t_switch = check_t_switch(t_switch)
    check_compatible(coarse, fine)
    check_steps(steps)
    return _run(
        {"coarse": coarse, "fine": fine},
        lambda k: "coarse" if k / steps < t_switch else "fine",
        n=n, seed=seed, steps=steps, solver=solver, cfg=cfg, labels=labels,
        batch_size=batch_size, start=start, progress=progress,
        extra={"t_switch": t_switch, "coarse_steps": coarse_steps(t_switch, steps)},
    )


def check_compatible(coarse: nn.Module, fine: nn.Module) -> None:
    """Coarse and fine models must share the latent space and the label set."""
    a, b = latent_shape(coarse), latent_shape(fine)
    if a != b:
        raise PrunekitError(
            f"coarse model works on latents {a} but the fine one on {b}; "
            "both must be trained on the same latents (same VAE)."
        )
    ca, cb = int(getattr(coarse, "num_classes", 0)), int(getattr(fine, "num_classes", 0))
    if ca != cb:
        raise PrunekitError(
            f"coarse model has {ca} classes but the fine one {cb}; train both "
            "conditional on the same labels, or both unconditional."
        )
    if device_of(coarse) != device_of(fine):
        raise PrunekitError(
            f"coarse model is on {device_of(coarse)} but the fine one on {device_of(fine)}; "
            "move both to one device."
        )


def _run(
    models: dict[str, nn.Module],
    choose: Callable[[int], str],
    *,
    n: int,
    seed: int,
    steps: int,
    solver: str,
    cfg: float,
    labels: Sequence[int] | None,
    batch_size: int,
    start: int,
    progress: bool,
    extra: dict[str, Any],
) -> SampleResult:
    check_steps(steps)
    check_solver(solver)
    cfg = check_cfg(cfg)
    if int(n) != n or n < 1:
        raise PrunekitError(f"--n must be a positive number of samples, got {n}.")
    if int(batch_size) != batch_size or batch_size < 1:
        raise PrunekitError(f"--batch-size must be a positive integer, got {batch_size}.")
    if start < 0:
        raise PrunekitError(f"the first sample index must be >= 0, got {start}.")
    first = next(iter(models.values()))
    shape = latent_shape(first)
    num_classes = int(getattr(first, "num_classes", 0))
    indices = np.arange(start, start + n, dtype=np.int64)
    y_all = resolve_labels(labels, indices, num_classes, cfg)
    used = sorted({choose(k) for k in range(steps)})
    guided = cfg != 1.0
    batch = min(int(batch_size), int(n))
    for name in used:  # measure FLOPs before the clock starts
        forward_flops(models[name], 2 * batch if guided else batch, shape)
    cost = Cost({name: ModelCost() for name in models})
    out = []
    bar = counter(n * steps, desc="sampling", progress=progress)
    _sync(models)
    t0 = time.perf_counter()
    device = device_of(models[used[0]])
    with torch.inference_mode():
        for lo in range(0, n, batch):
            # The last batch is filled up with the next indices (results dropped): every
            # batch has the same shape, so a sample's bits do not depend on n.
            idx = np.arange(start + lo, start + lo + batch, dtype=np.int64)
            y = y_all[lo : lo + batch]
            y = np.concatenate([y, np.full(batch - y.size, y[-1], dtype=np.int64)])
            x0 = noise(seed, idx, shape).to(device)
            velocity = _velocity(models, choose, cost, torch.as_tensor(y, device=device),
                                 num_classes, cfg, bar, min(batch, n - lo), solver)
            out.append(integrate(velocity, x0, steps, solver)[: n - lo].float().cpu())
    _sync(models)
    cost.wall_s = time.perf_counter() - t0
    bar.close()
    params = {"n": int(n), "seed": int(seed), "steps": int(steps), "solver": solver, "cfg": cfg,
              "batch_size": int(batch_size), "start": int(start), **extra}
    return SampleResult(torch.cat(out), indices, y_all, int(seed), cost, params)


def _velocity(
    models: dict[str, nn.Module],
    choose: Callable[[int], str],
    cost: Cost,
    y: torch.Tensor,
    num_classes: int,
    cfg: float,
    bar: Any,
    batch: int,
    solver: str,
) -> Callable[[torch.Tensor, float, int], torch.Tensor]:
    """The guided velocity for one batch: velocity(x, t, k), model picked from k."""
    null = torch.full_like(y, num_classes)
    y2 = torch.cat([y, null])
    per_step = evaluations_per_step(solver)
    evaluations = {"count": 0}

    def velocity(x: torch.Tensor, t: float, k: int) -> torch.Tensor:
        name = choose(k)
        model = models[name]
        evaluations["count"] += 1
        if evaluations["count"] % per_step == 0:
            bar.update(batch)
        if cfg == 1.0:
            tt = torch.full((x.shape[0],), t, device=x.device)
            cost.record(name, model, x)
            return model(x, tt, y)
        xx = torch.cat([x, x])
        tt = torch.full((xx.shape[0],), t, device=x.device)
        cost.record(name, model, xx)
        v_cond, v_uncond = model(xx, tt, y2).chunk(2)
        return v_uncond + cfg * (v_cond - v_uncond)

    return velocity


def _sync(models: dict[str, nn.Module]) -> None:
    """Wait for queued GPU work so wall times cover it."""
    if any(device_of(m).type == "cuda" for m in models.values()):
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- files


def save_samples(
    path: str | os.PathLike,
    result: SampleResult,
    *,
    images: np.ndarray | None = None,
    runs: dict[str, str] | None = None,
    command: list[str] | None = None,
) -> Path:
    """Write a samples file atomically.

    Datasets: ``latents`` (n, C, H, W) float32, ``indices`` (n,) int64, ``labels`` (n,)
    int64 and, when decoded, ``images`` (n, H, W, C) uint8. Attributes: ``seed``, the
    sampling settings, the run directories, ``flops``, ``model_calls``, ``wall_s`` and
    ``cost`` (JSON, per model).
    """
    with atomic_h5(path) as f:
        f.create_dataset("latents", data=result.latents.numpy().astype(np.float32))
        f.create_dataset("indices", data=result.indices.astype(np.int64))
        f.create_dataset("labels", data=result.labels.astype(np.int64))
        if images is not None:
            f.create_dataset("images", data=images.astype(np.uint8))
        f.attrs["seed"] = int(result.seed)
        for key in ("steps", "solver", "cfg", "t_switch", "coarse_steps"):
            if key in result.params:
                f.attrs[key] = result.params[key]
        for key, value in (runs or {}).items():
            f.attrs[key] = str(value)
        f.attrs["flops"] = int(result.cost.flops)
        f.attrs["model_calls"] = int(result.cost.calls)
        f.attrs["wall_s"] = float(result.cost.wall_s)
        f.attrs["cost"] = json.dumps(result.cost.to_dict(), sort_keys=True)
        stamp(f.attrs, {**result.params, **(runs or {})}, command)
    return Path(path)
