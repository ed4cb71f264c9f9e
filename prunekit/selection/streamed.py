"""``select()`` over a partitioned scores folder in bounded memory.

The driver holds O(groups + parts), never a per-row array; the rows are read part by part
in tasks on the run context's engine, and the result is exactly :func:`select`'s.

1. **Counting pass**: eligible rows (score not NaN) per group (cluster or label), and for
   greedy scores the rows never picked. The quotas follow from these counts alone
   (:mod:`prunekit.selection.quotas`), as do ``--drop-clusters`` and ``--oversample``'s
   repeats.
2. **Cuts**: select() keeps, in each group, the first ``q`` rows in the order "key
   ascending, ties to the lower position", with key = -score (score with ``invert``) and
   rows a greedy method never picked last. That order is the order of one 128-bit number
   per row, ``sortable(key) << 64 | position`` (unique, as positions are), so the last
   kept row of each group is the ``q``-th smallest such number in the group: found exactly
   by a radix select, one digit of ``bits`` bits per pass, with one histogram of
   ``groups x 2^bits`` counts per pass (at most ``HIST_CELLS``). A group whose candidates
   (rows sharing the digits found so far) are few enough is finished by collecting them
   in the next pass. Balance ``none`` is one cut over every row.
3. **Write pass**: one task per part reads scores part ``i`` and writes selection part
   ``i`` (same position range) with :class:`~prunekit.io.dataset.PartFile`; the driver
   finalises the folder from the parts' records.

What needs per-row state of the whole set runs in memory instead, after a memory check,
and says why (:attr:`FolderSelection.note`): labels given as an array (``--labels-from``),
``fill="random"`` when the kept set reaches rows a greedy method never picked (their
random order is one permutation of all of them), and greedy scores whose unpicked rows
are not exactly the rows scored -inf (the pick order is then needed row by row).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.dataset import PartFile, PartsReader, PartWriter, run_id_for, wants_dataset
from prunekit.io.dataset.layout import ROW_GROUP_ROWS, Damaged, fix_line
from prunekit.io.dataset.reader import BATCH_ROWS
from prunekit.io.provenance import params_json
from prunekit.runtime.context import current_engine
from prunekit.runtime.memory import check_fits
from prunekit.seeds import check_seed
from prunekit.selection import quotas as q
from prunekit.selection.subset import (
    BALANCES,
    FILLS,
    Selection,
    _jsonable_drop,
    _sortable,
    drop_ids,
    fill_error,
    no_groups_error,
    select,
)

HIST_CELLS = 1 << 22  # counters of one pass's histogram (groups searched x 2^bits): 32 MiB
COLLECT_ROWS = 1 << 20  # candidate rows gathered in one pass to finish the searches
DIGIT_BITS = (16, 8, 4, 2, 1)  # digit widths (each divides 64, so a digit never straddles)
ROW_BYTES = 96  # what one row of a batch costs a task: columns, keys, masks
MEMORY_ROW_BYTES = 96  # select() in memory: per-row arrays beyond the columns themselves
ALL_BITS = np.uint64(2**64 - 1)
INF_KEY = _sortable(np.array([np.inf]))[0]  # the key of a row a greedy method never picked
NONE, ALL, SEARCH = 0, 1, 2  # what a cut keeps of its group: nothing, everything, a prefix
_WORD = 1 << 64  # hash sums wrap like uint64 (in Python ints: numpy scalars would warn)
_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


@dataclass(frozen=True)
class FolderSelection:
    """What :func:`select_folder` wrote: O(1) whatever the rows.

    ``note`` says why the selection ran in memory, when it did (None: streamed).
    """

    path: Path
    n_total: int
    n_kept: int
    draws: int | None
    params: dict[str, Any]
    note: str | None = None


class _InMemory(Exception):  # noqa: N818 (a signal, not an error)
    """The rule needs per-row state of the whole set; ``str(exc)`` says which."""


# -- the scores folder as tasks open it --------------------------------------------------------

_READERS: OrderedDict[tuple[str, str], PartsReader] = OrderedDict()
_LOCK = threading.Lock()
_KEEP_READERS = 4


@dataclass(frozen=True)
class _Folder:
    """A scores folder: its absolute path and the run id the driver read (pickles small)."""

    path: str
    run_id: str

    def reader(self) -> PartsReader:
        """The folder's reader, opened once per process (the manifest is parsed once)."""
        with _LOCK:
            r = _READERS.get((self.path, self.run_id))
        if r is None:
            r = PartsReader(self.path, kind="scores")
            if r.manifest["run_id"] != self.run_id:
                raise PrunekitError(
                    f"{self.path} was replaced while it was read (run id "
                    f"{r.manifest['run_id']}, first {self.run_id}); run the command again."
                )
        _remember(self, r)
        return r


def _remember(folder: _Folder, r: PartsReader) -> None:
    with _LOCK:
        _READERS[(folder.path, folder.run_id)] = r
        _READERS.move_to_end((folder.path, folder.run_id))
        while len(_READERS) > _KEEP_READERS:
            _READERS.popitem(last=False)


def _open(path: str | os.PathLike) -> tuple[_Folder, PartsReader]:
    """The driver's reader (its errors name ``path`` as given), shared with local tasks."""
    r = PartsReader(path, kind="scores")
    folder = _Folder(os.path.abspath(path), r.manifest["run_id"])
    _remember(folder, r)
    return folder, r


def _changed(folder: _Folder, what: str) -> Damaged:
    return Damaged(f"{folder.path} changed while it was read ({what}); {fix_line(Path(folder.path))}.")


# -- the rule as every task applies it ---------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    """Which rows count and in what order: the same for every pass."""

    folder: _Folder
    group_col: str | None  # "cluster" / "label", None: one group
    invert: bool
    greedy: bool  # rows scored -inf were never picked: they go last
    gids: np.ndarray  # ascending ids of the groups with eligible rows
    cut_of: np.ndarray  # per group: the cut it belongs to, -1 when dropped

    def columns(self, *more: str) -> list[str]:
        return ["score", *([self.group_col] if self.group_col else []), *more]

    def rows(self, batch: dict[str, np.ndarray]):
        """``(where, cut, hi, lo, unpicked)`` of the batch's rows that take part.

        ``where`` indexes the batch; ``hi`` is the sortable key, ``lo`` the position: the
        row's place in select()'s order is ``(hi, lo)``.
        """
        score = batch["score"]
        where = np.flatnonzero(~np.isnan(score))
        if self.group_col is None:
            cut = np.zeros(where.size, dtype=np.int64)
        else:
            g = batch[self.group_col][where]
            at = np.minimum(np.searchsorted(self.gids, g), self.gids.size - 1)
            if not np.array_equal(self.gids[at], g):
                raise _changed(self.folder, f"a {self.group_col} id that was not counted")
            cut = self.cut_of[at]
            kept = cut >= 0
            where, cut = where[kept], cut[kept]
        s = score[where]
        unpicked = (s == -np.inf) if self.greedy else np.zeros(s.size, dtype=bool)
        lo = batch["position"][where].astype(np.uint64)
        return where, cut, self.key(s), lo, unpicked

    def key(self, s: np.ndarray) -> np.ndarray:
        """select()'s sort key of eligible scores ``s`` as sortable uint64 (smaller first)."""
        key = s if self.invert else -s
        if self.greedy:
            key = np.where(s == -np.inf, np.inf, key)
        return _sortable(key)


def _inside(cut, hi, lo, mode, top_hi, top_lo) -> np.ndarray:
    """Whether each row is kept by its cut: all, none, or up to ``(top_hi, top_lo)``."""
    m = mode[cut]
    th, tl = top_hi[cut], top_lo[cut]
    return (m == ALL) | ((m == SEARCH) & ((hi < th) | ((hi == th) & (lo <= tl))))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 of each value (wrapping uint64 arithmetic): a well-spread 64-bit hash."""
    z = x.astype(np.uint64) + _MIX[0]
    z = (z ^ (z >> np.uint64(30))) * _MIX[1]
    z = (z ^ (z >> np.uint64(27))) * _MIX[2]
    return z ^ (z >> np.uint64(31))


# -- pass 1: counts ----------------------------------------------------------------------------


def _merge(ids_a, vals_a, ids_b, vals_b):
    """Per-id sums of two ``(ids ascending, values (n, fields))`` tables."""
    ids = np.union1d(ids_a, ids_b)
    out = np.zeros((ids.size, vals_a.shape[1]), dtype=np.int64)
    out[np.searchsorted(ids, ids_a)] += vals_a
    out[np.searchsorted(ids, ids_b)] += vals_b
    return ids, out


def _count_task(shared, i: int):
    """Part ``i``: per group id the eligible rows and those scored -inf; for greedy scores the
    count and hash sum of the positions of the others (the picked rows). With ``k`` groups
    known (ids 0..k-1), also the histogram of the first digit per group (None when a row
    has another id)."""
    rule, k, bits = shared
    ids, vals = np.zeros(0, dtype=np.int64), np.zeros((0, 2), dtype=np.int64)
    n_picked, digest = 0, 0
    hist = None if k is None else np.zeros(k << bits, dtype=np.int64)
    col = rule.group_col
    for b in rule.folder.reader().iter_part(i, rule.columns()):
        ok = ~np.isnan(b["score"])
        g = b[col][ok] if col else np.zeros(int(ok.sum()), dtype=np.int64)
        ninf = b["score"][ok] == -np.inf
        u, inv = np.unique(g, return_inverse=True)
        v = np.stack([np.bincount(inv, minlength=u.size),
                      np.bincount(inv, weights=ninf, minlength=u.size).astype(np.int64)], axis=1)
        ids, vals = _merge(ids, vals, u, v)
        if rule.greedy:
            picked = b["position"][ok][~ninf]
            n_picked += int(picked.size)
            digest = (digest + int(np.sum(_mix(picked), dtype=np.uint64))) % _WORD
        if hist is not None and u.size and (u[0] < 0 or u[-1] >= k):
            hist = None  # ids the manifest did not announce: count first, search after
        if hist is not None:
            hi = rule.key(b["score"][ok])
            digit = (hi >> np.uint64(64 - bits)).astype(np.int64)
            counts = np.bincount((g << bits) + digit)
            hist[: counts.size] += counts
    return ids, vals, n_picked, digest, None if hist is None else hist.reshape(k, 1 << bits)


def _counts(rule: _Rule, r: PartsReader, k: int | None, progress: bool):
    """Group ids (ascending), eligible rows and rows scored -inf per group, whether the greedy
    order names exactly the rows not scored -inf, and with ``k`` known groups the first
    digit's histogram per group id (or None) with its width."""
    ids, vals = np.zeros(0, dtype=np.int64), np.zeros((0, 2), dtype=np.int64)
    n_picked, digest = 0, 0
    bits = None if k is None else _digit_bits(k)
    hist = None if k is None else np.zeros((k, 1 << bits), dtype=np.int64)
    parts = range(len(r.manifest["parts"]))
    task = BATCH_ROWS * ROW_BYTES + (0 if k is None else 16 * (k << bits))
    for u, v, n, d, h in current_engine().map(_count_task, parts, (rule, k, bits),
                                              desc="select: count", progress=progress,
                                              task_bytes=task):
        ids, vals = _merge(ids, vals, u, v)
        n_picked += n
        digest = (digest + d) % _WORD
        hist = None if h is None or hist is None else hist + h  # part order, as every sum
    exact = not rule.greedy or _order_matches(r, n_picked, digest)
    return ids, vals[:, 0], vals[:, 1], exact, hist, bits


def _known_groups(m: dict, group_col: str | None) -> int | None:
    """How many groups there are before reading a part: one without groups; the clusters
    the manifest's ``cluster_counts`` announces (ids 0..k-1); else None."""
    if group_col is None:
        return 1
    counts = m.get("cluster_counts") if group_col == "cluster" else None
    if not isinstance(counts, list) or not counts or len(counts) << DIGIT_BITS[-1] > HIST_CELLS:
        return None
    return len(counts)


def _check_manifest_counts(m: dict, folder: _Folder, gids, sizes) -> None:
    """Eligible rows per cluster may not exceed the rows the manifest counts for it (it
    counts every row of the ids 0, 1, ...)."""
    counts = m.get("cluster_counts")
    if not isinstance(counts, list):
        return
    ok = all(isinstance(c, int) and not isinstance(c, bool) for c in counts)
    counted = gids >= 0
    ok = ok and (not counted.any() or gids[-1] < len(counts))
    if ok and counted.any():
        ok = bool(np.all(sizes[counted] <= np.asarray(counts, dtype=np.int64)[gids[counted]]))
    if not ok:
        raise Damaged(
            f"{Path(folder.path) / 'manifest.json'}: 'cluster_counts' disagrees with the rows "
            f"of the parts; {fix_line(Path(folder.path))}."
        )


def _order_matches(r: PartsReader, n_picked: int, digest: int) -> bool:
    """Whether the pick order holds exactly the eligible rows not scored -inf.

    Compared by count and by the sum of a 64-bit hash of the positions (the order's
    positions are distinct when they equal a set of distinct positions): one streamed read
    of the order table, never the table in memory.
    """
    n, d = 0, 0
    for part in r.iter_table("order"):
        n += int(part["position"].size)
        d = (d + int(np.sum(_mix(part["position"]), dtype=np.uint64))) % _WORD
    return n == n_picked and d == digest


# -- pass 2..: the cuts ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Step:
    """One radix pass: the digits found so far and which cuts histogram or collect."""

    rule: _Rule
    depth: int  # bits of the 128-bit order number resolved
    bits: int  # width of this pass's digit
    slot: np.ndarray  # per cut: its histogram row, -1 when not histogrammed
    collect: np.ndarray  # per cut: gather its candidates this pass
    prefix_hi: np.ndarray
    prefix_lo: np.ndarray


def _digit_bits(n_groups: int) -> int:
    """The widest digit whose histogram over ``n_groups`` fits ``HIST_CELLS`` counters."""
    return next((b for b in DIGIT_BITS if max(1, n_groups) << b <= HIST_CELLS), DIGIT_BITS[-1])


def _masks(depth: int) -> tuple[np.uint64, np.uint64]:
    """The resolved (top ``depth``) bits of the high and low word."""
    def top(n: int) -> np.uint64:
        n = min(max(n, 0), 64)
        return np.uint64(((1 << n) - 1) << (64 - n))
    return top(depth), top(depth - 64)


def _digit_at(depth: int, bits: int) -> tuple[int, int]:
    """Which word (0 high, 1 low) holds the digit at ``depth`` and its shift."""
    return (0, 64 - depth - bits) if depth < 64 else (1, 128 - depth - bits)


def _radix_task(step: _Step, i: int):
    """Part ``i``'s histogram of the next digit per searched cut, and its collected rows."""
    rule, nb = step.rule, 1 << step.bits
    n_slots = int((step.slot >= 0).sum())
    hist = np.zeros(n_slots * nb, dtype=np.int64)
    mh, ml = _masks(step.depth)
    word, shift = _digit_at(step.depth, step.bits)
    found = []
    for b in rule.folder.reader().iter_part(i, rule.columns(), verify=False):
        _, cut, hi, lo, _ = rule.rows(b)
        match = ((hi & mh) == step.prefix_hi[cut]) & ((lo & ml) == step.prefix_lo[cut])
        slot = step.slot[cut]
        a = match & (slot >= 0)
        if a.any():
            digit = ((lo if word else hi)[a] >> np.uint64(shift)) & np.uint64(nb - 1)
            counts = np.bincount(slot[a] * nb + digit.astype(np.int64))
            hist[: counts.size] += counts
        c = match & step.collect[cut]
        if c.any():
            found.append((cut[c], hi[c], lo[c]))
    cols = [np.concatenate(x) for x in zip(*found, strict=True)] if found else [
        np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint64)]
    return hist.reshape(n_slots, nb), cols


class _Search:
    """Per cut: the rank still wanted among the candidates sharing the digits found so far."""

    def __init__(self, folder: _Folder, quota: np.ndarray, sizes: np.ndarray) -> None:
        k = quota.size
        self.folder = folder
        self.mode = np.where(quota <= 0, NONE, np.where(quota >= sizes, ALL, SEARCH))
        self.need, self.cand = quota.astype(np.int64).copy(), sizes.astype(np.int64).copy()
        self.prefix_hi, self.prefix_lo = np.zeros(k, dtype=np.uint64), np.zeros(k, np.uint64)
        self.top_hi, self.top_lo = np.zeros(k, dtype=np.uint64), np.zeros(k, dtype=np.uint64)
        self.depth = 0
        n_search = int((self.mode == SEARCH).sum())
        self.bits = _digit_bits(n_search)
        self.limit = max(1, COLLECT_ROWS // max(1, n_search))

    def narrow(self, hist: np.ndarray, at: np.ndarray, bits: int) -> np.ndarray:
        """Cuts ``at`` take the digit holding their wanted row; returns those still open."""
        if not np.array_equal(hist.sum(axis=1), self.cand[at]):
            raise _changed(self.folder, "its rows no longer add up to the counts of the first pass")
        cum = np.cumsum(hist, axis=1)
        digit = (cum < self.need[at][:, None]).sum(axis=1)
        rows = np.arange(at.size)
        self.need[at] -= np.where(digit > 0, cum[rows, np.maximum(digit - 1, 0)], 0)
        self.cand[at] = hist[rows, digit]
        word, shift = _digit_at(self.depth, bits)
        prefix = self.prefix_lo if word else self.prefix_hi
        prefix[at] |= digit.astype(np.uint64) << np.uint64(shift)
        self.depth += bits
        if self.depth == 128:  # every digit known: the row itself
            self.top_hi[at], self.top_lo[at] = self.prefix_hi[at], self.prefix_lo[at]
            return np.zeros(0, dtype=np.int64)
        return at

    def finish(self, collect: np.ndarray, found: list) -> None:
        """The collected candidates of each finishing cut, sorted: the wanted one is the cut."""
        cut, hi, lo = (np.concatenate(x) for x in zip(*found, strict=True))
        order = np.lexsort((lo, hi, cut))
        cut, hi, lo = cut[order], hi[order], lo[order]
        ids = np.flatnonzero(collect)
        start = np.searchsorted(cut, ids)
        if not np.array_equal(np.searchsorted(cut, ids, side="right") - start, self.cand[ids]):
            raise _changed(self.folder, "its rows no longer add up to the counts of the first pass")
        pick = start + self.need[ids] - 1
        self.top_hi[ids], self.top_lo[ids] = hi[pick], lo[pick]


def _cuts(rule: _Rule, n_parts: int, quota: np.ndarray, sizes: np.ndarray, progress: bool,
          first: np.ndarray | None = None, first_bits: int = 0):
    """``(mode, top_hi, top_lo)`` per cut: the last kept row of each searched cut.

    ``first``: the histogram of the first ``first_bits`` bits per cut, when the counting
    pass made it (the search then starts one digit down).
    """
    st = _Search(rule.folder, quota, sizes)
    k = quota.size
    open_ = np.flatnonzero(st.mode == SEARCH)
    if first is not None and open_.size:
        open_ = st.narrow(first[open_], open_, first_bits)
    passes = 1
    while open_.size:
        nxt = np.zeros(k, dtype=bool)
        nxt[open_] = True
        collect = nxt & (st.cand <= st.limit)
        active = nxt & ~collect
        bits = min(st.bits, 64 - st.depth % 64)  # a digit never straddles the two words
        slot = np.full(k, -1, dtype=np.int64)
        slot[active] = np.arange(int(active.sum()))
        step = _Step(rule, st.depth, bits, slot, collect, st.prefix_hi, st.prefix_lo)
        hist = np.zeros((int(active.sum()), 1 << bits), dtype=np.int64)
        found = []
        passes += 1
        task = BATCH_ROWS * ROW_BYTES + 16 * hist.size
        for h, c in current_engine().map(_radix_task, range(n_parts), step, progress=progress,
                                         desc=f"select: pass {passes}", task_bytes=task):
            hist += h  # part order: the same sums on every engine
            found.append(c)
        if collect.any():
            st.finish(collect, found)
        open_ = st.narrow(hist, np.flatnonzero(active), bits) if active.any() else open_[:0]
    return st.mode, st.top_hi, st.top_lo


def _fill_task(shared, i: int) -> np.ndarray:
    """Part ``i``: per cut, the kept rows a greedy method never picked."""
    rule, mode, top_hi, top_lo = shared
    out = np.zeros(mode.size, dtype=np.int64)
    for b in rule.folder.reader().iter_part(i, rule.columns(), verify=False):
        _, cut, hi, lo, unpicked = rule.rows(b)
        inside = _inside(cut, hi, lo, mode, top_hi, top_lo) & unpicked
        out += np.bincount(cut[inside], minlength=mode.size)
    return out


# -- the plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """Everything the write pass needs: O(groups)."""

    rule: _Rule
    n_parts: int
    n_total: int
    mode: np.ndarray
    top_hi: np.ndarray
    top_lo: np.ndarray
    base: np.ndarray | None  # oversampling: each cut's repeats before its extra one
    with_ids: bool
    n_kept: int
    draws: int | None
    manifest_attrs: dict[str, Any]
    params: dict[str, Any]


def _check_options(pr, balance: str, fill: str, oversample: bool, seed: int) -> int:
    if balance not in BALANCES:
        raise PrunekitError(f"unknown balance '{balance}'; choose one of: {', '.join(BALANCES)}.")
    if fill not in FILLS:
        raise PrunekitError(f"unknown fill '{fill}'; choose one of: {', '.join(FILLS)}.")
    seed = check_seed(seed)
    q.kept_count(pr, 1)  # the range of pr, before any part is read
    if oversample and float(pr) != 0.0:
        raise PrunekitError("oversampling keeps every row (no pruning); use pr = 0 with oversampling.")
    if oversample and balance == "proportional":
        raise PrunekitError("oversampling balances groups; use it with balance 'clusters' or 'labels'.")
    return seed


def _plan(path, pr, *, balance, invert, drop_clusters, oversample, seed, fill, progress) -> _Plan:
    """The counting pass, the quotas and the cuts; raises :class:`_InMemory` when the rule
    needs the whole set in memory."""
    folder, r = _open(path)
    m = r.manifest
    method, source = str(m.get("method") or "unknown"), str(m.get("source") or "")
    per_group = balance != "none" or oversample
    need_groups = per_group or drop_clusters is not None
    group_by = "label" if balance == "labels" else ("cluster" if "cluster" in r.columns else None)
    if need_groups and (group_by is None or group_by not in r.columns):
        raise no_groups_error(group_by or "cluster", method, source)
    group_col = group_by if need_groups else None
    rule = _Rule(folder, group_col, bool(invert), "order" in m["tables"],
                 np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    gids, sizes, neg_inf, exact, first, first_bits = _counts(
        rule, r, _known_groups(m, group_col), progress)
    if group_col == "cluster":
        _check_manifest_counts(m, folder, gids, sizes)
    n_eligible = int(sizes.sum())
    kept_target = q.kept_count(pr, n_eligible)
    if not exact:
        raise _InMemory("the greedy pick order is not exactly the rows scored above -inf")
    unpicked = neg_inf if rule.greedy else np.zeros_like(sizes)
    dropped = np.zeros(0, dtype=np.int64)
    if drop_clusters is not None:
        dropped = drop_ids(gids, drop_clusters, seed, group_by, source)
    keep = ~np.isin(gids, dropped)
    n_rows = int(sizes[keep].sum())
    kept = min(kept_target, n_rows)
    cut_of = np.full(gids.size, -1, dtype=np.int64)
    base = None
    if per_group:
        cut_of[keep] = np.arange(int(keep.sum()))
        cut_sizes, cut_unpicked = sizes[keep], unpicked[keep]
        if oversample:
            base, quota = q.oversample_counts(cut_sizes)
        else:
            rule_of = q.proportional_quotas if balance == "proportional" else q.balanced_quotas
            quota = rule_of(cut_sizes, kept)
        first = None if first is None else first[gids[keep]]
    else:
        cut_of[keep] = 0
        cut_sizes, quota = np.array([n_rows]), np.array([kept])
        cut_unpicked = np.array([int(unpicked[keep].sum())])
        first = None if first is None else first[gids[keep]].sum(axis=0, keepdims=True)
    rule = dataclasses.replace(rule, gids=gids, cut_of=cut_of)
    n_parts = len(m["parts"])
    mode, top_hi, top_lo = _cuts(rule, n_parts, quota, cut_sizes, progress, first, first_bits)
    n_filled = _check_fill(rule, n_parts, (mode, top_hi, top_lo), cut_unpicked, oversample,
                           fill, (method, n_rows, kept, balance), progress)
    n_kept = n_rows if oversample else int(quota.sum())
    draws = None if base is None else int((base * cut_sizes).sum() + quota.sum())
    params = {
        "balance": balance,
        "invert": bool(invert),
        "drop_clusters": _jsonable_drop(drop_clusters),
        "dropped": dropped.tolist(),
        "group_by": group_by,
        "oversample": bool(oversample),
        "fill": fill,
        "n_filled": n_filled,
        "n_eligible": n_eligible,
        "kept_target": int(kept_target),
        "score_method": method,
    }
    attrs = {
        "method": method,
        "pr": float(pr),
        "n_kept": n_kept,
        "seed": int(seed),
        "source_fingerprint": str(m.get("source_fingerprint") or ""),
    }
    return _Plan(rule, n_parts, r.n_total, mode, top_hi, top_lo, base, "id" in r.columns,
                 n_kept, draws, attrs, params)


def _check_fill(rule, n_parts, cuts, cut_unpicked, oversample, fill, what, progress) -> int:
    """``n_filled`` of the params; refuses as select() does when the kept set reaches rows a
    greedy method never picked (``fill="error"``), or hands over to the in-memory path
    (``fill="random"``: their order is one random permutation of all of them)."""
    mode, top_hi, _ = cuts
    reaches = bool(np.any((cut_unpicked > 0) & ((mode == ALL) |
                                                 ((mode == SEARCH) & (top_hi == INF_KEY)))))
    n_unpicked = int(cut_unpicked.sum())
    if fill == "random" and reaches:
        raise _InMemory("fill 'random' orders the rows a greedy method never picked at random")
    if reaches and not oversample:
        n_fill = _count_fill(rule, n_parts, *cuts, progress)
        if n_fill:
            method, n_rows, kept, balance = what
            raise fill_error(method, n_fill, n_rows - n_unpicked, n_rows, kept, balance)
    return n_unpicked if oversample else 0


def _count_fill(rule, n_parts, mode, top_hi, top_lo, progress) -> int:
    total = 0
    for n in current_engine().map(_fill_task, range(n_parts), (rule, mode, top_hi, top_lo),
                                  desc="select: unpicked", progress=progress,
                                  task_bytes=BATCH_ROWS * ROW_BYTES):
        total += int(n.sum())
    return total


# -- the write pass ----------------------------------------------------------------------------


def _kept_batches(plan: _Plan, i: int, verify: bool | None = None):
    """Part ``i``'s kept rows, batch by batch: ``position``, ``id``, ``count`` columns."""
    rule = plan.rule
    cols = rule.columns("id") if plan.with_ids else rule.columns()
    for b in rule.folder.reader().iter_part(i, cols, verify=verify):
        where, cut, hi, lo, _ = rule.rows(b)
        inside = _inside(cut, hi, lo, plan.mode, plan.top_hi, plan.top_lo)
        out: dict[str, np.ndarray] = {}
        if plan.base is None:
            where = where[inside]
        out["position"] = b["position"][where]
        if plan.with_ids:
            out["id"] = b["id"][where]
        if plan.base is not None:
            out["count"] = plan.base[cut] + inside
        yield out


def _write_task(shared, i: int):
    """Part ``i`` of the selection: the kept rows of scores part ``i``, same range."""
    plan, spec = shared
    entry = plan.rule.folder.reader().manifest["parts"][i]
    buffered: list[dict[str, np.ndarray]] = []
    n = 0
    with PartFile(spec, i, entry["start"], entry["stop"]) as pf:
        for batch in _kept_batches(plan, i):
            buffered.append(batch)
            n += batch["position"].size
            while n >= ROW_GROUP_ROWS:  # whole row groups, as one write of the part makes
                head, buffered, n = _split(buffered, ROW_GROUP_ROWS)
                pf.write(head)
        if n or pf.rows == 0:
            pf.write(_concat(buffered, plan))
        return pf.close()


def _concat(batches: list[dict[str, np.ndarray]], plan: _Plan) -> dict[str, np.ndarray]:
    if batches:
        return {c: np.concatenate([b[c] for b in batches]) for c in batches[0]}
    empty = {"position": np.zeros(0, dtype=np.int64)}
    if plan.with_ids:
        string = plan.rule.folder.reader().columns["id"] == "string"
        empty["id"] = np.zeros(0, dtype=object if string else np.int64)
    if plan.base is not None:
        empty["count"] = np.zeros(0, dtype=np.int64)
    return empty


def _split(batches, n):
    """The first ``n`` rows of ``batches`` as one batch, and the rest."""
    whole = {c: np.concatenate([b[c] for b in batches]) for c in batches[0]}
    head = {c: v[:n] for c, v in whole.items()}
    rest = {c: v[n:] for c, v in whole.items()}
    left = int(rest["position"].size)
    return head, ([rest] if left else []), left


def _write(plan: _Plan, out, command, extra_params, progress) -> Path:
    params = {**plan.params, **(extra_params or {})}
    identity = {
        "kind": "selection",
        "scores_run_id": plan.rule.folder.run_id,
        "n_total": plan.n_total,
        "pr": plan.manifest_attrs["pr"],
        "seed": plan.manifest_attrs["seed"],
        "params": params_json(params),
    }
    scores = plan.rule.folder.path
    with PartWriter(out, kind="selection", run_id=run_id_for(identity), inputs=[scores],
                    input_dirs=[scores]) as w:
        infos = list(current_engine().map(_write_task, range(plan.n_parts), (plan, w.spec),
                                          desc="select: write", progress=progress,
                                          task_bytes=3 * ROW_GROUP_ROWS * ROW_BYTES))
        if sum(p.rows for p in infos) != plan.n_kept:
            raise _changed(plan.rule.folder, "the kept rows differ from the quotas")
        return w.finalize(infos, n_total=plan.n_total, attrs=plan.manifest_attrs,
                          params=params, command=command)


def _gather_task(plan: _Plan, i: int) -> dict[str, np.ndarray]:
    return _concat(list(_kept_batches(plan, i)), plan)


def _gather(plan: _Plan, extra_params, progress) -> Selection:
    """The kept rows in memory (O(kept), checked first) as a :class:`Selection`."""
    id_bytes = 64 if plan.with_ids else 0
    check_fits(2.0 * plan.n_kept * (24 + id_bytes), f"the {plan.n_kept} kept rows in memory")
    got = list(current_engine().map(_gather_task, range(plan.n_parts), plan,
                                    desc="select: gather", progress=progress,
                                    task_bytes=BATCH_ROWS * ROW_BYTES))
    cols = {c: np.concatenate([g[c] for g in got]) for c in got[0]}
    if cols["position"].size != plan.n_kept:
        raise _changed(plan.rule.folder, "the kept rows differ from the quotas")
    a = plan.manifest_attrs
    return Selection(indices=cols["position"], n_total=plan.n_total, pr=a["pr"],
                     method=a["method"], seed=a["seed"], ids=cols.get("id"),
                     counts=cols.get("count"), source_fingerprint=a["source_fingerprint"],
                     params={**plan.params, **(extra_params or {})})


# -- the in-memory path ------------------------------------------------------------------------


def _in_memory(path, pr, why: str, **opts) -> Selection:
    """select() on the whole scores folder loaded, after checking that it fits."""
    r = PartsReader(path, kind="scores")
    per_row = sum(64 if t == "string" else 8 for t in r.columns.values()) + MEMORY_ROW_BYTES
    order = r.manifest["tables"].get("order", {}).get("rows", 0)
    check_fits(float(r.n_total) * per_row + 16.0 * order,
               f"selecting from {path} in memory ({why}, {r.n_total} rows)")
    from prunekit.selection.scores import load_scores

    return select(load_scores(path), pr, **opts)


def _plan_or_select(scores, pr, labels, progress: bool,
                    **opts) -> tuple[_Plan | None, Selection | None, str | None]:
    """The streamed plan of select()'s rule ``opts``, or (when the rule needs the rows in
    memory) the selection made that way and why."""
    if labels is not None:
        why = "labels given as an array"
        return None, _in_memory(scores, pr, why, labels=labels, **opts), why
    opts["seed"] = _check_options(pr, opts["balance"], opts["fill"], opts["oversample"],
                                  opts["seed"])
    try:
        return _plan(scores, pr, progress=progress, **opts), None, None
    except _InMemory as why:
        return None, _in_memory(scores, pr, str(why), **opts), str(why)


def _note(path, why: str) -> str:
    return f"{path}: selected in memory: {why}."


# -- public --------------------------------------------------------------------------------------


def selection_meta(r: PartsReader, folder: str | os.PathLike) -> Selection:
    """A selection folder's attributes as a :class:`Selection` without rows, checked as
    loading the folder checks them (``n_kept``, ``pr``, ``seed``, ``params``)."""
    m = r.manifest
    if m.get("n_kept") != r.n_rows:
        raise PrunekitError(
            f"selection folder {folder}: 'n_kept' is {m.get('n_kept')!r} but the parts hold "
            f"{r.n_rows} rows; rewrite it with prunekit."
        )
    try:
        return Selection(indices=np.zeros(0, dtype=np.int64), n_total=r.n_total,
                         pr=m.get("pr", 0.0), method=str(m.get("method") or "unknown"),
                         seed=m.get("seed"), source_fingerprint=str(m.get("source_fingerprint") or ""),
                         params=m.get("params", {}))
    except PrunekitError as exc:
        raise PrunekitError(f"selection folder {folder}: {exc}") from exc


def select_streamed(
    scores: str | os.PathLike,
    pr: float,
    *,
    balance: str = "none",
    invert: bool = False,
    drop_clusters: Sequence[int] | float | None = None,
    oversample: bool = False,
    seed: int = 0,
    labels: np.ndarray | None = None,
    fill: str = "error",
    progress: bool = True,
) -> Selection:
    """:func:`~prunekit.selection.subset.select` of a scores folder, streamed, as a
    :class:`Selection` in memory (its kept rows only: O(kept)).

    The arguments are select()'s; the result equals ``select(load_scores(scores), ...)``.
    """
    plan, sel, _ = _plan_or_select(scores, pr, labels, progress, balance=balance, invert=invert,
                                   drop_clusters=drop_clusters, oversample=oversample, seed=seed,
                                   fill=fill)
    return sel if plan is None else _gather(plan, None, progress)


def select_folder(
    scores: str | os.PathLike,
    output: str | os.PathLike,
    pr: float,
    *,
    balance: str = "none",
    invert: bool = False,
    drop_clusters: Sequence[int] | float | None = None,
    oversample: bool = False,
    seed: int = 0,
    labels: np.ndarray | None = None,
    fill: str = "error",
    params: dict[str, Any] | None = None,
    command: list[str] | None = None,
    progress: bool = True,
) -> FolderSelection:
    """Select from a scores folder into ``output`` without holding the rows in memory.

    ``output`` is a selection folder (written part by part from the scores' parts, same
    position ranges) or, with a suffix such as ``.h5``, one HDF5 file (the kept rows are
    gathered first, after a memory check). The arguments are :func:`select`'s; ``params``
    is added to the selection's params (the CLI records the scores path). The selection
    equals ``select(load_scores(scores), ...)``; rules that need per-row state of the whole
    set run that way, after a memory check, and say so in the result's ``note``.
    """
    folder_out = wants_dataset(output)
    plan, sel, why = _plan_or_select(scores, pr, labels, progress, balance=balance, invert=invert,
                                     drop_clusters=drop_clusters, oversample=oversample,
                                     seed=seed, fill=fill)
    note = None if why is None else _note(scores, why)
    if plan is not None and folder_out:
        path = _write(plan, output, command, params, progress)
        return FolderSelection(path, plan.n_total, plan.n_kept, plan.draws,
                               {**plan.params, **(params or {})})
    if sel is None:
        sel = _gather(plan, params, progress)
    else:
        sel.params.update(params or {})
    path = sel.save(output, command)
    draws = None if sel.counts is None else int(sel.counts.sum())
    return FolderSelection(path, sel.n_total, sel.n_kept, draws, sel.params, note)
