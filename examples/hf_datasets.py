"""A selection applied to a Hugging Face `datasets.Dataset`, matched by an id column.

What it shows: a `datasets.Dataset` with a `file` column (the ids an embeddings file
carries), embeddings scored and selected with prunekit (k-means, the same quota per label),
and `prunekit_lfm.data.hf_select` picking the kept rows from a copy of the dataset stored in
another order, by id. It prints the label counts before and after and checks that every
kept row is the one the selection names.

Run:  python examples/hf_datasets.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import datasets
import h5py
import numpy as np
from sklearn.datasets import load_digits

import prunekit as pk
from prunekit_lfm.data import hf_select


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="(the same: this example takes seconds)")
    ap.add_argument("--out", default=None, help="working folder [default: a temporary one]")
    args = ap.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="prunekit-hf-"))

    d = load_digits()
    files = [f"digit-{i:04d}.png" for i in range(len(d.target))]
    ds = datasets.Dataset.from_dict({"file": files, "pixels": d.data.astype(np.uint8).tolist(),
                                     "label": d.target.tolist()})

    # Embeddings with the same ids, as `prunekit lfm embed` would write them.
    with h5py.File(out / "embeddings.h5", "w") as f:
        f["embeddings"] = d.data.astype(np.float32)
        f["ids"] = np.array(files, dtype=object).astype("S")
        f["labels"] = d.target
    emb = pk.load_embeddings(out / "embeddings.h5")
    scores = pk.score(emb, "kmeans", k=10, seed=0, progress=False)
    sel = pk.select(scores, pr=0.9, balance="labels")  # keep 10 %, the same count per digit
    sel.save(out / "selection.h5")

    stored = ds.shuffle(seed=1)  # the dataset as it sits on disk: another order
    picked = hf_select(stored, out / "selection.h5", id_column="file")
    assert picked["file"] == [files[i] for i in sel.indices]  # the rows the selection names

    before = Counter(ds["label"])
    after = Counter(picked["label"])
    print(f"dataset: {len(ds)} rows; labels {dict(sorted(before.items()))}")
    print(f"selection (k-means, balance labels, pr 0.9): {len(picked)} rows; "
          f"labels {dict(sorted(after.items()))}")
    print(f"first kept rows: {picked['file'][:3]}")
    return {"n": len(picked), "per_label": dict(sorted(after.items()))}


if __name__ == "__main__":
    main()
