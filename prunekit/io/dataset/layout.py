"""The partitioned dataset layout: file names, column types, hashing and the manifest's checks.

A dataset is a folder ``OUT/`` holding ``part-00000.parquet ...`` (the per-row columns,
one part per input shard or position range), optional side arrays (``centroids.npy``) and
side tables (``order-00000.parquet ...``), and ``manifest.json``, written last. The full
contract is in docs/formats.md ("Partitioned outputs").
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.errors import PrunekitError

FORMAT = "prunekit-parts"
VERSION = 1
MANIFEST = "manifest.json"
META_KEY = b"prunekit"  # key of the Parquet schema metadata each part carries
PARQUET_HINT = 'partitioned outputs need pyarrow: pip install "prunekit[parquet]"'
ROW_GROUP_ROWS = 1 << 17  # rows per Parquet row group: what one streamed read holds at most
PART_ROWS = 1 << 20  # positions per part when an in-memory object is saved (no input shards)
TABLE_PART_ROWS = 1 << 20  # rows per side-table part (e.g. a greedy pick order)
HASH_ALWAYS_BYTES = 64 << 20  # parts up to this size are hashed on every read (verify=None)
HASH_BLOCK = 1 << 20

# Per-row columns each kind may hold, with the types allowed for each.
COLUMNS: dict[str, dict[str, tuple[str, ...]]] = {
    "scores": {
        "position": ("int64",),
        "id": ("int64", "string"),
        "score": ("float64",),
        "cluster": ("int64",),
        "centroid_distance": ("float64", "float32"),
        "label": ("int64",),
    },
    "selection": {"position": ("int64",), "id": ("int64", "string"), "count": ("int64",)},
}
REQUIRED = {"scores": ("position", "score"), "selection": ("position",)}
TABLE_TYPES = ("int64", "float64", "float32", "string")
ARRAY_DTYPES = ("float16", "float32", "float64", "int32", "int64")
NAME_RE = re.compile(r"^[a-z][a-z_]{0,31}$")
HEX_RE = re.compile(r"^[0-9a-f]{32}$")
FILE_RE = re.compile(r"^(?:[a-z][a-z_]{0,31})-\d{5,}\.parquet$")


def pyarrow_modules():
    """``(pyarrow, pyarrow.parquet)``, or the install line when the extra is missing."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise PrunekitError(f"{PARQUET_HINT} ({exc}).") from exc
    return pa, pq


def part_name(prefix: str, index: int) -> str:
    """``part-00003.parquet``: the file of part ``index`` of series ``prefix``."""
    return f"{prefix}-{index:05d}.parquet"


def blake2b_file(path: str | os.PathLike) -> str:
    """BLAKE2b-128 of a file's bytes (hex), read in 1 MiB blocks."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def run_id_for(identity: dict[str, Any]) -> str:
    """A run id derived from what a run computes (kind, inputs' fingerprint, method, params).

    Two runs with the same identity write the same bytes (the determinism contract), so
    their parts may be mixed harmlessly; runs that differ get different ids, and a part of
    one found in the other's folder is refused.
    """
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def column_type(name: str, values: np.ndarray, allowed: tuple[str, ...]) -> str:
    """The manifest type of a numpy column (``int64``, ``float64``, ``float32``, ``string``)."""
    kind = values.dtype.kind
    if kind in "iu" and "int64" in allowed:
        return "int64"
    if kind == "f" and values.dtype == np.float32 and "float32" in allowed:
        return "float32"
    if kind in "fiu" and "float64" in allowed:
        return "float64"
    if kind in "OUS" and "string" in allowed:
        return "string"
    raise PrunekitError(
        f"column '{name}' cannot hold dtype {values.dtype}; allowed: {', '.join(allowed)}."
    )


def arrow_array(pa, values: np.ndarray, type_name: str):
    """A numpy column as the Arrow array of its manifest type (strings as UTF-8 ``string``)."""
    if type_name == "string":
        values = [v.decode() if isinstance(v, bytes) else str(v) for v in values]
        return pa.array(values, type=pa.string())  # may come back chunked past 2 GB
    return pa.array(np.ascontiguousarray(values, dtype=np.dtype(type_name)))


def arrow_type_name(pa, t) -> str | None:
    """The manifest type of an Arrow type, or None for one a part may not hold."""
    for name, at in (
        ("int64", pa.int64()),
        ("float64", pa.float64()),
        ("float32", pa.float32()),
        ("string", pa.string()),
    ):
        if t == at:
            return name
    return None


class Damaged(PrunekitError):
    """A dataset whose files disagree with each other; the message says which and the fix."""


def fix_line(folder: Path) -> str:
    return f"restore it from a copy or rerun the command that wrote {folder}"


# -- manifest checks ------------------------------------------------------------------------


def check_manifest(m: Any, folder: Path) -> dict:
    """Validate a parsed manifest's structure (not the files); return it."""
    where = folder / MANIFEST
    if not isinstance(m, dict):
        raise Damaged(f"{where} must hold a JSON object; {fix_line(folder)}.")
    if m.get("format") != FORMAT:
        raise PrunekitError(
            f"{where} is not a {FORMAT} manifest (format {m.get('format')!r}); "
            "give a folder written by prunekit."
        )
    version = _int(m, "version", where, folder)
    if version > VERSION:
        raise PrunekitError(
            f"{where} has format version {version}; this prunekit reads up to "
            f"{VERSION}: upgrade prunekit (pip install -U prunekit)."
        )
    kind = m.get("kind")
    if kind not in COLUMNS:
        raise Damaged(
            f"{where}: 'kind' must be one of {', '.join(COLUMNS)}, got {kind!r}; "
            f"{fix_line(folder)}."
        )
    if not isinstance(m.get("run_id"), str) or not HEX_RE.match(m["run_id"]):
        raise Damaged(f"{where}: 'run_id' must be 32 hex digits; {fix_line(folder)}.")
    n_total = _int(m, "n_total", where, folder)
    n_rows = _int(m, "n_rows", where, folder)
    _check_columns(m.get("columns"), COLUMNS[kind], REQUIRED[kind], where, folder)
    parts = _list(m, "parts", where, folder)
    if not parts:
        raise Damaged(f"{where}: 'parts' is empty; {fix_line(folder)}.")
    stop = 0
    for i, p in enumerate(parts):
        _check_file_entry(p, f"parts[{i}]", part_name("part", i), where, folder)
        a, b = _int(p, "start", where, folder), _int(p, "stop", where, folder)
        if a != stop or b < a or (kind == "scores" and p["rows"] != b - a) or p["rows"] > b - a:
            raise Damaged(
                f"{where}: parts[{i}] covers positions {a}..{b} with {p['rows']} rows, "
                f"which does not continue the parts before it at {stop}; {fix_line(folder)}."
            )
        stop = b
    if stop != n_total or sum(p["rows"] for p in parts) != n_rows:
        raise Damaged(
            f"{where}: the parts cover {stop} positions and hold "
            f"{sum(p['rows'] for p in parts)} rows, but n_total={n_total} and "
            f"n_rows={n_rows}; {fix_line(folder)}."
        )
    _check_arrays(m.get("arrays", {}), where, folder)
    _check_tables(m.get("tables", {}), where, folder)
    if not isinstance(m.get("params", {}), dict) or not isinstance(m.get("command", []), list):
        raise Damaged(
            f"{where}: 'params' must be a JSON object and 'command' a list; {fix_line(folder)}."
        )
    return m


def _int(d: dict, key: str, where: Path, folder: Path) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise Damaged(
            f"{where}: '{key}' must be a non-negative integer, got {v!r}; {fix_line(folder)}."
        )
    return v


def _list(d: dict, key: str, where: Path, folder: Path) -> list:
    v = d.get(key)
    if not isinstance(v, list):
        raise Damaged(f"{where}: '{key}' must be a list; {fix_line(folder)}.")
    return v


def _check_columns(cols: Any, allowed: dict, required: tuple, where: Path, folder: Path) -> None:
    ok = (
        isinstance(cols, dict)
        and all(k in allowed and v in allowed[k] for k, v in cols.items())
        and all(r in cols for r in required)
    )
    if not ok:
        types = ", ".join(k + ": " + "|".join(v) for k, v in allowed.items())
        raise Damaged(
            f"{where}: 'columns' must map column names to types ({types}) and "
            f"include {', '.join(required)}; got {cols!r}; {fix_line(folder)}."
        )


def _check_file_entry(
    p: Any, label: str, name: str, where: Path, folder: Path, rows: bool = True
) -> None:
    """A file entry: the expected name (never a path), ``rows``, ``bytes`` and a hash."""
    if not isinstance(p, dict) or p.get("file") != name:
        got = p.get("file") if isinstance(p, dict) else p
        raise Damaged(f"{where}: {label} must name file {name}, got {got!r}; {fix_line(folder)}.")
    for key in ("rows", "bytes") if rows else ("bytes",):
        _int(p, key, where, folder)
    if not isinstance(p.get("blake2b"), str) or not HEX_RE.match(p["blake2b"]):
        raise Damaged(f"{where}: {label} 'blake2b' must be 32 hex digits; {fix_line(folder)}.")


def _check_arrays(arrays: Any, where: Path, folder: Path) -> None:
    if not isinstance(arrays, dict):
        raise Damaged(f"{where}: 'arrays' must be a JSON object; {fix_line(folder)}.")
    for name, a in arrays.items():
        if not NAME_RE.match(str(name)):
            raise Damaged(f"{where}: array name {name!r} is not allowed; {fix_line(folder)}.")
        _check_file_entry(a, f"arrays.{name}", f"{name}.npy", where, folder, rows=False)
        shape = a.get("shape")
        if a.get("dtype") not in ARRAY_DTYPES or not (
            isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)
        ):
            raise Damaged(
                f"{where}: arrays.{name} needs 'dtype' (one of {', '.join(ARRAY_DTYPES)}) "
                f"and 'shape' (a list of sizes); {fix_line(folder)}."
            )


def _check_tables(tables: Any, where: Path, folder: Path) -> None:
    if not isinstance(tables, dict):
        raise Damaged(f"{where}: 'tables' must be a JSON object; {fix_line(folder)}.")
    for name, t in tables.items():
        if not NAME_RE.match(str(name)) or name == "part" or not isinstance(t, dict):
            raise Damaged(f"{where}: table {name!r} is not allowed; {fix_line(folder)}.")
        cols = t.get("columns")
        if (
            not isinstance(cols, dict)
            or not cols
            or not all(NAME_RE.match(str(k)) and v in TABLE_TYPES for k, v in cols.items())
        ):
            raise Damaged(
                f"{where}: tables.{name} 'columns' must map names to "
                f"{'|'.join(TABLE_TYPES)}; {fix_line(folder)}."
            )
        parts = _list(t, "parts", where, folder)
        for i, p in enumerate(parts):
            _check_file_entry(p, f"tables.{name}.parts[{i}]", part_name(name, i), where, folder)
        if _int(t, "rows", where, folder) != sum(p["rows"] for p in parts):
            raise Damaged(
                f"{where}: tables.{name} 'rows' differs from its parts' rows; {fix_line(folder)}."
            )
