"""Integrating dx/dt = v*(x, t) from noise (t = 0) to data (t = 1) on a uniform grid.

Grid: t_k = k / K, k = 0..K. Step k goes from t_k to t_{k+1}.

* Euler (the contract): x_{k+1} = x_k + v*(x_k, t_k) / K. Since v* = (m - x) / (1 - t),
  this is the convex combination x_{k+1} = x_k + (m(x_k, t_k) - x_k) / (K - k); at the last
  step (k = K - 1) it lands exactly on the posterior mean m(x_{K-1}, t_{K-1}).
* Heun (second order): Euler predictor to t_{k+1}, then the average of the two slopes.
  v* is singular at t = 1, so the last step is the Euler step onto m(x_{K-1}, t_{K-1}).

:func:`trajectory` yields the states one at a time, so statistics over whole paths (the
deviation between two runs, :class:`PathDeviation`) are accumulated without storing them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.flow.velocity import ClosedFormField
from prunekit.params import Param
from prunekit.runtime.progress import track

#: The fixed-step solvers, here and in the plug-in (``prunekit_lfm.solvers``).
SOLVERS = ("euler", "heun")
#: The solver parameter of every command that integrates (stability, lfm sample, compare).
SOLVER = Param("solver", "choice", "euler", "", choices=SOLVERS)
#: Steps at most, here and in the plug-in: Euler's error falls as 1/K (Heun's as 1/K^2), so
#: beyond this it is below what float32 resolves, while the work grows with K (memory does
#: not, so no memory check would stop a run of 10^9 steps that never ends).
MAX_STEPS = 100_000


def time_grid(steps: int) -> np.ndarray:
    """t_k = k / K for k = 0..K (t = 0 noise, t = 1 data)."""
    return np.arange(steps + 1) / steps


def check_run(field: ClosedFormField, x0: np.ndarray, steps: int, solver: str) -> None:
    """The solver, the number of steps and the sources (shape and finiteness), else an error."""
    if solver not in SOLVERS:
        raise PrunekitError(f"unknown solver '{solver}'; choose one of: {', '.join(SOLVERS)}.")
    if int(steps) != steps or steps < 1:
        raise PrunekitError(f"steps must be a positive integer, got {steps}.")
    if np.ndim(x0) != 2 or np.shape(x0)[1] != field.dim:
        raise PrunekitError(
            f"sources must be (M x {field.dim}) to match the training set, got shape {np.shape(x0)}."
        )
    if not np.isfinite(x0).all():
        raise PrunekitError("sources contain NaN/inf values; draw them again or fix the file.")


def trajectory(
    field: ClosedFormField, x0: np.ndarray, *, steps: int, solver: str = "euler"
) -> Iterator[np.ndarray]:
    """Yield x_0, x_1, ..., x_K (K + 1 arrays of shape M x d, the field's dtype).

    ``x0`` are the noise points at t = 0; x_K lies on the data side (t = 1).
    """
    check_run(field, x0, steps, solver)
    x = np.array(x0, dtype=field.dtype)
    yield x
    for k in range(steps):
        t = k / steps
        m = field.posterior_mean(x, t)
        if k == steps - 1:
            x = m  # the last Euler step lands exactly on the posterior mean
        elif solver == "euler":
            m -= x
            m *= field.dtype.type(1.0 / (steps - k))
            x = x + m
        else:
            x = _heun_step(field, x, m, t, 1.0 / steps)
        yield x


def _heun_step(field: ClosedFormField, x: np.ndarray, m: np.ndarray, t: float, h: float) -> np.ndarray:
    v1 = (m - x) / field.dtype.type(1.0 - t)
    predicted = x + field.dtype.type(h) * v1
    v2 = field.velocity(predicted, t + h)
    return x + field.dtype.type(h / 2) * (v1 + v2)


@dataclass
class FlowResult:
    """End points (M x d, at t = 1) and, when asked for, the path (K + 1, M, d)."""

    end: np.ndarray
    path: np.ndarray | None = None


def integrate(
    field: ClosedFormField,
    x0: np.ndarray,
    *,
    steps: int = 100,
    solver: str = "euler",
    keep_path: bool = False,
    progress: bool = True,
) -> FlowResult:
    """Transport the noise points ``x0`` (t = 0) to the data side (t = 1) along v*."""
    states = []
    x = None
    gen = trajectory(field, x0, steps=steps, solver=solver)
    for x in track(gen, total=steps + 1, desc=f"{solver} steps", progress=progress):
        if keep_path:
            states.append(x)
    return FlowResult(end=x, path=np.stack(states) if keep_path else None)


class PathDeviation:
    """Streaming per-particle deviation between two paths over the same grid.

    After updates with the states of k = 0..K, :meth:`value` is
    sqrt(mean_k ||a_k - b_k||^2 / d) for each particle (accumulated in float64).
    """

    def __init__(self, n_particles: int, dim: int) -> None:
        self._sum = np.zeros(n_particles, dtype=np.float64)
        self._dim = dim
        self._count = 0

    def update(self, a: np.ndarray, b: np.ndarray) -> None:
        diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
        self._sum += np.einsum("ij,ij->i", diff, diff)
        self._count += 1

    def value(self) -> np.ndarray:
        if self._count == 0:
            raise ValueError("no states were added to the path deviation")
        return np.sqrt(self._sum / (self._count * self._dim))


@dataclass
class PairedRuns:
    """Runs of several fields from the same sources, compared with a reference run."""

    reference_end: np.ndarray
    ends: list[np.ndarray]
    deviations: list[np.ndarray]  # per particle, one array per field


def integrate_together(
    reference: ClosedFormField,
    fields: Sequence[ClosedFormField],
    x0: np.ndarray,
    *,
    steps: int = 100,
    solver: str = "euler",
    progress: bool = True,
) -> PairedRuns:
    """Integrate ``reference`` and every field in lockstep from the same ``x0``.

    The path deviation of each field from the reference is accumulated step by step, so
    memory is (1 + len(fields)) x M x d whatever the number of steps, and the reference
    run is integrated once for all fields.
    """
    runs = [trajectory(f, x0, steps=steps, solver=solver) for f in (reference, *fields)]
    meters = [PathDeviation(len(x0), reference.dim) for _ in fields]
    states: tuple[np.ndarray, ...] = ()
    desc = f"{solver}, {len(runs)} runs"
    for states in track(zip(*runs, strict=True), total=steps + 1, desc=desc, progress=progress):
        for meter, state in zip(meters, states[1:], strict=True):
            meter.update(states[0], state)
    return PairedRuns(
        reference_end=states[0],
        ends=list(states[1:]),
        deviations=[m.value() for m in meters],
    )
