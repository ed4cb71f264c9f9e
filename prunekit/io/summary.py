"""What is in an embedding set: shape, dtype, keys, side arrays, row norms, NaN/inf rows, shards.

:func:`describe` is ``prunekit info`` as one call: a JSON-ready summary (every number from
streamed passes over the data); :func:`render` turns it into the text the command prints.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from prunekit.io.embeddings import Embeddings, load_embeddings
from prunekit.io.formats import format_for

SHARDS_SHOWN = 20


def describe(embeddings: Embeddings | np.ndarray | str | os.PathLike, *, key: str | None = None,
             id_key: str | None = None) -> dict:
    """A JSON-ready summary of an embedding set (a path, an :class:`Embeddings` or an array).

    Keys: ``path``, ``key``, ``shape`` [N, D], ``dtype``, ``keys`` (every dataset/array of
    the file with its shape; {} for .npy and sharded inputs), ``ids`` ("int64", "str" or
    None), ``labels`` (number of classes or None), ``norms`` (mean, min, p25, median, p75,
    max of the finite rows' L2 norms), ``nonfinite_rows`` (the first 10 positions),
    ``n_nonfinite``, ``fingerprint``, and ``shards`` (for a directory or glob: one entry per
    shard, see :func:`shard_table`; else None). A path is read with NaN/inf rows reported,
    not refused; ``key`` and ``id_key`` are those of :func:`prunekit.load_embeddings` (None:
    the run context's).
    """
    emb = _as_embeddings(embeddings, key, id_key)
    sharded = emb.reader.sharded
    return {
        "path": emb.name,
        "key": emb.key,
        "shape": [emb.n_total, emb.dim],
        "dtype": str(emb.dtype),
        "keys": {} if sharded else file_keys(emb.path, emb.reader.shards[0].allow_external),
        "ids": None if emb.ids is None else ("int64" if emb.ids.dtype.kind == "i" else "str"),
        "labels": None if emb.labels is None else int(np.unique(emb.labels).size),
        "norms": _norm_stats(emb.norms[emb.rows]),
        "nonfinite_rows": emb.nonfinite_rows[:10].tolist(),
        "n_nonfinite": int(emb.nonfinite_rows.size),
        "fingerprint": emb.fingerprint,
        "shards": shard_table(emb) if sharded else None,
    }


def _as_embeddings(x: Embeddings | np.ndarray | str | os.PathLike, key: str | None,
                   id_key: str | None) -> Embeddings:
    if isinstance(x, Embeddings):
        return x
    if isinstance(x, np.ndarray):
        return Embeddings.from_array(x, drop_nonfinite=True)
    return load_embeddings(x, key=key, id_key=id_key, drop_nonfinite=True)


def file_keys(path: Path | None, allow_external: bool = False) -> dict[str, list[int]]:
    """Every dataset (HDF5) or array (npz) of the file with its shape; {} for .npy and
    Parquet (the format registry's ``keys``)."""
    if path is None:
        return {}
    return format_for(path).keys(Path(path), allow_external=allow_external)


def shard_table(emb: Embeddings) -> list[dict]:
    """One entry per shard: ``path``, ``rows``, global ``start``, ``n_nonfinite``,
    ``ids_from`` (a metadata file, or None) and the norm statistics of its finite rows."""
    src, bad, out = emb.reader, emb.nonfinite_rows, []
    for s in src.shards:
        in_shard = bad[(bad >= s.start) & (bad < s.stop)]
        keep = np.ones(s.n_rows, dtype=bool)
        keep[in_shard - s.start] = False
        out.append({"path": s.path, "rows": s.n_rows, "start": s.start,
                    "n_nonfinite": int(in_shard.size), "ids_from": s.ids_from,
                    "norms": _norm_stats(emb.norms[s.start : s.stop][keep])})
    return out


def _norm_stats(norms: np.ndarray) -> dict[str, float]:
    if norms.size == 0:
        return {}
    q = np.percentile(norms, [0, 25, 50, 75, 100])
    return {"mean": float(norms.mean(dtype=np.float64)), "min": float(q[0]), "p25": float(q[1]),
            "median": float(q[2]), "p75": float(q[3]), "max": float(q[4])}


def render(d: dict) -> str:
    """The text ``prunekit info`` prints for a :func:`describe` summary (no final newline)."""
    n = d["norms"]
    lines = [f"{d['path']} ['{d['key']}']: {d['shape'][0]} x {d['shape'][1]} {d['dtype']}"]
    if d["keys"]:
        lines.append("  keys: " + ", ".join(f"{k} {tuple(v)}" for k, v in d["keys"].items()))
    labels = f"{d['labels']} classes" if d["labels"] else "none"
    lines.append(f"  ids: {d['ids'] or 'none'}   labels: {labels}")
    lines.append(f"  row norms: mean {n['mean']:.4g}  min {n['min']:.4g}  median {n['median']:.4g}"
                 f"  max {n['max']:.4g}")
    bad = d["n_nonfinite"]
    lines.append(f"  NaN/inf rows: {bad}" + (f" (first: {d['nonfinite_rows']})" if bad else ""))
    lines.append(f"  fingerprint: {d['fingerprint']}")
    if d["shards"]:
        lines += _shard_lines(d["shards"])
    return "\n".join(lines)


def _shard_lines(shards: list[dict]) -> list[str]:
    lines = [f"  shards: {len(shards)}"]
    for i, s in enumerate(shards[:SHARDS_SHOWN]):
        n = s["norms"]
        norms = f"norms mean {n['mean']:.4g} min {n['min']:.4g} max {n['max']:.4g}" if n else "no finite rows"
        lines.append(f"    [{i}] {Path(s['path']).name}: {s['rows']} rows from {s['start']}, "
                     f"NaN/inf {s['n_nonfinite']}, {norms}")
    if len(shards) > SHARDS_SHOWN:
        lines.append(f"    ... {len(shards) - SHARDS_SHOWN} more (all of them with --json)")
    return lines
