"""``prunekit info``: what is in an embeddings file or a set of shards."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import click
import h5py
import numpy as np

from ..embeddings import Embeddings
from ..npzio import npz_names, npz_shape
from .common import key_option, open_embeddings

SHARDS_SHOWN = 20


def file_keys(path: Path | None) -> dict[str, list[int]]:
    """Every dataset (HDF5) or array (npz) of the file with its shape; {} for .npy."""
    if path is None:
        return {}
    if h5py.is_hdf5(path):
        found: dict[str, list[int]] = {}
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: found.__setitem__(name, list(obj.shape))
                         if isinstance(obj, h5py.Dataset) else None)
        return found
    if zipfile.is_zipfile(path):  # shapes from the headers: nothing decompressed or unpickled
        return {name: list(npz_shape(path, name)) for name in npz_names(path)}
    return {}


def _norm_stats(norms: np.ndarray) -> dict[str, float]:
    if norms.size == 0:
        return {}
    q = np.percentile(norms, [0, 25, 50, 75, 100])
    return {"mean": float(norms.mean(dtype=np.float64)), "min": float(q[0]), "p25": float(q[1]),
            "median": float(q[2]), "p75": float(q[3]), "max": float(q[4])}


def shard_table(emb: Embeddings) -> list[dict]:
    """One entry per shard: file, rows, global start, NaN/inf rows, norm statistics."""
    src, bad, out = emb.source_obj, emb.nonfinite_rows, []
    for s in src.shards:
        in_shard = bad[(bad >= s.start) & (bad < s.stop)]
        keep = np.ones(s.n_rows, dtype=bool)
        keep[in_shard - s.start] = False
        out.append({"path": s.path, "rows": s.n_rows, "start": s.start,
                    "n_nonfinite": int(in_shard.size), "ids_from": s.ids_from,
                    "norms": _norm_stats(emb.norms[s.start : s.stop][keep])})
    return out


def describe(emb: Embeddings) -> dict:
    """A JSON-ready summary: shape, dtype, keys, side arrays, norm statistics, non-finite rows,
    and for a sharded input one entry per shard (all computed in streamed passes)."""
    sharded = emb.source_obj.sharded
    return {
        "path": emb.source,
        "key": emb.key,
        "shape": [emb.n_total, emb.dim],
        "dtype": str(emb.dtype),
        "keys": {} if sharded else file_keys(emb.path),
        "ids": None if emb.ids is None else ("int64" if emb.ids.dtype.kind == "i" else "str"),
        "labels": None if emb.labels is None else int(np.unique(emb.labels).size),
        "norms": _norm_stats(emb.norms[emb.rows]),
        "nonfinite_rows": emb.nonfinite_rows[:10].tolist(),
        "n_nonfinite": int(emb.nonfinite_rows.size),
        "fingerprint": emb.fingerprint,
        "shards": shard_table(emb) if sharded else None,
    }


@click.command()
@click.argument("path", type=click.Path())
@key_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def info(path: str, key: str, as_json: bool) -> None:
    """Shape, dtype, keys, norm summary and NaN/inf rows of an embeddings file.

    PATH may also be a directory or a glob of shards: then each shard is reported too.
    Non-finite rows are reported, not an error, here.
    """
    d = describe(open_embeddings(path, key, drop_nonfinite=True))
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    n = d["norms"]
    click.echo(f"{d['path']} ['{d['key']}']: {d['shape'][0]} x {d['shape'][1]} {d['dtype']}")
    if d["keys"]:
        click.echo("  keys: " + ", ".join(f"{k} {tuple(v)}" for k, v in d["keys"].items()))
    labels = f"{d['labels']} classes" if d["labels"] else "none"
    click.echo(f"  ids: {d['ids'] or 'none'}   labels: {labels}")
    click.echo(
        f"  row norms: mean {n['mean']:.4g}  min {n['min']:.4g}  median {n['median']:.4g}  max {n['max']:.4g}"
    )
    bad = d["n_nonfinite"]
    click.echo(f"  NaN/inf rows: {bad}" + (f" (first: {d['nonfinite_rows']})" if bad else ""))
    click.echo(f"  fingerprint: {d['fingerprint']}")
    if d["shards"]:
        _echo_shards(d["shards"])


def _echo_shards(shards: list[dict]) -> None:
    click.echo(f"  shards: {len(shards)}")
    for i, s in enumerate(shards[:SHARDS_SHOWN]):
        n = s["norms"]
        norms = f"norms mean {n['mean']:.4g} min {n['min']:.4g} max {n['max']:.4g}" if n else "no finite rows"
        click.echo(f"    [{i}] {Path(s['path']).name}: {s['rows']} rows from {s['start']}, "
                   f"NaN/inf {s['n_nonfinite']}, {norms}")
    if len(shards) > SHARDS_SHOWN:
        click.echo(f"    ... {len(shards) - SHARDS_SHOWN} more (all of them with --json)")
