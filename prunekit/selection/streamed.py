"""``select()`` over a partitioned scores folder in bounded memory.

The driver holds O(groups + parts), never a per-row array; the rows are read part by part
in tasks on the run context's engine, and the result is exactly :func:`select`'s.

1. **Counting pass**: eligible rows (score not NaN) per group (cluster or label), and for
   greedy scores the rows never picked. The quotas follow from these counts alone
   (:mod:`prunekit.selection.quotas`), as do ``--drop-clusters`` and ``--oversample``'s
   repeats. When the groups are known before reading (no groups, or the clusters of the
   manifest's ``cluster_counts``, which are checked against the rows counted), the same
   pass makes the first histogram of each group's keys, over a window of bins placed
   around the keys of the first batch of a few parts.
2. **Cuts**: select() keeps, in each group, the first ``q`` rows in the order "key
   ascending, ties to the lower position", with key = -score (score with ``invert``) and
   rows a greedy method never picked last. That order is the order of one 128-bit number
   per row, ``sortable(key) << 64 | position`` (unique, as positions are), so the last
   kept row of each group is the ``q``-th smallest such number in the group. The first
   histogram names the bin holding it; the next pass gathers the rows of those bins (as
   many groups as ``COLLECT_ROWS`` allows, the fewest rows first) and finds it among
   them in memory. A group whose bin holds more, or whose row lies outside the window, is
   narrowed by a radix select instead, one digit of ``bits`` bits per pass, with one
   histogram of ``groups x 2^bits`` counts per pass (at most ``HIST_CELLS``), until its
   candidates can be gathered. Balance ``none`` is one cut over every row.
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
FIRST_CELLS = 1 << 22  # counters of the first histogram (groups x (2^bits + 2)): 32 MiB
FIRST_MAX_BITS = 24  # the first histogram's window: at most 2^24 bins per group
SAMPLE_PARTS = 4  # parts whose first batch places that window
MARGIN_BITS = 2  # the window spans at least 4x the range of the sampled keys
COLLECT_ROWS = 1 << 22  # candidate rows gathered in one pass (24 B each) to finish searches
DIGIT_BITS = (16, 8, 4, 2, 1)  # digit widths (each divides 64, so a digit never straddles)
ROW_BYTES = 96  # what one row of a batch costs a task: columns, keys, masks
MEMORY_ROW_BYTES = 96  # select() in memory: per-row arrays beyond the columns themselves
ALL_BITS = np.uint64(2**64 - 1)
# The passes' names on the engine (progress bars; the plan's probe times each by its name).
COUNT_PASS, CUT_PASS, WRITE_PASS = "select: count", "select: pass", "select: write"
INF_KEY = _sortable(np.array([np.inf]))[0]  # the key of a row a greedy method never picked
NONE, ALL, SEARCH = 0, 1, 2  # what a cut keeps of its group: nothing, everything, a prefix
NOT_GROUP = -2  # an id no eligible row has
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
    by_id: np.ndarray | None = None  # cut_of per id gids[0].. (NOT_GROUP: none), when dense

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
            cut = self.cut_for(batch[self.group_col][where])
            kept = cut >= 0
            if not kept.all():
                where, cut = where[kept], cut[kept]
        s = score[where]
        unpicked = (s == -np.inf) if self.greedy else np.zeros(s.size, dtype=bool)
        lo = batch["position"][where].astype(np.uint64)
        return where, cut, self.key(s), lo, unpicked

    def cut_for(self, g: np.ndarray) -> np.ndarray:
        """The cut of each group id ``g`` (-1: dropped); an id not counted is an error."""
        if self.by_id is not None:
            base = self.gids[0]
            ok = not g.size or (g.min() >= base and g.max() - base < self.by_id.size)
            cut = self.by_id[g - base] if ok else None
            ok = ok and not np.any(cut == NOT_GROUP)
        else:
            at = np.minimum(np.searchsorted(self.gids, g), self.gids.size - 1)
            ok = np.array_equal(self.gids[at], g)
            cut = self.cut_of[at]
        if not ok:
            raise _changed(self.folder, f"a {self.group_col} id that was not counted")
        return cut

    def key(self, s: np.ndarray) -> np.ndarray:
        """select()'s sort key of eligible scores ``s`` as sortable uint64 (smaller first)."""
        key = s if self.invert else -s
        if self.greedy:
            key = np.where(s == -np.inf, np.inf, key)
        return _sortable(key)


def _id_table(gids: np.ndarray, cut_of: np.ndarray) -> np.ndarray | None:
    """``cut_of`` by id (from ``gids[0]``) when the ids are dense enough for a table of
    O(groups): a lookup per row instead of a binary search."""
    if not gids.size or gids[-1] - gids[0] >= 4 * gids.size + 1024:
        return None
    table = np.full(int(gids[-1] - gids[0]) + 1, NOT_GROUP, dtype=np.int64)
    table[gids - gids[0]] = cut_of
    return table


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


# -- pass 1: counts and the first histogram ----------------------------------------------------


@dataclass(frozen=True)
class _Window:
    """The first histogram's bins: ``2^bits`` runs of ``2^shift`` consecutive keys from the
    run numbered ``start`` (bins 1..2^bits; a bin is the keys sharing their top ``64 - shift``
    bits), one bin for the keys below them (0) and one for those above (2^bits + 1).

    Placed around the keys the scores take, the bins go where the rows are: on k-means
    distances, 16 bits placed so leave a hundred times fewer candidates in the cut bin than
    the key's top 16 bits (a float's sign, its exponent and 4 bits of mantissa).
    """

    shift: int
    start: int
    bits: int

    @property
    def cells(self) -> int:
        return (1 << self.bits) + 2

    def bins(self, hi: np.ndarray) -> np.ndarray:
        """Each key's bin."""
        run = hi >> np.uint64(self.shift)
        rel = np.minimum(run - np.uint64(self.start), np.uint64(1 << self.bits))  # wraps below
        return np.where(run < np.uint64(self.start), 0, rel.astype(np.int64) + 1)

    def bin_prefix(self, j: np.ndarray) -> np.ndarray:
        """The top ``64 - shift`` bits (the rest zero) of the keys in bins ``j`` (1..2^bits)."""
        return (np.uint64(self.start) + (j - 1).astype(np.uint64)) << np.uint64(self.shift)


def _first_bits(n_groups: int, n_rows: int) -> int | None:
    """The widest window whose histogram over ``n_groups`` fits ``FIRST_CELLS`` counters and
    about four of them per row (more bins than rows would only cost time); None when not
    even one bit fits."""
    cells = min(FIRST_CELLS, max(64, 4 * n_rows))
    return next((b for b in range(FIRST_MAX_BITS, 0, -1)
                 if max(1, n_groups) * ((1 << b) + 2) <= cells), None)


def _window(rule: _Rule, r: PartsReader, n_groups: int) -> _Window:
    """Where the first histogram's bins go: around the keys of the first batch of a few parts
    (read here: O(batch)), with ``MARGIN_BITS`` to spare. Only the speed depends on it: a
    cut outside the window is searched from the top bit."""
    bits = _first_bits(n_groups, r.n_rows)
    n = len(r.manifest["parts"])
    lo = hi = None
    for i in sorted({j * n // SAMPLE_PARTS for j in range(min(n, SAMPLE_PARTS))}):
        batches = r.iter_part(i, ["score"], verify=False)
        b = next(batches, None)
        batches.close()
        s = np.zeros(0) if b is None else b["score"][np.isfinite(b["score"])]
        if s.size:
            key = rule.key(s)
            lo = int(key.min()) if lo is None else min(lo, int(key.min()))
            hi = int(key.max()) if hi is None else max(hi, int(key.max()))
    if lo is None:
        return _Window(64 - bits, 0, bits)
    shift = min(max(0, (hi - lo + 1).bit_length() + MARGIN_BITS - bits), 64 - bits)
    first, last = lo >> shift, hi >> shift
    start = first - ((1 << bits) - (last - first + 1)) // 2  # the sample's runs centred
    return _Window(shift, min(max(start, 0), (1 << (64 - shift)) - (1 << bits)), bits)


def _merge(ids_a, vals_a, ids_b, vals_b):
    """Per-id sums of two ``(ids ascending, values (n, fields))`` tables."""
    ids = np.union1d(ids_a, ids_b)
    out = np.zeros((ids.size, vals_a.shape[1]), dtype=np.int64)
    out[np.searchsorted(ids, ids_a)] += vals_a
    out[np.searchsorted(ids, ids_b)] += vals_b
    return ids, out


def _count_into(hist: np.ndarray, idx: np.ndarray) -> None:
    """Add one to ``hist[i]`` for each ``i`` in ``idx`` (repeats count each time).

    A batch as large as an eighth of the histogram is one ``bincount``; a smaller one is
    ``np.add.at``, whose per-element loop is fast from numpy 1.25 on and cheaper there than
    a full-length ``bincount`` of a histogram many times the batch.
    """
    if 8 * idx.size >= hist.size:
        hist += np.bincount(idx, minlength=hist.size)
    else:
        np.add.at(hist, idx, 1)


def _count_task(shared, i: int):
    """Part ``i``: per group id its eligible rows, those scored -inf and all its rows; for
    greedy scores the count and hash sum of the positions of the others (the picked rows).
    With ``k`` groups known (ids 0..k-1), also the first histogram per group (None when a
    row has another id: the counts then go by the ids found)."""
    rule, k, win = shared
    col = rule.group_col
    dense = k is not None
    ids = np.arange(k if dense else 0, dtype=np.int64)
    vals = np.zeros((ids.size, 3), dtype=np.int64)
    hist = np.zeros(k * win.cells, dtype=np.int64) if dense else None
    n_picked, digest = 0, 0
    for b in rule.folder.reader().iter_part(i, rule.columns()):
        score = b["score"]
        g_all = b[col] if col else np.zeros(score.size, dtype=np.int64)
        ok = ~np.isnan(score)
        if dense and g_all.size and (g_all.min() < 0 or g_all.max() >= k):
            dense, hist = False, None  # ids the manifest did not announce: counted as found
            keep = vals[:, 2] > 0
            ids, vals = ids[keep], vals[keep]
        g, s = g_all[ok], score[ok]
        ninf = s == -np.inf
        if dense:
            vals[:, 0] += np.bincount(g, minlength=k)
            vals[:, 1] += np.bincount(g[ninf], minlength=k)
            vals[:, 2] += np.bincount(g_all, minlength=k)
            _count_into(hist, g * win.cells + win.bins(rule.key(s)))
        else:
            u, inv = np.unique(g_all, return_inverse=True)
            v = np.stack([np.bincount(inv[ok], minlength=u.size),
                          np.bincount(inv[ok][ninf], minlength=u.size),
                          np.bincount(inv, minlength=u.size)], axis=1)
            ids, vals = _merge(ids, vals, u, v)
        if rule.greedy:
            picked = b["position"][ok][~ninf]
            n_picked += int(picked.size)
            digest = (digest + int(np.sum(_mix(picked), dtype=np.uint64))) % _WORD
    return ids, vals, n_picked, digest, None if hist is None else hist.reshape(k, win.cells)


@dataclass(frozen=True)
class _Counts:
    """What the first pass found: per group with eligible rows (``gids`` ascending) its
    eligible rows and those scored -inf; per id seen, all its rows; the first histogram
    (rows by group id, None when not made)."""

    gids: np.ndarray
    sizes: np.ndarray
    neg_inf: np.ndarray
    seen: np.ndarray
    rows: np.ndarray
    exact: bool  # greedy scores: the pick order names exactly the rows not scored -inf
    first: np.ndarray | None
    window: _Window | None


def _counts(rule: _Rule, r: PartsReader, k: int | None, progress: bool) -> _Counts:
    """The first pass: the counts per group and, with ``k`` known groups, the first
    histogram (the search then starts inside its window)."""
    win = None if k is None else _window(rule, r, k)
    ids, vals = np.zeros(0, dtype=np.int64), np.zeros((0, 3), dtype=np.int64)
    n_picked, digest = 0, 0
    hist = None if k is None else np.zeros((k, win.cells), dtype=np.int64)
    parts = range(len(r.manifest["parts"]))
    task = BATCH_ROWS * ROW_BYTES + (0 if k is None else 8 * hist.size)
    with current_engine().map(_count_task, parts, (rule, k, win), desc=COUNT_PASS,
                              progress=progress, task_bytes=task) as results:
        for u, v, n, d, h in results:
            ids, vals = _merge(ids, vals, u, v)
            n_picked += n
            digest = (digest + d) % _WORD
            hist = None if h is None or hist is None else hist + h  # part order, as every sum
    exact = not rule.greedy or _order_matches(r, n_picked, digest)
    has = vals[:, 0] > 0
    return _Counts(ids[has], vals[has, 0], vals[has, 1], ids, vals[:, 2], exact, hist,
                   None if hist is None else win)


def _manifest_counts(m: dict, folder: _Folder, n_rows: int) -> list[int] | None:
    """The manifest's ``cluster_counts`` (rows per cluster id 0, 1, ...), checked against the
    rows the parts hold before any part is read; None when it has none."""
    counts = m.get("cluster_counts")
    if counts is None:
        return None
    ok = isinstance(counts, list) and all(
        isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)
    if not ok or sum(counts) > n_rows:
        raise _counts_disagree(folder)
    return counts


def _known_groups(counts: list[int] | None, group_col: str | None, n_rows: int) -> int | None:
    """How many groups there are before reading a part (None: unknown, or too many for a
    first histogram): one without groups; the clusters the manifest's ``cluster_counts``
    announces (ids 0..k-1)."""
    k = 1 if group_col is None else len(counts or [])
    if k == 0 or _first_bits(k, n_rows) is None:
        return None
    return k


def _check_manifest_counts(counts: list[int] | None, folder: _Folder, c: _Counts) -> None:
    """Each cluster id the manifest counts holds at least as many rows as it says and no
    more eligible rows; it announces every id >= 0 found."""
    if counts is None:
        return
    ok = not (c.seen >= 0).any() or c.seen[-1] < len(counts)
    if ok:
        want = np.asarray(counts, dtype=np.int64)
        rows = np.zeros(want.size, dtype=np.int64)
        rows[c.seen[c.seen >= 0]] = c.rows[c.seen >= 0]
        eligible = np.zeros(want.size, dtype=np.int64)
        eligible[c.gids[c.gids >= 0]] = c.sizes[c.gids >= 0]
        ok = bool(np.all((eligible <= want) & (want <= rows)))
    if not ok:
        raise _counts_disagree(folder)


def _counts_disagree(folder: _Folder) -> Damaged:
    return Damaged(
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
    """One pass: per cut, the bits found so far (``mask_*``/``prefix_*`` of the high and
    low word), its histogram row (``slot``, -1: none) with the digit there (``word``,
    ``shift``, ``digit_mask``), and whether its candidates are gathered."""

    rule: _Rule
    bits: int  # histogram rows of 2^bits counters
    slot: np.ndarray
    collect: np.ndarray
    mask_hi: np.ndarray
    mask_lo: np.ndarray
    prefix_hi: np.ndarray
    prefix_lo: np.ndarray
    word: np.ndarray
    shift: np.ndarray
    digit_mask: np.ndarray


def _digit_bits(n_groups: int) -> int:
    """The widest digit whose histogram over ``n_groups`` fits ``HIST_CELLS`` counters."""
    return next((b for b in DIGIT_BITS if max(1, n_groups) << b <= HIST_CELLS), DIGIT_BITS[-1])


def _top_bits(n: np.ndarray) -> np.ndarray:
    """Masks of the top ``n`` (0..64) bits of a word."""
    n = np.clip(n, 0, 64)
    return np.where(n == 0, np.uint64(0), ALL_BITS << np.minimum(64 - n, 63).astype(np.uint64))


def _radix_task(step: _Step, i: int):
    """Part ``i``'s histogram of the next digit per searched cut, and its collected rows."""
    rule, nb = step.rule, 1 << step.bits
    n_slots = int((step.slot >= 0).sum())
    hist = np.zeros(n_slots * nb, dtype=np.int64)
    found = []
    for b in rule.folder.reader().iter_part(i, rule.columns(), verify=False):
        _, cut, hi, lo, _ = rule.rows(b)
        match = (((hi & step.mask_hi[cut]) == step.prefix_hi[cut])
                 & ((lo & step.mask_lo[cut]) == step.prefix_lo[cut]))
        slot = step.slot[cut]
        a = match & (slot >= 0)
        if a.any():
            ca = cut[a]
            x = np.where(step.word[ca] == 1, lo[a], hi[a])
            digit = (x >> step.shift[ca]) & step.digit_mask[ca]
            counts = np.bincount(slot[a] * nb + digit.astype(np.int64))
            hist[: counts.size] += counts
        c = match & step.collect[cut]
        if c.any():
            found.append((cut[c], hi[c], lo[c]))
    cols = [np.concatenate(x) for x in zip(*found, strict=True)] if found else [
        np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint64)]
    return hist.reshape(n_slots, nb), cols


class _Search:
    """Per cut: the rank still wanted among the candidates sharing its top ``depth`` bits
    (of the 128-bit order number) found so far."""

    def __init__(self, folder: _Folder, quota: np.ndarray, sizes: np.ndarray) -> None:
        k = quota.size
        self.folder = folder
        self.mode = np.where(quota <= 0, NONE, np.where(quota >= sizes, ALL, SEARCH))
        self.need, self.cand = quota.astype(np.int64).copy(), sizes.astype(np.int64).copy()
        self.prefix_hi, self.prefix_lo = np.zeros(k, dtype=np.uint64), np.zeros(k, np.uint64)
        self.top_hi, self.top_lo = np.zeros(k, dtype=np.uint64), np.zeros(k, dtype=np.uint64)
        self.depth = np.zeros(k, dtype=np.int64)

    def _check(self, hist: np.ndarray, at: np.ndarray) -> None:
        if not np.array_equal(hist.sum(axis=1), self.cand[at]):
            raise _changed(self.folder, "its rows no longer add up to the counts of the first pass")

    def _take(self, hist: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each cut's bin holding its wanted row, and the rank wanted inside it."""
        cum = np.cumsum(hist, axis=1)
        j = (cum < self.need[at][:, None]).sum(axis=1)
        rows = np.arange(at.size)
        need = self.need[at] - np.where(j > 0, cum[rows, np.maximum(j - 1, 0)], 0)
        self.cand[at] = hist[rows, j]
        return j, need

    def window(self, first: np.ndarray, win: _Window, at: np.ndarray) -> None:
        """Cuts ``at`` whose wanted row lies inside the first histogram's window take its
        bin; the others stay at the top bit."""
        self._check(first, at)
        cand = self.cand[at]
        j, need = self._take(first, at)
        inside = (j >= 1) & (j <= (1 << win.bits))
        self.cand[at[~inside]] = cand[~inside]
        at, j = at[inside], j[inside]
        self.need[at] = need[inside]
        self.prefix_hi[at] = win.bin_prefix(j)
        self.depth[at] = 64 - win.shift

    def step_bits(self, at: np.ndarray, bits: int) -> np.ndarray:
        """Each cut's next digit: ``bits`` wide, but never across the two words."""
        return np.minimum(bits, 64 - self.depth[at] % 64)

    def narrow(self, hist: np.ndarray, at: np.ndarray, bits: np.ndarray) -> np.ndarray:
        """Cuts ``at`` take the digit holding their wanted row; returns those still open."""
        self._check(hist, at)
        digit, self.need[at] = self._take(hist, at)
        low = self.depth[at] >= 64
        shift = np.where(low, 128, 64) - self.depth[at] - bits
        put = digit.astype(np.uint64) << shift.astype(np.uint64)
        self.prefix_lo[at[low]] |= put[low]
        self.prefix_hi[at[~low]] |= put[~low]
        self.depth[at] += bits
        done = at[self.depth[at] == 128]  # every digit known: the row itself
        self.top_hi[done], self.top_lo[done] = self.prefix_hi[done], self.prefix_lo[done]
        return at[self.depth[at] < 128]

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

    def step(self, rule: _Rule, active: np.ndarray, collect: np.ndarray, bits: int) -> _Step:
        """The pass that histograms cuts ``active`` (digit ``bits`` wide at most) and gathers
        the candidates of cuts ``collect`` (both boolean, per cut)."""
        k = self.need.size
        slot = np.full(k, -1, dtype=np.int64)
        slot[active] = np.arange(int(active.sum()))
        width = np.zeros(k, dtype=np.int64)
        width[active] = self.step_bits(np.flatnonzero(active), bits)
        low = self.depth >= 64
        shift = np.maximum(np.where(low, 128, 64) - self.depth - width, 0)
        return _Step(rule, bits, slot, collect, _top_bits(self.depth), _top_bits(self.depth - 64),
                     self.prefix_hi, self.prefix_lo, low.astype(np.int64),
                     shift.astype(np.uint64), ((np.uint64(1) << width.astype(np.uint64))
                                               - np.uint64(1)))


def _cuts(rule: _Rule, n_parts: int, quota: np.ndarray, sizes: np.ndarray, progress: bool,
          first: np.ndarray | None = None, win: _Window | None = None):
    """``(mode, top_hi, top_lo)`` per cut: the last kept row of each searched cut.

    ``first``: the first pass's histogram per cut over ``win`` (the search then starts
    inside the window). Each later pass gathers the candidates of as many cuts as
    ``COLLECT_ROWS`` allows (the fewest first) and histograms the next digit of the others.
    """
    st = _Search(rule.folder, quota, sizes)
    k = quota.size
    open_ = np.flatnonzero(st.mode == SEARCH)
    if first is not None and open_.size:
        st.window(first[open_], win, open_)
    passes = 1
    while open_.size:
        by_size = open_[np.argsort(st.cand[open_], kind="stable")]
        collect = np.zeros(k, dtype=bool)
        collect[by_size[np.cumsum(st.cand[by_size]) <= COLLECT_ROWS]] = True
        active = np.zeros(k, dtype=bool)
        active[open_] = True
        active &= ~collect
        bits = _digit_bits(int(active.sum()))
        step = st.step(rule, active, collect, bits)
        hist = np.zeros((int(active.sum()), 1 << bits), dtype=np.int64)
        found = []
        passes += 1
        task = BATCH_ROWS * ROW_BYTES + 16 * hist.size
        with current_engine().map(_radix_task, range(n_parts), step, progress=progress,
                                  desc=f"{CUT_PASS} {passes}", task_bytes=task) as results:
            for h, c in results:
                hist += h  # part order: the same sums on every engine
                found.append(c)
        if collect.any():
            st.finish(collect, found)
        at = np.flatnonzero(active)
        open_ = st.narrow(hist, at, st.step_bits(at, bits)) if at.size else open_[:0]
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
    announced = _manifest_counts(m, folder, r.n_rows) if group_col == "cluster" else None
    c = _counts(rule, r, _known_groups(announced, group_col, r.n_rows), progress)
    _check_manifest_counts(announced, folder, c)
    gids, sizes, neg_inf, exact, first = c.gids, c.sizes, c.neg_inf, c.exact, c.first
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
    rule = dataclasses.replace(rule, gids=gids, cut_of=cut_of, by_id=_id_table(gids, cut_of))
    n_parts = len(m["parts"])
    mode, top_hi, top_lo = _cuts(rule, n_parts, quota, cut_sizes, progress, first, c.window)
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
    with current_engine().map(_fill_task, range(n_parts), (rule, mode, top_hi, top_lo),
                              desc="select: unpicked", progress=progress,
                              task_bytes=BATCH_ROWS * ROW_BYTES) as results:
        for n in results:
            total += int(n.sum())
    return total


# -- the write pass ----------------------------------------------------------------------------


def _kept_batches(plan: _Plan, i: int):
    """Part ``i``'s kept rows, batch by batch: ``position``, ``id``, ``count`` columns (not
    hashed again: the first pass compared the parts with their hashes)."""
    rule = plan.rule
    cols = rule.columns("id") if plan.with_ids else rule.columns()
    for b in rule.folder.reader().iter_part(i, cols, verify=False):
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
                                          desc=WRITE_PASS, progress=progress,
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
