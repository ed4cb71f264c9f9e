"""The numbers of the page that ``pk.inspect`` does not give: streamed over the scores.

The per-row arrays of a scores file (score, cluster, centroid distance) are read one chunk
of :data:`CHUNK_ROWS` rows at a time, straight from the HDF5 file, so a 10^8-row selection
is summarised in memory bounded by a chunk and a few small per-cluster candidate lists.
Two passes: the first finds the score range (and, for semdedup, how many rows each eps
removes), the second fills the histograms and picks the rows whose images are shown.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from prunekit.io.h5io import decode_ids, open_h5
from prunekit.io.provenance import read_params
from prunekit.seeds import role_rng
from prunekit.selection.quotas import water_level
from prunekit.selection.scores import Scores
from prunekit.selection.subset import Selection, resolve_rows

CHUNK_ROWS = 1 << 20  # rows of the per-row arrays per read (a fixed number: same picks anywhere)
HIST_BINS = 60
EPS_GRID = np.geomspace(1e-4, 1.0, 41)


class RowArrays:
    """The per-row arrays of a scores file or a :class:`Scores`, read by slices.

    A path stays open (h5py datasets, nothing read until asked); close it with
    :meth:`close` or a ``with`` block.
    """

    NAMES = ("score", "cluster", "centroid_distance", "labels", "ids")

    def __init__(self, scores: Scores | str | os.PathLike) -> None:
        self._file: h5py.File | None = None
        if isinstance(scores, Scores):
            self.method, self.n_total, self.params = scores.method, scores.n_total, scores.params
            self.fingerprint = scores.source_fingerprint
            self._arrays = {n: getattr(scores, n) for n in self.NAMES}
        else:
            self._file = f = open_h5(scores, "scores")
            self.method = str(f.attrs.get("method", "unknown"))
            self.n_total = int(f["score"].shape[0])
            self.params = read_params(f.attrs, f"scores file {scores}")
            self.fingerprint = str(f.attrs.get("source_fingerprint", ""))
            self._arrays = {n: f[n] if n in f else None for n in self.NAMES}

    def __enter__(self) -> RowArrays:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def has(self, name: str) -> bool:
        return self._arrays.get(name) is not None

    def get(self, name: str, a: int, b: int) -> np.ndarray:
        """Rows ``a:b`` of one array."""
        out = np.asarray(self._arrays[name][a:b])
        return decode_ids(out) if name == "ids" else out

    def take(self, name: str, positions: np.ndarray) -> np.ndarray:
        """The values at ``positions`` (any order; read in ascending order)."""
        pos = np.asarray(positions, dtype=np.int64)
        uniq, back = np.unique(pos, return_inverse=True)
        arr = self._arrays[name]
        got = np.asarray(arr[uniq]) if uniq.size else np.asarray(arr[0:0])
        got = decode_ids(got) if name == "ids" else got
        return got[back]

    def chunks(self) -> list[tuple[int, int]]:
        return [(a, min(a + CHUNK_ROWS, self.n_total)) for a in range(0, self.n_total, CHUNK_ROWS)]


def kept_positions(sel: Selection, rows: RowArrays) -> np.ndarray:
    """Ascending distinct positions of the kept rows in the scores' row space."""
    if sel.n_total == rows.n_total:
        return sel.indices  # the selection was made from these scores (inspect checked it)
    ids = rows.get("ids", 0, rows.n_total) if rows.has("ids") else None
    return np.unique(resolve_rows(sel, rows.n_total, ids, target_name="the scores"))


def chunk_mask(kept: np.ndarray, a: int, b: int) -> np.ndarray:
    """Boolean mask of rows ``a:b`` that ``kept`` (ascending positions) holds."""
    lo, hi = np.searchsorted(kept, [a, b])
    mask = np.zeros(b - a, dtype=bool)
    mask[kept[lo:hi] - a] = True
    return mask


class TopK:
    """The ``k`` smallest keys seen so far with their positions; ties to the lower position."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.key = np.empty(0)
        self.pos = np.empty(0, dtype=np.int64)

    def push(self, key: np.ndarray, pos: np.ndarray) -> None:
        if key.size == 0 or self.k == 0:
            return
        if key.size > self.k:  # pre-trim: keep everything up to the k-th key (ties included)
            cut = np.partition(key, self.k - 1)[self.k - 1]
            keep = key <= cut
            key, pos = key[keep], pos[keep]
        key = np.concatenate([self.key, key.astype(np.float64)])
        pos = np.concatenate([self.pos, pos.astype(np.int64)])
        order = np.lexsort((pos, key))[: self.k]
        self.key, self.pos = key[order], pos[order]


@dataclass
class ScoreStats:
    """Kept vs removed score distributions, the cut and (semdedup) removals per eps."""

    method: str
    n_eligible: int
    n_kept: int
    n_removed: int
    edges: list[float]
    kept_hist: list[int]
    removed_hist: list[int]
    kept_range: tuple[float, float] | None
    removed_range: tuple[float, float] | None
    cut: float | None = None
    cut_note: str = ""
    eps_grid: list[float] | None = None
    eps_removed: list[int] | None = None


@dataclass
class Candidates:
    """Rows picked for images: per shown cluster and side, nearest and furthest."""

    by: str  # "centroid distance", "score" or "random"
    strips: dict[int, dict[str, list[tuple[int, float]]]] = field(default_factory=dict)
    duplicates: list[tuple[int, float]] = field(default_factory=list)  # (row, score), lowest first


def _range(lo: float, hi: float) -> tuple[float, float] | None:
    return None if lo > hi else (float(lo), float(hi))


ALL_ROWS = -1  # the one strip of scores without clusters


def scan(rows: RowArrays, kept: np.ndarray, *, shown: list[int], per_strip: int,
         n_duplicates: int, seed: int) -> tuple[ScoreStats, Candidates]:
    """Both passes over the per-row arrays (see the module docstring).

    ``shown``: the clusters whose rows get strips of images (``[ALL_ROWS]`` for scores
    without clusters: then the highest and lowest scores are shown).
    """
    first = _first_pass(rows, kept)
    lo, hi = first["finite"]
    if not np.isfinite(lo):
        lo, hi = 0.0, 1.0  # no finite score: empty histograms
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, HIST_BINS + 1)
    hist = {True: np.zeros(HIST_BINS, dtype=np.int64), False: np.zeros(HIST_BINS, dtype=np.int64)}
    by = _strip_order(rows)
    near = {(c, k): TopK(per_strip) for c in shown for k in (True, False)}
    far = {(c, k): TopK(per_strip if by != "random" else 0) for c in shown for k in (True, False)}
    dups = TopK(n_duplicates if rows.method == "semdedup" else 0)
    for i, (a, b) in enumerate(rows.chunks()):
        s = rows.get("score", a, b)
        keep = chunk_mask(kept, a, b)
        ok = ~np.isnan(s)
        for side in (True, False):
            m = ok & (keep if side else ~keep)
            hist[side] += np.histogram(np.clip(s[m], lo, hi), bins=edges)[0]
        pos = np.arange(a, b, dtype=np.int64)
        gone = ok & ~keep
        dups.push(s[gone], pos[gone])
        if not shown:
            continue
        cl, d = _strip_keys(rows, by, s, a, b, seed, i)
        for c in shown:
            in_c = ok & (cl == c)
            for side in (True, False):
                m = in_c & (keep if side else ~keep)
                near[c, side].push(d[m], pos[m])
                far[c, side].push(-d[m], pos[m])
    stats = ScoreStats(
        method=rows.method, n_eligible=first["n"], n_kept=first["kept"],
        n_removed=first["n"] - first["kept"], edges=edges.tolist(),
        kept_hist=hist[True].tolist(), removed_hist=hist[False].tolist(),
        kept_range=_range(*first["kept_range"]), removed_range=_range(*first["removed_range"]),
    )
    if rows.method == "semdedup":
        stats.eps_grid, stats.eps_removed = first["eps_grid"], first["eps_removed"]
    cand = Candidates(by=by)
    for c in shown:
        cand.strips[c] = {name: _ends(near[c, side], far[c, side])
                          for side, name in ((True, "kept"), (False, "removed"))}
    cand.duplicates = [(int(p), float(k)) for k, p in zip(dups.key, dups.pos, strict=True)]
    return stats, cand


def _strip_order(rows: RowArrays) -> str:
    """How strips order their rows: by centroid distance, by score (no clusters), at random."""
    if not rows.has("cluster"):
        return "score"
    return "centroid distance" if rows.has("centroid_distance") else "random"


def _strip_keys(rows: RowArrays, by: str, score: np.ndarray, a: int, b: int, seed: int,
                chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's strip (cluster) and sort key (smallest first) in rows ``a:b``."""
    if by == "score":
        return np.full(b - a, ALL_ROWS), -score  # highest scores first
    cl = rows.get("cluster", a, b)
    if by == "random":
        return cl, role_rng(seed, "report thumbnails", chunk).random(b - a)
    return cl, rows.get("centroid_distance", a, b).astype(np.float64)


def _ends(near: TopK, far: TopK) -> list[tuple[int, float]]:
    """(row, key) of the first rows, then the last ones not already shown, in key order."""
    picked = [(int(p), float(k)) for k, p in zip(near.key, near.pos, strict=True)]
    seen = {p for p, _ in picked}
    tail = [(int(p), float(-k)) for k, p in zip(far.key, far.pos, strict=True) if int(p) not in seen]
    return picked + tail[::-1]


def _first_pass(rows: RowArrays, kept: np.ndarray) -> dict[str, Any]:
    """Counts, finite score range, kept/removed ranges, semdedup removals on EPS_GRID."""
    inf = np.inf
    out = {"n": 0, "kept": 0, "finite": [inf, -inf], "kept_range": [inf, -inf],
           "removed_range": [inf, -inf]}
    grid = np.unique(np.concatenate([EPS_GRID, [0.001, 0.01, 0.05, 0.1]]))
    below = np.zeros(grid.size + 1, dtype=np.int64)
    for a, b in rows.chunks():
        s = rows.get("score", a, b)
        ok = ~np.isnan(s)
        keep = chunk_mask(kept, a, b) & ok
        out["n"] += int(ok.sum())
        out["kept"] += int(keep.sum())
        for name, m in (("finite", ok & np.isfinite(s)), ("kept_range", keep),
                        ("removed_range", ok & ~keep)):
            if m.any():
                out[name] = [min(out[name][0], float(s[m].min())), max(out[name][1], float(s[m].max()))]
        # rows with score < grid[k] are those with searchsorted(grid, s, 'right') <= k
        below += np.bincount(np.searchsorted(grid, s[ok], side="right"), minlength=grid.size + 1)
    out["eps_grid"] = grid.tolist()
    out["eps_removed"] = np.cumsum(below)[: grid.size].tolist()
    return out


def set_cut(stats: ScoreStats, params: dict[str, Any]) -> None:
    """Where kept and removed scores part, or why no single threshold exists."""
    if "eps" in params:
        stats.cut = float(params["eps"])
        stats.cut_note = f"SemDeDup threshold eps = {stats.cut:g}: rows scoring below it are removed."
        return
    k, r = stats.kept_range, stats.removed_range
    if k is None or r is None:
        stats.cut_note = "Nothing removed." if r is None else "Nothing kept."
        return
    invert = bool(params.get("invert"))
    clean = r[0] >= k[1] if invert else r[1] <= k[0]
    if clean:
        stats.cut = k[1] if invert else k[0]
        side = "highest" if invert else "lowest"
        stats.cut_note = f"Cut at {stats.cut:.6g}: the {side} kept score."
    else:
        stats.cut_note = ("Kept and removed scores overlap: the quotas cut each group at its own "
                          "score, so there is no single threshold.")


def quota_rule(sel: Selection, summary: dict[str, Any]) -> str:
    """The selection's balance rule in words, from its params."""
    p, n = sel.params, sel.n_kept
    balance = p.get("balance", "none")
    if "eps" in p:
        text = (f"SemDeDup at eps = {p['eps']:g}: a row is removed when its cosine distance to an "
                f"earlier item of its cluster (keep order '{p.get('keep')}') is below eps; "
                f"{p.get('removed', '?')} of {p.get('n_eligible', '?')} rows removed.")
    elif balance == "none":
        text = (f"No quota: the {n} rows with the {'lowest' if p.get('invert') else 'highest'} "
                "scores are kept (ties to the lower row).")
    elif balance == "proportional":
        text = (f"Proportional quotas: every cluster keeps {100 * (1 - sel.pr):.4g} % of its rows "
                "(largest-remainder rounding), the best-scoring inside it.")
    else:
        group = "label" if balance == "labels" else "cluster"
        level = _water_level(summary.get("labels" if balance == "labels" else "clusters"),
                             p.get("dropped") or [])
        text = (f"Balanced quotas per {group} (water-filling): every {group} keeps min(size, L) "
                f"rows{'' if level is None else f' with L = {level}'} (the rows left over go one "
                f"each to the largest {group}s with room), so small {group}s keep every row; "
                f"inside a {group} the {'lowest' if p.get('invert') else 'highest'} scores are kept.")
    if p.get("dropped"):
        text += f" Dropped first: {p.get('group_by', 'cluster')}s {', '.join(map(str, p['dropped']))}."
    if p.get("oversample"):
        text += " Oversampled: small groups repeat their rows up to the level."
    if p.get("n_filled"):
        text += f" {p['n_filled']} rows were filled at random (fill = random)."
    return text


def _water_level(groups: dict[str, Any] | None, dropped: list) -> int | None:
    """The water level L of balanced quotas, from the counts before and kept."""
    if not groups or not groups["ids"]:
        return None
    sizes = np.array(groups["before"], dtype=np.int64)
    sizes[np.isin(np.array(groups["ids"]), np.array(dropped))] = 0
    return water_level(sizes, min(int(sum(groups["kept"])), int(sizes.sum())))
