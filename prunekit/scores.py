"""The scores file: one number per item (larger = more worth keeping), plus method extras."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PrunekitError
from .h5io import atomic_h5, attr_str, decode_ids, open_h5, require, write_ids
from .provenance import read_params, stamp

_OPTIONAL = ("cluster", "centroids", "centroid_distance", "order", "labels")


@dataclass
class Scores:
    """Per-item scores of one method over an embedding set of ``n_total`` rows.

    ``score[i]`` is NaN for rows that were not scored (non-finite rows dropped at load
    time); selection never picks them. ``cluster`` is -1 there.
    """

    score: np.ndarray
    method: str
    n_total: int
    cluster: np.ndarray | None = None
    centroids: np.ndarray | None = None
    centroid_distance: np.ndarray | None = None
    order: np.ndarray | None = None
    ids: np.ndarray | None = None
    labels: np.ndarray | None = None
    source: str = "<array>"
    source_fingerprint: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def eligible(self) -> np.ndarray:
        """Boolean mask of rows that were scored (finite or ±inf, not NaN)."""
        return ~np.isnan(self.score)

    def save(self, path: str | os.PathLike, command: list[str] | None = None) -> Path:
        """Write the scores file atomically; returns the path."""
        with atomic_h5(path) as f:
            f.create_dataset("score", data=self.score.astype(np.float64))
            for name in _OPTIONAL:
                value = getattr(self, name)
                if value is not None:
                    f.create_dataset(name, data=value)
            if self.ids is not None:
                write_ids(f, "ids", self.ids)
            f.attrs["method"] = self.method
            f.attrs["n_total"] = int(self.n_total)
            f.attrs["source"] = self.source
            f.attrs["source_fingerprint"] = self.source_fingerprint
            stamp(f.attrs, self.params, command)
        return Path(path)


def load_scores(path: str | os.PathLike) -> Scores:
    """Read and validate a scores file."""
    with open_h5(path, "scores") as f:
        score = np.asarray(require(f, "score", "scores")[()], dtype=np.float64)
        if score.ndim != 1:
            raise PrunekitError(f"scores file {path} ['score'] must be 1-D, got shape {score.shape}.")
        n = int(f.attrs.get("n_total", score.shape[0]))
        if n != score.shape[0]:
            raise PrunekitError(
                f"scores file {path}: attribute n_total={n} but 'score' has {score.shape[0]} rows."
            )
        extras = {name: np.asarray(f[name][()]) for name in _OPTIONAL if name in f}
        ids = decode_ids(f["ids"][()]) if "ids" in f else None
        out = Scores(
            score=score,
            method=attr_str(f.attrs, "method", "unknown"),
            n_total=n,
            ids=ids,
            source=attr_str(f.attrs, "source", "") or "",
            source_fingerprint=attr_str(f.attrs, "source_fingerprint", "") or "",
            params=read_params(f.attrs),
            **extras,
        )
    for name in ("cluster", "centroid_distance", "labels"):
        value = getattr(out, name)
        if value is not None and value.shape != (n,):
            raise PrunekitError(f"scores file {path} ['{name}'] has shape {value.shape}, expected ({n},).")
    if out.order is not None and out.order.size and (out.order.min() < 0 or out.order.max() >= n):
        raise PrunekitError(f"scores file {path} ['order'] has positions outside [0, {n}).")
    return out
