"""Every bad input through the CLI: exit status 2, a message with the fix, no file written."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import prunekit as pk
from prunekit.cli import main
from prunekit.selection.subset import load_selection


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def fails(res, *needles):
    """Exit 2, 'Error: ' + every needle in the message, no traceback."""
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit), res.exception
    assert res.output.startswith("Error: ") and "Traceback" not in res.output
    for needle in needles:
        assert needle in res.output, res.output


def only(directory, *names):
    """The directory holds exactly these files: nothing half-written, no temp files."""
    assert sorted(p.name for p in directory.iterdir()) == sorted(names)


def h5(path, **datasets):
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            f[name] = value
    return path


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def x(n=20, d=3, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_missing_file(work):
    fails(run("info", "nope.h5"), "not found", "nope.h5")
    fails(run("score", "nope.h5", "-m", "random"), "not found")
    fails(run("select", "--pr", "0.5"), "scores file not found", "scores.h5")
    fails(run("export", "nope.h5", "--format", "npy"), "selection file not found")
    only(work)


def test_not_hdf5_or_npy(work):
    (work / "emb.h5").write_text("hello")
    fails(run("info", "emb.h5"), "neither HDF5 nor .npy", "emb.h5")
    fails(run("score", "emb.h5", "-m", "random"), "neither HDF5 nor .npy")
    fails(run("select", "emb.h5", "--pr", "0.5"), "not an HDF5 file")
    only(work, "emb.h5")


def test_missing_key_lists_existing_keys(work):
    h5(work / "emb.h5", feats=x(), other=np.zeros(3))
    fails(run("info", "emb.h5"), "no dataset 'embeddings'", "feats, other", "--key")
    fails(run("score", "emb.h5", "-m", "random"), "feats, other")
    only(work, "emb.h5")
    assert run("info", "emb.h5", "--key", "feats").exit_code == 0
    np.savez(work / "e.npz", feats=x(), more=x())
    fails(run("info", "e.npz"), "no array 'embeddings'", "feats, more")


@pytest.mark.parametrize("shape", [(20,), (4, 5, 3)])
def test_not_2d(work, shape):
    np.save(work / "e.npy", np.zeros(shape, dtype=np.float32))
    fails(run("info", "e.npy"), "must be 2-D", str(shape))
    fails(run("score", "e.npy", "-m", "random"), "must be 2-D")
    only(work, "e.npy")


@pytest.mark.parametrize("shape", [(0, 4), (5, 0)])
def test_empty(work, shape):
    h5(work / "emb.h5", embeddings=np.zeros(shape, dtype=np.float32))
    fails(run("info", "emb.h5"), "is empty")
    fails(run("score", "emb.h5", "-m", "random"), "is empty")
    only(work, "emb.h5")


def test_non_numeric(work):
    h5(work / "emb.h5", embeddings=np.array([[b"a", b"b"], [b"c", b"d"]]))
    fails(run("info", "emb.h5"), "non-numeric")
    np.save(work / "c.npy", np.ones((3, 2), dtype=np.complex64))
    fails(run("score", "c.npy", "-m", "random"), "non-numeric")
    only(work, "emb.h5", "c.npy")


def test_nonfinite_rows_named_up_to_ten(work):
    e = x(40)
    bad = [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23]
    e[bad[::2], 0] = np.nan
    e[bad[1::2], 2] = np.inf
    h5(work / "emb.h5", embeddings=e)
    res = run("score", "emb.h5", "-m", "random")
    fails(res, "12 rows with NaN/inf", "rows 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, ...", "--drop-nonfinite")
    assert "21" not in res.output
    only(work, "emb.h5")
    res = run("info", "emb.h5")  # info reports them instead of failing
    assert res.exit_code == 0 and "NaN/inf rows: 12 (first: [1, 3, 5, 7, 9, 11, 13, 15, 17, 19])" in res.output


def test_drop_nonfinite_keeps_original_row_numbers(work):
    e = x(10)
    e[[2, 7], 1] = np.nan
    h5(work / "emb.h5", embeddings=e, ids=np.arange(10) + 100)
    assert run("score", "emb.h5", "-m", "random", "--drop-nonfinite", "-q").exit_code == 0
    res = run("select", "--pr", "0")
    assert res.exit_code == 0 and "kept 8 of 8 scored rows" in res.output
    sel = load_selection(work / "selection.h5")
    assert sel.indices.tolist() == [0, 1, 3, 4, 5, 6, 8, 9] and sel.n_total == 10
    assert sel.ids.tolist() == [100, 101, 103, 104, 105, 106, 108, 109]
    assert run("select", "--pr", "0.5", "-o", "half.h5").exit_code == 0
    half = load_selection(work / "half.h5")
    assert half.n_kept == 4 and not np.isin(half.indices, [2, 7]).any()


def test_duplicate_ids(work):
    h5(work / "emb.h5", embeddings=x(5), ids=np.array([1, 2, 3, 2, 1]))
    fails(run("info", "emb.h5"), "duplicate ids", "1, 2")
    h5(work / "s.h5", embeddings=x(3), ids=np.array([b"a", b"b", b"a"]))
    fails(run("score", "s.h5", "-m", "random"), "duplicate ids", "a")
    only(work, "emb.h5", "s.h5")


@pytest.mark.parametrize("side", ["ids", "labels"])
def test_side_length_mismatch(work, side):
    h5(work / "emb.h5", embeddings=x(6), **{side: np.arange(5)})
    fails(run("info", "emb.h5"), f"['{side}'] has shape (5,)", "6 rows")
    fails(run("score", "emb.h5", "-m", "random"), f"'{side}' must be 1-D with one entry per row")
    only(work, "emb.h5")


@pytest.fixture
def scored(work):
    h5(work / "emb.h5", embeddings=x(12), labels=np.arange(12) % 3)
    assert run("score", "emb.h5", "-m", "random", "-q").exit_code == 0
    return work


@pytest.mark.parametrize("pr", ["-0.1", "1", "1.5"])
def test_pr_out_of_range(scored, pr):
    fails(run("select", "--pr", pr), "outside [0, 1)", "fraction REMOVED")
    only(scored, "emb.h5", "scores.h5")


def test_select_option_errors(scored):
    fails(run("select"), "--pr is required")
    fails(run("select", "--pr", "0.5", "--balance", "clusters"), "no 'cluster'", "kmeans")
    fails(run("select", "--pr", "0.5", "--drop-clusters", "a,b"), "--drop-clusters 'a,b'")
    fails(run("select", "--pr", "0.5", "--balance", "labels", "--labels-from", "scores.h5"),
          "no dataset 'embeddings'")
    h5(scored / "other.h5", embeddings=x(12, seed=1), labels=np.zeros(12, dtype=np.int64))
    fails(run("select", "--pr", "0.5", "--balance", "labels", "--labels-from", "other.h5"),
          "is not the embeddings file")
    only(scored, "emb.h5", "scores.h5", "other.h5")
    res = run("select", "--pr", "0.5", "--balance", "labels", "--labels-from", "emb.h5")
    assert res.exit_code == 0, res.output
    assert np.bincount(np.arange(12)[load_selection(scored / "selection.h5").indices] % 3).tolist() == [2, 2, 2]


def test_mismatched_selection(scored):
    assert run("select", "--pr", "0.5").exit_code == 0
    h5(scored / "small.h5", embeddings=x(7))
    fails(run("inspect", "selection.h5", "--embeddings", "small.h5"),
          "made for 12 rows but", "small.h5 has 7")
    h5(scored / "emb2.h5", embeddings=x(12, seed=5))
    assert run("score", "emb2.h5", "-m", "random", "-o", "scores2.h5", "-q").exit_code == 0
    fails(run("inspect", "selection.h5", "--scores", "scores2.h5"), "other embeddings than")
    with h5py.File(scored / "broken.h5", "w") as f:
        f["indices"] = np.array([3, 20])
        f.attrs["n_total"] = 12
    fails(run("export", "broken.h5", "--format", "txt"), "broken.h5", "[0, 12)")
    only(scored, "emb.h5", "scores.h5", "selection.h5", "small.h5", "emb2.h5", "scores2.h5", "broken.h5")


def test_ids_matching_in_inspect(work):
    h5(work / "emb.h5", embeddings=x(6), ids=np.array([b"a", b"b", b"c", b"d", b"e", b"f"]))
    assert run("score", "emb.h5", "-m", "random", "-q").exit_code == 0
    assert run("select", "--pr", "0.5").exit_code == 0
    # other rows order: matched by ids works, an unknown id is named
    h5(work / "perm.h5", embeddings=x(6)[::-1], ids=np.array([b"f", b"e", b"d", b"c", b"b", b"a"]))
    assert run("inspect", "selection.h5", "--embeddings", "perm.h5").exit_code == 0
    h5(work / "partial.h5", embeddings=x(2), ids=np.array([b"q", b"r"]))
    fails(run("inspect", "selection.h5", "--embeddings", "partial.h5"), "ids that", "partial.h5 lacks")


def test_info_reports_shape_keys_norms_and_nonfinite(work):
    e = np.array([[3, 4], [0, 1], [np.nan, 0], [6, 8], [0, 0]], dtype=np.float64)
    h5(work / "emb.h5", embeddings=e, ids=np.arange(5), labels=np.array([0, 1, 1, 2, 2]))
    res = run("info", "emb.h5", "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["shape"] == [5, 2] and d["dtype"] == "float64" and d["ids"] == "int64" and d["labels"] == 3
    assert d["keys"] == {"embeddings": [5, 2], "ids": [5], "labels": [5]}
    assert d["norms"]["min"] == 0 and d["norms"]["max"] == 10 and d["norms"]["median"] == 3
    assert d["norms"]["mean"] == pytest.approx(4.0)  # norms 5, 1, 10, 0 of the finite rows
    assert d["nonfinite_rows"] == [2] and d["n_nonfinite"] == 1
    text = run("info", "emb.h5").output
    assert "emb.h5 ['embeddings']: 5 x 2 float64" in text and "NaN/inf rows: 1 (first: [2])" in text
    assert "keys: embeddings (5, 2), ids (5,), labels (5,)" in text
    np.save(work / "e.npy", e[[0, 1]].astype(np.float16))
    d = json.loads(run("info", "e.npy", "--json").output)
    assert d["shape"] == [2, 2] and d["dtype"] == "float16" and d["keys"] == {} and d["ids"] is None
    only(work, "emb.h5", "e.npy")


def test_embeddings_check_their_invariants_when_constructed():
    from prunekit.io.source import MemorySource

    x = np.zeros((4, 3), np.float32)
    src = MemorySource(x, "<array>")
    with pytest.raises(pk.PrunekitError, match="disagree with its source"):
        pk.Embeddings(n_total=5, dim=3, dtype=x.dtype, reader=src)
    with pytest.raises(pk.PrunekitError, match=r"\['ids'\] has shape"):
        pk.Embeddings(n_total=4, dim=3, dtype=x.dtype, reader=src, ids=np.arange(3))
    with pytest.raises(pk.PrunekitError, match="rows must be ascending positions"):
        pk.Embeddings(n_total=4, dim=3, dtype=x.dtype, reader=src, rows=np.array([0, 4]))
    ok = pk.Embeddings(n_total=4, dim=3, dtype=x.dtype, reader=src, rows=np.array([1, 3]))
    assert ok.n == 2
