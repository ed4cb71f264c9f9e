"""Small models and run directories for the sampling and scoring tests (CPU, milliseconds)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from prunekit_lfm.models import build_model
from prunekit_lfm.runs import EMA, MODEL, TrainConfig, save_weights, write_config

torch.set_num_threads(1)  # two threads on a shared two-core machine are far slower than one


class LinearVelocity(nn.Module):
    """v(x, t, y) = B A flatten(x) + t * w + E[y]: FLOPs are 2 * batch * (d*r + r*d) by hand.

    With ``rank`` None the map is one d x d matrix (2 * batch * d * d FLOPs). ``E`` has a
    row per class plus the null label (id = num_classes).
    """

    def __init__(self, channels: int = 2, size: int = 4, num_classes: int = 0,
                 rank: int | None = None, seed: int = 0) -> None:
        super().__init__()
        self.in_channels, self.sample_size, self.num_classes = channels, size, num_classes
        d = channels * size * size
        g = torch.Generator().manual_seed(seed)
        layers = [d, d] if rank is None else [d, rank, d]
        self.maps = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(layers, layers[1:], strict=False))
        for m in self.maps:
            m.weight.data = torch.randn(m.weight.shape, generator=g) / d**0.5
        self.w = nn.Parameter(torch.randn(d, generator=g))
        self.emb = nn.Parameter(torch.randn(num_classes + 1, d, generator=g))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = x.flatten(1)
        for m in self.maps:
            h = m(h)
        if y is None:
            y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long)
        h = h + t.reshape(-1, 1) * self.w + self.emb[y]
        return h.view_as(x)


def randomize(model: nn.Module, seed: int, std: float = 0.05) -> nn.Module:
    """Seeded random weights (fresh DiTs output zero velocity: their last layer starts at 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def make_run(path: Path, spec: str = "tiny", *, seed: int = 0, sample_size: int = 4,
             in_channels: int = 4, num_classes: int = 0, vae: str | None = None) -> Path:
    """A run directory (config.json, model and EMA weights) holding a randomised model."""
    model = randomize(build_model(spec, sample_size=sample_size, in_channels=in_channels,
                                  num_classes=num_classes, seed=seed), seed + 1)
    path.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(model=model.config_dict(), sample_size=sample_size, in_channels=in_channels,
                       num_classes=num_classes, conditional=num_classes > 0, latents="latents.h5",
                       vae=vae, steps_done=1)
    write_config(path, config)
    save_weights(path / MODEL, model, 1)
    save_weights(path / EMA, model, 1)
    return path
