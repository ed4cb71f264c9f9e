"""Dedup, then balance: SemDeDup on embeddings stored as Parquet shards, then a balanced subset.

What it shows: a folder of Parquet shards (an `embedding` column of fixed-size lists and
an `id` column, the layout of many embedding pipelines) read as one embedding set; the
`semdedup` method finding planted near-duplicates; `select --eps` removing exactly them;
and a k-means balanced selection made from what is left (the paper's Cb on a deduplicated
set). Core only: numpy, faiss, pyarrow; no torch.

Run:  python examples/dedup_then_balance.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import prunekit as pk
from prunekit.methods import dedup


def make_shards(out: Path, n: int, dim: int, n_dup: int, seed: int = 0) -> np.ndarray:
    """Write n rows from 8 uneven Gaussian clusters, n_dup of them near-copies of others,
    as 4 Parquet shards; returns the planted pairs (n_dup, 2): original, copy."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((8, dim)) * 4
    sizes = rng.multinomial(n, np.linspace(1, 3, 8) / np.linspace(1, 3, 8).sum())
    x = np.concatenate([c + rng.standard_normal((s, dim)) for c, s in zip(centers, sizes, strict=True)])
    copies = rng.choice(n, size=n_dup, replace=False)
    originals = rng.choice(np.setdiff1d(np.arange(n), copies), size=n_dup, replace=False)
    x[copies] = x[originals] + 1e-3 * rng.standard_normal((n_dup, dim))  # cosine distance ~1e-8
    x = x.astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(np.arange(n), 4)):
        table = pa.table({
            "id": [f"img{j:06d}" for j in part],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x[part].ravel()), dim),
        })
        pq.write_table(table, out / f"part-{i:02d}.parquet")
    return np.stack([originals, copies], axis=1)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small set (seconds)")
    ap.add_argument("--out", default=None, help="working folder [default: a temporary one]")
    args = ap.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="prunekit-dedup-"))
    n, dim, n_dup = (2000, 32, 100) if args.quick else (20000, 64, 1000)

    pairs = make_shards(out / "shards", n, dim, n_dup)
    emb = pk.load_embeddings(out / "shards", key="embedding")  # the folder as one set
    print(f"{emb.n_total} embeddings of dim {emb.dim} from {len(list((out / 'shards').glob('*.parquet')))} "
          f"Parquet shards; {n_dup} near-duplicates planted")

    sd = pk.score(emb, "semdedup", k=8, seed=0, progress=False)
    kept = dedup.select_eps(sd, 0.001)  # what SemDeDup keeps at eps = 0.001
    removed = np.setdiff1d(np.arange(emb.n_total), kept.indices)
    gone = np.isin(pairs, removed)
    hits = int((gone.sum(axis=1) == 1).sum())  # pairs of which exactly one row went
    print(f"semdedup at eps 0.001 removes {removed.size} rows: one row of {hits} of the {n_dup} "
          "planted pairs, the one nearer its centroid (keep order: hard)")

    # Balance on the deduplicated set: score k-means, make removed rows ineligible (NaN),
    # then keep half of what is left with the same quota per cluster.
    km = pk.score(emb, "kmeans", k=8, seed=0, progress=False)
    km.score[removed] = np.nan
    sel = pk.select(km, pr=0.5, balance="clusters")
    per_cluster = np.bincount(km.cluster[sel.indices], minlength=8)
    sizes = np.bincount(km.cluster, minlength=8)
    print(f"balanced selection: {sel.n_kept} of {kept.n_kept} deduplicated rows; "
          f"cluster sizes {sizes.min()}..{sizes.max()} -> kept per cluster "
          f"{per_cluster.min()}..{per_cluster.max()}; duplicates kept: "
          f"{np.intersect1d(sel.indices, removed).size}")
    sel.save(out / "selection.h5")
    print(f"wrote {out / 'selection.h5'} (ids: {sel.ids[:3].tolist()} ...)")
    return {"removed": int(removed.size), "hits": hits, "n_dup": n_dup, "kept": sel.n_kept,
            "per_cluster": per_cluster.tolist(), "dup_in_selection": int(np.intersect1d(sel.indices, removed).size)}


if __name__ == "__main__":
    main()
