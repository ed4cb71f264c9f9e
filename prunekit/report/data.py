"""The numbers of the page that ``pk.inspect`` does not give: streamed over the scores.

The per-row arrays of a scores file (score, cluster, centroid distance) are read one window
of :data:`CHUNK_ROWS` positions at a time, straight from the HDF5 file or from the parts of
a scores folder (re-cut into the same windows), and the kept rows likewise from the
selection's indices or its folder (:class:`KeptRows`); so a 10^8-row selection is
summarised in memory bounded by a window and a few small per-cluster candidate lists, and
a folder gives the numbers of the equal HDF5 file. Two passes: the first finds the score
range (and, for semdedup, how many rows each eps removes), the second fills the histograms
and picks the rows whose images are shown.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.h5io import decode_ids, open_h5
from prunekit.io.provenance import read_params
from prunekit.seeds import role_rng
from prunekit.selection.quotas import water_level
from prunekit.selection.scores import Scores
from prunekit.selection.subset import Selection, resolve_rows

CHUNK_ROWS = 1 << 18  # positions per window of a pass (a fixed number: same picks anywhere)
HIST_BINS = 60
EPS_GRID = np.geomspace(1e-4, 1.0, 41)


class RowArrays:
    """The per-row arrays of a scores file, a scores folder or a :class:`Scores`, read by
    windows of positions (:meth:`windows`) or at given positions (:meth:`take`).

    A file stays open (h5py datasets, nothing read until asked); close it with
    :meth:`close` or a ``with`` block. A folder is read part by part, never whole.
    """

    NAMES = ("score", "cluster", "centroid_distance", "labels", "ids")
    COLUMNS = {"score": "score", "cluster": "cluster", "centroid_distance": "centroid_distance",
               "labels": "label", "ids": "id"}  # array name -> column of a scores folder

    def __init__(self, scores: Scores | str | os.PathLike) -> None:
        self._file: h5py.File | None = None
        self._parts = None
        if isinstance(scores, (str, os.PathLike)) and os.path.isdir(scores):
            from prunekit.io.dataset import PartsReader

            self._parts = r = PartsReader(scores, kind="scores")
            m = r.manifest
            self.method, self.n_total = str(m.get("method") or "unknown"), r.n_total
            self.params, self.fingerprint = m.get("params", {}), str(m.get("source_fingerprint") or "")
            self._arrays = {n: self.COLUMNS[n] if self.COLUMNS[n] in r.columns else None
                            for n in self.NAMES}
            if r.n_rows != r.n_total:
                raise PrunekitError(f"scores folder {scores} holds {r.n_rows} of its {r.n_total} "
                                    "positions; a scores folder has every row: rewrite it with "
                                    "prunekit score.")
        elif isinstance(scores, Scores):
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
        """Rows ``a:b`` of one array (a folder reads the parts that hold them)."""
        if self._parts is not None:
            return self.take(name, np.arange(a, b, dtype=np.int64))
        out = np.asarray(self._arrays[name][a:b])
        return decode_ids(out) if name == "ids" else out

    def take(self, name: str, positions: np.ndarray) -> np.ndarray:
        """The values at ``positions`` (any order; read in ascending order)."""
        pos = np.asarray(positions, dtype=np.int64)
        uniq, back = np.unique(pos, return_inverse=True)
        if self._parts is not None:
            return self._take_parts(self._arrays[name], uniq)[back]
        arr = self._arrays[name]
        got = np.asarray(arr[uniq]) if uniq.size else np.asarray(arr[0:0])
        got = decode_ids(got) if name == "ids" else got
        return got[back]

    def _take_parts(self, col: str, uniq: np.ndarray) -> np.ndarray:
        """Values of column ``col`` at ascending ``uniq``, reading only the parts holding them."""
        r = self._parts
        out = np.empty(uniq.size, dtype=object if r.columns[col] == "string" else r.columns[col])
        for i, part in enumerate(r.manifest["parts"]):
            lo, hi = np.searchsorted(uniq, [part["start"], part["stop"]])
            if lo == hi:
                continue
            want = uniq[lo:hi]
            for b in r.iter_part(i, [col]):
                pos = b["position"]
                a, z = np.searchsorted(want, [pos[0], pos[-1] + 1]) if pos.size else (0, 0)
                out[lo + a : lo + z] = b[col][np.searchsorted(pos, want[a:z])]
        return out

    def chunks(self) -> list[tuple[int, int]]:
        return [(a, min(a + CHUNK_ROWS, self.n_total)) for a in range(0, self.n_total, CHUNK_ROWS)]

    def windows(self, names: list[str]):
        """``(a, b, {name: rows a:b})`` for the windows of :meth:`chunks`, in order.

        A folder's batches are re-cut into these windows, so every pass sees the same rows
        per window (and draws the same random keys) as over the HDF5 file.
        """
        names = [n for n in names if self.has(n)]
        if self._parts is None:
            for a, b in self.chunks():
                yield a, b, {n: self.get(n, a, b) for n in names}
            return
        cols = [self._arrays[n] for n in names]
        buf: list[dict[str, np.ndarray]] = []
        held = 0
        bounds = iter(self.chunks())
        a, b = next(bounds, (0, 0))
        for batch in self._parts.iter_batches(cols):
            buf.append(batch)
            held += batch["position"].size
            while held >= b - a and b > a:
                win = {c: np.concatenate([x[c] for x in buf]) for c in ["position", *cols]}
                self._check_window(win["position"][: b - a], a, b)
                yield a, b, {n: win[c][: b - a] for n, c in zip(names, cols, strict=True)}
                buf = [{c: v[b - a:] for c, v in win.items()}]
                held -= b - a
                a, b = next(bounds, (b, b))
        if held or b > a:
            self._check_window(np.zeros(0, dtype=np.int64), a, max(b, a + 1))

    def _check_window(self, pos: np.ndarray, a: int, b: int) -> None:
        """Every position of the window, once, in order (a scores folder holds each row)."""
        if pos.size != b - a or (pos.size and (pos[0] != a or pos[-1] != b - 1)):
            raise PrunekitError(f"scores folder {self._parts.path} does not hold positions "
                                f"{a}..{b} in order; rewrite it with prunekit score.")


def kept_positions(sel: Selection, rows: RowArrays) -> np.ndarray:
    """Ascending distinct positions of the kept rows in the scores' row space."""
    if sel.n_total == rows.n_total:
        return sel.indices  # the selection was made from these scores (inspect checked it)
    ids = rows.get("ids", 0, rows.n_total) if rows.has("ids") else None
    return np.unique(resolve_rows(sel, rows.n_total, ids, target_name="the scores"))


class KeptRows:
    """The kept rows as ascending positions: held (an array) or a selection folder streamed.

    Passes over the rows ask :meth:`cursor` for one mask per window, windows ascending;
    a folder is then read batch by batch beside them, never whole.
    """

    def __init__(self, positions: np.ndarray | None = None, folder: str | os.PathLike | None = None,
                 n: int | None = None) -> None:
        self.positions, self.folder = positions, folder
        self.n = int(positions.size) if positions is not None else int(n or 0)

    def cursor(self) -> _Cursor:
        return _Cursor(self)

    def contains(self, positions: np.ndarray) -> np.ndarray:
        """Whether each of the ascending ``positions`` is kept."""
        pos = np.asarray(positions, dtype=np.int64)
        if self.positions is not None:
            return np.isin(pos, self.positions)
        out = np.zeros(pos.size, dtype=bool)
        for batch in _sel_batches(self.folder):
            out |= np.isin(pos, batch)
        return out


def _sel_batches(folder: str | os.PathLike):
    from prunekit.io.dataset import PartsReader

    for b in PartsReader(folder, kind="selection").iter_batches(["position"]):
        yield b["position"]


class _Cursor:
    """Masks of the kept rows of ascending windows ``a:b`` (see :class:`KeptRows`)."""

    def __init__(self, kept: KeptRows) -> None:
        self.kept = kept
        self._it = None if kept.positions is not None else _sel_batches(kept.folder)
        self._rest = np.zeros(0, dtype=np.int64)

    def mask(self, a: int, b: int) -> np.ndarray:
        if self._it is None:
            return chunk_mask(self.kept.positions, a, b)
        held = [self._rest]
        while held[-1].size == 0 or held[-1][-1] < b:
            nxt = next(self._it, None)
            if nxt is None:
                break
            held.append(nxt)
        pos = np.concatenate(held)
        cut = int(np.searchsorted(pos, b))
        self._rest = pos[cut:]
        return chunk_mask(pos[:cut], a, b)


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


def scan(rows: RowArrays, kept: KeptRows, *, shown: list[int], per_strip: int,
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
    names = ["score", *(["cluster"] if shown and by != "score" else []),
             *(["centroid_distance"] if shown and by == "centroid distance" else [])]
    masks = kept.cursor()
    for i, (a, b, got) in enumerate(rows.windows(names)):
        s = got["score"]
        keep = masks.mask(a, b)
        ok = ~np.isnan(s)
        for side in (True, False):
            m = ok & (keep if side else ~keep)
            hist[side] += np.histogram(np.clip(s[m], lo, hi), bins=edges)[0]
        pos = np.arange(a, b, dtype=np.int64)
        gone = ok & ~keep
        dups.push(s[gone], pos[gone])
        if not shown:
            continue
        cl, d = _strip_keys(got, by, s, a, b, seed, i)
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


def _strip_keys(got: dict[str, np.ndarray], by: str, score: np.ndarray, a: int, b: int,
                seed: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's strip (cluster) and sort key (smallest first) in rows ``a:b``."""
    if by == "score":
        return np.full(b - a, ALL_ROWS), -score  # highest scores first
    cl = got["cluster"]
    if by == "random":
        return cl, role_rng(seed, "report thumbnails", chunk).random(b - a)
    return cl, got["centroid_distance"].astype(np.float64)


def _ends(near: TopK, far: TopK) -> list[tuple[int, float]]:
    """(row, key) of the first rows, then the last ones not already shown, in key order."""
    picked = [(int(p), float(k)) for k, p in zip(near.key, near.pos, strict=True)]
    seen = {p for p, _ in picked}
    tail = [(int(p), float(-k)) for k, p in zip(far.key, far.pos, strict=True) if int(p) not in seen]
    return picked + tail[::-1]


def _first_pass(rows: RowArrays, kept: KeptRows) -> dict[str, Any]:
    """Counts, finite score range, kept/removed ranges, semdedup removals on EPS_GRID."""
    inf = np.inf
    out = {"n": 0, "kept": 0, "finite": [inf, -inf], "kept_range": [inf, -inf],
           "removed_range": [inf, -inf]}
    grid = np.unique(np.concatenate([EPS_GRID, [0.001, 0.01, 0.05, 0.1]]))
    below = np.zeros(grid.size + 1, dtype=np.int64)
    masks = kept.cursor()
    for a, b, got in rows.windows(["score"]):
        s = got["score"]
        ok = ~np.isnan(s)
        keep = masks.mask(a, b) & ok
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
