"""ids and labels of an embedding set: checked at load in bounded memory, read by position range.

At load, one engine task per shard reads that shard's ids and labels and checks them (one
entry per row, integer labels, ids that are integers or UTF-8 text); the driver checks
that the shards agree (all or none have ids, all or none labels, one kind of id) and that
the ids are unique. Nothing per row stays on the driver unless the input is small:

* **Small inputs** (``n_total x DUP_ROW_BYTES`` within a quarter of the memory budget):
  the tasks return their arrays, the driver checks uniqueness with one ``np.unique`` and
  keeps ids and labels (later reads are free).
* **Larger inputs**: each task writes its shard's ids into a private scratch folder
  (:class:`~prunekit.runtime.scratch.scratch_folder`: ``$TMPDIR/prunekit-ids-*``, or the
  run's work directory when the load runs in one; removed at the end) sorted into ``B``
  hash buckets (:func:`~prunekit.io.ids.id_buckets`, a power of two chosen so one bucket
  fits that quarter of the budget); then one task per bucket reads that bucket of every
  shard and finds its duplicates exactly (equal values, not equal hashes). Equal ids always share a bucket, so a duplicate across two shards is
  found like one inside a shard, and the error names the same (smallest) ids either way.
  On a Ray cluster of several machines, ``TMPDIR`` must name storage every node sees.

Workers read the ids and labels of the rows they score with :class:`SideReader`
(``emb.sides().read("ids", start, stop)``), which pickles as the source's paths.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.ids import id_buckets
from prunekit.io.npzio import load_npy
from prunekit.io.source import EmbeddingSource

MAX_NAMED = 10  # duplicate ids named in the error
# Driver memory per id when uniqueness is checked in one piece: the id (a Python str is
# ~60 bytes), np.unique's fixed-width copy, its sort and counts.
DUP_ROW_BYTES = 128
BUDGET_SHARE = 4  # the ids of one check hold at most budget / BUDGET_SHARE
MAX_BUCKETS = 1 << 16
SIDES = ("ids", "labels")


@dataclass
class ShardSides:
    """One shard's check: its kind of id ("int", "str" or None), whether it has labels, and
    (small inputs only) the arrays themselves."""

    kind: str | None
    has_labels: bool
    ids: np.ndarray | None = None
    labels: np.ndarray | None = None


@dataclass
class Sides:
    """What the load found: which side arrays exist, and those held in memory (small input)."""

    has_ids: bool
    has_labels: bool
    ids: np.ndarray | None = None
    labels: np.ndarray | None = None


@dataclass(frozen=True)
class SideReader:
    """Reads ``ids``/``labels`` of a position range; pickles as the source's paths (plus any
    arrays already held in memory, which are then sliced instead of read)."""

    src: EmbeddingSource
    names: tuple[str, ...]  # the side arrays the set has
    held: dict[str, np.ndarray] = field(default_factory=dict)

    def read(self, name: str, start: int, stop: int) -> np.ndarray | None:
        """Entries ``start:stop`` of side array ``name`` (None when the set has none).

        Reads the shards the range overlaps, a slice of each where the format can (HDF5),
        else each shard's whole array, then sliced. Labels come as int64, ids as int64 or
        an object array of ``str``.
        """
        if name not in SIDES:
            raise ValueError(f"side array must be one of {SIDES}, got {name!r}")
        if name not in self.names:
            return None
        if name in self.held:
            return self.held[name][start:stop]
        if not 0 <= start <= stop <= self.src.n_total:
            raise IndexError(f"rows {start}:{stop} out of range for {self.src.n_total} rows")
        parts = []
        for i, s in enumerate(self.src.shards):
            a, b = max(start, s.start), min(stop, s.stop)
            if a < b:
                parts.append(self.src.shard_side(i, name, a - s.start, b - s.start))
        if not parts:  # an empty range: empty, of the set's kind of id
            return self.src.shard_side(0, name, 0, 0)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def check_unique(ids: np.ndarray, name: str) -> None:
    """Refuse duplicate ids held in memory, naming up to MAX_NAMED of them (smallest first)."""
    uniq, counts = np.unique(ids.astype(str) if ids.dtype == object else ids, return_counts=True)
    if uniq.size != ids.size:
        _refuse_duplicates(name, uniq[counts > 1][:MAX_NAMED].tolist())


def _refuse_duplicates(name: str, examples: list) -> None:
    raise PrunekitError(
        f"{name} ['ids'] has duplicate ids (e.g. {', '.join(map(str, examples))}); "
        "ids must be unique."
    )


def held_in_memory(n_total: int, budget: int) -> bool:
    """Whether ids and labels of ``n_total`` rows are checked (and kept) in one piece."""
    return n_total * DUP_ROW_BYTES <= budget // BUDGET_SHARE


def bucket_count(n_ids: int, budget: int) -> int:
    """Hash buckets for the bounded check: a power of two, each bucket's share of the ids
    within budget / BUDGET_SHARE (the result never depends on it, only the memory)."""
    share = max(1, budget // BUDGET_SHARE)
    need = max(1.0, n_ids * DUP_ROW_BYTES / share)
    return int(min(MAX_BUCKETS, 1 << math.ceil(math.log2(need))))


def check_sides(src: EmbeddingSource, name: str, *, budget: int, progress: bool = False) -> Sides:
    """Read and check every shard's ids and labels (see the module docstring); errors name
    ``name`` (the input as the user gave it) or the shard."""
    from prunekit.runtime.scratch import scratch_folder  # late: the runtime imports io

    with_ids = [s.id_key is not None for s in src.shards]
    if any(with_ids) and not all(with_ids):
        missing = src.shards[with_ids.index(False)]
        raise PrunekitError(
            f"shard {missing.path} has no ids but other shards of {src.name} do; "
            "give every shard ids (or none)."
        )
    small = held_in_memory(src.n_total, budget)
    buckets = 1 if small or not any(with_ids) else bucket_count(src.n_total, budget)
    with scratch_folder("ids") if buckets > 1 else contextlib.nullcontext() as scratch:
        found = _map_shards(src, scratch, buckets, small, progress)
        kinds = {f.kind for f in found}
        if len(kinds) > 1:
            raise PrunekitError(
                f"the shards of {src.name} mix integer and string ids; use one kind of id."
            )
        have = [f.has_labels for f in found]
        if any(have) and not all(have):
            missing = src.shards[have.index(False)]
            raise PrunekitError(
                f"shard {missing.path} has no labels but other shards of {src.name} do; "
                "give every shard labels (or none)."
            )
        out = Sides(kinds != {None}, all(have))
        if small:
            out.ids = _concat([f.ids for f in found]) if out.has_ids else None
            out.labels = _concat([f.labels for f in found]) if out.has_labels else None
            if out.ids is not None:
                check_unique(out.ids, name)
        elif scratch is not None:
            _check_buckets(src, scratch, buckets, kinds == {"str"}, name, progress)
        return out


def _concat(parts: list) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _map_shards(src, scratch, buckets, small, progress) -> list[ShardSides]:
    """:func:`_shard_task` for every shard, on the current engine when there are several."""
    shared = (src, None if scratch is None else str(scratch), buckets, small)
    if len(src.shards) == 1:
        return [_shard_task(shared, 0)]
    from prunekit.runtime.context import current_engine

    rows = max(s.n_rows for s in src.shards)
    return list(current_engine().map(_shard_task, range(len(src.shards)), shared,
                                     desc="ids", progress=progress,
                                     task_bytes=rows * DUP_ROW_BYTES))


def _shard_task(shared, i: int) -> ShardSides:
    """Engine task: read and check shard ``i``'s ids and labels; keep them (small input) or
    write the ids into their buckets."""
    src, scratch, buckets, small = shared
    labels = src.shard_labels(i)
    if labels is not None and labels.dtype.kind not in "iu":
        raise PrunekitError(f"{src.name} ['labels'] must be integers, got dtype {labels.dtype}.")
    has_labels = labels is not None
    if not small:
        labels = None  # checked; not kept (the memory goes to the ids' buckets)
    ids = src.shard_ids(i)
    kind = None if ids is None else ("str" if ids.dtype == object else "int")
    if small:
        return ShardSides(kind, has_labels, ids, None if labels is None else labels.astype(np.int64))
    if ids is not None and scratch is not None:
        _write_buckets(Path(scratch), i, ids, buckets)
    return ShardSides(kind, has_labels)


# -- the bucketed check -------------------------------------------------------------------


def _utf8(v: str) -> bytes:
    return v.encode("utf-8", "surrogatepass")


def _write_buckets(scratch: Path, i: int, ids: np.ndarray, buckets: int) -> None:
    """Shard ``i``'s ids sorted by bucket, with each bucket's bounds: ``values-i.npy`` (int
    ids) or ``blob-i.npy`` + ``ends-i.npy`` (UTF-8 bytes of string ids and their ends)."""
    b = id_buckets(ids, buckets)
    order = np.argsort(b, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(b, minlength=buckets))])
    del b  # one array fewer while the ids are reordered
    try:
        np.save(scratch / f"bounds-{i}.npy", bounds.astype(np.int64))
        if ids.dtype == object:
            enc = [_utf8(ids[j]) for j in order]
            np.save(scratch / f"ends-{i}.npy",
                    np.cumsum(np.fromiter(map(len, enc), np.int64, len(enc)), dtype=np.int64))
            np.save(scratch / f"blob-{i}.npy", np.frombuffer(b"".join(enc), dtype=np.uint8))
        else:
            np.save(scratch / f"values-{i}.npy", ids[order])
    except OSError as exc:
        raise PrunekitError(
            f"cannot write the id check's scratch files in {scratch}: {exc.strerror}. On a Ray "
            "cluster of several machines, set TMPDIR to a folder every node sees."
        ) from exc


def _check_buckets(src, scratch: Path, buckets: int, strings: bool, name: str,
                   progress: bool) -> None:
    """One task per bucket; the smallest duplicates of all buckets name the error."""
    from prunekit.runtime.context import current_engine

    shared = (str(scratch), len(src.shards), strings)
    per_bucket = DUP_ROW_BYTES * max(1, src.n_total // buckets) * 2  # an unlucky bucket
    n_dup, examples = 0, []
    with current_engine().map(_bucket_task, range(buckets), shared, desc="unique ids",
                              progress=progress, task_bytes=per_bucket) as results:
        for count, first in results:
            n_dup += count
            examples = sorted(examples + first)[:MAX_NAMED]
    if n_dup:
        _refuse_duplicates(name, examples)


def _bucket_task(shared, b: int) -> tuple[int, list]:
    """Engine task: bucket ``b`` of every shard; (how many ids repeat, the smallest of them)."""
    scratch, n_shards, strings = shared
    folder = Path(scratch)
    parts = []
    for i in range(n_shards):
        bounds = _load(folder / f"bounds-{i}.npy")
        lo, hi = int(bounds[b]), int(bounds[b + 1])
        if strings:
            ends = _load(folder / f"ends-{i}.npy", mmap=True)
            first = int(ends[lo - 1]) if lo else 0
            stops = np.asarray(ends[lo:hi], dtype=np.int64) - first
            size = int(stops[-1]) if stops.size else 0
            blob = bytes(_load(folder / f"blob-{i}.npy", mmap=True)[first : first + size])
            starts = np.concatenate(([0], stops[:-1])) if stops.size else stops  # none: empty
            text = np.empty(stops.size, dtype=object)
            text[:] = [blob[a:c].decode("utf-8", "surrogatepass")
                       for a, c in zip(starts.tolist(), stops.tolist(), strict=True)]
            parts.append(text)
        else:
            parts.append(np.array(_load(folder / f"values-{i}.npy", mmap=True)[lo:hi]))
    ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    uniq, counts = np.unique(ids.astype(str) if strings else ids, return_counts=True)
    dup = uniq[counts > 1]
    return int(dup.size), dup[:MAX_NAMED].tolist()


def _load(path: Path, mmap: bool = False) -> np.ndarray:
    """A scratch array this check wrote (never pickled objects)."""
    if not os.path.exists(path):
        raise PrunekitError(f"the id check's scratch file {path} is missing; on a Ray cluster "
                            "of several machines, set TMPDIR to a folder every node sees.")
    return load_npy(path, mmap=mmap)
