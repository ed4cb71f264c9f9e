"""The selection file: which rows of a source to keep, and applying it to another file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PrunekitError
from .h5io import atomic_h5, attr_str, decode_ids, open_h5, require, write_ids
from .provenance import read_params, stamp

MAX_NAMED = 5


@dataclass
class Selection:
    """Kept rows of an ``n_total``-row source: ``indices`` ascending, optional ``counts``.

    ``pr`` is the fraction removed (pr = 0.8 keeps 20 %). With oversampling, ``counts[j]``
    says how often row ``indices[j]`` is repeated in training.
    """

    indices: np.ndarray
    n_total: int
    pr: float
    method: str = "unknown"
    seed: int | None = None
    ids: np.ndarray | None = None
    counts: np.ndarray | None = None
    source_fingerprint: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.indices = np.asarray(self.indices, dtype=np.int64)
        if self.indices.ndim != 1:
            raise PrunekitError("selection indices must be 1-D.")
        if self.indices.size and (np.any(np.diff(self.indices) <= 0)):
            raise PrunekitError("selection indices must be strictly ascending (no repeats).")
        if self.indices.size and (self.indices[0] < 0 or self.indices[-1] >= self.n_total):
            raise PrunekitError(
                f"selection indices must lie in [0, {self.n_total}); "
                f"got {self.indices[0]}..{self.indices[-1]}."
            )
        if self.counts is not None:
            self.counts = np.asarray(self.counts, dtype=np.int64)
            if self.counts.shape != self.indices.shape or np.any(self.counts < 1):
                raise PrunekitError("selection counts must be positive, one per index.")

    @property
    def n_kept(self) -> int:
        return int(self.indices.size)

    def repeated_indices(self) -> np.ndarray:
        """Indices with each row repeated ``counts`` times (ascending)."""
        if self.counts is None:
            return self.indices
        return np.repeat(self.indices, self.counts)

    def mask(self) -> np.ndarray:
        """Boolean (n_total,) mask of kept rows."""
        m = np.zeros(self.n_total, dtype=bool)
        m[self.indices] = True
        return m

    def save(self, path: str | os.PathLike, command: list[str] | None = None) -> Path:
        """Write the selection file atomically; returns the path."""
        with atomic_h5(path) as f:
            f.create_dataset("indices", data=self.indices)
            if self.ids is not None:
                write_ids(f, "ids", self.ids)
            if self.counts is not None:
                f.create_dataset("counts", data=self.counts)
            f.attrs["pr"] = float(self.pr)
            f.attrs["n_total"] = int(self.n_total)
            f.attrs["n_kept"] = self.n_kept
            f.attrs["method"] = self.method
            f.attrs["seed"] = -1 if self.seed is None else int(self.seed)
            f.attrs["source_fingerprint"] = self.source_fingerprint
            stamp(f.attrs, self.params, command)
        return Path(path)


def load_selection(path: str | os.PathLike) -> Selection:
    """Read and validate a selection file."""
    with open_h5(path, "selection") as f:
        indices = np.asarray(require(f, "indices", "selection")[()])
        if indices.dtype.kind not in "iu":
            raise PrunekitError(f"selection file {path} ['indices'] must be integers, got {indices.dtype}.")
        if "n_total" not in f.attrs:
            raise PrunekitError(f"selection file {path} lacks the 'n_total' attribute; rewrite it with prunekit.")
        seed = int(f.attrs.get("seed", -1))
        kwargs = dict(
            indices=indices,
            n_total=int(f.attrs["n_total"]),
            pr=float(f.attrs.get("pr", 0.0)),
            method=attr_str(f.attrs, "method", "unknown"),
            seed=None if seed < 0 else seed,
            ids=decode_ids(f["ids"][()]) if "ids" in f else None,
            counts=np.asarray(f["counts"][()]) if "counts" in f else None,
            source_fingerprint=attr_str(f.attrs, "source_fingerprint", "") or "",
            params=read_params(f.attrs),
        )
    try:
        return Selection(**kwargs)
    except PrunekitError as exc:
        raise PrunekitError(f"selection file {path}: {exc}") from exc


def resolve_rows(
    sel: Selection,
    target_n: int,
    target_ids: np.ndarray | None,
    *,
    selection_name: str = "selection",
    target_name: str = "target",
) -> np.ndarray:
    """Rows of a target file (``target_n`` rows) that ``sel`` keeps, repeated by ``counts``.

    Matched by id when both sides carry ids, by position otherwise. An unknown id, a
    position out of range or a different ``n_total`` is an error naming both files.
    """
    if sel.ids is not None and target_ids is not None:
        lookup = {v: i for i, v in enumerate(target_ids.tolist())}
        missing = [v for v in sel.ids.tolist() if v not in lookup]
        if missing:
            shown = ", ".join(map(str, missing[:MAX_NAMED]))
            raise PrunekitError(
                f"{selection_name} has {len(missing)} ids that {target_name} lacks (e.g. {shown}). "
                "Make the selection from the same data set as the target file."
            )
        rows = np.array([lookup[v] for v in sel.ids.tolist()], dtype=np.int64)
    else:
        if sel.n_total != target_n:
            raise PrunekitError(
                f"{selection_name} was made for {sel.n_total} rows but {target_name} has {target_n}. "
                "Use a selection made from the same data set."
            )
        rows = sel.indices
    if sel.counts is not None:
        rows = np.repeat(rows, sel.counts)
    return rows


def select(scores, pr: float, **kwargs):  # placeholder until the selection rules land
    raise NotImplementedError
