"""Cost accounting for sampling: network calls, FLOPs and wall time.

FLOPs of one forward pass come from ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs
per multiply-add) with one addition: scaled dot-product attention is counted by formula on
every device. torch registers formulas only for the CUDA attention kernels, so on a CPU
the attention products ``Q K^T`` and ``softmax(.) V`` would count 0. For queries
[B, h, s_q, d], keys [B, h, s_k, d] and values [B, h, s_k, d_v] attention costs

    2 B h s_q s_k d  +  2 B h s_q s_k d_v      FLOPs

(softmax and scaling are not counted, as for every other op). The formula is registered
for the composite op itself, so the fused CUDA kernels under it are not counted twice.

The counts are linear in the batch, so a sampling run measures each model once on one
latent (:func:`flops_per_row`) and multiplies by the rows every call processes; nothing is
cached between runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """2 B h s_q s_k (d + d_v): the two matrix products of attention (shapes, not tensors)."""
    return sdpa_flop_count(query, key, value)


_ATTENTION = {
    torch.ops.aten.scaled_dot_product_attention: _attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops,
}


def count_flops(fn, *args, **kwargs) -> int:
    """FLOPs of ``fn(*args, **kwargs)`` (matrix products, convolutions, attention)."""
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=_ATTENTION) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def forward_flops(model: nn.Module, batch: int, shape: tuple[int, ...], device: Any = None) -> int:
    """FLOPs of one ``model(x, t, y)`` call on ``batch`` latents of ``shape`` (C, H, W).

    Measured with a forward pass on zeros (t = 0.5, null label).
    """
    device = torch.device(device) if device is not None else device_of(model)
    x = torch.zeros((batch, *shape), device=device)
    t = torch.full((batch,), 0.5, device=device)
    null = int(getattr(model, "num_classes", 0))
    y = torch.full((batch,), null, dtype=torch.long, device=device)
    return count_flops(model, x, t, y)


def flops_per_row(model: nn.Module, shape: tuple[int, ...]) -> int:
    """FLOPs of ``model`` on one latent of ``shape``; a call on B latents costs B times this."""
    return forward_flops(model, 1, shape)


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

    def record(self, name: str, rows: int, flops: int) -> None:
        """Count one forward pass of model ``name`` on ``rows`` latents costing ``flops``."""
        m = self.models.setdefault(name, ModelCost())
        m.calls += 1
        m.rows += int(rows)
        m.flops += int(flops)

    def to_dict(self) -> dict[str, Any]:
        return {
            "flops": self.flops,
            "calls": self.calls,
            "wall_s": self.wall_s,
            "models": {name: m.to_dict() for name, m in self.models.items()},
        }


class Counted:
    """A velocity model ``(x, t, y) -> v`` that adds every call to ``cost`` under ``name``."""

    def __init__(self, model: nn.Module, name: str, cost: Cost, per_row: int) -> None:
        self.model, self.name, self.cost, self.per_row = model, name, cost, per_row

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.cost.record(self.name, x.shape[0], self.per_row * x.shape[0])
        return self.model(x, t, y)
