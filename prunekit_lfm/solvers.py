"""Fixed-step ODE solvers for dx/dt = v(x, t) on the uniform grid t_k = k / K.

Time convention: t = 0 is noise, t = 1 is data. A solver starts from the noise x(0) and
returns x(1) after K steps, step k going from t_k = k/K to t_{k+1} = (k + 1)/K.

The velocity is a callable ``velocity(x, t, k)``: ``k`` is the index of the step being
taken. Everything that depends on the step (which model to call in coarse-to-fine
sampling) is decided from k alone, so both Heun stages of step k use the same network,
even though the second stage evaluates at t_{k+1}. That is what makes coarse-to-fine with
t_switch = 0 the fine model's trajectory, operation for operation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from prunekit.flow.ode import MAX_STEPS, SOLVER, SOLVERS
from prunekit.params import ParamError

#: ``velocity(x, t, k) -> dx/dt`` at state x, time t in [0, 1] (0 noise, 1 data), step k.
Velocity = Callable[[torch.Tensor, float, int], torch.Tensor]

__all__ = ["MAX_STEPS", "SOLVERS", "Velocity", "check_solver", "check_steps", "integrate"]


def check_steps(steps: int) -> None:
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ParamError("{steps} must be a positive integer, got {}. Use e.g. {steps:60}.", steps)
    if steps > MAX_STEPS:
        raise ParamError(
            "{steps} must be at most {} (got {}): each step is a network call per batch, and "
            "the ODE error stops shrinking long before (the paper uses 60).", MAX_STEPS, steps)


def check_solver(solver: str) -> str:
    """``solver`` if it is one of :data:`SOLVERS` (the core's), else a ParamError."""
    return SOLVER.check(solver)


def _euler_step(velocity: Velocity, x: torch.Tensor, k: int, steps: int) -> torch.Tensor:
    """x_{k+1} = x_k + h v(x_k, t_k), h = 1/K."""
    h = 1.0 / steps
    return x + h * velocity(x, k / steps, k)


def _heun_step(velocity: Velocity, x: torch.Tensor, k: int, steps: int) -> torch.Tensor:
    """Heun (explicit trapezoid): predictor Euler, corrector the mean of both slopes.

    Both evaluations pass the step index k (the model is chosen once per step).
    """
    h = 1.0 / steps
    v0 = velocity(x, k / steps, k)
    v1 = velocity(x + h * v0, (k + 1) / steps, k)
    return x + (0.5 * h) * (v0 + v1)


def integrate(
    velocity: Velocity,
    x0: torch.Tensor,
    steps: int,
    solver: str = "euler",
    on_step: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Integrate dx/dt = velocity(x, t, k) from t = 0 (noise ``x0``) to t = 1 (data).

    ``on_step(k)`` is called after step k (e.g. to advance a progress bar).
    """
    check_steps(steps)
    step = {"euler": _euler_step, "heun": _heun_step}[check_solver(solver)]
    x = x0
    for k in range(steps):
        x = step(velocity, x, k, steps)
        if on_step is not None:
            on_step(k)
    return x
