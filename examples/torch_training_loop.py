"""A PyTorch training loop fed by a selection: Subset, sampler and oversampling weights.

What it shows: a `torch.utils.data.Dataset` (scikit-learn's bundled digits as 64-pixel
vectors), a k-means balanced selection made by prunekit from the same vectors, and three
ways to feed it to a plain training loop: `prunekit_lfm.data.torch_subset` (a `Subset`),
`torch_sampler` over the full data set (only kept rows are drawn), and an oversampled
selection whose repeat counts become sampling weights. It trains a linear classifier on
each and prints the held-out accuracy next to training on everything and on a random
subset of the same size.

Run:  python examples/torch_training_loop.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import prunekit as pk
from prunekit_lfm.data import torch_sampler, torch_subset


def fit(loader: DataLoader, epochs: int, seed: int = 0) -> torch.nn.Linear:
    """Multinomial logistic regression trained with Adam on what ``loader`` yields."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(64, 10)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model


def accuracy(model: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer epochs")
    ap.add_argument("--out", default=None, help="working folder [default: a temporary one]")
    args = ap.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="prunekit-torch-"))
    epochs = 5 if args.quick else 30

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target)
    train_rows, test_rows = np.arange(0, 1500), np.arange(1500, len(y))
    train = TensorDataset(x[train_rows], y[train_rows])

    # prunekit scores and selects on the training rows' embeddings (here: their pixels).
    km = pk.score(x[train_rows].numpy(), "kmeans", k=20, seed=0, progress=False)
    sel = pk.select(km, pr=0.8, balance="clusters")  # keep 20 %, the same quota per cluster
    sel.save(out / "selection.h5")
    rnd = pk.select(pk.score(x[train_rows].numpy(), "random", seed=0, progress=False), pr=0.8)
    over = pk.select(km, pr=0.0, balance="clusters", oversample=True)

    runs = {
        "all rows": DataLoader(train, batch_size=64, shuffle=True,
                               generator=torch.Generator().manual_seed(0)),
        "balanced 20 % (Subset)": DataLoader(torch_subset(train, out / "selection.h5"),
                                             batch_size=64, shuffle=True,
                                             generator=torch.Generator().manual_seed(0)),
        "balanced 20 % (sampler)": DataLoader(train, batch_size=64,
                                              sampler=torch_sampler(sel, len(train), seed=0)),
        "random 20 %": DataLoader(torch_subset(train, rnd), batch_size=64, shuffle=True,
                                  generator=torch.Generator().manual_seed(0)),
        "oversampled clusters (weights)": DataLoader(train, batch_size=64,
                                                     sampler=torch_sampler(over, len(train), seed=0)),
    }
    result = {}
    for name, loader in runs.items():
        model = fit(loader, epochs)
        result[name] = accuracy(model, x[test_rows], y[test_rows])
        print(f"{name:<32} {len(loader.sampler):>5} draws/epoch  held-out accuracy {result[name]:.3f}")
    return result


if __name__ == "__main__":
    main()
