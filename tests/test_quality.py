"""Selection quality: per-group counts, coverage, RFF-MMD against a direct computation."""

from __future__ import annotations

import numpy as np
import pytest

from prunekit import Embeddings, PrunekitError
from prunekit.compute.kernels import rbf, rff_mmd
from prunekit.seeds import role_seed
from prunekit.selection.quality import group_counts, mmd_report


def test_group_counts_by_hand():
    groups = np.array([5, 5, 5, 2, 2, 9, -1])
    before = np.array([0, 1, 2, 3, 4, 5])  # row 6 was not scored
    g = group_counts(groups, before, np.array([0, 2, 3]))
    assert g == {"ids": [2, 5, 9], "before": [2, 3, 1], "kept": [1, 2, 0], "coverage": pytest.approx(2 / 3)}
    rep = group_counts(groups, before, np.array([0, 0, 0, 5, 5]))  # oversampled: repeats
    assert rep["kept"] == [0, 1, 1] and rep["draws"] == [0, 3, 2]


def test_mmd_matches_rff_mmd_and_exact_kernel():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 5))
    emb = Embeddings.from_array(x)
    kept = np.arange(0, 300, 3)
    rep = mmd_report(emb, kept, random_draws=4, seed=1, n_features=4096, sigma=2.0, progress=False)
    # the features come from the seed's own stream for that role
    features_seed = role_seed(1, "fourier features")
    assert rep["kept"] == pytest.approx(rff_mmd(x[kept], x, 2.0, 4096, seed=features_seed), rel=1e-4)
    # the RFF estimate approximates the exact kernel MMD
    kxx, kss, kxs = rbf(x, x, 2.0).mean(), rbf(x[kept], x[kept], 2.0).mean(), rbf(x[kept], x, 2.0).mean()
    exact = np.sqrt(kxx + kss - 2 * kxs)
    assert rep["kept"] == pytest.approx(exact, abs=0.02)
    assert len(rep["random"]) == 4 and rep["n_kept"] == 100 and rep["n_full"] == 300
    full = mmd_report(emb, np.arange(300), random_draws=1, seed=0, progress=False)
    assert full["kept"] == pytest.approx(0.0, abs=1e-6)


def test_mmd_refuses_rows_that_were_dropped():
    x = np.ones((5, 2))
    x[3, 0] = np.nan
    emb = Embeddings.from_array(x, drop_nonfinite=True)
    with pytest.raises(PrunekitError, match=r"NaN/inf .*rows 3"):
        mmd_report(emb, np.array([1, 3]), progress=False)
    rep = mmd_report(emb, np.array([0, 1, 2, 4]), random_draws=2, progress=False)
    assert rep["kept"] == pytest.approx(0.0, abs=1e-6) and rep["n_full"] == 4


def test_pk_inspect_is_the_cli_in_one_call(tmp_path):
    import json

    import h5py
    from click.testing import CliRunner

    import prunekit as pk
    from prunekit.cli import main

    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "emb.h5", "w") as f:
        f["embeddings"] = rng.standard_normal((60, 3))
        f["labels"] = np.arange(60) % 4
    emb = pk.load_embeddings(tmp_path / "emb.h5")
    scores = pk.score(emb, "kmeans", k=3, seed=0, progress=False)
    scores.save(tmp_path / "scores.h5")
    pk.select(scores, 0.5, balance="clusters").save(tmp_path / "sel.h5")
    report = pk.inspect(tmp_path / "sel.h5", scores=tmp_path / "scores.h5", embeddings=tmp_path / "emb.h5",
                        random_draws=3, seed=4)
    res = CliRunner().invoke(main, ["inspect", str(tmp_path / "sel.h5"), "--scores", str(tmp_path / "scores.h5"),
                                    "--embeddings", str(tmp_path / "emb.h5"), "--random-draws", "3",
                                    "--seed", "4", "--json", "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == json.loads(json.dumps(report.to_dict()))
    assert report["n_kept"] == 30 and sum(report["clusters"]["kept"]) == 30
    assert sum(report["labels"]["before"]) == 60 and len(report["mmd"]["random"]) == 3
    # objects work as well as paths
    same = pk.inspect(pk.load_selection(tmp_path / "sel.h5"), scores=scores, embeddings=emb, random_draws=3, seed=4)
    assert same["mmd"] == report["mmd"] and same["clusters"] == report["clusters"]


def test_mmd_with_dropped_rows_never_builds_the_usable_rows(monkeypatch):
    """With non-finite rows dropped, the MMD (sigma by the median heuristic, a sample, the
    random subsets) reads positions from the sparse dropped list, never the n-long rows
    array, and equals the same report over the clean rows given as a plain array."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((400, 6))
    bad = np.array([0, 17, 18, 250, 399])
    x[bad, 1] = np.nan
    clean = np.delete(x, bad, axis=0)
    usable = np.setdiff1d(np.arange(400), bad)
    kept = usable[::4]
    ref = mmd_report(Embeddings.from_array(clean), np.searchsorted(usable, kept), random_draws=3,
                     seed=2, sample=300, progress=False)
    emb = Embeddings.from_array(x, drop_nonfinite=True)
    monkeypatch.setattr(Embeddings, "rows", property(lambda self: pytest.fail("rows built")))
    rep = mmd_report(emb, kept, random_draws=3, seed=2, sample=300, progress=False)
    assert rep["n_full"] == 395 and rep["n_kept"] == kept.size
    assert rep["sigma"] == pytest.approx(ref["sigma"], rel=1e-12)
    with pytest.raises(PrunekitError, match=r"rows 17, 250"):
        mmd_report(emb, np.array([1, 17, 250]), progress=False)
