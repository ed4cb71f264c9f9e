"""``loss``: import per-item scores computed elsewhere (e.g. a model's training loss).

Larger score = kept first, so the natural order keeps the highest-loss items (the paper's
"L"); ``select --invert`` keeps the lowest ("L^-1"). Accepted files:

* HDF5 with a 1-D dataset ``score`` and optional ``ids`` (a prunekit scores file works);
* ``.npy`` holding a 1-D array, one score per row;
* ``.json``: an object ``{id: score}`` or a list of scores;
* ``.csv``: lines ``id,score``; a first line whose score field is not a number is a header.

Scores are matched to the embeddings by id when both sides have ids, by position
otherwise (then the file needs exactly one score per embedding row).

Written as a folder (``score -o DIR/``), the driver holds no per-row array: a
position-aligned ``.npy`` or HDF5 file without ``ids`` is read by the tasks, each its
part's slice (a memory map, an HDF5 slice); a file joined by id (CSV, HDF5 with ``ids``) is
streamed in chunks into the hash join of :mod:`prunekit.compute.join`, whose tasks write
the parts (a JSON object too: :mod:`prunekit.io.jsonstream` reads JSON as a stream, never
whole). A streamed file matched by position (a JSON list; a CSV, JSON object or HDF5 with
``ids`` when the embeddings have none) is first written to a scratch ``.npy`` and then read
as one. The folder and the errors are those of the whole-file read, which a single file
still uses.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from prunekit.compute.join import forget_join, join_by_id, read_joined
from prunekit.errors import PrunekitError
from prunekit.io.atomic import check_input
from prunekit.io.embeddings import Embeddings
from prunekit.io.h5io import decode_ids, open_h5, require
from prunekit.io.ids import id_positions
from prunekit.io.jsonstream import json_batches, json_kind
from prunekit.io.npzio import load_npy
from prunekit.methods import MethodResult, Summary, register
from prunekit.methods.partwise import RowRange, write_score_parts
from prunekit.params import Param
from prunekit.runtime.costs import Cost, CostModel, Step
from prunekit.runtime.memory import check_fits
from prunekit.runtime.resume import file_identity
from prunekit.runtime.scratch import scratch_folder
from prunekit.selection.partitioned import ScoresPartSink

NAMED = 5
FILE_ROWS = 1 << 18  # lines of a score file joined by id that the driver holds at once


def loss_cost(m: CostModel, p: dict) -> Cost:
    """No pass over the embeddings: the score file is read (about 20 ns a row); the scores
    and positions (none on the driver for a folder output)."""
    return Cost([Step("read score file", 0, m.n * 2e-8, m.n * 2e-8, 0)],
                0 if m.folder else 8 * m.n * 2)


def loss_detail(p: dict) -> str:
    return f" (imported from {p['from_file']}, matched by {p['matched_by']})"


@register("loss", params=(
    Param("from_file", "path", None,
          "Scores to import: HDF5 ('score', optional 'ids'), .npy, .json or .csv (id,score).",
          flag="--from"),
), cost=loss_cost, summary=Summary(detail=loss_detail))
def loss_scores(
    emb: Embeddings,
    *,
    seed: int = 0,
    progress: bool = True,
    from_file: str | os.PathLike | None = None,
    parts: ScoresPartSink | None = None,
) -> MethodResult:
    """The imported score of every usable row (non-finite imported scores are an error)."""
    if from_file is None:
        raise PrunekitError("method 'loss' needs the file of scores to import: --from FILE.")
    name = str(from_file)
    source = None if parts is None else position_source(from_file, emb)
    if source is not None:  # each task reads its part's slice of the file
        written = write_score_parts(emb, parts, _read_part, source, desc="loss import",
                                    progress=progress)
        return _written(written, name, "position")
    chunks = None if parts is None else _positional_chunks(from_file, emb)
    if chunks is not None:  # streamed to a scratch .npy, then read as one
        with scratch_folder("loss-spool") as folder:
            source = _spooled(chunks, emb, folder / "scores.npy", name)
            written = write_score_parts(emb, parts, _read_part, source, desc="loss import",
                                        progress=progress)
        return _written(written, name, "position")
    if parts is not None and emb.has_ids:
        chunks = id_chunks(from_file)
        if chunks is not None:  # joined by id in buckets, each written by a task
            return _joined_parts(emb, chunks, name, parts, progress)
    values, ids = read_score_file(from_file)
    if ids is not None and emb.ids is not None:
        full = _by_id(values, ids, emb, name)
    else:
        if values.size != emb.n_total:
            raise _count_mismatch(name, values.size, emb)
        full = values
    used = full[emb.rows]
    bad = np.flatnonzero(~np.isfinite(used))
    if bad.size:
        raise _nonfinite(name, bad.size, emb.rows[bad[:NAMED]])
    return MethodResult(score=used, params={"from_file": name, "matched_by": "id" if (
        ids is not None and emb.ids is not None) else "position"})


def _count_mismatch(name: str, count: int, emb: Embeddings) -> PrunekitError:
    return PrunekitError(
        f"{name} has {count} scores but the embeddings {emb.name} have {emb.n_total} rows; "
        "without ids on both sides scores are matched by position, so give one score per "
        "row (or add ids to both files)."
    )


def _positional_chunks(path: str | os.PathLike, emb: Embeddings):
    """The file's ``(ids, float64 scores)`` in chunks when they are matched by position and
    can be streamed: a JSON list, or a JSON object, CSV or HDF5 with ``ids`` when the
    embeddings have no ids. None otherwise."""
    p = _checked(path)
    is_json = p.suffix.lower() == ".json"
    if emb.has_ids and not (is_json and json_kind(p) == "array"):
        return None
    return json_batches(p, FILE_ROWS) if is_json else id_chunks(p)


def _spooled(chunks, emb: Embeddings, path: Path, name: str) -> tuple[str, str]:
    """The streamed scores written to ``path`` as a float64 ``.npy`` of one score per
    embedding row (8 B a row on disk, a chunk in memory), for the part tasks to slice as
    a position-aligned file; the whole-file read's error when the count is not the rows'."""
    n, count = emb.n_total, 0
    with open(path, "xb") as f:  # a new file in a private scratch folder
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f8", "fortran_order": False, "shape": (n,)})
        for _, values in chunks:
            if count + values.size <= n:  # past n only the count matters (the error)
                f.write(np.ascontiguousarray(values, dtype="<f8").tobytes())
            count += values.size
    if count != n:
        raise _count_mismatch(name, count, emb)
    return "npy", str(path)


def _nonfinite(name: str, count: int, rows: np.ndarray) -> PrunekitError:
    """The error for ``count`` non-finite scores, naming the first embedding ``rows``."""
    return PrunekitError(
        f"{name} has {count} non-finite scores (NaN/inf) for embedding rows "
        f"{', '.join(map(str, rows[:NAMED]))}{', ...' if count > NAMED else ''}. "
        "Fix them in the file."
    )


def position_source(path: str | os.PathLike, emb: Embeddings) -> tuple[str, str] | None:
    """``(kind, path)`` when the file can be read in slices by position: a ``.npy`` (memory
    mapped, no pickles) or an HDF5 file without ``ids``, whose ``score`` is a 1-D array of
    numbers with one value per embedding row. None otherwise: the whole file is then read
    by :func:`read_score_file`, which also gives the errors of a file that does not fit."""
    p = _checked(path)
    if h5py.is_hdf5(p):
        with open_h5(p, "scores") as f:
            d = f.get("score")
            if "ids" in f or not isinstance(d, h5py.Dataset) or d.shape is None \
                    or not _aligned(d.shape, d.dtype, emb):
                return None
        return "h5", str(p)
    if p.suffix.lower() != ".npy":
        return None
    try:
        values = load_npy(p, mmap=True)
    except (ValueError, OSError):
        return None
    ok = isinstance(values, np.ndarray) and _aligned(values.shape, values.dtype, emb)
    del values  # the tasks map the file themselves
    return ("npy", str(p)) if ok else None


def _aligned(shape: tuple, dtype: np.dtype, emb: Embeddings) -> bool:
    return len(shape) == 1 and shape[0] == emb.n_total and (
        np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_))


def _read_part(source: tuple[str, str], ranges: list[RowRange]):
    """Engine task's reader (:func:`~prunekit.methods.partwise.write_score_parts`): the
    file's scores at each range's positions, as :func:`read_score_file` converts them."""
    kind, path = source
    if kind == "npy":
        values = load_npy(path, mmap=True)
        for r in ranges:
            yield np.asarray(values[r.start : r.stop]).astype(np.float64)
        return
    with open_h5(path, "scores") as f:
        d = f["score"]
        for r in ranges:
            yield np.asarray(d[r.start : r.stop]).astype(np.float64)


def _checked(path: str | os.PathLike) -> Path:
    """``path`` as a Path once it is an existing regular file."""
    p = Path(path)
    if not p.exists() or p.is_dir():
        raise PrunekitError(f"scores file to import not found: {p}. Check the --from path.")
    check_input(p, "scores file to import")  # a FIFO would block the read forever
    return p


def read_score_file(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """``(scores float64, ids or None)`` from an HDF5, .npy, .json or .csv file."""
    p = _checked(path)
    if h5py.is_hdf5(p):
        with open_h5(p, "scores") as f:
            values = np.asarray(require(f, "score", "scores")[()])
            ids = decode_ids(f["ids"][()]) if "ids" in f else None
    elif p.suffix.lower() == ".npy":
        try:
            values, ids = load_npy(p), None
        except (ValueError, OSError) as exc:
            raise PrunekitError(f"cannot read {p} as .npy: {exc}") from exc
    elif p.suffix.lower() == ".json":
        values, ids = _read_json(p)
    elif p.suffix.lower() == ".csv":
        values, ids = _read_csv(p)
    else:
        raise PrunekitError(
            f"cannot tell the format of {p}; import scores from HDF5 (dataset 'score'), "
            ".npy, .json or .csv (id,score)."
        )
    if values.ndim != 1 or not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
        raise PrunekitError(
            f"{p}: scores must be a 1-D array of numbers, got shape {values.shape} dtype {values.dtype}."
        )
    if ids is not None and ids.shape != values.shape:
        raise PrunekitError(f"{p}: 'ids' has {ids.size} entries but 'score' has {values.size}.")
    return values.astype(np.float64), ids


def _read_json(p: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """A JSON file's scores, and an object's keys as ids, read as a stream
    (:mod:`prunekit.io.jsonstream`): what is held is the float64 scores (and the keys), not
    the parsed document."""
    keyed = json_kind(p) == "object"
    batches = list(json_batches(p))
    n = sum(v.size for _, v in batches)
    check_fits(8.0 * n * (2 if keyed else 1), f"the {n} scores of {p}")
    values = np.concatenate([v for _, v in batches]) if batches else np.zeros(0)
    if not keyed:
        return values, None
    ids = np.concatenate([i for i, _ in batches]) if batches else np.zeros(0, dtype=object)
    return values, ids


def _read_csv(p: Path) -> tuple[np.ndarray, np.ndarray | None]:
    chunks = list(_csv_chunks(p, 1 << 62))
    return (np.concatenate([v for _, v in chunks]),
            np.concatenate([np.zeros(0, dtype=object)] + [i for i, _ in chunks]))


def _csv_chunks(p: Path, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(ids, float64 scores)`` of up to ``rows`` lines at a time. A file that is not valid
    CSV (UTF-8) is refused before a bad line is, wherever each is: the first bad line's
    error waits until the whole file has been read."""
    ids: list[str] = []
    values: list[float] = []
    error = None
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)  # line_num: the file's line, blank lines counted
            first = True
            for row in reader:
                if not (row and any(c.strip() for c in row)) or error is not None:
                    continue
                error = _csv_row(p, reader.line_num, row, first, ids, values)
                first = False
                if len(values) >= rows:
                    yield np.array(ids, dtype=object), np.array(values, dtype=np.float64)
                    ids, values = [], []
    except UnicodeDecodeError as exc:
        raise PrunekitError(f"{p} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                            "save the CSV as UTF-8.") from None
    except csv.Error as exc:
        raise PrunekitError(f"{p} is not a valid CSV file: {exc}.") from None
    if error is not None:
        raise error
    yield np.array(ids, dtype=object), np.array(values, dtype=np.float64)


def _csv_row(p: Path, line: int, row: list[str], first: bool, ids: list[str],
             values: list[float]) -> PrunekitError | None:
    """Append one line's id and score (a first line without a number is a header), or
    return its error."""
    if len(row) != 2:
        return PrunekitError(f"{p} line {line} has {len(row)} fields; each line must be 'id,score'.")
    try:
        values.append(float(row[1]))
    except ValueError:
        if first:
            return None  # header
        return PrunekitError(f"{p} line {line}: score '{row[1]}' is not a number.")
    ids.append(row[0].strip())
    return None


def id_chunks(path: str | os.PathLike) -> Iterator[tuple[np.ndarray, np.ndarray]] | None:
    """The file's ``(ids, float64 scores)`` in chunks of :data:`FILE_ROWS`, in file order,
    when it holds ids: a CSV file, HDF5 with ``ids`` or a JSON object read chunk by chunk.
    None otherwise, or for an HDF5 file whose datasets do not fit (then
    :func:`read_score_file` gives the error)."""
    p = _checked(path)
    if h5py.is_hdf5(p):
        with open_h5(p, "scores") as f:
            d, raw = f.get("score"), f.get("ids")
            ok = all(isinstance(x, h5py.Dataset) and x.shape is not None and len(x.shape) == 1
                     for x in (d, raw)) and d.shape == raw.shape and (
                np.issubdtype(d.dtype, np.number) or d.dtype == bool)
        return _h5_chunks(p, FILE_ROWS) if ok else None
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return _csv_chunks(p, FILE_ROWS)
    if suffix == ".json":
        return json_batches(p, FILE_ROWS) if json_kind(p) == "object" else None
    return None


def _h5_chunks(p: Path, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """An HDF5 file's ids and scores, ``rows`` at a time; ids that do not decode are named
    as the whole-file read names them."""
    failed = None
    with open_h5(p, "scores") as f:
        d, raw = f["score"], f["ids"]
        for a in range(0, d.shape[0], rows):
            try:
                ids = decode_ids(raw[a : a + rows])
            except PrunekitError as exc:
                failed = exc
                break
            yield ids, np.asarray(d[a : a + rows]).astype(np.float64)
    if failed is not None:
        read_score_file(p)  # raises the error of the whole file's ids
        raise failed


def _as_keys(chunks, strings: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """File ids converted to the embeddings' kind, as :func:`_by_id` converts them; an id
    that is not an integer is refused once the whole file has been read (its own errors
    come first, as in the whole-file read)."""
    error = None
    for ids, values in chunks:
        if error is not None:
            continue
        if strings:
            keys = np.empty(ids.size, dtype=object)
            keys[:] = [str(v) for v in ids.tolist()]
        else:
            try:
                keys = _as_int_ids(ids)
            except PrunekitError as exc:
                error = exc
                continue
        yield keys, values
    if error is not None:
        raise error


def _joined_parts(emb: Embeddings, chunks, name: str, parts: ScoresPartSink,
                  progress: bool) -> MethodResult:
    """A folder's parts from a file joined to ``emb`` by id (:mod:`prunekit.compute.join`):
    the same scores and errors as :func:`_by_id`, with nothing per row on the driver."""
    strings = emb.side_for("ids", 0, min(1, emb.n_total)).dtype == object
    # Each finished unit is recorded for --resume (keyed by the file's path, size and
    # mtime too); its files and records go once the parts are written or on an error of
    # the inputs, and stay only when the run is interrupted.
    with scratch_folder("loss-join", resume=True) as folder:
        try:
            joined = join_by_id(emb, _as_keys(chunks, strings), folder, strings=strings,
                                progress=progress, desc="loss join", record="loss-join",
                                identity=file_identity(name))
            found = joined.report
            if found.duplicates:
                raise _duplicates(name, found.duplicates)
            if found.n_missing or found.n_extra:
                raise _mismatch(name, emb.name, found.n_missing, [i for _, i in found.missing],
                                found.n_extra, [i for _, i in found.extra])
            written = write_score_parts(emb, parts, read_joined, joined, desc="loss import",
                                        progress=progress)
        except PrunekitError:
            forget_join(folder, "loss-join")
            raise
        forget_join(folder, "loss-join")
    return _written(written, name, "id")


def _written(written, name: str, matched_by: str) -> MethodResult:
    """The result of parts the tasks wrote; an error if any scored row was not finite."""
    if written.n_nonfinite:
        raise _nonfinite(name, written.n_nonfinite, written.nonfinite)
    return MethodResult(score=None, parts=written.records,  # type: ignore[arg-type]
                        params={"from_file": name, "matched_by": matched_by})


def _by_id(values: np.ndarray, ids: np.ndarray, emb: Embeddings, name: str) -> np.ndarray:
    """Scores in embedding row order, matched by id; NaN for rows dropped at load time."""
    target = emb.ids
    assert target is not None
    if target.dtype.kind in "iu":
        ids = _as_int_ids(ids)
    else:  # string ids: compare the file's ids as text, whatever their type there
        ids = np.array([str(v) for v in ids.tolist()], dtype=object)
    uniq, counts = np.unique(np.asarray([str(v) for v in ids.tolist()]), return_counts=True)
    if uniq.size != ids.size:
        raise _duplicates(name, uniq[counts > 1][:NAMED])
    pos, found = id_positions(target, ids)
    missing = np.flatnonzero(~found[emb.rows])
    _, known = id_positions(ids, target)
    extra = np.flatnonzero(~known)
    if missing.size or extra.size:
        raise _mismatch(name, emb.name, missing.size, target[emb.rows[missing[:NAMED]]],
                        extra.size, ids[extra[:NAMED]])
    out = np.full(emb.n_total, np.nan)
    out[found] = values[pos[found]]
    return out


def _duplicates(name: str, examples) -> PrunekitError:
    return PrunekitError(f"{name} has duplicate ids (e.g. {', '.join(map(str, examples))}); "
                         "each id needs one score.")


def _mismatch(name: str, emb_name: str, n_missing: int, missing, n_extra: int,
              extra) -> PrunekitError:
    """The error for embedding ids without a score and file ids not among the embeddings,
    naming the first few of each (``missing``, ``extra``)."""
    parts = []
    if n_missing:
        parts.append(f"{n_missing} embedding ids have no score (e.g. "
                     f"{', '.join(map(str, missing))})")
    if n_extra:
        parts.append(f"{n_extra} ids are not in the embeddings (e.g. "
                     f"{', '.join(map(str, extra))})")
    return PrunekitError(
        f"{name} does not match the ids of {emb_name}: {'; '.join(parts)}. "
        "Score exactly the embedded items."
    )


def _as_int_ids(ids: np.ndarray) -> np.ndarray:
    """File ids as integers when the embeddings have integer ids; unparsable ones never match."""
    if ids.dtype.kind in "iu":
        return ids.astype(np.int64)
    out = []
    for v in ids:
        try:
            out.append(int(str(v).strip()))
        except ValueError:
            raise PrunekitError(
                f"id '{v}' is not an integer, but the embeddings have integer ids; "
                "use the same ids in both files."
            ) from None
    return np.array(out, dtype=np.int64)
