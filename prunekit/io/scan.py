"""The load-time pass over a source: per-shard fingerprint, non-finite rows and largest norm.

A shard's fingerprint is ``blake2b-128("{n_rows}x{dim}" + its rows as little-endian bytes)``;
a one-shard source's fingerprint is its shard's (so a single file keeps the fingerprint it
always had), a sharded one hashes the list of per-shard fingerprints. Each shard's result is
cached in ``.prunekit-cache.json`` beside the shards (or under ``$XDG_CACHE_HOME/prunekit``
when that is not possible), so later commands skip the pass. Small single files are not
cached: re-reading them is cheaper.

The cache lives in folders other people can write, so nothing in it is trusted as it
stands. An entry is used only when the shard still has the size, mtime and inode it had
and the same bytes at a few sampled places (a copy made with ``cp -p`` or ``rsync -t``
keeps size and mtime, not the rest), and when its MAC verifies: BLAKE2b keyed with a
secret of this user's, kept with mode 0600 in the private folder ``$XDG_CACHE_HOME/prunekit``
(an edited fingerprint or NaN list fails it). Anything else is scanned again. A cache file
that is a symbolic link is neither read nor written (it stays as it is), and writes go
through an exclusive temporary file and a rename, so a planted link is never followed.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import stat
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.atomic import create_temp, open_regular, private_dir, write_text
from prunekit.io.source import CHUNK_ROWS, EmbeddingSource, MemorySource
from prunekit.runtime.progress import track

CACHE_NAME = ".prunekit-cache.json"
CACHE_VERSION = 3
CACHE_MAX_BYTES = 256 << 20  # a larger cache file is ignored
KEY_NAME = "scan-cache.key"  # the per-user MAC key, in the private cache folder
KEY_BYTES = 32
SAMPLE_BYTES = 4096  # a shard's content id hashes its head and SAMPLES blocks of this size
SAMPLES = 8
CACHE_MIN_BYTES = 256 << 20  # single files smaller than this are re-hashed, not cached
CACHED_NONFINITE_MAX = 100_000  # a shard with more bad rows is re-scanned instead
SUB_ROWS = 8192  # rows converted to float32 at once (bounds the temporaries of the pass)


@dataclass
class ShardScan:
    """One shard's pass: fingerprint, non-finite rows (shard-local), largest finite norm.

    No per-row norms: the range check needs only the largest, and a driver that gathered
    every shard's norms would hold 4 bytes per row (:func:`norms` streams them on demand).
    """

    fingerprint: str
    nonfinite: np.ndarray
    max_norm: float  # the largest norm of a finite row (0 when none)


def scan_shard(src: EmbeddingSource, i: int, chunk_rows: int = CHUNK_ROWS) -> ShardScan:
    """Stream shard ``i`` once: hash its bytes, find non-finite rows and the largest norm.

    The hash of one chunk runs on a helper thread (hashlib releases the GIL) while this
    thread computes the chunk's norms; the chunks still enter the hash in order. Memory:
    one chunk, whatever the shard's size.
    """
    s = src.shards[i]
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{s.n_rows}x{src.dim}".encode())
    bad: list[np.ndarray] = []
    max_norm = 0.0
    with ThreadPoolExecutor(max_workers=1) as hasher:
        pending = None
        for ref in (r for r in src.chunks(chunk_rows) if r.shard == i):
            block = src.read(ref)
            little = np.ascontiguousarray(block, dtype=block.dtype.newbyteorder("<"))
            if pending is not None:
                pending.result()
            pending = hasher.submit(h.update, memoryview(little))
            chunk_norms = np.empty(block.shape[0], dtype=np.float32)
            finite = norms_into(block, chunk_norms)
            if not finite.all():
                bad.append(ref.start + np.flatnonzero(~finite))
            if finite.any():
                max_norm = max(max_norm, float(chunk_norms[finite].max()))
        if pending is not None:
            pending.result()
    nonfinite = np.concatenate(bad).astype(np.int64) if bad else np.zeros(0, np.int64)
    return ShardScan(h.hexdigest(), nonfinite, max_norm)


def norms_into(block: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Write the rows' norms into ``out``; return which rows are finite.

    float16 values square to at most 4.3e9, so a float32 sum of squares overflows only
    when a value is NaN/inf: the norm doubles as the finiteness check. Wider dtypes are
    checked value by value.
    """
    finite = np.empty(block.shape[0], dtype=bool)
    for a in range(0, block.shape[0], SUB_ROWS):
        part = block[a : a + SUB_ROWS]
        wide = part.astype(np.float64 if part.dtype == np.float64 else np.float32)
        sq = np.einsum("ij,ij->i", wide, wide)
        np.sqrt(sq, out=out[a : a + part.shape[0]], casting="unsafe")
        if part.dtype.itemsize <= 2 and part.dtype.kind == "f":
            finite[a : a + part.shape[0]] = np.isfinite(sq)
        else:
            finite[a : a + part.shape[0]] = np.isfinite(part).all(axis=1)
    return finite


def combine(src: EmbeddingSource, fingerprints: list[str]) -> str:
    """The source's fingerprint from its shards' (a single shard's is kept as is)."""
    if len(fingerprints) == 1:
        return fingerprints[0]
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{src.n_total}x{src.dim}:{len(fingerprints)}".encode())
    for s, fp in zip(src.shards, fingerprints, strict=True):
        h.update(f"{s.n_rows}:{fp};".encode())
    return h.hexdigest()


def uses_cache(src: EmbeddingSource) -> bool:
    """Directories and globs always; single files from CACHE_MIN_BYTES on; arrays never."""
    if isinstance(src, MemorySource):
        return False
    return src.sharded or sum(_stat(s.path)[0] for s in src.shards) >= CACHE_MIN_BYTES


def is_cached(src: EmbeddingSource) -> bool:
    """Whether every shard's scan is in the cache (the load pass would read nothing)."""
    if not uses_cache(src):
        return False
    cache = ScanCache()
    return all(cache.get(s, src.dim) is not None for s in src.shards)


def scan(
    src: EmbeddingSource, *, progress: bool = False, use_cache: bool | None = None,
) -> tuple[str, np.ndarray, float]:
    """``(fingerprint, global non-finite rows, largest finite norm)``.

    What comes back is O(shards + non-finite rows), never per row: :func:`norms` streams
    the norms when someone needs them. The shards not in the cache are scanned as tasks of
    the current engine (:func:`prunekit.runtime.context.current_engine`: threads on this
    machine unless a command made another one current), results in shard order.
    """
    cache = ScanCache() if (uses_cache(src) if use_cache is None else use_cache) else None
    found = [cache.get(s, src.dim) if cache else None for s in src.shards]
    todo = [i for i, f in enumerate(found) if f is None]
    if isinstance(src, MemorySource) or len(todo) <= 1:
        fresh: Iterable[ShardScan] = track((scan_shard(src, i) for i in todo), total=len(todo),
                                           desc="scan", progress=progress)
    else:
        from prunekit.runtime.context import current_engine

        fresh = current_engine().map(_scan_task, todo, shared=src, desc="scan",
                                     progress=progress, task_bytes=task_bytes(src))
    with contextlib.closing(fresh):  # an error here stops the scans still running
        for i, res in zip(todo, fresh, strict=True):
            found[i] = res
            if cache:
                cache.put(src.shards[i], src.dim, res)
    if cache:
        cache.save()
    scans: list[ShardScan] = found  # type: ignore[assignment]
    fp = combine(src, [r.fingerprint for r in scans])
    nonfinite = np.concatenate(
        [r.nonfinite + s.start for r, s in zip(scans, src.shards, strict=True)]).astype(np.int64)
    return fp, nonfinite, max((r.max_norm for r in scans), default=0.0)


def task_bytes(src: EmbeddingSource, chunk_rows: int = CHUNK_ROWS) -> int:
    """Memory one shard scan holds: a chunk as read, its little-endian copy, a float32 part,
    the chunk's norms."""
    rows = min(chunk_rows, max(s.n_rows for s in src.shards))
    return rows * (src.dim * src.dtype.itemsize * 2 + 5) + SUB_ROWS * src.dim * 8


def _scan_task(src: EmbeddingSource, i: int) -> ShardScan:
    """Engine task: the scan of shard ``i`` (workers open the shard themselves)."""
    return scan_shard(src, i)


def norms(src: EmbeddingSource, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Row norms (float32) of every source row, streamed chunk by chunk."""
    out = np.empty(src.n_total, dtype=np.float32)
    for ref in src.chunks(chunk_rows):
        norms_into(src.read(ref), out[ref.global_start : ref.global_stop])
    return out


def rows_above(src: EmbeddingSource, limit: float, skip: np.ndarray,
               chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Positions of the rows whose norm exceeds ``limit`` or overflows (an inf norm), the
    rows at the sorted positions ``skip`` (non-finite) left out; streamed, one chunk held."""
    found: list[np.ndarray] = []
    for ref in src.chunks(chunk_rows):
        block = np.empty(ref.n_rows, dtype=np.float32)
        norms_into(src.read(ref), block)
        huge = ref.global_start + np.flatnonzero(~(block <= limit))
        found.append(huge[~np.isin(huge, skip)])
    return np.concatenate(found).astype(np.int64) if found else np.zeros(0, np.int64)


# -- the cache --------------------------------------------------------------------------------


def _stat(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _xdg_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "prunekit"


def content_id(path: str) -> dict | None:
    """What identifies a shard's bytes cheaply: size, mtime, inode, and a BLAKE2b of its
    first block and of SAMPLES blocks spread through it (the last ends at the file's end);
    a file of at most SAMPLES + 1 blocks is hashed whole. None when it cannot be read."""
    try:
        fd = open_regular(path, "shard")
    except PrunekitError:
        return None
    try:
        st = os.fstat(fd)
        h = hashlib.blake2b(digest_size=16)
        for offset in _sample_offsets(st.st_size):
            h.update(os.pread(fd, SAMPLE_BYTES, offset))
    except OSError:
        return None
    finally:
        os.close(fd)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino,
            "sample": h.hexdigest()}


def _sample_offsets(size: int) -> list[int]:
    if size <= SAMPLE_BYTES * (SAMPLES + 1):
        return list(range(0, size, SAMPLE_BYTES))
    last = size - SAMPLE_BYTES
    return [0] + [last * i // SAMPLES for i in range(1, SAMPLES + 1)]


_SECRETS: dict[Path, bytes | None] = {}  # cache folder -> key (None: no safe key there)


def _secret() -> bytes | None:
    """This user's MAC key, made on first use; None when it cannot be had safely (then
    nothing is cached: every load scans)."""
    d = _xdg_dir()
    if d not in _SECRETS:
        try:
            _SECRETS[d] = _load_or_make_key(private_dir(d) / KEY_NAME)
        except (OSError, PrunekitError):
            _SECRETS[d] = None
    return _SECRETS[d]


def _load_or_make_key(path: Path) -> bytes | None:
    key = _read_key(path)
    if key is None and not os.path.lexists(path):
        fd, tmp = create_temp(path.parent, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(KEY_BYTES))
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # complete when it appears; never replaces a key made meanwhile
        finally:
            tmp.unlink(missing_ok=True)
        key = _read_key(path)
    return key


def _read_key(path: Path) -> bytes | None:
    """The key, if ``path`` is a regular file of this user's, mode 0600, of KEY_BYTES."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid()
                or stat.S_IMODE(st.st_mode) & 0o077 or st.st_size != KEY_BYTES):
            return None
        data = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    return data if len(data) == KEY_BYTES else None


def _mac(key: bytes, name: str, entry: dict) -> str:
    """BLAKE2b keyed with ``key`` over the entry's name and every field but its MAC."""
    body = json.dumps([name, {k: v for k, v in entry.items() if k != "mac"}], sort_keys=True,
                      separators=(",", ":"))
    return hashlib.blake2b(body.encode(), key=key, digest_size=16).hexdigest()


def _read_json(path: Path) -> object:
    """The JSON in ``path``; None when it is missing, a symbolic link (never followed), not
    a regular file, larger than CACHE_MAX_BYTES or not JSON."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > CACHE_MAX_BYTES:
            return None
        # At most the size it has (+1 to see growth): read(n) allocates n bytes at once.
        raw = fh.read(min(st.st_size, CACHE_MAX_BYTES) + 1)
        if len(raw) > CACHE_MAX_BYTES:
            return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


class ScanCache:
    """Per-directory JSON files of shard scans, read once and written back atomically.

    Each location of a directory's cache is read (beside the data, then the user's cache
    folder) and every entry found for a shard is a candidate; the first that verifies is
    used. Without a key (:func:`_secret`) nothing is read or written.
    """

    def __init__(self) -> None:
        self._files: dict[Path, dict[str, list]] = {}  # data directory -> name -> candidates
        self._dirty: set[Path] = set()
        self._ids: dict[str, dict | None] = {}  # shard path -> content id when it was looked up
        self._key = _secret()

    @staticmethod
    def _entry_key(shard, dim: int) -> str:
        return f"{Path(shard.path).name}|{shard.kind}|{shard.key}|{dim}"

    def _locations(self, d: Path) -> list[Path]:
        """Where the cache of data directory ``d`` may live, preferred first."""
        tag = hashlib.blake2b(str(d).encode(), digest_size=8).hexdigest()
        return [d / CACHE_NAME, _xdg_dir() / f"{tag}.json"]

    def _entries(self, d: Path) -> dict[str, list]:
        if d not in self._files:
            merged: dict[str, list] = {}
            for loc in self._locations(d):
                data = _read_json(loc)
                if isinstance(data, dict) and data.get("version") == CACHE_VERSION \
                        and isinstance(data.get("entries"), dict):
                    for name, entry in data["entries"].items():
                        merged.setdefault(name, []).append(entry)
            self._files[d] = merged
        return self._files[d]

    def get(self, shard, dim: int) -> ShardScan | None:
        """The cached scan of ``shard`` if an entry verifies against the file and the key."""
        if self._key is None:
            return None
        ident = self._ids[shard.path] = content_id(shard.path)
        if ident is None:
            return None
        name = self._entry_key(shard, dim)
        d = Path(shard.path).resolve().parent
        for e in self._entries(d).get(name, []):
            found = self._verified(e, name, ident, shard.n_rows)
            if found is not None:
                return found
        return None

    def _verified(self, e: object, name: str, ident: dict, n_rows: int) -> ShardScan | None:
        if not isinstance(e, dict) or any(e.get(k) != v for k, v in ident.items()) \
                or e.get("n_rows") != n_rows or not isinstance(e.get("nonfinite"), list) \
                or not hmac.compare_digest(str(e.get("mac", "")), _mac(self._key, name, e)):
            return None
        try:  # verified, yet parse defensively: the key could have leaked
            rows = np.asarray(e["nonfinite"], dtype=np.int64)
            scan = ShardScan(str(e["fingerprint"]), rows, float(e.get("max_norm", np.inf)))
        except (TypeError, ValueError, OverflowError, KeyError):
            return None
        if rows.ndim != 1 or (rows.size and (rows.min() < 0 or rows.max() >= n_rows)):
            return None
        return scan

    def put(self, shard, dim: int, res: ShardScan) -> None:
        """Record a fresh scan, unless the shard changed since :meth:`get` looked it up."""
        if self._key is None or res.nonfinite.size > CACHED_NONFINITE_MAX:
            return
        ident = content_id(shard.path)
        if ident is None or ident != self._ids.get(shard.path):
            return  # changed while it was scanned: the scan may mix old and new bytes
        name = self._entry_key(shard, dim)
        entry = {**ident, "n_rows": shard.n_rows, "fingerprint": res.fingerprint,
                 "nonfinite": res.nonfinite.tolist(), "max_norm": res.max_norm}
        entry["mac"] = _mac(self._key, name, entry)
        d = Path(shard.path).resolve().parent
        self._entries(d)[name] = [entry]
        self._dirty.add(d)

    def save(self) -> None:
        """Write changed caches; a cache that cannot be written anywhere is skipped."""
        for d in self._dirty:
            entries = {name: found[0] for name, found in self._files[d].items() if found}
            text = json.dumps({"version": CACHE_VERSION, "entries": entries})
            for loc in self._locations(d):
                if _write_atomic(loc, text):
                    break
        self._dirty.clear()


def _write_atomic(path: Path, text: str) -> bool:
    """Write the cache like any output (exclusive temp file + rename, a link at ``path`` is
    refused and left alone); False where it cannot be."""
    try:
        if path.parent == _xdg_dir():
            private_dir(path.parent)
        write_text(path, text)
    except (OSError, PrunekitError):
        return False
    return True
