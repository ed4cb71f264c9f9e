"""Real data end to end: digits pixels -> score kmeans -> select Cb -> export / inspect."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from quota_refs import ref_balanced
from sklearn.datasets import load_digits

from prunekit.cli import main
from prunekit.selection.scores import load_scores
from prunekit.selection.subset import load_selection


def run(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    work = tmp_path_factory.mktemp("digits")
    d = load_digits()
    with h5py.File(work / "embeddings.h5", "w") as f:
        f["embeddings"] = d.data.astype(np.float32)
        f["labels"] = d.target.astype(np.int64)
        f["ids"] = np.array([f"digit-{i:04d}" for i in range(len(d.target))], dtype=object).astype("S")
    run("score", work / "embeddings.h5", "--method", "kmeans", "--k", "10", "-q", "-o", work / "scores.h5")
    return work, d.target


@pytest.mark.parametrize("invert", [False, True])
def test_balanced_clusters_exact_quotas(digits, invert):
    work, _ = digits
    out = work / f"sel-{invert}.h5"
    args = ["select", work / "scores.h5", "--pr", "0.5", "--balance", "clusters", "-o", out]
    res = run(*args, *(["--invert"] if invert else []))
    assert "kept 898 of 1797 scored rows" in res.output  # round(0.5 * 1797), halves to even
    sc, sel = load_scores(work / "scores.h5"), load_selection(out)
    assert sel.n_kept == 898 and sel.n_total == 1797
    sizes = np.bincount(sc.cluster, minlength=10)
    assert sizes.size == 10 and sizes.min() > 0
    kept = np.bincount(sc.cluster[sel.indices], minlength=10)
    assert kept.tolist() == ref_balanced(sizes.tolist(), 898)
    # inside each cluster: furthest from the centroid first (or nearest with --invert)
    mask = sel.mask()
    sign = -1 if invert else 1
    for c in range(10):
        inside = sc.cluster == c
        kept_s, dropped_s = sign * sc.score[inside & mask], sign * sc.score[inside & ~mask]
        if dropped_s.size:
            assert kept_s.min() >= dropped_s.max()
    assert sel.ids.tolist() == [f"digit-{i:04d}" for i in sel.indices]


def test_export_round_trip(digits):
    work, _ = digits
    run("select", work / "scores.h5", "--pr", "0.8", "--balance", "proportional", "-o", work / "p.h5")
    sel = load_selection(work / "p.h5")
    assert sel.n_kept == 359  # round(0.2 * 1797)
    for fmt in ("npy", "json", "txt"):
        run("export", work / "p.h5", "--format", fmt)
    np.testing.assert_array_equal(np.load(work / "p.npy"), sel.indices)
    doc = json.loads((work / "p.json").read_text())
    assert doc["indices"] == sel.indices.tolist() and doc["ids"] == sel.ids.tolist()
    assert doc["counts"] is None and doc["n_total"] == 1797
    lines = (work / "p.txt").read_text().split()
    assert [int(v) for v in lines] == sel.indices.tolist()
    run("export", work / "p.h5", "--format", "txt", "--ids", "-o", work / "ids.txt")
    assert (work / "ids.txt").read_text().split() == sel.ids.tolist()


def test_labels_balance_and_inspect(digits):
    work, target = digits
    run("select", work / "scores.h5", "--pr", "0.5", "--balance", "labels", "-o", work / "l.h5")
    sel = load_selection(work / "l.h5")
    sizes = np.bincount(target)
    kept = np.bincount(target[sel.indices], minlength=10)
    assert kept.tolist() == ref_balanced(sizes.tolist(), 898)
    res = run("inspect", work / "l.h5", "--scores", work / "scores.h5", "--embeddings",
              work / "embeddings.h5", "--json", "-q", "--random-draws", "3")
    rep = json.loads(res.output)
    assert rep["labels"]["kept"] == kept.tolist() and rep["labels"]["before"] == sizes.tolist()
    assert rep["labels"]["coverage"] == 1.0
    sc = load_scores(work / "scores.h5")
    assert rep["clusters"]["kept"] == np.bincount(sc.cluster[sel.indices], minlength=10).tolist()
    mmd = rep["mmd"]
    assert mmd["n_kept"] == 898 and len(mmd["random"]) == 3 and mmd["same_embeddings"] is True
    assert 0 < mmd["kept"] < 1 and 0 < mmd["random_mean"] < 1
