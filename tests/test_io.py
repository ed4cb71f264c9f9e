"""Files: round trips, provenance attributes, atomic writes, seeded byte-identity."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import prunekit as pk
from prunekit.cli import main
from prunekit.io.atomic import atomic_path
from prunekit.selection.subset import Selection

PROVENANCE = ("prunekit_version", "created", "command", "params")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def example_scores() -> pk.Scores:
    return pk.Scores(
        score=np.array([0.5, np.nan, 2.0, -np.inf, 1.0]),
        method="kmeans",
        n_total=5,
        cluster=np.array([0, -1, 1, 1, 0]),
        centroids=np.eye(2, 3),
        centroid_distance=np.array([0.5, np.nan, 2.0, 3.0, 1.0]),
        order=np.array([2, 0]),
        ids=np.array(["a", "b", "c", "d", "é"], dtype=object),
        labels=np.array([1, 0, 1, 0, 1]),
        source="emb.h5",
        source_fingerprint="f00",
        params={"k": 2, "seed": 3},
    )


def test_embeddings_round_trip_h5_npy_npz(tmp_path):
    x = np.arange(12, dtype=np.float16).reshape(4, 3)
    with h5py.File(tmp_path / "e.h5", "w") as f:
        f["embeddings"] = x
        f["ids"] = np.array([5, 6, 7, 8])
        f["labels"] = np.array([0, 1, 0, 1])
    np.save(tmp_path / "e.npy", x)
    np.savez(tmp_path / "e.npz", x)
    loaded = [pk.load_embeddings(tmp_path / n) for n in ("e.h5", "e.npy", "e.npz")]
    for emb in loaded:
        np.testing.assert_array_equal(emb.array(np.float64), x.astype(np.float64))
        assert emb.dtype == np.float16
    assert loaded[0].ids.tolist() == [5, 6, 7, 8] and loaded[0].labels.tolist() == [0, 1, 0, 1]
    assert len({e.fingerprint for e in loaded}) == 1  # same data, same fingerprint


def test_scores_round_trip(tmp_path):
    s = example_scores()
    s.save(tmp_path / "s.h5", command=["prunekit", "score"])
    back = pk.load_scores(tmp_path / "s.h5")
    np.testing.assert_array_equal(back.score, s.score)
    for name in ("cluster", "centroids", "centroid_distance", "order", "labels"):
        np.testing.assert_array_equal(getattr(back, name), getattr(s, name))
    assert back.ids.tolist() == ["a", "b", "c", "d", "é"]
    assert (back.method, back.n_total, back.source, back.source_fingerprint) == ("kmeans", 5, "emb.h5", "f00")
    assert back.params == {"k": 2, "seed": 3}
    with h5py.File(tmp_path / "s.h5") as f:
        assert all(a in f.attrs for a in PROVENANCE)
        assert json.loads(f.attrs["command"]) == ["prunekit", "score"]


def test_selection_round_trip_with_counts_and_ids(tmp_path):
    sel = pk.select(example_scores(), 0.0, balance="clusters", oversample=True, seed=4)
    assert sel.indices.tolist() == [0, 2, 3, 4] and sel.counts.tolist() == [1, 1, 1, 1]
    sel.save(tmp_path / "sel.h5")
    back = pk.load_selection(tmp_path / "sel.h5")
    np.testing.assert_array_equal(back.indices, sel.indices)
    np.testing.assert_array_equal(back.counts, sel.counts)
    assert back.ids.tolist() == ["a", "c", "d", "é"]
    assert (back.n_total, back.pr, back.method, back.seed, back.source_fingerprint) == (5, 0.0, "kmeans", 4, "f00")
    assert back.params == json.loads(json.dumps(sel.params))
    with h5py.File(tmp_path / "sel.h5") as f:
        assert all(a in f.attrs for a in PROVENANCE)
        assert f.attrs["n_kept"] == 4 and f["indices"].dtype == np.int64


def test_cli_outputs_carry_provenance(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with h5py.File("emb.h5", "w") as f:
        f["embeddings"] = np.random.default_rng(0).standard_normal((30, 4))
    assert run("score", "emb.h5", "-m", "kmeans", "--k", "3", "-q").exit_code == 0
    assert run("select", "--pr", "0.4", "--balance", "clusters", "--invert").exit_code == 0
    with h5py.File("selection.h5") as f:
        assert all(a in f.attrs for a in PROVENANCE)
        params = json.loads(f.attrs["params"])
        assert params["balance"] == "clusters" and params["invert"] is True
        assert params["scores"] == "scores.h5"
        assert f.attrs["pr"] == 0.4 and f.attrs["n_kept"] == 18 and f.attrs["method"] == "kmeans"
    with h5py.File("scores.h5") as f, h5py.File("selection.h5") as g:
        assert f.attrs["source_fingerprint"] == g.attrs["source_fingerprint"] != ""


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "selection.h5"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    # a save that fails after its datasets were written leaves the earlier file untouched
    Selection(indices=[1, 2], n_total=4, pr=0.5).save(target)
    before = target.read_bytes()

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("prunekit.selection.scores.stamp", crash)  # the shared HDF5 writer
    with pytest.raises(RuntimeError, match="disk full"):
        Selection(indices=[0, 3], n_total=4, pr=0.5).save(target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["selection.h5"]


def test_export_is_atomic_and_exact(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sel = Selection(indices=[1, 4, 6], n_total=8, pr=0.6, counts=[2, 1, 3], ids=np.array([10, 40, 60]))
    sel.save("sel.h5")
    assert run("export", "sel.h5", "--format", "npy").exit_code == 0
    np.testing.assert_array_equal(np.load("sel.npy"), [1, 1, 4, 6, 6, 6])
    assert run("export", "sel.h5", "--format", "txt", "--ids", "-o", "ids.txt").exit_code == 0
    assert (tmp_path / "ids.txt").read_text() == "10\n10\n40\n60\n60\n60\n"
    assert run("export", "sel.h5", "--format", "json").exit_code == 0
    doc = json.loads((tmp_path / "sel.json").read_text())
    assert doc["indices"] == [1, 4, 6] and doc["counts"] == [2, 1, 3] and doc["ids"] == [10, 40, 60]
    assert doc["n_total"] == 8 and doc["pr"] == 0.6
    res = run("export", "sel.h5", "--format", "npy", "-o", "sel.h5")
    assert res.exit_code == 2 and "would destroy the input" in res.output
    Selection(indices=[0], n_total=2, pr=0.5).save("noids.h5")
    res = run("export", "noids.h5", "--format", "txt", "--ids")
    assert res.exit_code == 2 and "no ids" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.txt", "noids.h5", "sel.h5", "sel.json", "sel.npy"]


def test_same_seed_same_bytes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with h5py.File("emb.h5", "w") as f:
        f["embeddings"] = np.random.default_rng(1).standard_normal((40, 3))
    assert run("score", "emb.h5", "-m", "kmeans", "--k", "5", "--seed", "2", "-q").exit_code == 0
    for out in ("a.h5", "b.h5"):
        res = run("select", "--pr", "0.3", "--drop-clusters", "0.4", "--seed", "9", "-o", out)
        assert res.exit_code == 0, res.output
    with h5py.File("a.h5") as a, h5py.File("b.h5") as b:
        assert a["indices"][()].tobytes() == b["indices"][()].tobytes()
        assert a.attrs["params"] == b.attrs["params"]
    for fmt in ("npy", "json", "txt"):
        run("export", "a.h5", "--format", fmt)
        run("export", "b.h5", "--format", fmt)
        assert (tmp_path / f"a.{fmt}").read_bytes() == (tmp_path / f"b.{fmt}").read_bytes()
    with h5py.File("a.h5") as a:
        assert len(json.loads(a.attrs["params"])["dropped"]) == 2  # round(0.4 * 5) clusters


def test_atomic_files_get_the_umask_mode_not_0600(tmp_path):
    import os

    from prunekit.io.atomic import write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


def test_scores_check_their_invariants_when_constructed():
    good = dict(score=np.arange(4.0), method="m", n_total=4)
    assert pk.Scores(**good).score.dtype == np.float64
    bad = [
        (dict(n_total=5), "n_total=5 but 'score' has 4 rows"),
        (dict(n_total="abc"), "n_total must be an integer"),
        (dict(score=np.zeros((4, 2))), "1-D array of numbers"),
        (dict(score=np.array(["a"] * 4)), "1-D array of numbers"),
        (dict(ids=np.arange(3)), r"'ids' has shape \(3,\)"),
        (dict(cluster=np.zeros(5, np.int64)), r"'cluster' has shape \(5,\)"),
        (dict(cluster=np.zeros(4) + 0.5), "'cluster' must hold integers"),
        (dict(labels=np.array(["x"] * 4)), "'labels' must hold integers"),
        (dict(centroid_distance=np.zeros(2)), "'centroid_distance' has shape"),
        (dict(order=np.array([0, 4])), r"outside \[0, 4\)"),
        (dict(order=np.array([1, 1])), "repeats a position"),
        (dict(order=np.array([0.5])), "1-D integers"),
        (dict(centroids=np.zeros(3)), "'centroids' must be 2-D"),
        (dict(params="{}"), "params must be a dict"),
    ]
    for change, message in bad:
        with pytest.raises(pk.PrunekitError, match=message):
            pk.Scores(**{**good, **change})


def test_selections_check_their_invariants_when_constructed():
    good = dict(indices=[1, 3], n_total=5, pr=0.6)
    assert Selection(**good, ids=np.array(["b", "d"], dtype=object)).ids.tolist() == ["b", "d"]
    bad = [
        (dict(ids=np.arange(3)), "'ids' has 3 entries but 'indices' has 2"),
        (dict(n_total="abc"), "n_total must be a non-negative integer"),
        (dict(indices=[1.5, 3.0]), "1-D integers"),
        (dict(indices=[3, 1]), "strictly ascending"),
        (dict(indices=[1, 5]), r"lie in \[0, 5\)"),
        (dict(pr=1.0), r"\[0, 1\)"),
        (dict(pr="half"), "pr must be a number"),
        (dict(seed=-1), "seed must lie"),
        (dict(counts=[1, 0]), "counts must be positive"),
        (dict(counts=[1.0, 2.0]), "counts must be integers"),
        (dict(counts=[1, 2, 3]), "one per index"),
        (dict(params=[1]), "params must be a dict"),
    ]
    for change, message in bad:
        with pytest.raises(pk.PrunekitError, match=message):
            Selection(**{**good, **change})


def test_loading_checks_every_attribute_and_side_dataset(tmp_path):
    example_scores().save(tmp_path / "s.h5")
    Selection(indices=[1, 2], n_total=4, pr=0.5, ids=np.array([7, 8])).save(tmp_path / "sel.h5")
    edits = [
        ("s.h5", lambda f: f.attrs.__setitem__("n_total", "abc"), "attribute 'n_total' must be an integer"),
        ("s.h5", lambda f: f.attrs.__setitem__("n_total", 2.5), "attribute 'n_total' must be an integer"),
        ("s.h5", lambda f: f.attrs.__setitem__("params", "{oops"), "'params' is not valid JSON"),
        ("s.h5", lambda f: f.attrs.__setitem__("params", "[" * 50_000 + "]" * 50_000), "not valid JSON"),
        ("s.h5", lambda f: (f.__delitem__("ids"), f.__setitem__("ids", np.arange(2))), r"'ids' has shape \(2,\)"),
        ("s.h5", lambda f: (f.__delitem__("labels"), f.create_group("labels")), "'labels' is a group"),
        ("sel.h5", lambda f: (f.__delitem__("ids"), f.__setitem__("ids", np.arange(3))), "'ids' has 3 entries"),
        ("sel.h5", lambda f: (f.__delitem__("ids"), f.create_group("ids")), "'ids' is a group"),
        ("sel.h5", lambda f: f.attrs.__setitem__("pr", "half"), "attribute 'pr' must be a number"),
        ("sel.h5", lambda f: f.attrs.__setitem__("seed", "x"), "attribute 'seed' must be an integer"),
        ("sel.h5", lambda f: f.attrs.__setitem__("params", '"text"'), "must be a JSON object"),
    ]
    for i, (name, edit, message) in enumerate(edits):
        path = tmp_path / f"{i}-{name}"
        path.write_bytes((tmp_path / name).read_bytes())
        with h5py.File(path, "a") as f:
            edit(f)
        load = pk.load_scores if name == "s.h5" else pk.load_selection
        with pytest.raises(pk.PrunekitError, match=message):
            load(path)


def test_selection_export_by_suffix_and_to_standard_output(tmp_path, capsys):
    sel = Selection(indices=[1, 4], n_total=6, pr=0.6, counts=[2, 1], ids=np.array(["a", "b"], dtype=object))
    sel.export(tmp_path / "rows.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "rows.npy"), [1, 1, 4])
    sel.export(tmp_path / "ids.txt", use_ids=True)
    assert (tmp_path / "ids.txt").read_text() == "a\na\nb\n"
    sel.export("-", "json")
    assert json.loads(capsys.readouterr().out)["ids"] == ["a", "b"]
    with pytest.raises(pk.PrunekitError, match="cannot tell the export format"):
        sel.export(tmp_path / "rows.bin")
    with pytest.raises(pk.PrunekitError, match="binary"):
        sel.export("-", "npy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.txt", "rows.npy"]
