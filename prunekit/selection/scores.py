"""The scores file: one number per item (larger = more worth keeping), plus method extras."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.h5io import (
    atomic_h5,
    attr_int,
    attr_str,
    normalize_ids,
    open_h5,
    read_dataset,
    read_ids,
    read_optional,
    write_ids,
)
from prunekit.io.provenance import read_params, stamp

T = TypeVar("T")

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

    def __post_init__(self) -> None:
        """Check the invariants every Scores holds, however it was made."""
        self.score = np.asarray(self.score)
        if self.score.ndim != 1 or self.score.dtype.kind not in "iuf":
            raise PrunekitError(
                f"'score' must be a 1-D array of numbers, got shape {self.score.shape} and dtype {self.score.dtype}."
            )
        self.score = self.score.astype(np.float64, copy=False)
        n = self.score.shape[0]
        if isinstance(self.n_total, bool) or not isinstance(self.n_total, (int, np.integer)):
            raise PrunekitError(f"n_total must be an integer, got {self.n_total!r}.")
        self.n_total = int(self.n_total)
        if self.n_total != n:
            raise PrunekitError(f"n_total={self.n_total} but 'score' has {n} rows; they must agree.")
        if not isinstance(self.params, dict):
            raise PrunekitError(f"params must be a dict, got {type(self.params).__name__}.")
        self.method = str(self.method)
        self.ids = normalize_ids(self.ids)
        for name in ("cluster", "labels", "ids"):
            self._check_per_row(name, integer=name != "ids")
        self._check_per_row("centroid_distance", integer=False)
        if self.centroids is not None:
            self.centroids = np.asarray(self.centroids)
            if self.centroids.ndim != 2:
                raise PrunekitError(f"'centroids' must be 2-D (K x D), got shape {self.centroids.shape}.")
        if self.order is not None:
            self.order = _check_order(np.asarray(self.order), n)

    def __repr__(self) -> str:
        """A summary, not the arrays: which of them are present, and how many rows scored."""
        present = [k for k in (*_OPTIONAL, "ids") if getattr(self, k) is not None]
        return (f"Scores(method={self.method!r}, n_total={self.n_total}, "
                f"n_scored={int(self.eligible.sum())}, source={self.source!r}, "
                f"with={present})")

    def _check_per_row(self, name: str, integer: bool) -> None:
        value = getattr(self, name)
        if value is None:
            return
        value = np.asarray(value)
        n = self.score.shape[0]
        if value.shape != (n,):
            raise PrunekitError(f"'{name}' has shape {value.shape}; it needs one entry per row, ({n},).")
        if integer and value.dtype.kind not in "iu":
            raise PrunekitError(f"'{name}' must hold integers, got dtype {value.dtype}.")
        if not integer and name != "ids" and value.dtype.kind not in "iuf":
            raise PrunekitError(f"'{name}' must hold numbers, got dtype {value.dtype}.")
        setattr(self, name, value.astype(np.int64) if integer else value)

    @property
    def eligible(self) -> np.ndarray:
        """Boolean mask of rows that were scored (finite or ±inf, not NaN)."""
        return ~np.isnan(self.score)

    def save(self, path: str | os.PathLike, command: list[str] | None = None) -> Path:
        """Write the scores file atomically; returns the path.

        A path ending in ``/``, an existing folder or a path without suffix gets a
        partitioned folder (:func:`prunekit.io.dataset.wants_dataset`), any other one HDF5.
        """
        from prunekit.selection.partitioned import save_scores_parts

        return save_h5_or_parts(self, path, command, save_scores_parts, self._write_h5)

    def _write_h5(self, f) -> None:
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


def save_h5_or_parts(obj: Any, path: str | os.PathLike, command: list[str] | None,
                     save_parts: Callable[..., Path], write_h5: Callable[[Any], None]) -> Path:
    """Write a scores or selection ``obj`` atomically: ``save_parts(obj, path, command)`` when
    ``path`` asks for a partitioned folder, else one HDF5 file that ``write_h5(f)`` fills and
    the provenance (``obj.params``, ``command``) stamps. Returns the path."""
    from prunekit.io.dataset import wants_dataset

    if wants_dataset(path):
        return save_parts(obj, path, command)
    with atomic_h5(path) as f:
        write_h5(f)
        stamp(f.attrs, obj.params, command)
    return Path(path)


def load_h5_or_parts(path: str | os.PathLike, kind: str, cls: Callable[..., T],
                     load_parts: Callable[[Any], T], read_h5: Callable[[Any, str], dict]) -> T:
    """Read a ``kind`` file ("scores", "selection"): a folder with ``load_parts(path)``, HDF5
    as ``cls(**read_h5(f, where))``, the checks' errors naming the file (``where``)."""
    if os.path.isdir(path):
        return load_parts(path)
    where = f"{kind} file {path}"
    with open_h5(path, kind) as f:
        kwargs = read_h5(f, where)
    try:
        return cls(**kwargs)
    except PrunekitError as exc:
        raise PrunekitError(f"{where}: {exc}") from exc


def _check_order(order: np.ndarray, n: int) -> np.ndarray:
    """Pick positions: 1-D integers in [0, n), each at most once."""
    if order.ndim != 1 or (order.size and order.dtype.kind not in "iu"):
        raise PrunekitError(f"'order' must be 1-D integers, got shape {order.shape} and dtype {order.dtype}.")
    order = order.astype(np.int64)
    if order.size and (order.min() < 0 or order.max() >= n):
        raise PrunekitError(f"'order' has positions outside [0, {n}).")
    if np.unique(order).size != order.size:
        raise PrunekitError("'order' repeats a position; each row is picked at most once.")
    return order


def load_scores(path: str | os.PathLike) -> Scores:
    """Read and validate a scores file (every dataset and attribute is checked).

    A folder is read as partitioned scores (:mod:`prunekit.selection.partitioned`).
    """
    from prunekit.selection.partitioned import load_scores_parts

    return load_h5_or_parts(path, "scores", Scores, load_scores_parts, _read_scores)


def _read_scores(f, where: str) -> dict[str, Any]:
    """The :class:`Scores` arguments an HDF5 scores file holds."""
    score = read_dataset(f, "score", "scores")
    if score.ndim != 1:
        raise PrunekitError(f"{where} ['score'] must be 1-D, got shape {score.shape}.")
    n = attr_int(f.attrs, "n_total", where, score.shape[0])
    extras = {name: read_optional(f, name, "scores") for name in _OPTIONAL}
    return dict(
        score=score,
        method=attr_str(f.attrs, "method", "unknown"),
        n_total=n,
        ids=read_ids(f, "scores"),
        source=attr_str(f.attrs, "source", "") or "",
        source_fingerprint=attr_str(f.attrs, "source_fingerprint", "") or "",
        params=read_params(f.attrs, where),
        **extras,
    )
