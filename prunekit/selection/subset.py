"""The selection file: which rows of a source to keep, and applying it to another file."""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.embeddings import Embeddings
from prunekit.io.h5io import (
    attr_float,
    attr_int,
    attr_str,
    normalize_ids,
    read_dataset,
    read_ids,
    read_optional,
    write_ids,
)
from prunekit.io.ids import id_positions
from prunekit.io.provenance import read_params
from prunekit.seeds import check_seed, role_rng
from prunekit.selection import quotas as q
from prunekit.selection.scores import Scores, load_h5_or_parts, save_h5_or_parts

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
        """Check the invariants every Selection holds, however it was made."""
        if isinstance(self.n_total, bool) or not isinstance(self.n_total, (int, np.integer)) or self.n_total < 0:
            raise PrunekitError(f"n_total must be a non-negative integer, got {self.n_total!r}.")
        self.n_total = int(self.n_total)
        indices = np.asarray(self.indices)
        if indices.ndim != 1 or (indices.size and indices.dtype.kind not in "iu"):
            raise PrunekitError(
                f"selection indices must be 1-D integers, got shape {indices.shape} and dtype {indices.dtype}."
            )
        self.indices = indices.astype(np.int64)
        if self.indices.size and (np.any(np.diff(self.indices) <= 0)):
            raise PrunekitError("selection indices must be strictly ascending (no repeats).")
        if self.indices.size and (self.indices[0] < 0 or self.indices[-1] >= self.n_total):
            raise PrunekitError(
                f"selection indices must lie in [0, {self.n_total}); "
                f"got {self.indices[0]}..{self.indices[-1]}."
            )
        try:
            self.pr = float(self.pr)
        except (TypeError, ValueError):
            raise PrunekitError(f"pr must be a number in [0, 1), got {self.pr!r}.") from None
        if not 0.0 <= self.pr < 1.0:
            raise PrunekitError(f"pr (the fraction removed) must lie in [0, 1), got {self.pr}.")
        if self.seed is not None:
            self.seed = check_seed(self.seed)
        if not isinstance(self.params, dict):
            raise PrunekitError(f"params must be a dict, got {type(self.params).__name__}.")
        self.ids = normalize_ids(self.ids)
        if self.ids is not None and self.ids.shape != self.indices.shape:
            raise PrunekitError(
                f"'ids' has {self.ids.size} entries but 'indices' has {self.indices.size}; "
                "a selection holds one id per kept row."
            )
        dup = None if self.ids is None else first_duplicate(self.ids)
        if dup is not None:  # applied by ids, a repeated id would keep one row twice
            raise PrunekitError(f"'ids' has duplicates (e.g. {dup!r}); each kept row needs its own id.")
        if self.counts is not None:
            counts = np.asarray(self.counts)
            if counts.shape != self.indices.shape or (counts.size and counts.dtype.kind not in "iu"):
                raise PrunekitError(
                    f"selection counts must be integers, one per index ({self.indices.size}); "
                    f"got shape {counts.shape} and dtype {counts.dtype}."
                )
            self.counts = counts.astype(np.int64)
            if np.any(self.counts < 1):
                raise PrunekitError("selection counts must be positive, one per index.")

    @property
    def n_kept(self) -> int:
        return int(self.indices.size)

    def __repr__(self) -> str:
        """A summary, not the indices (``sel.indices`` holds them)."""
        draws = "" if self.counts is None else f", draws={int(self.counts.sum())}"
        return (f"Selection(n_kept={self.n_kept}, n_total={self.n_total}, pr={self.pr:g}, "
                f"method={self.method!r}, seed={self.seed}, ids={self.ids is not None}, "
                f"counts={self.counts is not None}{draws})")

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

    def export(self, path: str | os.PathLike, fmt: str | None = None, *, use_ids: bool = False) -> Path:
        """Write the kept rows as .npy, .json or .txt (format from the suffix unless ``fmt``).

        See :func:`prunekit.selection.export.export_payload` for what each format holds.
        """
        from prunekit.selection.export import export_selection  # export builds on this module

        return export_selection(self, path, fmt, use_ids=use_ids)

    def save(self, path: str | os.PathLike, command: list[str] | None = None) -> Path:
        """Write the selection file atomically; returns the path.

        A path ending in ``/``, an existing folder or a path without suffix gets a
        partitioned folder (:func:`prunekit.io.dataset.wants_dataset`), any other one HDF5.
        """
        from prunekit.selection.partitioned import save_selection_parts

        return save_h5_or_parts(self, path, command, save_selection_parts, self._write_h5)

    def _write_h5(self, f) -> None:
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


def first_duplicate(ids: np.ndarray) -> Any:
    """The smallest id that occurs more than once in ``ids`` (int64 or str), else None."""
    keys = np.sort(ids.astype(str) if ids.dtype == object else ids)
    same = keys[1:][keys[1:] == keys[:-1]]
    return same[0].item() if same.size else None


def load_selection(path: str | os.PathLike) -> Selection:
    """Read and validate a selection file (every dataset and attribute is checked).

    A folder is read as a partitioned selection (:mod:`prunekit.selection.partitioned`).
    """
    from prunekit.selection.partitioned import load_selection_parts

    return load_h5_or_parts(path, "selection", Selection, load_selection_parts, _read_selection)


def _read_selection(f, where: str) -> dict[str, Any]:
    """The :class:`Selection` arguments an HDF5 selection file holds."""
    indices = read_dataset(f, "indices", "selection")
    if indices.dtype.kind not in "iu":
        raise PrunekitError(f"{where} ['indices'] must be integers, got {indices.dtype}.")
    if "n_total" not in f.attrs:
        raise PrunekitError(f"{where} lacks the 'n_total' attribute; rewrite it with prunekit.")
    seed = attr_int(f.attrs, "seed", where, -1)
    n_kept = attr_int(f.attrs, "n_kept", where, indices.size)
    if n_kept != indices.size:
        raise PrunekitError(f"{where}: attribute n_kept={n_kept} but 'indices' has {indices.size} rows.")
    return dict(
        indices=indices,
        n_total=attr_int(f.attrs, "n_total", where),
        pr=attr_float(f.attrs, "pr", where, 0.0),
        method=attr_str(f.attrs, "method", "unknown"),
        seed=None if seed < 0 else seed,
        ids=read_ids(f, "selection"),
        counts=read_optional(f, "counts", "selection"),
        source_fingerprint=attr_str(f.attrs, "source_fingerprint", "") or "",
        params=read_params(f.attrs, where),
    )


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
    position out of range or a different ``n_total`` is an error naming both files; string
    ids (file names) may select from a target of another size, integer ids may not.
    """
    if sel.ids is not None and target_ids is not None:
        if sel.n_total != target_n and target_ids.dtype.kind in "iu":
            # Integer ids are usually row positions (digits, .npy arrays): matching them
            # across files of different sizes would silently pick unrelated rows.
            raise PrunekitError(
                f"{selection_name} was made for {sel.n_total} rows but {target_name} has "
                f"{target_n}, and its ids are integers (row positions). Make the selection "
                "from the same data set as the target file."
            )
        rows, found = id_positions(sel.ids, target_ids)
        if not found.all():
            missing = sel.ids[~found]
            shown = ", ".join(map(str, missing[:MAX_NAMED].tolist()))
            raise PrunekitError(
                f"{selection_name} has {missing.size} ids that {target_name} lacks (e.g. {shown}). "
                "Make the selection from the same data set as the target file."
            )
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


BALANCES = ("none", "clusters", "proportional", "labels")
FILLS = ("error", "random")
# Dense group numbers below this fit uint16, which numpy sorts with a radix sort.
_SMALL_GROUPS = 1 << 16
# Up to this many groups, a loop over groups (not items) partitions each group's slice;
# above it one global ranking sort is cheaper than the per-group overhead.
LOOP_GROUPS = 20_000


def select(
    scores: Scores,
    pr: float,
    *,
    balance: str = "none",
    invert: bool = False,
    drop_clusters: Sequence[int] | float | None = None,
    oversample: bool = False,
    seed: int = 0,
    labels: np.ndarray | None = None,
    fill: str = "error",
) -> Selection:
    """Turn scores into a selection that removes a fraction ``pr`` of the eligible rows.

    Eligible rows are those with a non-NaN score (NaN marks rows dropped at load time;
    they are never kept). ``kept = max(1, round((1 - pr) * n_eligible))``.

    * ``balance="none"``: the ``kept`` highest scores; ties go to the lower row index.
    * ``"clusters"``: balanced quotas per ``scores.cluster`` (exact water-filling, see
      :func:`prunekit.selection.quotas.balanced_quotas`); inside a cluster, by score.
    * ``"proportional"``: each cluster keeps the same fraction (largest remainder).
    * ``"labels"``: balanced quotas per label (``labels`` or else ``scores.labels``).
    * ``invert``: the lowest scores first (for k-means: nearest to the centroid; L^-1).
    * ``drop_clusters``: group ids to remove first (a list), or a fraction f of the groups,
      round(f * K) of them (at least 1, at most K - 1), drawn with ``seed``. Groups are
      labels under ``balance="labels"`` and clusters otherwise. ``kept`` stays
      ``round((1 - pr) * n_eligible)`` over the whole set, capped at what remains, so pr
      keeps meaning the fraction removed from the full set.
    * ``oversample``: no pruning (``pr`` must be 0). Every group is brought to the size of
      the largest one: its items are repeated (``counts``) as evenly as possible, the
      extra repeats going to the items first in score order.
    * ``fill``: greedy scores (with ``order``) rank only the rows the method picked. When
      the kept set needs more rows than were picked (``max_keep`` when scoring), ``"error"``
      refuses and says how many were picked; ``"random"`` fills from the unpicked rows in
      a random order drawn with ``seed``. With ``invert`` the last picks come first; the
      unpicked rows always come after every picked one.

    Raises :class:`PrunekitError` for pr outside [0, 1), a missing ``cluster`` or labels,
    unknown cluster ids, or options that do not combine.
    """
    if balance not in BALANCES:
        raise PrunekitError(f"unknown balance '{balance}'; choose one of: {', '.join(BALANCES)}.")
    if fill not in FILLS:
        raise PrunekitError(f"unknown fill '{fill}'; choose one of: {', '.join(FILLS)}.")
    seed = check_seed(seed)
    dup = None if scores.ids is None else first_duplicate(scores.ids)
    if dup is not None:
        raise PrunekitError(f"the scores' 'ids' have duplicates (e.g. {dup!r}); a selection names "
                            "its rows by id, so each row needs its own. Give the embeddings "
                            "unique ids and score again.")
    eligible = scores.eligible
    rows = np.flatnonzero(eligible)
    kept_target = q.kept_count(pr, int(rows.size))
    if oversample and float(pr) != 0.0:
        raise PrunekitError("oversampling keeps every row (no pruning); use pr = 0 with oversampling.")
    if oversample and balance == "proportional":
        raise PrunekitError("oversampling balances groups; use it with balance 'clusters' or 'labels'.")
    need_groups = balance != "none" or drop_clusters is not None or oversample
    groups, group_by = _groups(scores, balance, labels, need_groups)

    dropped: list = []
    if drop_clusters is not None:
        rows, dropped = _drop(rows, groups, drop_clusters, seed, group_by, scores)
    kept = min(kept_target, int(rows.size))
    # Sort key: smaller = kept first.
    key = scores.score[rows] if invert else -scores.score[rows]
    unpicked = _unpicked(scores, rows)
    if unpicked.any():
        key = _after_picks(key, unpicked, fill, seed)

    counts = None
    if balance == "none" and not oversample:
        picked = _top(key, kept)
    else:
        g, ids_of_group = _dense(groups[rows])
        sizes = np.bincount(g, minlength=ids_of_group.size)
        if oversample:
            base, extra = q.oversample_counts(sizes)
            counts = base[g]
            counts[_top_per_group(key, g, sizes, extra)] += 1
            picked = np.arange(rows.size)
        else:
            quota = (q.proportional_quotas if balance == "proportional" else q.balanced_quotas)(
                sizes, kept
            )
            picked = _top_per_group(key, g, sizes, quota)
    indices = rows[picked]
    if not oversample and fill == "error":
        _refuse_fill(scores, unpicked, picked, kept, pr, balance)
    params = {
        "balance": balance,
        "invert": bool(invert),
        "drop_clusters": _jsonable_drop(drop_clusters),
        "dropped": [_py(v) for v in dropped],
        "group_by": group_by,
        "oversample": bool(oversample),
        "fill": fill,
        "n_filled": int(unpicked[picked].sum()) if unpicked.any() else 0,
        "n_eligible": int(eligible.sum()),
        "kept_target": int(kept_target),
        "score_method": scores.method,
    }
    return Selection(
        indices=indices,
        n_total=scores.n_total,
        pr=float(pr),
        method=scores.method,
        seed=int(seed),
        ids=None if scores.ids is None else scores.ids[indices],
        counts=counts,
        source_fingerprint=scores.source_fingerprint,
        params=params,
    )


def labels_for(scores: Scores, emb: Embeddings, name: str | None = None) -> np.ndarray:
    """The ``labels`` of ``emb`` to balance a selection from ``scores`` by.

    ``emb`` must be the embeddings the scores were computed from (same row count and, when
    the scores record it, the same fingerprint); ``name`` is how errors call it.
    """
    name = name or emb.name
    if emb.labels is None:
        raise PrunekitError(f"{name} has no 'labels' dataset; give the embeddings file that does.")
    if emb.n_total != scores.n_total or (
        scores.source_fingerprint and emb.fingerprint != scores.source_fingerprint
    ):
        raise PrunekitError(
            f"{name} ({emb.n_total} rows) is not the embeddings file the scores were computed "
            f"from ({scores.n_total} rows, source {scores.source}). Give the same embeddings file."
        )
    return emb.labels


def _unpicked(scores: Scores, rows: np.ndarray) -> np.ndarray:
    """Mask over ``rows``: rows a greedy method (scores with ``order``) never picked."""
    if scores.order is None:
        return np.zeros(rows.size, dtype=bool)
    picked = np.zeros(scores.n_total, dtype=bool)
    picked[scores.order] = True
    return ~picked[rows]


def _after_picks(key: np.ndarray, unpicked: np.ndarray, fill: str, seed: int) -> np.ndarray:
    """Keys that put every unpicked row after every picked one (random order with fill)."""
    key = key.copy()
    top = float(np.max(np.abs(key[~unpicked]), initial=0.0)) + 1.0
    if fill == "random":
        key[unpicked] = top + role_rng(seed, "fill").permutation(int(unpicked.sum()))
    else:
        key[unpicked] = np.inf
    return key


def _refuse_fill(
    scores: Scores, unpicked: np.ndarray, picked: np.ndarray, kept: int, pr: float, balance: str
) -> None:
    """A kept set that reaches into rows the greedy method never picked is an error."""
    n_fill = int(unpicked[picked].sum())
    if n_fill:
        raise fill_error(scores.method, n_fill, int((~unpicked).sum()), int(unpicked.size), kept,
                         balance)


def fill_error(method: str, n_fill: int, n_picked: int, n: int, kept: int,
               balance: str) -> PrunekitError:
    """The refusal of a kept set with ``n_fill`` rows a greedy method never picked."""
    if balance == "none":
        least = 1.0 - n_picked / n
        fewer = f"keep at most {n_picked} rows (pr >= {least:.6g})"
    else:
        fewer = "keep fewer rows (a larger pr)"
    return PrunekitError(
        f"'{method}' picked {n_picked} of {n} rows, but this selection keeps {kept}, "
        f"{n_fill} of them never picked: their order would be arbitrary. Either {fewer}, "
        "score again with a larger max_keep (--max-keep) or none, or fill them at random "
        "(fill='random', CLI --fill random, seeded)."
    )


def _groups(
    scores: Scores, balance: str, labels: np.ndarray | None, needed: bool
) -> tuple[np.ndarray | None, str | None]:
    """The grouping a selection balances over: labels, or k-means clusters."""
    if balance == "labels":
        lab = labels if labels is not None else scores.labels
        if lab is None:
            raise no_groups_error("label", scores.method, scores.source)
        lab = np.asarray(lab)
        if lab.shape != (scores.n_total,) or lab.dtype.kind not in "iu":
            raise PrunekitError(
                f"labels must be integers, one per row ({scores.n_total}); "
                f"got shape {lab.shape} and dtype {lab.dtype}."
            )
        return lab.astype(np.int64), "label"
    if scores.cluster is None:
        if needed:
            raise no_groups_error("cluster", scores.method, scores.source)
        return None, None
    return np.asarray(scores.cluster, dtype=np.int64), "cluster"


def no_groups_error(group_by: str, method: str, source: str) -> PrunekitError:
    """The error for scores without the groups (``cluster`` or ``label``) a rule needs."""
    if group_by == "label":
        return PrunekitError(
            f"balance 'labels' needs labels, and the scores file ({source}) has none. "
            "Pass the embeddings that carry them (CLI: --labels-from EMB)."
        )
    return PrunekitError(
        f"the scores of method '{method}' (made from {source}) have no "
        "'cluster' dataset. Score with --method kmeans (or herding --within a k-means "
        "scores file), or use --balance labels / none."
    )


def _drop(
    rows: np.ndarray,
    groups: np.ndarray,
    drop: Sequence[int] | float,
    seed: int,
    group_by: str | None,
    scores: Scores,
) -> tuple[np.ndarray, list]:
    """Remove the rows of whole groups; returns the remaining rows and the dropped ids."""
    out = drop_ids(np.unique(groups[rows]), drop, seed, group_by, scores.source)
    return rows[~np.isin(groups[rows], out)], out.tolist()


def drop_ids(
    present: np.ndarray, drop: Sequence[int] | float, seed: int, group_by: str | None, source: str
) -> np.ndarray:
    """The group ids ``drop`` names among ``present`` (ascending ids with eligible rows)."""
    what = "labels" if group_by == "label" else "clusters"
    if isinstance(drop, numbers.Real) and not isinstance(drop, numbers.Integral):
        frac = float(drop)
        if not 0.0 < frac < 1.0:
            raise PrunekitError(
                f"a fraction of {what} to drop must lie in (0, 1); got {frac}. "
                "Give ids as a list (CLI: --drop-clusters 3,7)."
            )
        n_drop = min(max(1, round(frac * present.size)), present.size - 1)
        if n_drop < 1:
            raise PrunekitError(f"there is only one of the {what}; none can be dropped.")
        rng = np.random.default_rng(seed)
        out = np.sort(rng.choice(present, size=n_drop, replace=False))
    else:
        if isinstance(drop, (numbers.Integral, str, bytes)):
            raise PrunekitError(
                f"drop_clusters must be a list of {what} ids or a fraction in (0, 1); got {drop!r}."
            )
        try:
            out = np.unique(np.asarray(list(drop), dtype=np.int64))
        except (OverflowError, TypeError, ValueError):
            raise PrunekitError(f"drop_clusters must be 64-bit integer {what} ids; got {drop!r:.60}.") from None
        unknown = out[~np.isin(out, present)]
        if unknown.size:
            raise PrunekitError(
                f"cannot drop {what} {', '.join(map(str, unknown[:MAX_NAMED]))}: the scores "
                f"({source}) have {present.size} {what} with eligible rows, ids "
                f"{_id_range(present)}."
            )
        if out.size >= present.size:
            raise PrunekitError(f"dropping {what} {_id_range(out)} would remove every row.")
    return out


def _id_range(ids: np.ndarray) -> str:
    shown = ", ".join(map(str, ids[:10]))
    return shown + (", ..." if ids.size > 10 else "")


def _top(key: np.ndarray, kept: int, ordered: bool = True) -> np.ndarray:
    """Positions of the ``kept`` smallest keys, ties to the lower position. O(n).

    Ascending when ``ordered``; otherwise in no particular order (the caller sorts).
    """
    n = key.size
    if kept >= n:
        return np.arange(n)
    threshold = np.partition(key, kept - 1)[kept - 1]
    below = np.flatnonzero(key < threshold)
    tied = np.flatnonzero(key == threshold)[: kept - below.size]
    out = np.concatenate((below, tied))
    return np.sort(out) if ordered else out


def _dense(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group numbers 0..K-1 (in the order of the ids) and the ids they stand for."""
    # Small non-negative ids (the usual k-means clusters and labels): a bincount table no
    # larger than a few times the data replaces the sort inside np.unique.
    if values.size and values.min() >= 0 and values.max() < 4 * values.size + 1024:
        present = np.flatnonzero(np.bincount(values))
        lookup = np.zeros(int(values.max()) + 1, dtype=np.int64)
        lookup[present] = np.arange(present.size)
        return lookup[values], present
    ids, inverse = np.unique(values, return_inverse=True)
    return inverse.astype(np.int64), ids


def _top_per_group(key: np.ndarray, g: np.ndarray, sizes: np.ndarray, quota: np.ndarray) -> np.ndarray:
    """Ascending positions of the first ``quota[c]`` items of every group c.

    Order inside a group: key ascending, ties to the lower position (as :func:`_top`).
    """
    if sizes.size > LOOP_GROUPS:
        return np.flatnonzero(_rank_in_group(key, g, sizes) < quota[g])
    by_group = np.argsort(g.astype(np.uint16) if sizes.size <= _SMALL_GROUPS else g, kind="stable")
    grouped = key[by_group]  # each group's slice keeps ascending positions
    ends = np.cumsum(sizes)
    parts = [ends[c] - sizes[c] + _top(grouped[ends[c] - sizes[c] : ends[c]], int(quota[c]), False)
             for c in np.flatnonzero(quota)]
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.sort(by_group[np.concatenate(parts)])


def _rank_in_group(key: np.ndarray, g: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Each item's position (0 = first) inside its group's order: key asc, ties lower index."""
    order = np.argsort(_sortable(key), kind="stable")
    gk = g[order]
    if sizes.size <= _SMALL_GROUPS:
        gk = gk.astype(np.uint16)  # radix sort
    order = order[np.argsort(gk, kind="stable")]
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    rank = np.empty(key.size, dtype=np.int64)
    rank[order] = np.arange(key.size) - starts[g[order]]
    return rank


def _sortable(key: np.ndarray) -> np.ndarray:
    """float64 -> uint64 with the same order (no NaN); stable-sorts faster than floats.

    Non-negative floats get the sign bit set; negative ones have every bit flipped.
    """
    u = np.array(key, dtype=np.float64)
    u += 0.0  # -0.0 -> 0.0, so the two zeros tie as they compare equal
    u = u.view(np.uint64)
    mask = u >> np.uint64(63)
    np.negative(mask, out=mask)  # 0 -> 0, 1 -> all ones
    mask |= np.uint64(1 << 63)
    u ^= mask
    return u


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _jsonable_drop(drop: Sequence[int] | float | None) -> Any:
    if drop is None or isinstance(drop, numbers.Real):
        return _py(drop)
    return [_py(v) for v in drop]
