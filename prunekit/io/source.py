"""Embedding sources: one row space over a file, a directory or a glob of shards.

An :class:`EmbeddingSource` holds paths and metadata only (it pickles small and opens its
shards lazily in whichever process reads them), so the same object serves this process,
a thread pool or a Ray worker. The interface the engines and methods build on:

* ``src.n_total``, ``src.dim``, ``src.dtype`` (the files' dtype: float16 stays float16),
  ``src.shards`` (a list of :class:`Shard`: ``path``, ``n_rows``, global ``start``);
* ``src.chunks(chunk_rows=CHUNK_ROWS) -> list[ChunkRef]``: fixed-size row chunks, per shard,
  in shard order; the boundaries depend on the data and ``chunk_rows`` only, never on the
  number of workers (the determinism contract);
* ``src.read(ref) -> np.ndarray``: one chunk's rows in the file's dtype;
* ``src.read_range(a, b)``: global rows ``a:b`` (may span shards);
* ``src.read_rows(sorted_global_positions)``: a gather, grouped by shard and chunk so that
  at most one chunk-sized span is held at a time besides the result;
* ``src.ids()`` / ``src.labels()``: the global side arrays (or None).

Accepted shards are those of the format registry (:mod:`prunekit.io.formats`): ``.npy``
(read by file offset: like a memory map, but pages are not kept resident), ``.h5`` (dataset
``key``, optional ``ids``/``labels``), ``.npz`` (read whole: small data only) and
``.parquet`` (an embedding column ``key`` of fixed-size lists or lists, an id column
``id_key``). clip-retrieval's layout (``img_emb/img_emb_N.npy`` with
``metadata/metadata_N.parquet`` or ``metadata_N.parquet`` beside it) takes ids from the
metadata. This module knows no format by name: it lists, sniffs, describes, opens and reads
side arrays through the registry. Shards are read in natural order (``x_2`` before
``x_10``), and their paths are stored absolute, so a worker in another folder reads them.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.atomic import check_input
from prunekit.io.formats import (
    DEFAULT_KEY,
    SUPPORTED_DTYPES,
    Shard,
    ShardReader,
    check_dtype,
    check_matrix,
    clip_retrieval,
    format_for,
    format_named,
    format_of_name,
    suffixes,
)
from prunekit.io.formats.parquet import PARQUET_HINT, PARQUET_ID_KEYS
from prunekit.io.formats.parquet import ParquetReader as _ParquetReader  # noqa: F401 (old name)

CHUNK_ROWS = 65536
SHARD_SUFFIXES = suffixes()  # the built-in formats' suffixes (the registry has the rest)
OPEN_HANDLES = 8  # shards kept open per process (file descriptors, h5py handles)

__all__ = [
    "CHUNK_ROWS", "DEFAULT_KEY", "OPEN_HANDLES", "PARQUET_HINT", "PARQUET_ID_KEYS",
    "SHARD_SUFFIXES", "SUPPORTED_DTYPES", "ChunkRef", "EmbeddingSource", "MemorySource",
    "Shard", "check_dtype", "check_matrix", "natural_key", "open_source", "read_paths",
    "shard_dirs",
]


@dataclass(frozen=True)
class ChunkRef:
    """Rows ``start:stop`` of shard number ``shard``; global rows from ``global_start``."""

    index: int
    shard: int
    start: int
    stop: int
    global_start: int

    @property
    def n_rows(self) -> int:
        return self.stop - self.start

    @property
    def global_stop(self) -> int:
        return self.global_start + self.n_rows


class EmbeddingSource:
    """Many shards of one width and dtype, seen as one ``(n_total, dim)`` matrix."""

    def __init__(self, shards: list[Shard], dim: int, dtype: np.dtype, name: str,
                 sharded: bool = False) -> None:
        self.shards = list(shards)
        self.dim = int(dim)
        self.dtype = np.dtype(dtype)
        self.name = name  # the path the user gave (directory, glob or file)
        self.sharded = sharded  # given as a directory or glob
        self.n_total = self.shards[-1].stop if self.shards else 0
        self._starts = np.array([s.start for s in self.shards], dtype=np.int64)
        self._handles: OrderedDict[int, object] = OrderedDict()
        self._lock = threading.Lock()

    # Pickling sends paths and metadata; open handles stay in the process that opened them.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"EmbeddingSource({self.name!r}, {len(self.shards)} shards, "
                f"{self.n_total} x {self.dim} {self.dtype})")

    @property
    def nbytes(self) -> int:
        """Bytes of the matrix in the files' dtype."""
        return self.n_total * self.dim * self.dtype.itemsize

    def files(self) -> list[Path]:
        """Every file this source reads, resolved (shards after links, metadata files);
        an output may be none of them (:func:`prunekit.io.atomic.check_output`)."""
        out = {Path(os.path.realpath(p)): None for s in self.shards
               for p in (s.path, s.ids_from) if p is not None}
        return list(out)

    def chunks(self, chunk_rows: int = CHUNK_ROWS) -> list[ChunkRef]:
        """Fixed-size chunks per shard (the last chunk of a shard may be shorter)."""
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be >= 1")
        out: list[ChunkRef] = []
        for i, s in enumerate(self.shards):
            for a in range(0, s.n_rows, chunk_rows):
                b = min(a + chunk_rows, s.n_rows)
                out.append(ChunkRef(len(out), i, a, b, s.start + a))
        return out

    def read(self, ref: ChunkRef) -> np.ndarray:
        """The rows of one chunk, ``(ref.n_rows, dim)`` in the files' dtype."""
        return self._read_shard(ref.shard, ref.start, ref.stop)

    def shard_of(self, positions: np.ndarray) -> np.ndarray:
        """The shard number of each global row position."""
        return np.searchsorted(self._starts, positions, side="right") - 1

    def read_range(self, a: int, b: int) -> np.ndarray:
        """Global rows ``a:b`` (``0 <= a <= b <= n_total``), across shards if needed."""
        if not 0 <= a <= b <= self.n_total:
            raise IndexError(f"rows {a}:{b} out of range for {self.n_total} rows")
        parts = []
        i = int(self.shard_of(np.array([a]))[0]) if a < self.n_total else len(self.shards)
        while a < b:
            s = self.shards[i]
            stop = min(b, s.stop)
            parts.append(self._read_shard(i, a - s.start, stop - s.start))
            a, i = stop, i + 1
        if not parts:
            return np.empty((0, self.dim), dtype=self.dtype)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def read_rows(self, positions: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
        """Rows at ascending global ``positions``, read one chunk-sized span at a time."""
        pos = np.asarray(positions, dtype=np.int64)
        out = np.empty((pos.size, self.dim), dtype=self.dtype)
        if pos.size == 0:
            return out
        if np.any(pos[1:] < pos[:-1]) or pos[0] < 0 or pos[-1] >= self.n_total:
            raise IndexError("read_rows needs ascending positions within the source")
        shard = self.shard_of(pos)
        local = pos - self._starts[shard]
        # One group per (shard, chunk): its span is at most chunk_rows rows.
        group = shard * (self.n_total // chunk_rows + 1) + local // chunk_rows
        cuts = np.flatnonzero(np.diff(group)) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, pos.size], strict=True):
            a, b = int(local[lo]), int(local[hi - 1]) + 1
            block = self._read_shard(int(shard[lo]), a, b)
            out[lo:hi] = block[local[lo:hi] - a]
        return out

    def ids(self) -> np.ndarray | None:
        """Global ids (int64 or str objects) concatenated over shards, or None."""
        with_ids = [s for s in self.shards if s.id_key is not None]
        if not with_ids:
            return None
        if len(with_ids) != len(self.shards):
            missing = next(s for s in self.shards if s.id_key is None)
            raise PrunekitError(
                f"shard {missing.path} has no ids but other shards of {self.name} do; "
                "give every shard ids (or none)."
            )
        parts = [self.shard_ids(i) for i in range(len(self.shards))]
        kinds = {p.dtype.kind == "O" for p in parts}
        if len(kinds) > 1:
            raise PrunekitError(
                f"the shards of {self.name} mix integer and string ids; use one kind of id."
            )
        return np.concatenate(parts)

    def labels(self) -> np.ndarray | None:
        """Global integer labels (from HDF5/npz ``labels`` or a Parquet ``labels`` column)."""
        parts = [self.shard_labels(i) for i in range(len(self.shards))]
        have = [p is not None for p in parts]
        if not any(have):
            return None
        if not all(have):
            missing = self.shards[have.index(False)]
            raise PrunekitError(
                f"shard {missing.path} has no labels but other shards of {self.name} do; "
                "give every shard labels (or none)."
            )
        return np.concatenate(parts)  # type: ignore[arg-type]

    def shard_ids(self, i: int) -> np.ndarray | None:
        """Shard ``i``'s ids (int64 or str objects), checked; None when it has none."""
        s = self.shards[i]
        return None if s.id_key is None else format_named(s.kind).ids(s)

    def shard_labels(self, i: int) -> np.ndarray | None:
        """Shard ``i``'s labels as stored (one per row, checked); None when it has none."""
        s = self.shards[i]
        return format_named(s.kind).labels(s)

    def shard_side(self, i: int, name: str, a: int, b: int) -> np.ndarray:
        """Entries ``a:b`` (rows of shard ``i``) of its ``ids``, or of its ``labels`` as
        int64: a slice where the format reads one, else cut from the whole array (a copy,
        so the whole is freed at once)."""
        part = self._side_slice(i, name, a, b)
        if part is None:
            whole = self.shard_ids(i) if name == "ids" else self.shard_labels(i)
            part = whole[a:b].copy()  # type: ignore[index]
        return part if name == "ids" else part.astype(np.int64)

    def _side_slice(self, i: int, name: str, a: int, b: int) -> np.ndarray | None:
        s = self.shards[i]
        return format_named(s.kind).side_range(s, name, a, b)

    # -- reading one shard ------------------------------------------------------------
    def _reader(self, i: int) -> ShardReader:
        """The open reader of shard ``i`` (at most OPEN_HANDLES stay open per process).

        An evicted reader is not closed here: another thread may still be reading with it;
        it closes its file when the last reference goes.
        """
        with self._lock:
            r = self._handles.get(i)
            if r is None:
                r = _open_reader(self.shards[i], self.dim, self.dtype)
                self._handles[i] = r
                while len(self._handles) > OPEN_HANDLES:
                    self._handles.popitem(last=False)
            else:
                self._handles.move_to_end(i)
            return r  # type: ignore[return-value]

    def _read_shard(self, i: int, a: int, b: int) -> np.ndarray:
        s = self.shards[i]
        try:
            block = self._reader(i).read(a, b)
        except PrunekitError:
            raise
        except (OSError, ValueError, KeyError) as exc:
            raise PrunekitError(f"cannot read rows {a}:{b} of shard {s.path}: {exc}") from exc
        if block.shape != (b - a, self.dim):
            raise PrunekitError(
                f"shard {s.path} gave {block.shape} for rows {a}:{b} (expected {(b - a, self.dim)}); "
                "it changed since it was opened, or is truncated."
            )
        return block


class MemorySource(EmbeddingSource):
    """An in-memory array as a one-shard source (pickles with its data)."""

    def __init__(self, x: np.ndarray, name: str = "<array>") -> None:
        shard = Shard(name, "array", DEFAULT_KEY, int(x.shape[0]), 0)
        super().__init__([shard], x.shape[1], x.dtype, name)
        self.x = x

    def files(self) -> list[Path]:
        return []  # no file: nothing an output could overwrite

    def shard_labels(self, i: int) -> np.ndarray | None:
        return None

    def _side_slice(self, i: int, name: str, a: int, b: int) -> np.ndarray | None:
        return None

    def _read_shard(self, i: int, a: int, b: int) -> np.ndarray:
        return self.x[a:b]


# -- opening a path --------------------------------------------------------------------------


def open_source(path: str | os.PathLike, key: str | None = None,
                id_key: str | None = None, allow_external: bool | None = None) -> EmbeddingSource:
    """The source for a file, a directory of shards or a glob (see the module docstring).

    HDF5 shards with external links, external storage or virtual datasets are refused
    unless ``allow_external`` (None: the run context's, which ``--allow-external`` sets).
    A shard reached twice (two links, a glob through a link loop) is read once; a shard
    that is not a regular file (a FIFO) is refused.
    ``key``/``id_key`` None: the run context's (:func:`prunekit.runtime`).
    """
    from prunekit.runtime.context import get_runtime, load_options

    key, id_key = load_options(key, id_key)
    name = str(path)
    p = Path(name)
    external = get_runtime().allow_external if allow_external is None else bool(allow_external)
    if p.is_dir():
        files, sharded = _dir_shards(p), True
    elif not p.exists() and glob.has_magic(name):
        files = [f for f in _unique(_glob_files(name)) if not clip_retrieval.is_metadata(f)]
        if not files:
            raise PrunekitError(f"no files match the pattern {name}. Check the pattern.")
        sharded = True
    elif not p.exists():
        raise PrunekitError(f"embeddings file not found: {p}. Check the path.")
    else:
        files, sharded = [p], False
    shards: list[Shard] = []
    dim, dtype, first = None, None, None
    for f in files:
        s, d, t = _describe(f, key, id_key, start=shards[-1].stop if shards else 0,
                            allow_external=external)  # errors name f as the user gave it
        if s.n_rows == 0:
            raise PrunekitError(f"shard {f} has no rows; remove it or regenerate it.")
        if dim is None:
            dim, dtype, first = d, t, f
        elif d != dim or t != dtype:
            raise PrunekitError(
                f"shard {f} holds {d}-dimensional {t} rows but {first} holds {dim}-dimensional "
                f"{dtype}; every shard of {name} needs the same width and dtype."
            )
        shards.append(s)
    if sharded:
        clip_retrieval.check_id_sources(shards, name)
    return EmbeddingSource(shards, dim, dtype, name, sharded=sharded)  # type: ignore[arg-type]


def shard_dirs(path: str | os.PathLike) -> list[str]:
    """The folders a sharded input reads as a whole (a directory, or a glob's fixed prefix).

    An output written into one of them would be read as a shard by the next command, so
    commands pass these to :func:`prunekit.io.atomic.check_output` as ``input_dirs``.
    """
    name = str(path)
    if Path(name).is_dir():
        return [name]
    if not Path(name).exists() and glob.has_magic(name):
        fixed = []
        for part in Path(name).parts:
            if glob.has_magic(part):
                break
            fixed.append(part)
        return [str(Path(*fixed)) if fixed else "."]
    return []


def read_paths(path: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """What reading ``path`` as a source touches, resolved, without opening anything:
    ``(files, folders)``.

    Files: the shards after links and the clip-retrieval metadata files beside them (for a
    plain file: itself, after links); folders: a directory's or a glob's folder (a file
    written there would be read as a shard next time). :func:`prunekit.io.atomic.check_output`
    refuses an output that is any of them. What cannot be listed is left out (the command
    reports it when it opens the source).
    """
    name = str(path)
    p = Path(name)
    files: list[Path] = [p]
    folders: list[str] = []
    with contextlib.suppress(OSError, PrunekitError):
        if p.is_dir():
            files, folders = _dir_files(p)[1], [name]
        elif not p.exists() and glob.has_magic(name):
            files, folders = _glob_files(name), shard_dirs(name)
    out = []
    for f in files:
        out.append(Path(os.path.realpath(f)))
        meta = clip_retrieval.metadata_for(f)
        if meta is not None:
            out.append(Path(os.path.realpath(meta)))
    return out, [Path(os.path.realpath(d)) for d in folders]


def natural_key(p: Path | str) -> list:
    """Sort key putting ``x_2`` before ``x_10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))]


def _dir_files(d: Path) -> tuple[Path, list[Path]]:
    """The folder holding a directory's shards (clip-retrieval: ``img_emb/``) and the
    entries with a shard suffix in it, anything but folders (a FIFO or a dangling link is
    listed, to be refused by name), hidden files and metadata left out."""
    d = clip_retrieval.shard_folder(d, _is_shard_name)
    return d, sorted((f for f in d.iterdir() if not f.name.startswith(".") and _is_shard_name(f)
                      and not clip_retrieval.is_metadata(f) and not f.is_dir()), key=natural_key)


def _unique(files: list[Path]) -> list[Path]:
    """Each file once by its resolved path (two links to one shard, or a glob through a
    symlink loop, would read it twice); the shortest of its names is kept, natural order."""
    best: dict[str, Path] = {}
    for f in files:
        real = os.path.realpath(f)
        if real not in best or len(f.parts) < len(best[real].parts):
            best[real] = f
    return sorted(best.values(), key=natural_key)


def _glob_files(pattern: str) -> list[Path]:
    """Non-folder paths matching ``pattern`` as :func:`glob.glob` with ``recursive=True``
    matches them (``**`` spans folders, ``*`` skips hidden names), except that each real
    folder is entered once per pattern position: a symbolic-link loop ends instead of
    yielding the same shards under ever longer names."""
    parts = Path(pattern).parts
    k = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    rest = list(parts[k:])
    if rest and rest[-1] == "**":
        rest.append("*")  # a trailing ** matches the files below too
    out: list[Path] = []
    _glob_walk(Path(*parts[:k]) if k else Path("."), tuple(rest), set(), out)
    return out


def _glob_walk(d: Path, rest: tuple[str, ...], seen: set, out: list[Path]) -> None:
    head, tail = rest[0], rest[1:]
    if head == "**":
        with contextlib.suppress(OSError):
            st = os.stat(d)
            if (st.st_dev, st.st_ino, len(rest)) in seen:
                return
            seen.add((st.st_dev, st.st_ino, len(rest)))
        _glob_walk(d, tail, seen, out)
        for sub in _entries(d, "*"):
            if sub.is_dir():
                _glob_walk(sub, rest, seen, out)
        return
    for entry in _entries(d, head):
        if tail and entry.is_dir():
            _glob_walk(entry, tail, seen, out)
        elif not tail and not entry.is_dir():
            out.append(entry)


def _entries(d: Path, part: str) -> list[Path]:
    """Names in ``d`` matching one pattern component (hidden ones only when it starts with
    a dot, as glob does)."""
    if not glob.has_magic(part):
        return [d / part] if os.path.lexists(d / part) else []
    try:
        names = os.listdir(d)
    except OSError:
        return []
    return [d / n for n in sorted(names) if fnmatch.fnmatchcase(n, part)
            and (part.startswith(".") or not n.startswith("."))]


def _dir_shards(d: Path) -> list[Path]:
    """Embedding shards of a directory (clip-retrieval: its ``img_emb/`` folder)."""
    d, files = _dir_files(d)
    files = _unique(files)
    if not files:
        raise PrunekitError(
            f"directory {d} holds no embedding shards (.npy, .h5, .npz, .parquet). "
            "Point at the folder with the shards, or give a glob such as 'emb/*.npy'."
        )
    _check_numbering(files, d)
    return files


def _is_shard_name(f: Path) -> bool:
    """Whether a registered format claims ``f``'s suffix."""
    return format_of_name(f) is not None


def _check_numbering(files: list[Path], d: Path) -> None:
    """Shards numbered ``prefix_N.ext`` must not skip a number (a missing shard)."""
    parsed = [re.fullmatch(r"(.*?)(\d+)(\.[^.]+)", f.name) for f in files]
    if len(files) < 2 or not all(parsed):
        return
    stems = {(m.group(1), m.group(3)) for m in parsed}  # type: ignore[union-attr]
    if len(stems) != 1:
        return
    nums = sorted(int(m.group(2)) for m in parsed)  # type: ignore[union-attr]
    gaps = sorted(set(range(nums[0], nums[-1] + 1)) - set(nums))
    if gaps:
        prefix, ext = stems.pop()
        width = len(parsed[0].group(2))  # type: ignore[union-attr]
        miss = ", ".join(f"{prefix}{g:0{width}d}{ext}" for g in gaps[:5])
        raise PrunekitError(
            f"directory {d} is missing shard(s) {miss}{', ...' if len(gaps) > 5 else ''} "
            f"(found {len(files)} shards numbered {nums[0]}..{nums[-1]}). Restore them, or "
            "give a glob naming exactly the shards to use."
        )


def _describe(f: Path, key: str, id_key: str | None, start: int,
              allow_external: bool = False) -> tuple[Shard, int, np.dtype]:
    """A shard's metadata (rows, width, dtype, where its ids are) without reading its rows.

    Errors name ``f`` as given; the shard records its path (and its metadata file's)
    absolute, so the source reads the same files from any working directory.
    """
    if not os.path.lexists(f):
        raise PrunekitError(f"shard {f} is missing. Check the path.")
    check_input(f, "shard")
    fmt = format_for(f)
    d = fmt.describe(f, key, id_key, allow_external=allow_external)
    ids_from = None if d.ids_from is None else _absolute(d.ids_from)
    shard = Shard(_absolute(f), fmt.name, d.key, d.shape[0], start, ids_from, d.id_key,
                  allow_external)
    return shard, d.shape[1], d.dtype


def _absolute(p: str | os.PathLike) -> str:
    """``p`` from the root, as the working directory now reads it (links kept: errors name
    the shard as the user's folder shows it)."""
    return str(Path(p).absolute())


def _open_reader(s: Shard, dim: int, dtype: np.dtype) -> ShardReader:
    if not Path(s.path).exists():
        raise PrunekitError(f"shard {s.path} is missing (it was there when the input was opened).")
    return format_named(s.kind).open(s, dim, dtype)
