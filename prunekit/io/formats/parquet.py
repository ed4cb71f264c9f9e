"""Parquet shards: an embedding column of (fixed-size) lists, an id column, a labels column.

Also the reader of clip-retrieval's ``metadata_N.parquet`` id files
(:mod:`prunekit.io.formats.clip_retrieval`). pyarrow is optional (the ``[parquet]`` extra):
it is imported when a Parquet file is first touched, and its absence is one clear error.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from pathlib import Path

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.atomic import atomic_path
from prunekit.io.formats.base import (
    DEFAULT_KEY,
    SUPPORTED_DTYPES,
    Description,
    Format,
    Shard,
    check_matrix,
    checked_ids,
    checked_labels,
)
from prunekit.io.h5io import normalize_ids

# Default id columns of Parquet shards and metadata files, tried in this order.
PARQUET_ID_KEYS = ("id", "ids", "key", "image_path")
PARQUET_HINT = 'reading Parquet shards needs pyarrow: pip install "prunekit[parquet]"'
MAGIC = b"PAR1"


def _pq():
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise PrunekitError(f"{PARQUET_HINT} ({exc}).") from exc
    return pq


def parquet_file(path: str | Path, **options):
    """``pyarrow.parquet.ParquetFile``, with a damaged file reported as the user's error."""
    pq = _pq()
    try:
        return pq.ParquetFile(path, **options)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid/ArrowIOError derive from these
        raise PrunekitError(f"{path} is not a readable Parquet file ({exc}); rewrite the shard.") from exc


@contextlib.contextmanager
def parquet_errors(path: str | Path):
    """Damage found while decoding (a corrupt page) named by file, not as a traceback."""
    try:
        yield
    except PrunekitError:
        raise
    except (OSError, ValueError, ArithmeticError) as exc:
        raise PrunekitError(f"{path}: cannot decode its Parquet data ({exc}); rewrite the shard.") from exc


def column(path: str, name: str) -> np.ndarray:
    """Column ``name`` of a Parquet file as numpy; missing values are refused."""
    with parquet_errors(path):
        col = parquet_file(path).read(columns=[name]).column(0)
    if col.null_count:
        raise PrunekitError(f"{path}: column '{name}' has {col.null_count} missing values.")
    return col.to_numpy(zero_copy_only=False)


def _list_column(schema, key: str, f: Path) -> str:
    import pyarrow as pa

    names = list(schema.names)
    is_list = [n for n in names if pa.types.is_list(schema.field(n).type)
               or pa.types.is_fixed_size_list(schema.field(n).type)
               or pa.types.is_large_list(schema.field(n).type)]
    if key in names:
        if key not in is_list:
            raise PrunekitError(
                f"Parquet shard {f}: column '{key}' is {schema.field(key).type}, not a list of "
                "floats; the embedding column must be a (fixed-size) list."
            )
        return key
    if key == DEFAULT_KEY and len(is_list) == 1:
        return is_list[0]
    raise PrunekitError(
        f"Parquet shard {f} has no embedding column '{key}' (columns: {', '.join(names)}). "
        "Pass --key NAME to read another column."
    )


def id_column(f: Path, id_key: str | None) -> str | None:
    """The id column of Parquet file ``f``: ``id_key`` (which must exist), else the first of
    :data:`PARQUET_ID_KEYS` present, else None; its type must be integer or text."""
    schema = parquet_file(f).schema_arrow
    names = list(schema.names)
    if id_key is not None:
        if id_key not in names:
            raise PrunekitError(
                f"Parquet file {f} has no id column '{id_key}' (columns: {', '.join(names)}). "
                "Pass --id-key NAME."
            )
        key: str | None = id_key
    else:
        key = next((k for k in PARQUET_ID_KEYS if k in names), None)
    if key is not None:
        _check_id_type(schema.field(key).type, f, key, given=id_key is not None)
    return key


def _check_id_type(t, f: Path, key: str, given: bool) -> None:
    """ids are integers or text (UTF-8 strings or bytes): a float, list or struct column
    would match nothing, or the wrong rows once turned into text."""
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t) \
            or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return
    fix = "" if given else " It was taken as the ids by its name; pass --id-key NAME for another column."
    raise PrunekitError(f"Parquet file {f}: id column '{key}' is {t}; ids must be integers or "
                        f"strings.{fix}")


def _fixed_rows(arr, dim: int, path: str) -> np.ndarray:
    """A (fixed-size) list array as an ``(n, dim)`` numpy matrix."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.null_count:
        raise PrunekitError(f"Parquet shard {path} has {arr.null_count} null embeddings; "
                            "fill or drop those rows.")
    if not pa.types.is_fixed_size_list(arr.type):
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        if lengths.size and (lengths != dim).any():
            bad = int(np.flatnonzero(lengths != dim)[0])
            raise PrunekitError(
                f"Parquet shard {path}: an embedding has {int(lengths[bad])} values where "
                f"{dim} were expected; every row needs the same width."
            )
    values = arr.flatten()
    if values.null_count:
        raise PrunekitError(f"Parquet shard {path} has null values inside embeddings.")
    dtype = np.dtype(values.type.to_pandas_dtype())
    # The values buffer as it is (to_numpy converts float16 value by value).
    flat = np.frombuffer(values.buffers()[1], dtype=dtype, count=len(values),
                         offset=values.offset * dtype.itemsize)
    return flat.reshape(-1, dim)


class ParquetReader:
    """Rows through a stream of small record batches, so a row group of any size is never
    decoded whole (pyarrow's default row group is 1 Mi rows: GBs for wide embeddings).

    Reads go forward through the stream; the last ``KEEP_BYTES`` of decoded rows are kept,
    so a read that comes slightly out of order (parallel tasks) is served without decoding
    again. A read before that restarts its row group's stream. A lock serialises the
    threads sharing this reader.
    """

    BATCH_ROWS = 8192
    KEEP_BYTES = 64 << 20

    def __init__(self, s: Shard, dim: int, dtype: np.dtype) -> None:
        # buffer_size: pages are read as they are decoded, not the whole column chunk
        self.pf = parquet_file(s.path, buffer_size=1 << 20, pre_buffer=False)
        self.key, self.path, self.dim, self.dtype = s.key, s.path, dim, dtype
        sizes = [self.pf.metadata.row_group(g).num_rows for g in range(self.pf.num_row_groups)]
        self.bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.shape = (int(self.bounds[-1]), dim)
        self.keep_rows = max(self.BATCH_ROWS, self.KEEP_BYTES // (dim * np.dtype(dtype).itemsize))
        self.lock = threading.Lock()
        self.group = -1  # the row group being streamed
        self.stream = None
        self.pos = 0  # shard row of the stream's next batch
        self.recent: deque[tuple[int, np.ndarray]] = deque()  # (first row, rows), in order

    def _restart(self, g: int) -> None:
        self.group, self.pos, self.recent = g, int(self.bounds[g]), deque()
        self.stream = iter(self.pf.iter_batches(batch_size=self.BATCH_ROWS, row_groups=[g],
                                                columns=[self.key], use_threads=False))

    def _block_at(self, row: int) -> tuple[int, np.ndarray]:
        """The decoded block holding ``row``: kept, next in the stream, or after a restart."""
        g = int(np.searchsorted(self.bounds, row, side="right")) - 1
        if g == self.group:
            for start, block in self.recent:
                if start <= row < start + block.shape[0]:
                    return start, block
        if g != self.group or row < self.pos:
            self._restart(g)
        while True:
            batch = next(self.stream)  # type: ignore[call-overload]
            start, block = self.pos, _fixed_rows(batch.column(0), self.dim, self.path)
            self.pos += block.shape[0]
            self.recent.append((start, block))
            kept = sum(b.shape[0] for _, b in self.recent)
            while kept - self.recent[0][1].shape[0] >= self.keep_rows:
                kept -= self.recent.popleft()[1].shape[0]
            if row < self.pos:
                return start, block

    def read(self, a: int, b: int) -> np.ndarray:
        out = np.empty((b - a, self.dim), dtype=self.dtype)
        with self.lock:
            done = a
            while done < b:
                with parquet_errors(self.path):
                    start, block = self._block_at(done)
                stop = min(b, start + block.shape[0])
                out[done - a : stop - a] = block[done - start : stop - start]
                done = stop
        return out

    def close(self) -> None:
        self.stream, self.recent = None, deque()


class ParquetFormat(Format):
    """``.parquet``: rows in a list column (``key``; by default the only list column), ids
    in ``id_key`` or the first of :data:`PARQUET_ID_KEYS`, labels in ``labels``."""

    name = "parquet"
    suffixes = (".parquet",)
    label = "Parquet"
    magic = MAGIC

    def describe(self, path: Path, key: str, id_key: str | None = None, *,
                 allow_external: bool = False) -> Description:
        import pyarrow as pa

        pf = parquet_file(path)
        schema = pf.schema_arrow
        col = _list_column(schema, key, path)
        t = schema.field(col).type
        try:
            dtype = np.dtype(t.value_type.to_pandas_dtype())
        except (NotImplementedError, TypeError) as exc:
            raise PrunekitError(f"Parquet shard {path}: column '{col}' holds {t.value_type}; "
                                f"embeddings must be {SUPPORTED_DTYPES}.") from exc
        n = pf.metadata.num_rows
        if pa.types.is_fixed_size_list(t):
            dim = t.list_size
        elif n:
            first = next(pf.iter_batches(batch_size=1, columns=[col])).column(0)
            dim = len(first[0].values)
        else:
            dim = 0
        check_matrix((n, dim), dtype, str(path), col)
        labels = "labels" if "labels" in schema.names else None
        return Description(col, (n, dim), dtype, id_column(path, id_key), labels=labels)

    def open(self, shard: Shard, dim: int, dtype: np.dtype) -> ParquetReader:
        return ParquetReader(shard, dim, dtype)

    def ids(self, shard: Shard) -> np.ndarray:
        return checked_ids(column(shard.ids_from or shard.path, shard.id_key), shard)  # type: ignore[arg-type]

    def labels(self, shard: Shard) -> np.ndarray | None:
        if "labels" not in parquet_file(shard.path).schema_arrow.names:
            return None
        return checked_labels(column(shard.path, "labels"), shard)

    def write(self, path: str | os.PathLike, rows: np.ndarray, *, key: str = DEFAULT_KEY,
              ids: np.ndarray | None = None, labels: np.ndarray | None = None) -> Path:
        """``rows`` as a fixed-size list column ``key``; ids as column ``id``, labels as
        ``labels`` (int64); one row group per 65 536 rows."""
        import pyarrow as pa

        rows = np.ascontiguousarray(rows)
        check_matrix(rows.shape, rows.dtype, str(path), key)
        cols = {key: pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), rows.shape[1])}
        if ids is not None:
            cols["id"] = pa.array(_id_values(ids))
        if labels is not None:
            cols["labels"] = pa.array(np.asarray(labels, dtype=np.int64))
        pq = _pq()
        with atomic_path(path) as tmp:
            pq.write_table(pa.table(cols), tmp, row_group_size=65536)
        return Path(path)


def _id_values(ids: np.ndarray) -> np.ndarray | list:
    """ids as a Parquet column takes them: int64, or a list of str."""
    ids = normalize_ids(ids)
    return ids if ids.dtype.kind == "i" else ids.tolist()  # type: ignore[union-attr]
