"""The coarse-to-fine sweep: cost and fidelity of each switching time t_switch.

For each t_switch the same samples (same seed, same noise per index) are drawn
coarse-to-fine and compared with the fine model alone:

* cost as a ratio to fine-only: FLOPs (per-call FLOPs x calls) and wall time;
* the ideal FLOP ratio for a continuous switch, (1 - s) + s * r with r = coarse FLOPs /
  fine FLOPs per call, and the discrete one the grid actually gives;
* similarity of each coarse-to-fine latent to its fine-only twin: cosine similarity and
  mean squared error per pair, summarised by mean and median.

``pick(rows, tol)`` chooses the cheapest t_switch whose mean cosine similarity is >= tol
(0, the fine model alone, when none is).
Time convention: t = 0 noise, t = 1 data; the coarse model runs while t_k < t_switch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.params import ParamError
from prunekit.runtime.progress import track

from .cost import flops_per_row
from .metrics import cosine_pairs, mse_pairs
from .sampling import (
    LatentSamples,
    SamplingConfig,
    check_compatible,
    check_t_switch,
    coarse_steps,
    latent_shape,
    sample,
    sample_c2f,
)

MAX_REPEATS = 1000  # timing repeats: a median of more says nothing new


@dataclass
class SweepRow:
    """One t_switch of a sweep (ratios are against the fine model alone, same run)."""

    t_switch: float
    coarse_steps: int
    fine_steps: int
    flops: int
    flops_ratio: float
    ideal_flops_ratio: float
    wall_s: float
    wall_ratio: float
    cos_mean: float
    cos_median: float
    mse_mean: float
    mse_median: float


@dataclass
class Sweep:
    """All rows of a sweep, the fine-only baseline and the settings that produced them."""

    rows: list[SweepRow]
    fine_flops: int
    fine_wall_s: float
    flops_per_call_ratio: float  # coarse / fine FLOPs of one network evaluation
    params: dict[str, Any] = field(default_factory=dict)
    auto: float | None = None
    tol: float | None = None
    #: t_switch -> its samples, when asked for with ``keep_samples`` (not in :meth:`to_dict`)
    samples: dict[float, LatentSamples] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": [asdict(r) for r in self.rows],
            "fine_flops": self.fine_flops,
            "fine_wall_s": self.fine_wall_s,
            "flops_per_call_ratio": self.flops_per_call_ratio,
            "params": self.params,
            "auto": self.auto,
            "tol": self.tol,
        }

    def table(self) -> str:
        """A plain-text table, one line per t_switch."""
        head = (f"{'t_switch':>8} {'coarse':>6} {'fine':>5} {'FLOPs':>10} {'FLOPs/fine':>10} "
                f"{'ideal':>6} {'speed-up':>8} {'wall/fine':>9} {'cos mean':>8} {'cos med':>8} "
                f"{'MSE mean':>9}")
        lines = [head]
        for r in self.rows:
            mark = "  <- auto" if self.auto is not None and r.t_switch == self.auto else ""
            lines.append(
                f"{r.t_switch:8.3f} {r.coarse_steps:6d} {r.fine_steps:5d} {r.flops:10.3g} "
                f"{r.flops_ratio:10.3f} {r.ideal_flops_ratio:6.3f} {1 / r.flops_ratio:7.2f}x "
                f"{r.wall_ratio:9.3f} {r.cos_mean:8.4f} {r.cos_median:8.4f} {r.mse_mean:9.3g}{mark}"
            )
        return "\n".join(lines)


def similarity(a: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair cosine similarity and mean squared error of two latent batches (float64)."""
    x, y = a.cpu().numpy(), b.cpu().numpy()
    return cosine_pairs(x, y), mse_pairs(x, y)


def parse_t_switches(values: Sequence[float | str]) -> list[float]:
    """t_switch values from numbers or comma lists ("0,0.3,0.5"), each checked to be in [0, 1]."""
    out: list[float] = []
    for value in values:
        for part in str(value).replace(",", " ").split():
            try:
                out.append(check_t_switch(float(part)))
            except ValueError as exc:
                raise ParamError("{t_switches} value '{}' is not a number.", part) from exc
    if not out:
        raise ParamError("give at least one {t_switches} value in [0, 1].")
    return sorted(set(out))


def sweep(
    coarse: nn.Module,
    fine: nn.Module,
    t_switches: Sequence[float],
    n: int,
    config: SamplingConfig,
    *,
    tol: float | None = None,
    repeats: int = 1,
    progress: bool = True,
    keep_samples: bool = False,
) -> Sweep:
    """Sample fine-only once, then coarse-to-fine at every t_switch, and compare.

    Both models first run one step on one batch, untimed, so that the fine-only baseline
    does not carry the start-up costs (thread pools, memory allocation) alone. Wall times
    are medians of ``repeats`` runs (FLOPs and latents do not vary between runs).
    ``keep_samples`` keeps each t_switch's samples in :attr:`Sweep.samples` (to decode
    or score them further).
    """
    t_switches = parse_t_switches(t_switches)
    if tol is not None:
        check_tol(tol)
    if int(repeats) != repeats or not 1 <= repeats <= MAX_REPEATS:
        raise ParamError("{repeats} must be a positive integer up to {}, got {}.", MAX_REPEATS,
                         repeats)
    check_compatible(coarse, fine)
    steps = config.steps
    for model in (fine, coarse):  # warm up (thread pools, allocator, kernels) before timing
        sample(model, min(n, config.batch_size), config.replace(steps=1), progress=False)

    def timed(run: Callable[[], LatentSamples]) -> tuple[LatentSamples, float]:
        """The first run's result and the median wall time of ``repeats`` runs."""
        first = run()
        walls = [first.cost.wall_s] + [run().cost.wall_s for _ in range(int(repeats) - 1)]
        return first, float(np.median(walls))

    base, base_wall = timed(lambda: sample(fine, n, config, progress=False))
    shape = latent_shape(fine)
    r = flops_per_row(coarse, shape) / flops_per_row(fine, shape)
    rows, kept = [], {}
    for s in track(t_switches, total=len(t_switches), desc="t_switch", progress=progress):
        if s == 0.0:
            res, wall = base, base_wall
        else:
            res, wall = timed(lambda s=s: sample_c2f(coarse, fine, n, config, t_switch=s, progress=False))
        if keep_samples:
            kept[s] = res
        cos, mse = similarity(res.latents, base.latents)
        kc = coarse_steps(s, steps)
        rows.append(SweepRow(
            t_switch=s, coarse_steps=kc, fine_steps=steps - kc, flops=res.cost.flops,
            flops_ratio=res.cost.flops / base.cost.flops, ideal_flops_ratio=(1 - s) + s * r,
            wall_s=wall, wall_ratio=wall / base_wall,
            cos_mean=float(cos.mean()), cos_median=float(np.median(cos)),
            mse_mean=float(mse.mean()), mse_median=float(np.median(mse)),
        ))
    params = {"n": n, "t_switches": t_switches, "repeats": int(repeats), **config.to_dict()}
    out = Sweep(rows, base.cost.flops, base_wall, r, params=params, tol=tol, samples=kept)
    if tol is not None:
        out.auto = pick(rows, tol)
    return out


def check_tol(tol: float) -> float:
    if not (-1.0 <= float(tol) <= 1.0):
        raise ParamError("{tol}: the tolerance is a cosine similarity in [-1, 1], got {}.", tol)
    return float(tol)


def pick(rows: Sequence[SweepRow], tol: float) -> float:
    """The cheapest t_switch (fewest FLOPs; ties to the smaller t_switch) with cos_mean >= tol.

    The fine model alone (t_switch = 0, similarity 1) always qualifies, so it is the answer
    when no row does.
    """
    check_tol(tol)
    ok = [r for r in rows if r.cos_mean >= tol]
    if not ok:
        return 0.0
    return min(ok, key=lambda r: (r.flops, r.t_switch)).t_switch
