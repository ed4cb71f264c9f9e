"""The probability path flow matching trains on: the linear (rectified) interpolant, its
velocity target, time sampling and the loss.

(Named ``fm_path``: a path of distributions, not of files, and apart from the core's
closed-form :mod:`prunekit.flow`.)

Time runs from noise to data: x0 ~ N(0, I) at t = 0, the data x1 at t = 1,

    x_t = (1 - t) x0 + t x1,        target velocity  dx_t/dt = x1 - x0,

and the model v(x_t, t, y) is trained with the MSE  E ||v(x_t, t, y) - (x1 - x0)||^2.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from prunekit.errors import PrunekitError

from .specs import T_SCHEDULES  # declared once, with the training spec


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """t [B] (or scalar) -> shape [B, 1, 1, ...] broadcastable against ``like``."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        return t
    return t.reshape(-1, *([1] * (like.ndim - 1)))


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """The point of the linear path at time t: (1 - t) x0 + t x1 (t = 0 noise, t = 1 data)."""
    tb = _bcast(t, x1)
    return (1 - tb) * x0 + tb * x1


def target(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """The velocity of the linear path, x1 - x0 (constant in t)."""
    return x1 - x0


def sample_t(
    n: int,
    generator: torch.Generator | None = None,
    schedule: str = "uniform",
    *,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """n training times in [0, 1] (t = 0 noise, t = 1 data), float32.

    ``uniform``: t ~ U[0, 1]. ``logit_normal``: t = sigmoid(u), u ~ N(0, 1), which puts
    more weight on the middle of the path (Esser et al. 2024).
    """
    if device is None:
        device = generator.device if generator is not None else "cpu"
    if schedule == "uniform":
        return torch.rand(n, generator=generator, device=device)
    if schedule == "logit_normal":
        return torch.sigmoid(torch.randn(n, generator=generator, device=device))
    raise PrunekitError(f"unknown t schedule '{schedule}'; use one of {', '.join(T_SCHEDULES)}.")


def fm_loss(
    model: Callable[..., torch.Tensor],
    x1: torch.Tensor,
    x0: torch.Tensor,
    t: torch.Tensor,
    y: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Flow-matching loss of ``model`` on data x1 with noise x0 at times t [B].

    ``reduction="mean"``: one scalar (mean over batch and elements). ``"none"``: per item
    [B], the mean squared error over that item's elements. Computed in float32 even when
    the model runs under autocast.
    """
    xt = interpolate(x0, x1, t)
    pred = model(xt, t, y)
    err = (pred.float() - target(x0, x1).float()).pow(2)
    per_item = err.reshape(err.shape[0], -1).mean(dim=1)
    if reduction == "none":
        return per_item
    if reduction == "mean":
        return per_item.mean()
    raise PrunekitError(f"unknown reduction '{reduction}'; use 'mean' or 'none'.")
