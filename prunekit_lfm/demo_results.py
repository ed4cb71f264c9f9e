"""The demo's results: each stage returns its own dataclass, the report renders them.

A renamed or missing field fails where a stage builds its result (a TypeError at
construction) or where the report reads it (an AttributeError in the report test), not
as a KeyError at the end of a long run. Each stage's result is built whole by that stage
and never edited by another. :meth:`DemoResults.to_dict` gives the JSON of ``results.json``.

"Fidelity" here is how close generated images are to real ones (FD, precision, recall in
a feature space); the core's "quality" of a selection is its MMD to the full set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ._renamed import renamed
from .demo_scale import DemoScale


@dataclass
class DemoSettings:
    """What the demo ran with: the scale (after ``--effort``), seed, threads and criteria."""

    scale: DemoScale
    seed: int
    threads: int
    effort: float
    criteria_definitions: dict[str, dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """The scale's fields and the rest side by side (the ``settings`` of results.json)."""
        return {**asdict(self.scale), "seed": self.seed, "threads": self.threads,
                "effort": self.effort, "criteria_definitions": self.criteria_definitions}


@dataclass
class DataStage:
    """The split of the digits and the feature classifier."""

    dataset: str
    image_size: int
    n_train: int
    n_test: int
    split: str
    features: str
    classifier_test_accuracy: float


@dataclass
class VaeStage:
    """The VAE trained on the training digits and how well it reconstructs them."""

    size: str
    steps: int
    latent_shape: list[int]
    scaling_factor: float
    reconstruction_mse_01: float


@dataclass
class SelectionRow:
    """What one selection keeps: counts per k-means cluster and per digit."""

    criterion: str
    pr: float
    n_kept: int
    clusters_present: int
    kept_per_cluster: list[int]
    digits_present: int
    kept_per_digit: list[int]
    dropped_clusters: list[int] | None = None


@dataclass
class PruningStage:
    """The embeddings the criteria scored and what each selection keeps."""

    embeddings: str
    selections: dict[str, SelectionRow]


@dataclass
class RunRow:
    """One trained flow-matching model."""

    run_dir: str
    steps: int
    n_train: int
    final_loss_mean_last_10pct: float | None
    model: str


@dataclass
class SimilarityRow:
    """Same-seed similarity of one model to the full-set model (see evaluate.paired_similarity)."""

    criterion: str
    pr: float
    n_kept: int
    a: str
    b: str
    n: int
    seed: int
    baseline: str
    baseline_pairs: int
    features: str | None
    measures: dict[str, dict[str, dict[str, Any]]]


@dataclass
class FidelityRow:
    """FD, precision and recall of one model's samples against the held-out digits."""

    criterion: str
    pr: float
    n_kept: int
    fd: float
    precision: float
    recall: float
    f_score: float
    k: int
    n_real: int
    n_generated: int
    features: str


@dataclass
class EvaluationStage:
    """Every model's samples against the full-set model's (same seeds) and the real digits."""

    similarity: dict[str, SimilarityRow]
    fidelity: dict[str, FidelityRow]


@dataclass
class C2FRow:
    """One switching time of the coarse-to-fine sweep, with the fidelity of its samples."""

    t_switch: float
    coarse_steps: int
    fine_steps: int
    flops: int
    flops_ratio: float
    latent_cos_to_fine_mean: float
    latent_cos_to_fine_median: float
    latent_mse_to_fine_mean: float
    fd: float
    precision: float
    recall: float
    f_score: float


@dataclass
class C2FStage:
    """The coarse-to-fine sweep and the switching time it picked."""

    coarse: str
    fine: str
    flops_per_call_ratio: float
    rows: list[C2FRow]
    auto_tol: float
    auto_t_switch: float
    auto_rule: str

    @property
    def auto_row(self) -> C2FRow:
        return next(r for r in self.rows if r.t_switch == self.auto_t_switch)


@dataclass
class StabilityStage:
    """The closed-form stability rows of the core (``prunekit.flow.study.stability_rows``)."""

    what: str
    n_sources: int
    steps: int
    rows: list[dict[str, Any]]


@dataclass
class DemoResults:
    """Everything the demo measured; ``timings`` (wall clock) are the only numbers that vary."""

    settings: DemoSettings
    data: DataStage
    vae: VaeStage
    pruning: PruningStage
    runs: dict[str, RunRow]
    evaluation: EvaluationStage
    c2f: C2FStage
    stability: StabilityStage
    timings: dict[str, Any] = field(default_factory=dict)
    inspect_page: str | None = None  # the `prunekit inspect --html` page, relative to the report

    def to_dict(self) -> dict[str, Any]:
        """Plain data for results.json (the settings flat, as :meth:`DemoSettings.to_dict`)."""
        return {**asdict(self), "settings": self.settings.to_dict()}


__getattr__ = renamed(__name__, "QualityRow", FidelityRow, "FidelityRow")
