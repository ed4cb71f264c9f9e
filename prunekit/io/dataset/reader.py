"""Reading a partitioned dataset: the manifest, then the parts in order, in bounded batches.

Every part is checked against the manifest before its rows are used: present, the size the
manifest records, written by the same run (the run id in its Parquet metadata), the same
row count and columns; its positions ascending inside its range. The BLAKE2b hash of the
whole file is compared when ``verify`` asks for it (``None``, the default: parts of at most
``HASH_ALWAYS_BYTES``; ``True``: every part; ``False``: none). Hashing costs one extra read
of the file (BLAKE2b runs at several hundred MB/s on one core), the other checks read only
the footer; Parquet page checksums catch damage inside the data of unhashed parts as they
are decoded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.dataset.layout import (
    FILE_RE,
    HASH_ALWAYS_BYTES,
    MANIFEST,
    META_KEY,
    ROW_GROUP_ROWS,
    Damaged,
    arrow_type_name,
    blake2b_file,
    check_manifest,
    fix_line,
    pyarrow_modules,
)
from prunekit.io.npzio import load_npy

BATCH_ROWS = 65536


def is_dataset(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder (read as a partitioned dataset, never as HDF5)."""
    return os.path.isdir(path)


class PartsReader:
    """A partitioned dataset opened for reading; only the manifest is held in memory.

    ``kind`` ("scores" or "selection"), when given, must match the manifest's.
    """

    def __init__(self, path: str | os.PathLike, kind: str | None = None) -> None:
        self.path = Path(path)
        self.pa, self.pq = pyarrow_modules()
        self.manifest = check_manifest(self._load_manifest(), self.path)
        if kind is not None and self.manifest["kind"] != kind:
            raise PrunekitError(
                f"{self.path} holds a partitioned {self.manifest['kind']}, not "
                f"{kind}; give a {kind} file or folder."
            )
        self._check_listing()

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def columns(self) -> dict[str, str]:
        return dict(self.manifest["columns"])

    @property
    def n_rows(self) -> int:
        return int(self.manifest["n_rows"])

    @property
    def n_total(self) -> int:
        return int(self.manifest["n_total"])

    def files(self) -> list[Path]:
        """The part files in order (for tools that read Parquet themselves)."""
        return [self.path / p["file"] for p in self.manifest["parts"]]

    def iter_batches(
        self,
        columns: Sequence[str] | None = None,
        batch_rows: int = BATCH_ROWS,
        verify: bool | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Rows in position order as dicts of numpy arrays (``position`` always included).

        At most ``batch_rows`` rows per batch (a batch never spans two row groups); one part
        is open at a time and one row group (at most ``ROW_GROUP_ROWS`` rows) is read at a
        time, so memory is bounded by the row-group size, never by the part or the dataset.
        String ids come as object arrays of ``str``.
        """
        cols = self._wanted(columns)
        for i, entry in enumerate(self.manifest["parts"]):
            pf = self._open_part(i, entry, verify)
            try:
                yield from self._part_batches(pf, entry, cols, batch_rows)
            finally:
                pf.close()  # one part's file open at a time

    def iter_part(
        self,
        index: int,
        columns: Sequence[str] | None = None,
        batch_rows: int = BATCH_ROWS,
        verify: bool | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """The rows of part ``index`` alone, as :meth:`iter_batches` reads them (one worker's
        share of a pass over the parts)."""
        yield from self.iter_part_range(index, None, None, columns, batch_rows, verify)

    def iter_part_range(
        self,
        index: int,
        start: int | None,
        stop: int | None,
        columns: Sequence[str] | None = None,
        batch_rows: int = BATCH_ROWS,
        verify: bool | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """The batches of part ``index`` whose row groups may hold positions in
        ``start:stop`` (None: open-ended): the position column's statistics skip the other
        row groups, so reading one range of a part costs that range, not the part up to it.
        Batches may hold positions outside the range; the caller masks them."""
        cols = self._wanted(columns)
        entry = self.manifest["parts"][index]
        pf = self._open_part(index, entry, verify)
        try:
            groups = _groups_overlapping(pf.metadata, start, stop)
            yield from self._part_batches(pf, entry, cols, batch_rows, groups)
        finally:
            pf.close()

    def read_columns(
        self, columns: Sequence[str] | None = None, verify: bool | None = None
    ) -> dict[str, np.ndarray]:
        """Whole columns (``position`` included), filled batch by batch into one array each."""
        cols = self._wanted(columns)
        out = {
            c: np.empty(
                self.n_rows, dtype=object if self.columns[c] == "string" else self.columns[c]
            )
            for c in cols
        }
        at = 0
        for batch in self.iter_batches(cols, verify=verify):
            n = batch["position"].size
            for c in cols:
                out[c][at : at + n] = batch[c]
            at += n
        return out

    def array(self, name: str) -> np.ndarray | None:
        """A side array (e.g. ``centroids``), always hashed (it is small); None when absent."""
        a = self.manifest["arrays"].get(name)
        if a is None:
            return None
        f = self._present(a, f"arrays.{name}")
        self._hash(f, a)
        try:
            arr = load_npy(f)
        except (OSError, ValueError) as exc:
            raise Damaged(f"{f} is corrupt ({exc}); {fix_line(self.path)}.") from exc
        if arr.dtype.name != a["dtype"] or list(arr.shape) != a["shape"]:
            raise Damaged(
                f"{f} holds {arr.dtype} {arr.shape}, the manifest says {a['dtype']} "
                f"{tuple(a['shape'])}; {fix_line(self.path)}."
            )
        return arr

    def table(self, name: str, verify: bool | None = None) -> dict[str, np.ndarray] | None:
        """A side table (e.g. ``order``) read whole in row order; None when absent."""
        t = self.manifest["tables"].get(name)
        if t is None:
            return None
        out: dict[str, list] = {c: [] for c in t["columns"]}
        for part in self.iter_table(name, verify):
            for c in out:
                out[c].append(part[c])
        return {c: (np.concatenate(v) if v else np.empty(0)) for c, v in out.items()}

    def iter_table(
        self, name: str, verify: bool | None = None
    ) -> Iterator[dict[str, np.ndarray]]:
        """A side table one part file at a time, in row order (nothing when absent)."""
        t = self.manifest["tables"].get(name)
        for i, entry in enumerate([] if t is None else t["parts"]):
            pf = self._open_file(
                entry, f"tables.{name}.parts[{i}]", verify, t["columns"], {"table": name, "part": i}
            )
            with pf:
                tab = self._decode(pf, lambda pf=pf: pf.read(), entry)
            f = self.path / entry["file"]
            yield {c: _numpy(tab.column(c), ty, f, c) for c, ty in t["columns"].items()}

    # -- checks ----------------------------------------------------------------------------

    def _load_manifest(self) -> Any:
        f = self.path / MANIFEST
        if not self.path.is_dir():
            raise PrunekitError(f"{self.path} is not a folder; give a partitioned dataset folder.")
        if not f.is_file():
            raise PrunekitError(
                f"{self.path} is not a prunekit partitioned dataset: {MANIFEST} is "
                "missing (an interrupted write leaves no folder under the final "
                f"name); {fix_line(self.path)}."
            )
        try:
            return json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise Damaged(
                f"{f} is not valid JSON ({str(exc)[:80]}); {fix_line(self.path)}."
            ) from exc

    def _check_listing(self) -> None:
        """Refuse part files the manifest does not list: a glob (DuckDB, Spark) would read them."""
        listed = {p["file"] for p in self.manifest["parts"]}
        listed |= {p["file"] for t in self.manifest["tables"].values() for p in t["parts"]}
        stray = sorted(n for n in os.listdir(self.path) if FILE_RE.match(n) and n not in listed)
        if stray:
            raise Damaged(
                f"{self.path / stray[0]} is not listed in {MANIFEST} (a part of another "
                f"run?); remove it, or {fix_line(self.path)}."
            )

    def _wanted(self, columns: Sequence[str] | None) -> list[str]:
        cols = (
            list(self.columns)
            if columns is None
            else ["position", *[c for c in columns if c != "position"]]
        )
        missing = [c for c in cols if c not in self.columns]
        if missing:
            raise PrunekitError(
                f"{self.path} has no column {missing[0]!r} (columns: {', '.join(self.columns)})."
            )
        return cols

    def _present(self, entry: dict, label: str) -> Path:
        f = self.path / entry["file"]
        if not f.is_file():
            raise Damaged(
                f"{f} is missing ({MANIFEST} lists it as {label}); {fix_line(self.path)}."
            )
        size = f.stat().st_size
        if size != entry["bytes"]:
            raise Damaged(
                f"{f} is corrupt: {size} bytes, {MANIFEST} says {entry['bytes']}; "
                f"{fix_line(self.path)}."
            )
        return f

    def _hash(self, f: Path, entry: dict) -> None:
        if blake2b_file(f) != entry["blake2b"]:
            raise Damaged(
                f"{f} is corrupt: its BLAKE2b differs from the one in {MANIFEST}; "
                f"{fix_line(self.path)}."
            )

    def _open_part(self, i: int, entry: dict, verify: bool | None):
        return self._open_file(
            entry,
            f"parts[{i}]",
            verify,
            self.columns,
            {"part": i, "start": entry["start"], "stop": entry["stop"]},
        )

    def _open_file(self, entry: dict, label: str, verify: bool | None, types: dict, expect: dict):
        """Open one Parquet file after the run-id, size, hash, row and schema checks.

        The run id (in the footer) is checked first, so a part copied from another run is
        reported as such rather than as a size or hash mismatch.
        """
        f = self.path / entry["file"]
        if not f.is_file():
            raise Damaged(
                f"{f} is missing ({MANIFEST} lists it as {label}); {fix_line(self.path)}."
            )
        try:
            pf = self.pq.ParquetFile(f, page_checksum_verification=True)
            meta = json.loads((pf.schema_arrow.metadata or {}).get(META_KEY, b"{}"))
        except (OSError, ValueError) as exc:  # ArrowInvalid / ArrowIOError derive from these
            raise Damaged(f"{f} is corrupt ({str(exc)[:120]}); {fix_line(self.path)}.") from exc
        if not isinstance(meta, dict) or meta.get("run_id") != self.manifest["run_id"]:
            got = meta.get("run_id") if isinstance(meta, dict) else None
            raise Damaged(
                f"{f} belongs to another run (run id {got}, {MANIFEST} says "
                f"{self.manifest['run_id']}); parts of different runs cannot be mixed: "
                f"{fix_line(self.path)}."
            )
        self._present(entry, label)
        if verify or (verify is None and entry["bytes"] <= HASH_ALWAYS_BYTES):
            self._hash(f, entry)
        self._check_file(f, pf, meta, entry, types, expect)
        return pf

    def _check_file(self, f: Path, pf, meta: dict, entry: dict, types: dict, expect: dict) -> None:
        schema = {
            n: arrow_type_name(self.pa, pf.schema_arrow.field(n).type)
            for n in pf.schema_arrow.names
        }
        md = pf.metadata
        groups = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
        problem = None
        if any(meta.get(k) != v for k, v in expect.items()):
            said = json.dumps({k: meta.get(k) for k in expect})
            problem = f"it says it is {said}, not {json.dumps(expect)}"
        elif md.num_rows != entry["rows"]:
            problem = f"it holds {md.num_rows} rows, {MANIFEST} says {entry['rows']}"
        elif schema != types:
            problem = f"its columns are {schema}, {MANIFEST} says {types}"
        elif groups and max(groups) > ROW_GROUP_ROWS:
            problem = f"a row group holds {max(groups)} rows (at most {ROW_GROUP_ROWS})"
        if problem:
            raise Damaged(f"{f} disagrees with {MANIFEST}: {problem}; {fix_line(self.path)}.")

    def _part_batches(self, pf, entry: dict, cols: list[str], batch_rows: int,
                      groups: Sequence[int] | None = None):
        f = self.path / entry["file"]
        last = entry["start"] - 1
        if groups is None:
            groups = range(pf.metadata.num_row_groups)
        # One row group per read: a whole-file iterator pre-buffers every row group at once.
        batches = (
            b
            for g in groups
            for b in pf.iter_batches(
                batch_size=batch_rows, row_groups=[g], columns=cols, use_threads=False
            )
        )
        while True:
            rb = self._decode(pf, lambda: next(batches, None), entry)
            if rb is None:
                return
            out = {c: _numpy(rb.column(i), self.columns[c], f, c) for i, c in enumerate(cols)}
            pos = out["position"]
            if pos.size and (
                pos[0] <= last or pos[-1] >= entry["stop"] or np.any(np.diff(pos) <= 0)
            ):
                raise Damaged(
                    f"{f} disagrees with {MANIFEST}: its positions are not ascending "
                    f"inside {entry['start']}..{entry['stop']}; {fix_line(self.path)}."
                )
            if pos.size:
                last = int(pos[-1])
            yield out

    def _decode(self, pf, read, entry: dict):
        try:
            return read()
        except PrunekitError:
            raise
        except (OSError, ValueError, ArithmeticError) as exc:
            f = self.path / entry["file"]
            raise Damaged(
                f"{f} is corrupt: cannot decode its Parquet data ({str(exc)[:120]}); "
                f"{fix_line(self.path)}."
            ) from exc


def _groups_overlapping(md, start: int | None, stop: int | None) -> list[int]:
    """Row groups of a part whose ``position`` range (from the column statistics) meets
    ``start:stop``; a group without statistics is kept (read and masked)."""
    every = list(range(md.num_row_groups))
    if start is None and stop is None:
        return every
    col = md.schema.to_arrow_schema().get_field_index("position")
    out = []
    for g in every:
        st = md.row_group(g).column(col).statistics if col >= 0 else None
        if st is not None and st.has_min_max and (
            (start is not None and st.max < start) or (stop is not None and st.min >= stop)
        ):
            continue
        out.append(g)
    return out


def _numpy(col, type_name: str, f: Path | None = None, name: str = "") -> np.ndarray:
    """An Arrow column as numpy (strings as an object array of ``str``); nulls are refused."""
    if col.null_count:
        raise Damaged(
            f"{f}: column '{name}' holds nulls; prunekit never writes them. "
            "Rewrite the dataset with prunekit."
        )
    if type_name == "string":
        return np.asarray(col.to_pylist(), dtype=object)
    return col.to_numpy(zero_copy_only=False)
