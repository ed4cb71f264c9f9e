"""The load-time pass over a source: per-shard fingerprint, non-finite rows and row norms.

A shard's fingerprint is ``blake2b-128("{n_rows}x{dim}" + its rows as little-endian bytes)``;
a one-shard source's fingerprint is its shard's (so a single file keeps the fingerprint it
always had), a sharded one hashes the list of per-shard fingerprints. Each shard's result is
cached, keyed by file name, size and mtime, in ``.prunekit-cache.json`` beside the shards
(or under ``$XDG_CACHE_HOME/prunekit`` when that directory is not writable), so later
commands skip the pass. Small single files are not cached: re-reading them is cheaper.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import write_text
from .budget import memory_budget
from .errors import PrunekitError
from .progress import track
from .source import CHUNK_ROWS, EmbeddingSource, MemorySource

CACHE_NAME = ".prunekit-cache.json"
CACHE_VERSION = 2
CACHE_MIN_BYTES = 256 << 20  # single files smaller than this are re-hashed, not cached
CACHED_NONFINITE_MAX = 100_000  # a shard with more bad rows is re-scanned instead
SUB_ROWS = 8192  # rows converted to float32 at once (bounds the temporaries of the pass)


@dataclass
class ShardScan:
    """One shard's pass: fingerprint, non-finite rows (shard-local), norms (float32 or None)."""

    fingerprint: str
    nonfinite: np.ndarray
    max_norm: float  # the largest norm of a finite row (0 when none)
    norms: np.ndarray | None = None


def scan_shard(src: EmbeddingSource, i: int, chunk_rows: int = CHUNK_ROWS) -> ShardScan:
    """Stream shard ``i`` once: hash its bytes, find non-finite rows, compute norms.

    The hash of one chunk runs on a helper thread (hashlib releases the GIL) while this
    thread computes the chunk's norms; the chunks still enter the hash in order.
    """
    s = src.shards[i]
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{s.n_rows}x{src.dim}".encode())
    norms = np.empty(s.n_rows, dtype=np.float32)
    bad: list[np.ndarray] = []
    with ThreadPoolExecutor(max_workers=1) as hasher:
        pending = None
        for ref in (r for r in src.chunks(chunk_rows) if r.shard == i):
            block = src.read(ref)
            little = np.ascontiguousarray(block, dtype=block.dtype.newbyteorder("<"))
            if pending is not None:
                pending.result()
            pending = hasher.submit(h.update, memoryview(little))
            finite = norms_into(block, norms[ref.start : ref.stop])
            if not finite.all():
                bad.append(ref.start + np.flatnonzero(~finite))
        if pending is not None:
            pending.result()
    nonfinite = np.concatenate(bad).astype(np.int64) if bad else np.zeros(0, np.int64)
    finite_norms = np.delete(norms, nonfinite)
    max_norm = float(finite_norms.max()) if finite_norms.size else 0.0
    return ShardScan(h.hexdigest(), nonfinite, max_norm, norms)


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
) -> tuple[str, np.ndarray, np.ndarray | None, float]:
    """``(fingerprint, global non-finite rows, norms or None, largest finite norm)``.

    Norms are returned only when no shard came from the cache (a cached shard is not
    re-read; :func:`norms` streams them on demand). The shards not in the cache are
    scanned as tasks of the current engine (:func:`prunekit.engine.current`: threads on
    this machine unless a command made another one current), results in shard order.
    """
    cache = ScanCache() if (uses_cache(src) if use_cache is None else use_cache) else None
    found = [cache.get(s, src.dim) if cache else None for s in src.shards]
    todo = [i for i, f in enumerate(found) if f is None]
    if isinstance(src, MemorySource) or len(todo) <= 1:
        fresh: Iterable[ShardScan] = track((scan_shard(src, i) for i in todo), total=len(todo),
                                           desc="scan", progress=progress)
    else:
        from .engine import current

        fresh = current().map(_scan_task, todo, shared=src, desc="scan", progress=progress,
                              limit=max(1, memory_budget() // task_bytes(src)))
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
    have_norms = all(r.norms is not None for r in scans)
    norms = np.concatenate([r.norms for r in scans]) if have_norms else None  # type: ignore[misc]
    return fp, nonfinite, norms, max((r.max_norm for r in scans), default=0.0)


def task_bytes(src: EmbeddingSource, chunk_rows: int = CHUNK_ROWS) -> int:
    """Memory one shard scan holds: a chunk as read, its little-endian copy, a float32 part."""
    rows = min(chunk_rows, max(s.n_rows for s in src.shards))
    return rows * src.dim * src.dtype.itemsize * 2 + SUB_ROWS * src.dim * 8


def _scan_task(src: EmbeddingSource, i: int) -> ShardScan:
    """Engine task: the scan of shard ``i`` (workers open the shard themselves)."""
    return scan_shard(src, i)


def norms(src: EmbeddingSource, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Row norms (float32) of every source row, streamed chunk by chunk."""
    out = np.empty(src.n_total, dtype=np.float32)
    for ref in src.chunks(chunk_rows):
        norms_into(src.read(ref), out[ref.global_start : ref.global_stop])
    return out


# -- the cache --------------------------------------------------------------------------------


def _stat(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _xdg_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "prunekit"


class ScanCache:
    """Per-directory JSON files of shard scans, read once and written back atomically."""

    def __init__(self) -> None:
        self._files: dict[Path, dict] = {}  # data directory -> entries
        self._dirty: set[Path] = set()

    @staticmethod
    def _entry_key(shard, dim: int) -> str:
        return f"{Path(shard.path).name}|{shard.kind}|{shard.key}|{dim}"

    def _locations(self, d: Path) -> list[Path]:
        """Where the cache of data directory ``d`` may live, preferred first."""
        tag = hashlib.blake2b(str(d).encode(), digest_size=8).hexdigest()
        return [d / CACHE_NAME, _xdg_dir() / f"{tag}.json"]

    def _entries(self, d: Path) -> dict:
        if d not in self._files:
            self._files[d] = {}
            for loc in self._locations(d):
                try:
                    data = json.loads(loc.read_text())
                except (OSError, ValueError):
                    continue
                if isinstance(data, dict) and data.get("version") == CACHE_VERSION:
                    self._files[d] = dict(data.get("entries", {}))
                    break
        return self._files[d]

    def get(self, shard, dim: int) -> ShardScan | None:
        d = Path(shard.path).resolve().parent
        e = self._entries(d).get(self._entry_key(shard, dim))
        try:
            size, mtime = _stat(shard.path)
        except OSError:
            return None
        if not isinstance(e, dict) or e.get("size") != size or e.get("mtime_ns") != mtime \
                or e.get("n_rows") != shard.n_rows or not isinstance(e.get("nonfinite"), list):
            return None
        try:  # the cache is a file in the user's folder: trust nothing in it
            rows = np.asarray(e["nonfinite"], dtype=np.int64)
            scan = ShardScan(str(e["fingerprint"]), rows, float(e.get("max_norm", np.inf)))
        except (TypeError, ValueError, OverflowError):
            return None
        if rows.ndim != 1 or (rows.size and (rows.min() < 0 or rows.max() >= shard.n_rows)):
            return None
        return scan

    def put(self, shard, dim: int, res: ShardScan) -> None:
        if res.nonfinite.size > CACHED_NONFINITE_MAX:
            return
        d = Path(shard.path).resolve().parent
        size, mtime = _stat(shard.path)
        self._entries(d)[self._entry_key(shard, dim)] = {
            "size": size, "mtime_ns": mtime, "n_rows": shard.n_rows,
            "fingerprint": res.fingerprint, "nonfinite": res.nonfinite.tolist(),
            "max_norm": res.max_norm,
        }
        self._dirty.add(d)

    def save(self) -> None:
        """Write changed caches; a cache that cannot be written anywhere is skipped."""
        for d in self._dirty:
            text = json.dumps({"version": CACHE_VERSION, "entries": self._files[d]})
            for loc in self._locations(d):
                if _write_atomic(loc, text):
                    break
        self._dirty.clear()


def _write_atomic(path: Path, text: str) -> bool:
    """Write the cache like any output (temp file + rename); False where it cannot be."""
    try:
        write_text(path, text)
    except (OSError, PrunekitError):
        return False
    return True
