"""``prunekit score`` end to end: outputs, defaults, and every error path (exit 2, no file)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from prunekit.cli import main


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A directory holding emb.h5 (60 x 4, int ids) and nan.h5 (row 3 NaN); cwd is there."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 4)).astype(np.float32)
    with h5py.File(tmp_path / "emb.h5", "w") as f:
        f["embeddings"] = x
        f["ids"] = np.arange(60) * 10
    x[3, 1] = np.nan
    with h5py.File(tmp_path / "nan.h5", "w") as f:
        f["embeddings"] = x
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args):
    return CliRunner().invoke(main, ["score", *args])


def test_kmeans_default_output_and_summary(work):
    res = run("emb.h5", "--method", "kmeans", "--k", "3", "--quiet")
    assert res.exit_code == 0, res.output
    assert res.output.startswith("scores.h5: kmeans scored 60 of 60 rows (k=3, inertia ")
    with h5py.File(work / "scores.h5") as f:
        assert {"score", "cluster", "centroids", "centroid_distance", "ids"} <= set(f)
        assert f["centroids"].shape == (3, 4)
        assert f.attrs["method"] == "kmeans" and f.attrs["n_total"] == 60
        np.testing.assert_array_equal(f["ids"][()], np.arange(60) * 10)
        np.testing.assert_array_equal(f["score"][()], f["centroid_distance"][()])
        assert '"k": 3' in f.attrs["params"]


def test_seeded_cli_runs_are_byte_identical(work):
    for out in ("a.h5", "b.h5"):
        assert run("emb.h5", "-m", "kmeans", "--k", "4", "--seed", "5", "--euclidean", "-o", out).exit_code == 0
    with h5py.File(work / "a.h5") as a, h5py.File(work / "b.h5") as b:
        for name in ("score", "cluster", "centroids", "centroid_distance"):
            assert a[name][()].tobytes() == b[name][()].tobytes()


def test_herding_within_kmeans_and_kcenter(work):
    assert run("emb.h5", "-m", "kmeans", "--k", "3", "-o", "km.h5").exit_code == 0
    res = run("emb.h5", "-m", "herding", "--within", "km.h5", "--max-keep", "4", "-o", "h.h5")
    assert res.exit_code == 0, res.output
    assert "(12 picked in order, sigma " in res.output
    with h5py.File(work / "h.h5") as f, h5py.File(work / "km.h5") as km:
        order, score = f["order"][()], f["score"][()]
        assert order.size == 12 and np.isneginf(score).sum() == 48
        np.testing.assert_array_equal(f["cluster"][()], km["cluster"][()])
        np.testing.assert_array_equal(km["cluster"][()][order[:3]], [0, 1, 2])
    res = run("emb.h5", "-m", "kcenter", "--metric", "cosine", "--max-keep", "5", "-o", "kc.h5")
    assert res.exit_code == 0 and "(5 picked in order)" in res.output
    with h5py.File(work / "kc.h5") as f:
        np.testing.assert_array_equal(f["score"][()][f["order"][()]], [60, 59, 58, 57, 56])


def test_kcenter_within_then_balanced_select_keeps_each_clusters_prefix(work):
    assert run("emb.h5", "-m", "kmeans", "--k", "3", "-o", "km.h5").exit_code == 0
    res = run("emb.h5", "-m", "kcenter", "--within", "km.h5", "-o", "kc.h5")
    assert res.exit_code == 0, res.output
    sel = CliRunner().invoke(main, ["select", "kc.h5", "--pr", "0.75", "--balance", "clusters",
                                    "-o", "sel.h5"])
    assert sel.exit_code == 0, sel.output
    with h5py.File(work / "kc.h5") as f, h5py.File(work / "km.h5") as km, h5py.File(work / "sel.h5") as s:
        cluster, order, kept = km["cluster"][()], f["order"][()], s["indices"][()]
        np.testing.assert_array_equal(f["cluster"][()], cluster)
        assert order.size == 60 and '"within": "km.h5"' in f.attrs["params"]
        for c in range(3):  # the quota of each cluster is the start of its own traversal
            mine = order[cluster[order] == c]
            q = int(np.sum(cluster[kept] == c))
            np.testing.assert_array_equal(np.sort(mine[:q]), kept[cluster[kept] == c])


def test_loss_and_random_and_drop_nonfinite(work):
    (work / "l.csv").write_text("id,loss\n" + "".join(f"{i * 10},{i / 2}\n" for i in reversed(range(60))))
    res = run("emb.h5", "-m", "loss", "--from", "l.csv", "-o", "l.h5")
    assert res.exit_code == 0 and "matched by id" in res.output
    with h5py.File(work / "l.h5") as f:
        np.testing.assert_array_equal(f["score"][()], np.arange(60) / 2)
    res = run("nan.h5", "-m", "random", "--drop-nonfinite", "-o", "r.h5")
    assert res.exit_code == 0 and "scored 59 of 60 rows" in res.output
    with h5py.File(work / "r.h5") as f:
        s = f["score"][()]
        assert np.isnan(s[3]) and np.isfinite(np.delete(s, 3)).all()


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.h5", "-m", "kmeans"], "not found"),
        (["emb.h5", "-m", "nope"], "unknown method 'nope'"),
        (["emb.h5", "-m", "herding", "--k", "3"], "--k does not apply to method 'herding'"),
        (["emb.h5", "-m", "kmeans", "--metric", "cosine", "--max-keep", "3"], "--max-keep, --metric do not apply"),
        (["emb.h5", "-m", "random", "--spherical"], "--spherical does not apply"),
        (["emb.h5", "-m", "kmeans", "--within", "emb.h5"], "--within does not apply"),
        (["emb.h5", "-m", "kcenter", "--within", "emb.h5"], "'score' is missing"),
        (["emb.h5", "-m", "loss"], "--from is required: Scores to import"),
        (["emb.h5", "-m", "loss", "--from", "none.csv"], "not found"),
        (["emb.h5", "-m", "herding", "--sigma", "wide"], "--sigma must be"),
        (["emb.h5", "-m", "herding", "--within", "emb.h5"], "'score' is missing"),
        (["emb.h5", "-m", "kmeans", "--k", "61"], "k=61"),
        (["emb.h5", "-m", "kmeans", "--k", "0"], "--k"),
        (["emb.h5", "-m", "kmeans", "--backend", "gpu"], "--backend"),
        (["nan.h5", "-m", "kmeans"], "NaN/inf"),
        (["emb.h5", "--k", "2"], "--method"),
    ],
)
def test_errors_exit_2_and_write_nothing(work, args, message):
    before = sorted(p.name for p in work.iterdir())
    res = run(*args, "-o", "out.h5")
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output
    assert sorted(p.name for p in work.iterdir()) == before


def test_within_from_other_embeddings_is_refused(work):
    assert run("nan.h5", "-m", "kmeans", "--k", "2", "--drop-nonfinite", "-o", "km.h5").exit_code == 0
    res = run("emb.h5", "-m", "herding", "--within", "km.h5", "-o", "h.h5")
    assert res.exit_code == 2 and "other embeddings" in res.output
    assert not (work / "h.h5").exists()


def test_help_states_defaults():
    res = CliRunner().invoke(main, ["score", "--help"])
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    for needle in ("default: scores.h5", "default: 24", "default: 25", "default: spherical",
                   "default: auto", "default: rff", "default: 512", "default: euclidean",
                   "Default: the full order", "[loss]", "[kcenter]"):
        assert needle in text, needle
