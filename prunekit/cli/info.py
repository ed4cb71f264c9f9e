"""``prunekit info``: what is in an embeddings file."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import click
import h5py
import numpy as np

from ..embeddings import Embeddings
from .common import key_option, open_embeddings


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
    if zipfile.is_zipfile(path):
        with np.load(path, allow_pickle=False) as z:
            return {name: list(z[name].shape) for name in z.files}
    return {}


def describe(emb: Embeddings) -> dict:
    """A JSON-ready summary: shape, dtype, keys, side arrays, norm statistics, non-finite rows."""
    norms = emb.norms[emb.rows]
    q = np.percentile(norms, [0, 25, 50, 75, 100])
    return {
        "path": emb.source,
        "key": emb.key,
        "shape": [emb.n_total, emb.dim],
        "dtype": str(emb.dtype),
        "keys": file_keys(emb.path),
        "ids": None if emb.ids is None else ("int64" if emb.ids.dtype.kind == "i" else "str"),
        "labels": None if emb.labels is None else int(np.unique(emb.labels).size),
        "norms": {
            "mean": float(norms.mean()),
            "min": float(q[0]),
            "p25": float(q[1]),
            "median": float(q[2]),
            "p75": float(q[3]),
            "max": float(q[4]),
        },
        "nonfinite_rows": emb.nonfinite_rows[:10].tolist(),
        "n_nonfinite": int(emb.nonfinite_rows.size),
        "fingerprint": emb.fingerprint,
    }


@click.command()
@click.argument("path", type=click.Path(dir_okay=False))
@key_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def info(path: str, key: str, as_json: bool) -> None:
    """Shape, dtype, keys, norm summary and NaN/inf rows of an embeddings file.

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
