"""Values from a file joined to the embeddings by id in bounded memory: a hash shuffle.

Used for a scores folder (``score -o DIR/``) whose values come keyed by id (``loss --from``
a CSV, a JSON object or HDF5 with ``ids``). Nothing per row stays on the driver:

1. **Scatter the file**: the caller streams the file's ``(ids, values)`` in chunks; each
   chunk is written as one piece, its rows sorted (stably) into ``B`` hash buckets with
   their row number in the file. ``B`` (a power of two) follows the number of embedding
   rows only (about :data:`BUCKET_ROWS` a bucket), never the workers.
2. **Scatter the embeddings**: one engine task per output part reads that part's ids (the
   embeddings' side reader) and writes them, with their positions and whether the row is
   usable, as one piece sorted into the same buckets.
3. **Join**: one task per bucket reads its stretch of every piece (file pieces in file
   order, embedding pieces in position order), finds the duplicate, missing and extra ids
   of the bucket (equal ids always share a bucket: a string's bucket is the BLAKE2b hash
   of its UTF-8 bytes, an integer's a hash of its value) and, when there are none, leaves
   its ``(position, value)`` pairs keyed by position (:func:`write_keyed`).
4. The part tasks then read their position range of every bucket (:func:`read_joined`).

The driver holds O(pieces + buckets) numbers and the first few ids each problem names,
merged in a fixed order (ids as text for duplicates, position for missing ids, file order
for extra ones), so errors and results are the same on every engine and worker count.
Scratch space (about 40 bytes a row plus the ids) is the caller's
:class:`~prunekit.runtime.scratch.scratch_folder`: in the run's work directory, else in a
temporary folder, removed at the end.

**Resume.** With a work directory, each finished unit is recorded there under
``RECORD/KEY/`` (``KEY`` hashes the plan: the embeddings' fingerprint, rows, buckets and
parts, and the caller's ``identity`` of the file, say its path, size and mtime): the whole
file scatter once its last piece is written (the driver streams the file: an interrupted
scatter starts over), each embeddings part's scatter, and each bucket's
join (its report, and the size of its keyed file). The scratch files of a plan live in the
folder's subfolder ``KEY``. A later run of the same plan reuses a record only when it
verifies (:class:`~prunekit.runtime.resume.WorkDir`) and the files it names are there,
regular and of the recorded sizes, as the grouping checks its pieces; the rest is computed
again, to the same bytes. When every bucket is recorded the file is not read at all.
:func:`forget_join` removes a plan's files and records once they are of no more use.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.compute.grouping import keyed_size, read_keyed, write_keyed
from prunekit.errors import PrunekitError
from prunekit.io.ids import id_buckets, id_positions
from prunekit.io.npzio import load_npy
from prunekit.runtime.context import current_engine, current_work_dir
from prunekit.runtime.resume import WorkDir
from prunekit.runtime.scratch import private_subfolder

BUCKET_ROWS = 1 << 22  # embedding rows per join bucket on average
MAX_BUCKETS = 1 << 16
NAMED = 5  # examples an error names
ROW_BYTES = 256  # a join task's memory per row of its bucket (ids as Python objects, sorts)
KEYED = np.dtype([("key", "<i8"), ("value", "<f8")])
FILE_COLUMNS = ("value", "index")  # a file piece's columns besides its ids and bounds
EMB_COLUMNS = ("ok", "position")  # an embeddings piece's


@dataclass
class JoinReport:
    """What a join found: duplicate file ids (the smallest, as text), usable embedding rows
    without a value (count, first ids by position), file ids not in the embeddings (count,
    first ids in file order)."""

    duplicates: list = field(default_factory=list)
    n_missing: int = 0
    missing: list = field(default_factory=list)  # (position, id text)
    n_extra: int = 0
    extra: list = field(default_factory=list)  # (file row, id text)

    def add(self, other: JoinReport) -> None:
        self.duplicates = sorted(self.duplicates + other.duplicates)[:NAMED]
        self.n_missing += other.n_missing
        self.missing = sorted(self.missing + other.missing)[:NAMED]
        self.n_extra += other.n_extra
        self.extra = sorted(self.extra + other.extra)[:NAMED]

    @property
    def problems(self) -> bool:
        return bool(self.duplicates or self.n_missing or self.n_extra)

    @staticmethod
    def from_json(value: dict) -> JoinReport:
        """The report :func:`dataclasses.asdict` recorded (pairs come back as tuples)."""
        return JoinReport([str(v) for v in value["duplicates"]], int(value["n_missing"]),
                          [(int(p), str(t)) for p, t in value["missing"]],
                          int(value["n_extra"]), [(int(r), str(t)) for r, t in value["extra"]])


@dataclass(frozen=True)
class Joined:
    """The joined values, for :func:`read_joined` (pickles as a path and small arrays)."""

    folder: str
    buckets: int
    bounds: np.ndarray  # the parts' position ranges: part r is bounds[r]:bounds[r + 1]
    report: JoinReport


def n_buckets(n_rows: int) -> int:
    """Join buckets for ``n_rows`` embedding rows: a power of two, about BUCKET_ROWS each."""
    need = max(1, -(-int(n_rows) // BUCKET_ROWS))
    return min(MAX_BUCKETS, 1 << (need - 1).bit_length())


def join_by_id(emb, chunks: Iterable[tuple[np.ndarray, np.ndarray]], folder: Path, *,
               strings: bool, progress: bool = True, desc: str = "join",
               record: str = "join", identity: Any = None) -> Joined:
    """Join ``chunks`` (the file's ``(ids, float64 values)`` in file order, ids already of the
    embeddings' kind: int64, or an object array of ``str`` when ``strings``) to ``emb`` by id
    in ``folder``. The values are written only when the report has no problem.

    Each finished unit is recorded in the run's work directory as ``record/...`` and reused
    by a later run of the same plan (see the module docstring); ``identity`` (JSON) names
    the file's contents in the plan's key, e.g.
    :func:`prunekit.runtime.resume.file_identity`. ``chunks`` is only
    iterated when some bucket is not recorded."""
    from prunekit.io.dataset import output_parts

    work = current_work_dir()
    buckets = n_buckets(emb.n_total)
    parts = output_parts(emb.reader)
    bounds = np.array([p.start for p in parts] + [parts[-1].stop if parts else 0], np.int64)
    dropped = emb.dropped_rows()
    key = hashlib.blake2b(json.dumps(
        [emb.fingerprint, int(emb.n_total), int(dropped.size), buckets, strings,
         bounds.tolist(), identity], default=str).encode(), digest_size=8).hexdigest()
    prefix, folder = f"{record}/{key}", private_subfolder(Path(folder), key)
    done = [_bucket_record(work, folder, prefix, b) for b in range(buckets)]
    if any(d is None for d in done):
        n_file = _scatter_file(chunks, folder, work, prefix, buckets, strings)
        _scatter_emb(emb, parts, dropped, folder, work, prefix, buckets, strings, progress,
                     desc)
        _join_buckets(done, (str(folder), n_file, len(parts), strings, bounds), work, prefix,
                      2 * ROW_BYTES * max(1, emb.n_total // buckets), progress, desc)
    report = JoinReport()
    for bucket_report in done:
        report.add(bucket_report)
    return Joined(str(folder), buckets, bounds, report)


def forget_join(folder: Path, record: str = "join") -> None:
    """Remove the join's scratch ``folder`` and its records in the run's work directory:
    once the values are written, or the join has ended in an error of the inputs (which a
    changed file, a new plan, never meets), nothing of it is of use to a later run."""
    shutil.rmtree(folder, ignore_errors=True)  # a symlink is not followed
    work = current_work_dir()
    if work.enabled:
        shutil.rmtree(work.path / record, ignore_errors=True)


def _scatter_file(chunks, folder: Path, work: WorkDir, prefix: str, buckets: int,
                  strings: bool) -> int:
    """The file's pieces, from the record when it holds and they are whole, else streamed
    from ``chunks`` and recorded once the last is written; returns how many."""
    names = _names(FILE_COLUMNS, strings)
    rec = work.load(f"{prefix}/file")
    if (rec is not None and rec.ndim == 2 and rec.shape[1] == len(names)
            and all(_whole(folder, f"file-{i}", names, s) for i, s in enumerate(rec))):
        return rec.shape[0]
    sizes, start = [], 0
    for keys, values in chunks:
        sizes.append(_write_piece(folder, f"file-{len(sizes)}", keys, buckets, strings,
                                  value=np.asarray(values, dtype=np.float64),
                                  index=np.arange(start, start + keys.size, dtype=np.int64)))
        start += keys.size
    work.save(f"{prefix}/file", np.array(sizes, dtype=np.int64).reshape(-1, len(names)))
    return len(sizes)


def _scatter_emb(emb, parts, dropped, folder: Path, work: WorkDir, prefix: str, buckets: int,
                 strings: bool, progress: bool, desc: str) -> None:
    """The embeddings' pieces of the parts not recorded whole, one task a part."""
    names = _names(EMB_COLUMNS, strings)

    def whole(part) -> bool:
        rec = work.load(f"{prefix}/emb-{part.index:08d}")
        return rec is not None and rec.shape == (len(names),) and _whole(
            folder, f"emb-{part.index}", names, rec)

    todo = [p for p in parts if not whole(p)]
    rows = max((p.stop - p.start for p in todo), default=0)
    shared = (str(folder), emb.sides(), dropped, strings, buckets)
    with current_engine().map(_emb_task, todo, shared, desc=f"{desc} ids", progress=progress,
                              task_bytes=rows * ROW_BYTES) as results:
        for part, sizes in zip(todo, results, strict=True):
            work.save(f"{prefix}/emb-{part.index:08d}", sizes)


def _join_buckets(done: list, shared: tuple, work: WorkDir, prefix: str, task_bytes: int,
                  progress: bool, desc: str) -> None:
    """The join tasks of the buckets not recorded; fills ``done[b]`` with their reports."""
    todo = [b for b, d in enumerate(done) if d is None]
    with current_engine().map(_bucket_task, todo, shared, desc=desc, progress=progress,
                              task_bytes=task_bytes) as results:
        for b, (report, size) in zip(todo, results, strict=True):
            work.save_json(f"{prefix}/bucket-{b:08d}", {"report": asdict(report), "size": size})
            done[b] = report


def _bucket_record(work: WorkDir, folder: Path, prefix: str, b: int) -> JoinReport | None:
    """Bucket ``b``'s recorded report, when it verifies and its keyed file (if it wrote
    one) is there with the recorded size."""
    rec = work.load_json(f"{prefix}/bucket-{b:08d}")
    try:
        report, size = JoinReport.from_json(rec["report"]), int(rec["size"])
    except (TypeError, KeyError, ValueError):
        return None
    if (size < 0) != report.problems or (size >= 0 and keyed_size(folder, f"joined-{b}") != size):
        return None
    return report


def _names(columns: tuple[str, ...], strings: bool) -> tuple[str, ...]:
    """The files of a piece, in the order :func:`_write_piece` gives their sizes."""
    return (*columns, *(("ends", "blob") if strings else ("ids",)), "bounds")


def _whole(folder: Path, tag: str, names: tuple[str, ...], sizes) -> bool:
    """Whether piece ``tag``'s files are regular files of the recorded ``sizes``."""
    for name, size in zip(names, sizes, strict=True):
        try:
            st = os.lstat(folder / f"{tag}.{name}.npy")
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_size != int(size):
            return False
    return True


def _write_piece(folder: Path, tag: str, keys: np.ndarray, buckets: int, strings: bool,
                 **columns: np.ndarray) -> np.ndarray:
    """``keys`` and ``columns`` sorted (stably) by bucket, and each bucket's bounds; returns
    the sizes of its files (in :func:`_names` order), for the caller's record."""
    b = id_buckets(keys, buckets)
    order = np.argsort(b, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(b, minlength=buckets))])
    try:
        for name, col in columns.items():
            np.save(folder / f"{tag}.{name}.npy", col[order])
        if strings:
            enc = [k.encode("utf-8", "surrogatepass") for k in keys[order].tolist()]
            np.save(folder / f"{tag}.ends.npy",
                    np.cumsum(np.fromiter(map(len, enc), np.int64, len(enc)), dtype=np.int64))
            np.save(folder / f"{tag}.blob.npy", np.frombuffer(b"".join(enc), dtype=np.uint8))
        else:
            np.save(folder / f"{tag}.ids.npy", np.asarray(keys, dtype=np.int64)[order])
        np.save(folder / f"{tag}.bounds.npy", bounds.astype(np.int64))  # last: the piece is whole
        names = _names(tuple(columns), strings)
        return np.array([os.lstat(folder / f"{tag}.{n}.npy").st_size for n in names], np.int64)
    except OSError as exc:
        raise PrunekitError(
            f"cannot write the join's scratch files in {folder}: {exc.strerror}. On a Ray "
            "cluster of several machines, use a work directory or TMPDIR every node sees."
        ) from exc


def _load(path: Path, mmap: bool = False) -> np.ndarray:
    """A scratch array this join wrote (never pickled objects)."""
    if not path.exists():
        raise PrunekitError(f"the join's scratch file {path} is missing; on a Ray cluster of "
                            "several machines, use a work directory or TMPDIR every node sees.")
    return load_npy(path, mmap=mmap)


def _read_bucket(folder: Path, tag: str, n: int, b: int, strings: bool,
                 names: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Bucket ``b`` of pieces ``tag-0 .. tag-(n-1)``, in piece order: ids and columns."""
    keys: list[np.ndarray] = []
    cols: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for i in range(n):
        stem = f"{tag}-{i}"
        bounds = _load(folder / f"{stem}.bounds.npy")
        lo, hi = int(bounds[b]), int(bounds[b + 1])
        if hi == lo:
            continue
        for name in names:
            cols[name].append(np.array(_load(folder / f"{stem}.{name}.npy", True)[lo:hi]))
        if strings:
            ends = _load(folder / f"{stem}.ends.npy", True)
            first = int(ends[lo - 1]) if lo else 0
            stops = np.asarray(ends[lo:hi], dtype=np.int64) - first
            blob = bytes(_load(folder / f"{stem}.blob.npy", True)[first : first + int(stops[-1])])
            text = np.empty(stops.size, dtype=object)
            text[:] = [blob[a:c].decode("utf-8", "surrogatepass")
                       for a, c in zip(np.r_[0, stops[:-1]].tolist(), stops.tolist(), strict=True)]
            keys.append(text)
        else:
            keys.append(np.array(_load(folder / f"{stem}.ids.npy", True)[lo:hi]))
    empty = np.zeros(0, dtype=object if strings else np.int64)
    return (np.concatenate(keys) if keys else empty,
            {name: np.concatenate(c) if c else np.zeros(0) for name, c in cols.items()})


def _emb_task(shared: tuple, part) -> np.ndarray:
    """Engine task: one part's ids, positions and usable flags into their buckets; returns
    the sizes of the piece's files."""
    folder, sides, dropped, strings, buckets = shared
    ids = sides.read("ids", part.start, part.stop)
    ok = np.ones(part.stop - part.start, dtype=np.uint8)
    lo, hi = np.searchsorted(dropped, [part.start, part.stop])
    ok[dropped[lo:hi] - part.start] = 0
    return _write_piece(Path(folder), f"emb-{part.index}", ids, buckets, strings, ok=ok,
                        position=np.arange(part.start, part.stop, dtype=np.int64))


def _bucket_task(shared: tuple, b: int) -> tuple[JoinReport, int]:
    """Engine task: join bucket ``b``; its problems, else its values keyed by position.
    Returns the report and the size of the keyed file (-1: none written)."""
    folder, n_file, n_emb, strings, bounds = shared
    folder = Path(folder)
    fkeys, fcols = _read_bucket(folder, "file", n_file, b, strings, ("index", "value"))
    ekeys, ecols = _read_bucket(folder, "emb", n_emb, b, strings, ("position", "ok"))
    report = JoinReport()
    text = np.asarray([str(v) for v in fkeys.tolist()])  # duplicates compared as text
    uniq, counts = np.unique(text, return_counts=True)
    if uniq.size != text.size:
        report.duplicates = [str(v) for v in uniq[counts > 1][:NAMED]]
        return report, -1
    pos, found = id_positions(ekeys, fkeys)
    missing = np.flatnonzero(~found & (ecols["ok"] != 0))
    _, known = id_positions(fkeys, ekeys)
    extra = np.flatnonzero(~known)
    report.n_missing, report.n_extra = int(missing.size), int(extra.size)
    report.missing = [(int(ecols["position"][j]), str(ekeys[j])) for j in missing[:NAMED]]
    report.extra = [(int(fcols["index"][j]), str(fkeys[j])) for j in extra[:NAMED]]
    if missing.size or extra.size:
        return report, -1
    records = np.empty(int(found.sum()), dtype=KEYED)
    records["key"] = ecols["position"][found]
    records["value"] = fcols["value"][pos[found]]
    return report, write_keyed(folder, f"joined-{b}", records, bounds)


def read_joined(joined: Joined, ranges: list) -> Iterator[np.ndarray]:
    """Engine task's reader (:func:`~prunekit.methods.partwise.write_score_parts`): the joined
    values at each range's positions, NaN where no id matched (rows dropped at load)."""
    if not ranges:
        return
    bounds = joined.bounds
    r = int(np.searchsorted(bounds, ranges[0].start, side="right")) - 1
    start, stop = int(bounds[r]), int(bounds[r + 1])
    names = [f"joined-{b}" for b in range(joined.buckets)]
    records = read_keyed(joined.folder, names, r, bounds.size - 1, KEYED)
    full = np.full(stop - start, np.nan)
    full[records["key"] - start] = records["value"]
    for rr in ranges:
        yield full[rr.start - start : rr.stop - start]
