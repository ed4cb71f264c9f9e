"""Sampling a trained velocity model, alone or coarse-to-fine, with its cost.

Time convention: t = 0 is noise, t = 1 is data. A sample starts from Gaussian noise at
t = 0 and is integrated to t = 1 on the uniform grid t_k = k / K (see :mod:`.solvers`).

Sampling is composed of small parts around a velocity model ``model(x, t, y) -> v``,
fed to one solver (in the spirit of the model wrappers of facebookresearch/flow_matching):

* :class:`~prunekit_lfm.cost.Counted` adds every network call (rows, FLOPs) to a Cost;
* :class:`Guided` applies classifier-free guidance,
  v = v_uncond + cfg (v_cond - v_uncond) on all latent channels, with the conditional and
  unconditional halves in one batched pass (cfg = 1 is a single conditional pass);
* :class:`SwitchAt` picks the model of step k: the coarse one while t_k < t_switch, the
  fine one after, decided once per step (both Heun stages use the same model), so
  t_switch = 0 is exactly the fine model alone and t_switch = 1 the coarse one alone;
* :class:`Field` binds a batch's labels and hands ``velocity(x, t, k)`` to the solver.

**Per-index noise.** Sample i's noise depends only on (seed, i), through a generator
seeded from ``numpy.random.SeedSequence([seed, i])``: the same for any ``n``, batch size or
starting index, so two models sampled with the same seed start from the same noise (the
pairing the stability analysis relies on). The last batch is filled up to the batch size,
so sample i's result is bit-for-bit the same for any ``n`` at a given batch size and
device; other batch sizes change it by float rounding only.

Every setting lives in one :class:`SamplingConfig`, validated once.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.io.h5io import atomic_h5
from prunekit.io.provenance import stamp
from prunekit.params import ParamError, defaults
from prunekit.runtime.progress import counter

from .cost import Cost, Counted, ModelCost, device_of, flops_per_row
from .solvers import check_steps, integrate
from .specs import SAMPLING_PARAMS

INDEX_MAX = 2**63 - 1  # sample indices are int64
_DEFAULTS = defaults(SAMPLING_PARAMS)

#: a velocity model: (x [B, C, H, W], t [B] in [0, 1], labels [B]) -> velocity like x
VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SamplingConfig:
    """Every sampling setting of ``sample``, ``c2f-sweep``, ``compare`` and the demo.

    ``labels``: None = sample i gets label i mod classes (conditional models); one label
    for all samples, or one per sample. ``device``: where runs are loaded
    (``auto`` = cuda when available). ``ema``: sample the EMA weights of a run.
    """

    # The defaults, ranges and help of every field are in SAMPLING_PARAMS (its one declaration).
    steps: int = _DEFAULTS["steps"]
    solver: str = _DEFAULTS["solver"]
    cfg: float = _DEFAULTS["cfg"]
    seed: int = _DEFAULTS["seed"]
    device: str = _DEFAULTS["device"]
    labels: tuple[int, ...] | None = _DEFAULTS["labels"]
    batch_size: int = _DEFAULTS["batch_size"]
    ema: bool = _DEFAULTS["ema"]

    def __post_init__(self) -> None:
        for p in SAMPLING_PARAMS:  # a ParamError names the field (the CLI: its flag)
            p.check(getattr(self, p.name))
        check_steps(self.steps)  # at most MAX_STEPS, and why
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(int(v) for v in self.labels) or None)

    def replace(self, **changes: Any) -> SamplingConfig:
        return SamplingConfig(**{**asdict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = None if self.labels is None else list(self.labels)
        return d


@dataclass
class LatentSamples:
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
            raise ParamError("the model is unconditional (trained without labels); drop {labels}.")
        if cfg != 1.0:
            raise ParamError("guidance ({cfg:{}}) needs a class-conditional model; this one is "
                             "unconditional. Use {cfg:1}.", cfg)
        return np.zeros(n, dtype=np.int64)
    if labels is None or len(labels) == 0:
        return (np.asarray(indices, dtype=np.int64) % num_classes).astype(np.int64)
    outside = [int(v) for v in labels if not 0 <= int(v) < num_classes]  # before int64 overflows
    if outside:
        raise ParamError("{labels} has label {} outside [0, {}) (the model's classes).",
                         outside[0], num_classes)
    arr = np.asarray(list(labels), dtype=np.int64)
    if arr.size == 1:
        arr = np.full(n, arr[0], dtype=np.int64)
    if arr.size != n:
        raise ParamError("{labels} gives {} labels for {} samples; give one label or exactly {}.",
                         arr.size, n, n)
    bad = arr[(arr < 0) | (arr >= num_classes)]
    if bad.size:
        raise ParamError("{labels} has label {} outside [0, {}) (the model's classes).",
                         int(bad[0]), num_classes)
    return arr


def check_indices(start: int, n: int, batch_size: int) -> None:
    """Sample indices (and the fill-up of the last batch) must stay below 2**63 (int64)."""
    last = start + n - 1 + min(batch_size, n) - 1
    if last > INDEX_MAX:
        raise ParamError(
            "{start:{}} with {n:{}}: sample indices would reach {}, beyond {} (2**63 - 1, the "
            "largest index noise is drawn for). Use a smaller {start}.", start, n, last, INDEX_MAX)


def coarse_steps(t_switch: float, steps: int) -> int:
    """Number of steps taken by the coarse model: #{k < K : k/K < t_switch}."""
    return sum(1 for k in range(steps) if k / steps < t_switch)


def check_t_switch(t_switch: float) -> float:
    if not (0.0 <= float(t_switch) <= 1.0):
        raise PrunekitError(
            f"t_switch must lie in [0, 1] (0 = fine model only, 1 = coarse only), got {t_switch}."
        )
    return float(t_switch)


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


class Guided:
    """Classifier-free guidance around a velocity model (cfg = 1: the model itself)."""

    def __init__(self, model: VelocityFn, cfg: float, null_label: int) -> None:
        self.model, self.cfg, self.null = model, float(cfg), int(null_label)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.cfg == 1.0:
            return self.model(x, t, y)
        v_cond, v_uncond = self.model(torch.cat([x, x]), torch.cat([t, t]),
                                      torch.cat([y, torch.full_like(y, self.null)])).chunk(2)
        return v_uncond + self.cfg * (v_cond - v_uncond)


class SwitchAt:
    """Step k's model: ``coarse`` while t_k = k / steps < t_switch, ``fine`` after."""

    def __init__(self, coarse: VelocityFn, fine: VelocityFn, t_switch: float, steps: int) -> None:
        self.coarse, self.fine = coarse, fine
        self.t_switch, self.steps = check_t_switch(t_switch), steps

    def __call__(self, k: int) -> VelocityFn:
        return self.coarse if k / self.steps < self.t_switch else self.fine


class Field:
    """``velocity(x, t, k)`` for the solver: step k's model on x at time t with fixed labels."""

    def __init__(self, model_of_step: Callable[[int], VelocityFn], y: torch.Tensor) -> None:
        self.model_of_step, self.y = model_of_step, y

    def __call__(self, x: torch.Tensor, t: float, k: int) -> torch.Tensor:
        tt = torch.full((x.shape[0],), t, device=x.device)
        return self.model_of_step(k)(x, tt, self.y)


def sample(model: nn.Module, n: int, config: SamplingConfig, *, start: int = 0,
           progress: bool = True) -> LatentSamples:
    """Draw samples ``start .. start + n - 1`` from one model (see the module docstring)."""
    return _sample({"model": model}, None, n, config, start=start, progress=progress)


def sample_c2f(coarse: nn.Module, fine: nn.Module, n: int, config: SamplingConfig, *,
               t_switch: float, start: int = 0, progress: bool = True) -> LatentSamples:
    """Coarse model while t_k < t_switch, fine model after (t = 0 noise, t = 1 data)."""
    t_switch = check_t_switch(t_switch)
    check_compatible(coarse, fine)
    return _sample({"coarse": coarse, "fine": fine}, t_switch, n, config, start=start, progress=progress)


def _sample(models: dict[str, nn.Module], t_switch: float | None, n: int, config: SamplingConfig,
            *, start: int, progress: bool) -> LatentSamples:
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ParamError("{n} must be a positive number of samples, got {}.", n)
    if int(start) != start or start < 0:
        raise PrunekitError(f"the first sample index must be >= 0, got {start}.")
    check_indices(int(start), int(n), config.batch_size)
    n, steps = int(n), config.steps
    first = next(iter(models.values()))
    shape = latent_shape(first)
    num_classes = int(getattr(first, "num_classes", 0))
    indices = np.arange(start, start + n, dtype=np.int64)
    y_all = resolve_labels(config.labels, indices, num_classes, config.cfg)
    if t_switch is not None:
        extra = {"t_switch": t_switch, "coarse_steps": coarse_steps(t_switch, steps)}
        used = {"coarse" if k / steps < t_switch else "fine" for k in range(steps)}
    else:
        extra, used = {}, set(models)
    cost = Cost({name: ModelCost() for name in models})
    per_row = {name: flops_per_row(models[name], shape) for name in sorted(used)}  # before the clock
    guided = {name: Guided(Counted(models[name], name, cost, per_row.get(name, 0)), config.cfg, num_classes)
              for name in models}
    model_of_step = (SwitchAt(guided["coarse"], guided["fine"], t_switch, steps) if t_switch is not None
                     else (lambda k: guided["model"]))
    batch = min(config.batch_size, n)
    device = device_of(first)
    out = []
    bar = counter(n * steps, desc="sampling", progress=progress)
    _sync(models)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for lo in range(0, n, batch):
            # The last batch is filled up with the next indices (results dropped): every
            # batch has the same shape, so a sample's bits do not depend on n.
            idx = np.arange(start + lo, start + lo + batch, dtype=np.int64)
            y = y_all[lo : lo + batch]
            y = np.concatenate([y, np.full(batch - y.size, y[-1], dtype=np.int64)])
            x0 = noise(config.seed, idx, shape).to(device)
            live = min(batch, n - lo)
            velocity = Field(model_of_step, torch.as_tensor(y, device=device))
            x1 = integrate(velocity, x0, steps, config.solver, on_step=lambda k, b=live: bar.update(b))
            out.append(x1[:live].float().cpu())
    _sync(models)
    cost.wall_s = time.perf_counter() - t0
    bar.close()
    params = {"n": n, "seed": int(config.seed), "steps": steps, "solver": config.solver,
              "cfg": float(config.cfg), "batch_size": int(config.batch_size), "start": int(start), **extra}
    return LatentSamples(torch.cat(out), indices, y_all, int(config.seed), cost, params)


def _sync(models: dict[str, nn.Module]) -> None:
    """Wait for queued GPU work so wall times cover it."""
    if any(device_of(m).type == "cuda" for m in models.values()):
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- files


def save_samples(
    path: str | os.PathLike,
    result: LatentSamples,
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
