"""The sizes and step counts of ``prunekit demo``: :class:`DemoScale`, its two settings
(:data:`DEFAULT` and :data:`QUICK`) and the pruning criteria it compares.

(Not to be confused with the core's :class:`prunekit.runtime.plan.Plan`, the predicted
cost of a command, or with the memory budget: ``--effort`` scales the training steps.)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

#: criterion name -> how its scores are made and turned into a selection
CRITERIA: dict[str, dict[str, Any]] = {
    "random": {"method": "random", "balance": "none", "invert": False},
    "kmeans-furthest": {"method": "kmeans", "balance": "clusters", "invert": False},
    "kmeans-nearest": {"method": "kmeans", "balance": "clusters", "invert": True},
    "herding": {"method": "herding", "balance": "none", "invert": False},
    "kcenter": {"method": "kcenter", "balance": "none", "invert": False},
    "loss": {"method": "loss", "balance": "none", "invert": False},
}

#: the larger model of the coarse-to-fine pair: a wider, deeper DiT than ``tiny``
FINE_MODEL = {"preset": "tiny", "num_layers": 4, "num_attention_heads": 4, "attention_head_dim": 48}


@dataclass(frozen=True)
class DemoScale:
    """Every size and step count of one demo setting (``--effort`` scales the step counts)."""

    name: str
    criteria: tuple[str, ...]
    prs: tuple[float, ...]
    vae_steps: int
    lfm_steps: int
    score_steps: int
    fine_steps: int
    n_samples: int
    sample_steps: int
    t_switches: tuple[float, ...]
    score_t_points: int = 8
    score_noise_bank: int = 4
    image_size: int = 8
    vae_batch: int = 32
    batch_size: int = 64
    lr: float = 1e-3
    ema: float = 0.999
    clusters: int = 10
    drop_fraction: float = 0.5
    drop_pr: float = 0.5
    n_sources: int = 256
    flow_steps: int = 50
    auto_tol: float = 0.99
    grid_columns: int = 10
    model: str = "tiny"
    fine_model: dict = field(default_factory=lambda: dict(FINE_MODEL))

    def scaled(self, effort: float) -> DemoScale:
        """Every training step count times ``effort`` (rounded, at least 1)."""

        def s(v: int) -> int:
            return max(1, int(round(v * effort)))

        return replace(self, vae_steps=s(self.vae_steps), lfm_steps=s(self.lfm_steps),
                       score_steps=s(self.score_steps), fine_steps=s(self.fine_steps))


DEFAULT = DemoScale(
    name="default", criteria=tuple(CRITERIA), prs=(0.25, 0.5, 0.75), vae_steps=400,
    lfm_steps=600, score_steps=150, fine_steps=600, n_samples=256, sample_steps=30,
    t_switches=(0.0, 0.3, 0.5, 0.7, 0.9, 1.0),
)
QUICK = DemoScale(
    name="quick", criteria=("random", "kmeans-furthest", "loss"), prs=(0.5,), vae_steps=80,
    lfm_steps=150, score_steps=50, fine_steps=150, n_samples=64, sample_steps=12,
    t_switches=(0.0, 0.5, 0.7, 1.0), score_t_points=4, score_noise_bank=2, n_sources=64,
    flow_steps=20,
)
