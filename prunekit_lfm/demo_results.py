"""The demo's results, one dataclass per stage; the report renders them.

A renamed or missing field fails where a stage builds its result (a TypeError at
construction) or where the report reads it (an AttributeError in the report test), not
as a KeyError at the end of a long run. :meth:`DemoResults.to_dict` gives the JSON of
``results.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class DataStage:
    """The split of the digits, the feature classifier and the embeddings used for pruning."""

    dataset: str
    image_size: int
    n_train: int
    n_test: int
    split: str
    features: str
    classifier_test_accuracy: float
    embeddings: str = ""


@dataclass
class VaeStage:
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
class QualityRow:
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
class C2FRow:
    """One switching time of the coarse-to-fine sweep, with the quality of its samples."""

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

    settings: dict[str, Any]
    data: DataStage
    vae: VaeStage
    selections: dict[str, SelectionRow]
    runs: dict[str, RunRow]
    similarity: dict[str, SimilarityRow]
    quality: dict[str, QualityRow]
    c2f: C2FStage
    stability: StabilityStage
    timings: dict[str, Any] = field(default_factory=dict)
    inspect_page: str | None = None  # the `prunekit inspect --html` page, relative to the report

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
