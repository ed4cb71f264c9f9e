"""``loss``: import per-item scores computed elsewhere (e.g. a model's training loss).

Larger score = kept first, so the natural order keeps the highest-loss items (the paper's
"L"); ``select --invert`` keeps the lowest ("L^-1"). Accepted files:

* HDF5 with a 1-D dataset ``score`` and optional ``ids`` (a prunekit scores file works);
* ``.npy`` holding a 1-D array, one score per row;
* ``.json``: an object ``{id: score}`` or a list of scores;
* ``.csv``: lines ``id,score``; a first line whose score field is not a number is a header.

Scores are matched to the embeddings by id when both sides have ids, by position
otherwise (then the file needs exactly one score per embedding row).

Written as a folder (``score -o DIR/``), a position-aligned ``.npy`` or HDF5 file without
``ids`` streams: each task reads its part's slice (a memory map, an HDF5 slice) and writes
the part, so the driver holds no per-row array. A file joined by id, and any ``.json`` or
``.csv``, is read whole on the driver as for a single file.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import h5py
import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.atomic import check_input
from prunekit.io.embeddings import Embeddings
from prunekit.io.h5io import decode_ids, open_h5, require
from prunekit.io.ids import id_positions
from prunekit.methods import MethodResult, Summary, register
from prunekit.methods.partwise import RowRange, write_score_parts
from prunekit.params import Param
from prunekit.runtime.costs import Cost, CostModel, Step
from prunekit.selection.partitioned import ScoresPartSink

NAMED = 5


def loss_cost(m: CostModel, p: dict) -> Cost:
    """No pass over the embeddings: the score file is read (about 20 ns a row); the scores
    and positions (none on the driver for a folder output from a position-aligned file)."""
    return Cost([Step("read score file", 0, m.n * 2e-8, m.n * 2e-8, 0)], 8 * m.n * 2)


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
        if written.n_nonfinite:
            raise _nonfinite(name, written.n_nonfinite, written.nonfinite)
        return MethodResult(score=None, parts=written.records,  # type: ignore[arg-type]
                            params={"from_file": name, "matched_by": "position"})
    values, ids = read_score_file(from_file)
    if ids is not None and emb.ids is not None:
        full = _by_id(values, ids, emb, name)
    else:
        if values.size != emb.n_total:
            raise PrunekitError(
                f"{name} has {values.size} scores but the embeddings {emb.name} have "
                f"{emb.n_total} rows; without ids on both sides scores are matched by position, "
                "so give one score per row (or add ids to both files)."
            )
        full = values
    used = full[emb.rows]
    bad = np.flatnonzero(~np.isfinite(used))
    if bad.size:
        raise _nonfinite(name, bad.size, emb.rows[bad[:NAMED]])
    return MethodResult(score=used, params={"from_file": name, "matched_by": "id" if (
        ids is not None and emb.ids is not None) else "position"})


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
        values = np.load(p, mmap_mode="r", allow_pickle=False)
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
        values = np.load(path, mmap_mode="r", allow_pickle=False)
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
            values, ids = np.load(p, allow_pickle=False), None
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


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PrunekitError(f"{where} is {_short(value)}, not a number; every score must be a number.")
    try:
        return float(value)
    except OverflowError:  # an integer beyond float64's range
        raise PrunekitError(f"{where} is {_short(value)}, beyond the float64 range.") from None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _read_json(p: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:  # ValueError covers huge integer literals
        raise PrunekitError(f"{p} is not valid JSON (UTF-8 text): {exc}") from exc
    except RecursionError:
        raise PrunekitError(
            f"{p} is nested too deeply to be a score file; give {{id: score}} or a list of scores."
        ) from None
    if isinstance(data, dict):
        values = [_number(v, f"{p} entry '{k}'") for k, v in data.items()]
        return np.array(values, dtype=np.float64), np.array(list(data.keys()), dtype=object)
    if isinstance(data, list):
        return np.array([_number(v, f"{p} item {i}") for i, v in enumerate(data)], dtype=np.float64), None
    raise PrunekitError(f"{p} must hold a JSON object {{id: score}} or a list of scores.")


def _read_csv(p: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)  # line_num: the file's line, blank lines counted
            rows = [(reader.line_num, r) for r in reader if r and any(c.strip() for c in r)]
    except UnicodeDecodeError as exc:
        raise PrunekitError(f"{p} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                            "save the CSV as UTF-8.") from None
    except csv.Error as exc:
        raise PrunekitError(f"{p} is not a valid CSV file: {exc}.") from None
    ids: list[str] = []
    values: list[float] = []
    for i, (line, row) in enumerate(rows):
        if len(row) != 2:
            raise PrunekitError(f"{p} line {line} has {len(row)} fields; each line must be 'id,score'.")
        try:
            values.append(float(row[1]))
        except ValueError:
            if i == 0:
                continue  # header
            raise PrunekitError(f"{p} line {line}: score '{row[1]}' is not a number.") from None
        ids.append(row[0].strip())
    return np.array(values, dtype=np.float64), np.array(ids, dtype=object)


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
        dup = ", ".join(map(str, uniq[counts > 1][:NAMED]))
        raise PrunekitError(f"{name} has duplicate ids (e.g. {dup}); each id needs one score.")
    pos, found = id_positions(target, ids)
    missing = np.flatnonzero(~found[emb.rows])
    _, known = id_positions(ids, target)
    extra = np.flatnonzero(~known)
    if missing.size or extra.size:
        parts = []
        if missing.size:
            parts.append(f"{missing.size} embedding ids have no score (e.g. "
                         f"{', '.join(map(str, target[emb.rows[missing[:NAMED]]]))})")
        if extra.size:
            parts.append(f"{extra.size} ids are not in the embeddings (e.g. "
                         f"{', '.join(map(str, ids[extra[:NAMED]]))})")
        raise PrunekitError(
            f"{name} does not match the ids of {emb.name}: {'; '.join(parts)}. "
            "Score exactly the embedded items."
        )
    out = np.full(emb.n_total, np.nan)
    out[found] = values[pos[found]]
    return out


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
