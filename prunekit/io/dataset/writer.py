"""Writing a partitioned dataset: workers write parts, the driver finalises.

The driver makes a :class:`PartWriter`, which creates a hidden staging folder beside the
final one (``.prunekit-tmp.<pid>.<random>``, the temporary-name rule of
:mod:`prunekit.io.atomic`) and hands each worker its small, picklable :class:`PartSpec`.
A worker writes its part with :func:`write_part` (or streams batches into
:class:`PartFile`): under a temporary name in the staging folder, renamed to
``part-NNNNN.parquet`` when complete, and returns a :class:`PartInfo` (rows, position
range, size, hash). The driver, holding only those O(parts) records, calls
:meth:`PartWriter.finalize`: side arrays and tables, then ``manifest.json`` last, then one
rename of the staging folder onto the final name. A crash at any point leaves nothing under
the final name but the previous complete dataset (or nothing); a later write into the same
parent removes the staging folders of processes that died.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.atomic import (
    TMP_PREFIX,
    _alive,
    _check_parent,
    _make_dirs,
    _remove_dirs,
    check_output,
    create_temp,
    interrupts_deferred,
    owned_entry,
    read_set,
    refuse_link,
    swap_dir,
    temp_name,
)
from prunekit.io.dataset.layout import (
    ARRAY_DTYPES,
    COLUMNS,
    FORMAT,
    MANIFEST,
    META_KEY,
    NAME_RE,
    ROW_GROUP_ROWS,
    TABLE_PART_ROWS,
    TABLE_TYPES,
    VERSION,
    arrow_array,
    blake2b_file,
    column_type,
    part_name,
    pyarrow_modules,
)
from prunekit.io.provenance import jsonable, stamp

DICT_COLUMNS = ("cluster", "label", "count")  # few distinct values; the others are near-unique
STAGING_MARK = ".prunekit-staging"  # JSON {host, pid}: which process owns a staging folder
# Manifest keys the layout owns; a kind's attributes may not reuse them.
LAYOUT_KEYS = (
    "format",
    "version",
    "kind",
    "run_id",
    "prunekit_version",
    "created",
    "command",
    "params",
    "n_total",
    "n_rows",
    "columns",
    "parts",
    "arrays",
    "tables",
)


@dataclass(frozen=True)
class PartSpec:
    """What a worker needs to write a part: the staging folder, the run id and the kind."""

    staging: str
    run_id: str
    kind: str


@dataclass(frozen=True)
class PartInfo:
    """One written part as reported to the driver: O(1) whatever its rows."""

    index: int
    file: str
    rows: int
    start: int
    stop: int
    bytes: int
    blake2b: str
    columns: tuple[tuple[str, str], ...]


class PartFile:
    """Streams batches of columns into part ``index``, covering positions ``start..stop``.

    Each :meth:`write` appends row groups of at most ``ROW_GROUP_ROWS`` rows, so a worker
    holds one batch at a time. ``position`` must be strictly ascending within the range;
    a scores part holds every position of its range, a selection part the kept ones.
    :meth:`close` renames the file into place and returns its :class:`PartInfo`.
    """

    def __init__(self, spec: PartSpec, index: int, start: int, stop: int) -> None:
        if not 0 <= start <= stop or index < 0:
            raise ValueError(f"part {index}: bad position range {start}..{stop}")
        self.spec, self.index, self.start, self.stop = spec, int(index), int(start), int(stop)
        self.name = part_name("part", self.index)
        self._pa, self._pq = pyarrow_modules()
        with disk_errors(Path(spec.staging) / self.name):
            fd, self.tmp = create_temp(spec.staging, 0o666)  # exclusive, unpredictable name
        self._sink = open(fd, "wb")  # noqa: SIM115 (closed in close/abort)
        self.rows = 0
        self._last = -1
        self.types: dict[str, str] | None = None
        self._writer = None

    def __enter__(self) -> PartFile:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def write(self, columns: dict[str, np.ndarray]) -> None:
        """Append rows: the same column names (and types) in every batch."""
        cols = {k: np.asarray(v) for k, v in columns.items()}
        types = self._types(cols)
        pos = cols["position"]
        lo = self.start if self.rows == 0 else self._last + 1
        if pos.size and (pos[0] < lo or pos[-1] >= self.stop or np.any(np.diff(pos) <= 0)):
            raise PrunekitError(
                f"{self.name}: positions must be strictly ascending within "
                f"{self.start}..{self.stop} (after {lo - 1})."
            )
        table = self._pa.table({k: arrow_array(self._pa, v, types[k]) for k, v in cols.items()})
        if self._writer is None:
            self._writer = self._open(table.schema)
        self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        self.rows += int(pos.size)
        if pos.size:
            self._last = int(pos[-1])

    def close(self) -> PartInfo:
        """Finish the file, rename it to ``part-NNNNN.parquet``; return its record."""
        if self._writer is None:
            raise ValueError(f"{self.name}: nothing was written (write empty columns for no rows)")
        if self.spec.kind == "scores" and self.rows != self.stop - self.start:
            self.abort()
            raise PrunekitError(
                f"{self.name}: a scores part holds every position of "
                f"{self.start}..{self.stop}, got {self.rows} rows."
            )
        self._writer.close()
        self._sink.close()
        final = Path(self.spec.staging) / self.name
        os.replace(self.tmp, final)
        return PartInfo(
            self.index,
            self.name,
            self.rows,
            self.start,
            self.stop,
            final.stat().st_size,
            blake2b_file(final),
            tuple(self.types.items()),
        )

    def abort(self) -> None:
        """Drop the unfinished file."""
        with contextlib.suppress(Exception):
            if self._writer is not None:
                self._writer.close()
        with contextlib.suppress(OSError):  # a full disk fails the flush; the file goes anyway
            self._sink.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()

    def _types(self, cols: dict[str, np.ndarray]) -> dict[str, str]:
        allowed = COLUMNS[self.spec.kind]
        unknown = sorted(set(cols) - set(allowed))
        if unknown or "position" not in cols:
            raise PrunekitError(
                f"{self.name}: a {self.spec.kind} part holds columns "
                f"{', '.join(allowed)} (position required); got {sorted(cols)}."
            )
        n = {v.shape for v in cols.values()}
        if len(n) != 1 or len(next(iter(n))) != 1:
            raise PrunekitError(f"{self.name}: columns must be 1-D of one length, got shapes {n}.")
        types = {k: column_type(k, v, allowed[k]) for k, v in cols.items()}
        if self.types is None:
            self.types = types
        elif types != self.types:
            raise PrunekitError(f"{self.name}: a batch has columns {types}, earlier {self.types}.")
        return types

    def _open(self, schema):
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "kind": self.spec.kind,
            "run_id": self.spec.run_id,
            "part": self.index,
            "start": self.start,
            "stop": self.stop,
        }
        schema = schema.with_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()})
        return self._pq.ParquetWriter(
            self._sink,
            schema,
            compression="snappy",
            use_dictionary=[c for c in DICT_COLUMNS if c in schema.names],
            write_statistics=True,
            write_page_checksum=True,
        )


def write_part(
    spec: PartSpec, index: int, columns: dict[str, np.ndarray], start: int, stop: int
) -> PartInfo:
    """Write part ``index`` (positions ``start..stop``) in one go; what a worker calls."""
    with disk_errors(Path(spec.staging) / part_name("part", index)):
        with PartFile(spec, index, start, stop) as pf:
            pf.write(columns)
            return pf.close()


def write_table_part(spec: PartSpec, name: str, index: int, columns: dict[str, np.ndarray]) -> dict:
    """Write part ``index`` of side table ``name`` (``NAME-NNNNN.parquet``) into the staging
    folder; returns its manifest entry. What :meth:`PartWriter.add_table` does per part, and
    what a worker calls to write its part of a table."""
    pa, pq = pyarrow_modules()
    if not NAME_RE.match(name) or name == "part":
        raise ValueError(f"table name {name!r} is not allowed")
    cols = {k: np.asarray(v) for k, v in columns.items()}
    types = {k: column_type(k, v, TABLE_TYPES) for k, v in cols.items()}
    path = Path(spec.staging) / part_name(name, index)
    table = pa.table({k: arrow_array(pa, v, types[k]) for k, v in cols.items()})
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "kind": spec.kind,
        "run_id": spec.run_id,
        "table": name,
        "part": index,
    }
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()})
    with disk_errors(path):
        pq.write_table(
            table,
            path,
            row_group_size=ROW_GROUP_ROWS,
            compression="snappy",
            write_page_checksum=True,
        )
    return {
        "file": path.name,
        "rows": table.num_rows,
        "bytes": path.stat().st_size,
        "blake2b": blake2b_file(path),
    }


class PartWriter:
    """The driver's side: a staging folder, side arrays and tables, the manifest, the rename.

    ``with PartWriter(out, kind=..., run_id=...) as w:`` removes the staging folder when the
    block fails; :meth:`finalize` must be called inside it. ``inputs``/``input_dirs`` are
    the command's inputs: the output may not be one, lie inside one, or contain one.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        kind: str,
        run_id: str,
        inputs: Iterable[str | os.PathLike | None] = (),
        input_dirs: Iterable[str | os.PathLike | None] = (),
    ) -> None:
        if kind not in COLUMNS:
            raise ValueError(f"kind must be one of {sorted(COLUMNS)}, got {kind!r}")
        self.final = check_output_dir(out_dir, inputs=inputs, input_dirs=input_dirs)
        self.kind, self.run_id = kind, run_id
        parent = Path(os.path.realpath(self.final.parent))
        self._created = _make_dirs(parent)
        remove_stale_staging(parent)
        self.staging = temp_name(parent)
        try:
            self.staging.mkdir()
            _mark(self.staging)
        except OSError as exc:
            _remove_dirs(self._created)
            raise PrunekitError(f"cannot write {self.final}: {exc.strerror} ({parent}).") from exc
        self._arrays: dict[str, dict] = {}
        self._tables: dict[str, dict] = {}
        self._done = False

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self.abort()

    @property
    def spec(self) -> PartSpec:
        """What each worker gets (pickles small)."""
        return PartSpec(str(self.staging), self.run_id, self.kind)

    def write_part(
        self, index: int, columns: dict[str, np.ndarray], start: int, stop: int
    ) -> PartInfo:
        """:func:`write_part` from the driver (in-memory objects, tests)."""
        return write_part(self.spec, index, columns, start, stop)

    def add_array(self, name: str, array: np.ndarray) -> None:
        """A small dense array (e.g. centroids, K x D) as ``NAME.npy`` (no pickles)."""
        array = np.ascontiguousarray(array)
        if not NAME_RE.match(name):
            raise ValueError(f"array name {name!r} is not allowed")
        if array.dtype.name not in ARRAY_DTYPES:
            raise PrunekitError(
                f"array '{name}' has dtype {array.dtype}; a partitioned output "
                f"holds {', '.join(ARRAY_DTYPES)}."
            )
        path = self.staging / f"{name}.npy"
        np.save(path, array, allow_pickle=False)
        self._arrays[name] = {
            "file": path.name,
            "dtype": array.dtype.name,
            "shape": list(array.shape),
            "bytes": path.stat().st_size,
            "blake2b": blake2b_file(path),
        }

    def add_table(
        self, name: str, columns: dict[str, np.ndarray], rows_per_part: int | None = None
    ) -> None:
        """A side table in row order (a greedy pick order) as ``NAME-NNNNN.parquet`` files,
        ``TABLE_PART_ROWS`` rows each unless ``rows_per_part`` says otherwise."""
        rows_per_part = TABLE_PART_ROWS if rows_per_part is None else rows_per_part
        cols = {k: np.asarray(v) for k, v in columns.items()}
        types = {k: column_type(k, v, TABLE_TYPES) for k, v in cols.items()}
        lengths = {v.shape for v in cols.values()}
        if len(lengths) != 1 or len(next(iter(lengths))) != 1:
            raise ValueError(f"table {name!r}: columns must be 1-D of one length, got {lengths}")
        n = len(next(iter(cols.values())))
        parts = [
            write_table_part(self.spec, name, i, {k: v[a : a + rows_per_part] for k, v in cols.items()})
            for i, a in enumerate(range(0, max(n, 1), rows_per_part))
        ]
        self.add_table_parts(name, types, n, parts)

    def add_table_parts(self, name: str, types: dict[str, str], rows: int, parts: list[dict]) -> None:
        """Record a side table whose parts workers wrote (:func:`write_table_part`, in order)."""
        self._tables[name] = {"columns": dict(types), "rows": int(rows), "parts": list(parts)}

    def finalize(
        self,
        parts: Iterable[PartInfo],
        *,
        n_total: int,
        attrs: dict[str, Any],
        params: dict[str, Any],
        command: list[str] | None = None,
    ) -> Path:
        """Check the parts tile ``0..n_total``, write ``manifest.json`` last, rename into place."""
        infos = sorted(parts, key=lambda p: p.index)
        self._check_parts(infos, n_total)
        clash = sorted(set(attrs) & set(LAYOUT_KEYS))
        if clash:
            raise ValueError(f"attributes {clash} are layout keys of the manifest")
        manifest = self._manifest(infos, n_total, attrs, params, command)
        text = json.dumps(manifest, indent=1, allow_nan=False) + "\n"
        with disk_errors(self.final):
            fd, tmp = create_temp(self.staging, 0o666)
            with open(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, self.staging / MANIFEST)
            _remove_temps(self.staging)
        with interrupts_deferred():
            (self.staging / STAGING_MARK).unlink()
            _replace_dir(self.staging, self.final)
            self._done = True
        return self.final

    def abort(self) -> None:
        """Remove the staging folder (and the parent folders this writer created)."""
        self._done = True
        shutil.rmtree(self.staging, ignore_errors=True)
        _remove_dirs(self._created)

    def _check_parts(self, infos: list[PartInfo], n_total: int) -> None:
        if [p.index for p in infos] != list(range(len(infos))) or not infos:
            raise PrunekitError(
                f"{self.final}: parts {[p.index for p in infos]} were written; "
                f"expected 0..{len(infos) - 1}, each once."
            )
        stop = 0
        for p in infos:
            if p.start != stop or p.columns != infos[0].columns:
                raise PrunekitError(
                    f"{self.final}: {p.file} covers {p.start}..{p.stop} with columns "
                    f"{dict(p.columns)}; expected a start at {stop} and "
                    f"columns {dict(infos[0].columns)}."
                )
            f = self.staging / p.file
            if not f.is_file() or f.stat().st_size != p.bytes:
                raise PrunekitError(
                    f"{self.final}: {p.file} is missing or changed in the staging "
                    f"folder {self.staging}; was it written by this run?"
                )
            stop = p.stop
        if stop != n_total:
            raise PrunekitError(f"{self.final}: the parts cover 0..{stop}, not 0..{n_total}.")

    def _manifest(self, infos, n_total, attrs, params, command) -> dict:
        prov: dict[str, Any] = {}
        stamp(prov, params, command)
        m = {
            "format": FORMAT,
            "version": VERSION,
            "kind": self.kind,
            "run_id": self.run_id,
            "prunekit_version": prov["prunekit_version"],
            "created": prov["created"],
            "command": json.loads(prov["command"]),
            "params": json.loads(prov["params"]),
            "n_total": int(n_total),
            "n_rows": sum(p.rows for p in infos),
        }
        m.update(jsonable(attrs))
        m["columns"] = dict(infos[0].columns)
        m["parts"] = [
            {
                "file": p.file,
                "rows": p.rows,
                "start": p.start,
                "stop": p.stop,
                "bytes": p.bytes,
                "blake2b": p.blake2b,
            }
            for p in infos
        ]
        m["arrays"], m["tables"] = self._arrays, self._tables
        return m


# -- output checks, staging folders, the final rename ---------------------------------------


def check_output_dir(
    path: str | os.PathLike,
    *,
    inputs: Iterable[str | os.PathLike | None] = (),
    input_dirs: Iterable[str | os.PathLike | None] = (),
    what: str = "output",
) -> Path:
    """Refuse a dataset folder path that would destroy data; return it (before any work).

    The path may not exist yet, or be an empty folder or an earlier partitioned dataset
    (replaced whole). It may not be a file, a symbolic link or another folder with files,
    be or lie inside an input, or contain one (replacing the folder would delete it).
    """
    p = Path(path)
    inputs, input_dirs = list(inputs), list(input_dirs)
    if not os.path.lexists(p):
        return check_output(p, inputs=inputs, input_dirs=input_dirs, what=what)
    refuse_link(p, what)
    if not p.is_dir():
        raise PrunekitError(
            f"{what} {p} is a file; a partitioned output is a folder. "
            "Choose another path or remove the file."
        )
    if not replaceable(p):
        raise PrunekitError(
            f"{what} {p} is a folder that holds other files, not a prunekit "
            "partitioned dataset; choose a new folder name."
        )
    real = Path(os.path.realpath(p))
    files, dirs = read_set(inputs, input_dirs)
    for path_read, src in [*files.items(), *dirs.items()]:
        if path_read == real or real in path_read.parents or path_read in real.parents:
            raise PrunekitError(
                f"{what} {p} overlaps the command's input {src}; replacing it "
                "would destroy the input. Choose another output path."
            )
    _check_parent(real.parent, p, what)
    return p


def replaceable(folder: Path) -> bool:
    """An empty folder or one whose manifest.json says it is a partitioned dataset."""
    names = os.listdir(folder)
    if not names:
        return True
    try:
        m = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and m.get("format") == FORMAT


def remove_stale_staging(parent: Path) -> list[Path]:
    """Delete staging folders in ``parent`` whose process (on this host) no longer runs."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            if not entry.name.startswith(TMP_PREFIX) or not owned_entry(entry, stat.S_ISDIR):
                continue
            try:
                mark = json.loads(Path(entry.path, STAGING_MARK).read_text(encoding="utf-8"))
                mine = mark["host"] == socket.gethostname() and not _alive(int(mark["pid"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not ours, or another host's: leave it
            if mine:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def disk_errors(target: Path):
    """A full disk, a read-only file system or a missing permission as the user's error."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
            raise PrunekitError(f"cannot write {target}: {os.strerror(exc.errno)}.") from exc
        raise


def _remove_temps(staging: Path) -> None:
    """Temporary files of workers that died (a retried Ray task) never reach the output."""
    for entry in os.scandir(staging):
        if entry.name.startswith(TMP_PREFIX):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def _mark(folder: Path) -> None:
    (folder / STAGING_MARK).write_text(
        json.dumps({"host": socket.gethostname(), "pid": os.getpid()}), encoding="utf-8"
    )


def _replace_dir(staging: Path, final: Path) -> None:
    """Rename ``staging`` onto ``final``; an earlier dataset there is moved aside, then deleted."""
    final = Path(os.path.realpath(final.parent)) / final.name
    if not os.path.lexists(final):
        os.rename(staging, final)
        return
    if final.is_symlink() or not final.is_dir() or not replaceable(final):
        raise PrunekitError(
            f"{final} changed while the dataset was written; it is no longer "
            "an earlier dataset or an empty folder. Nothing was replaced."
        )
    aside = swap_dir(staging, final)
    with contextlib.suppress(OSError):
        _mark(aside)  # if the deletion below is cut short, a later write removes the rest
    shutil.rmtree(aside, ignore_errors=True)
