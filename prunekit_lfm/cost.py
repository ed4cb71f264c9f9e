"""Cost accounting for sampling: network calls, FLOPs and wall time.

FLOPs of one forward pass come from ``torch.utils.flop_counter.FlopCounterMode`` (matrix
products, convolutions and attention; 2 FLOPs per multiply-add). They depend only on the
model and the input shape, so each (model, input shape) pair is measured once, cached for
the model's lifetime, and multiplied by the number of calls. Measuring happens before the
timed sampling loop, so wall times never include the counter's overhead.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# model -> {(input shape, device, dtype): FLOPs of one forward pass}
_FLOPS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, int]] = weakref.WeakKeyDictionary()


def _key(x: torch.Tensor) -> tuple:
    return (tuple(x.shape), str(x.device), str(x.dtype))


def forward_flops(model: nn.Module, batch: int, shape: tuple[int, ...], device: Any = None) -> int:
    """FLOPs of one ``model(x, t, y)`` call on ``batch`` latents of ``shape`` (C, H, W).

    Measured with a forward pass on zeros (t = 0.5, null label) the first time, then cached.
    """
    device = torch.device(device) if device is not None else device_of(model)
    x = torch.zeros((batch, *shape), device=device)
    cache = _FLOPS.setdefault(model, {})
    key = _key(x)
    if key not in cache:
        t = torch.full((batch,), 0.5, device=device)
        null = int(getattr(model, "num_classes", 0))
        y = torch.full((batch,), null, dtype=torch.long, device=device)
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(x, t, y)
        cache[key] = int(counter.get_total_flops())
    return cache[key]


def device_of(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (the CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@dataclass
class ModelCost:
    """What one model cost during sampling.

    ``calls`` counts forward passes; ``rows`` the latents they processed (a guided pass on
    B samples processes 2B rows); ``flops`` is the sum of the passes' FLOPs.
    """

    calls: int = 0
    rows: int = 0
    flops: int = 0

    @property
    def flops_per_row(self) -> float:
        """FLOPs of one network evaluation on one latent (0 when never called)."""
        return self.flops / self.rows if self.rows else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "rows": self.rows, "flops": self.flops,
                "flops_per_row": self.flops_per_row}


@dataclass
class Cost:
    """Cost of one sampling run: per-model calls and FLOPs, and the wall time in seconds."""

    models: dict[str, ModelCost] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def flops(self) -> int:
        return sum(m.flops for m in self.models.values())

    @property
    def calls(self) -> int:
        return sum(m.calls for m in self.models.values())

    def record(self, name: str, model: nn.Module, x: torch.Tensor) -> None:
        """Count one forward pass of ``model`` on ``x`` (FLOPs measured now if not cached)."""
        flops = _FLOPS.get(model, {}).get(_key(x))
        if flops is None:
            flops = forward_flops(model, x.shape[0], tuple(x.shape[1:]), x.device)
        m = self.models.setdefault(name, ModelCost())
        m.calls += 1
        m.rows += int(x.shape[0])
        m.flops += flops

    def to_dict(self) -> dict[str, Any]:
        return {
            "flops": self.flops,
            "calls": self.calls,
            "wall_s": self.wall_s,
            "models": {name: m.to_dict() for name, m in self.models.items()},
        }
