"""inspect of folders streams what it used to load: semdedup's duplicates table from the
scores' parts, the embeddings' ids and labels one shard at a time; the numbers of the loaded
objects."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

pytest.importorskip("pyarrow")  # the [parquet] extra

import prunekit as pk  # noqa: E402
import prunekit.io.dataset as ds  # noqa: E402
from prunekit.io.embeddings import Embeddings  # noqa: E402
from prunekit.methods.dedup import DEFAULT_EPS  # noqa: E402
from prunekit.selection.inspection import inspect  # noqa: E402
from prunekit.selection.subset import select  # noqa: E402

N = 300


@pytest.fixture(autouse=True)
def small_parts(monkeypatch):
    monkeypatch.setattr(ds, "PART_ROWS", 23)  # a dozen parts, each its own batch


@pytest.fixture
def emb_dir(tmp_path):
    """Two .h5 shards with string ids; every third row a near-copy of an earlier row."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((N, 8)).astype(np.float32)
    src = rng.integers(0, N // 3, N // 3)
    x[2::3] = x[src] + 0.002 * rng.standard_normal((N // 3, 8)).astype(np.float32)
    ids = np.array([f"img/{i:04d}.png" for i in rng.permutation(N)], dtype=object)
    d = tmp_path / "emb"
    d.mkdir()
    for i, (a, b) in enumerate([(0, 170), (170, N)]):
        with h5py.File(d / f"part_{i}.h5", "w") as f:
            f["embeddings"] = x[a:b]
            f["ids"] = ids[a:b].astype(h5py.string_dtype())
    return d


def _refuse(*a, **kw):
    raise AssertionError("loaded whole")


@pytest.mark.parametrize("how", [dict(pr=0.5, balance="clusters"),
                                 dict(pr=0.3, balance="none", invert=True),
                                 dict(pr=0.0, balance="clusters", oversample=True)])
def test_semdedup_inspect_of_folders_equals_the_hdf5_one(tmp_path, emb_dir, monkeypatch, how):
    emb = pk.load_embeddings(emb_dir)
    sc = pk.score(emb, "semdedup", k=4, seed=0, progress=False)
    sc.save(tmp_path / "scores/")
    sc.save(tmp_path / "scores.h5")
    sel = select(sc, **how)
    sel.save(tmp_path / "sel/")
    sel.save(tmp_path / "sel.h5")
    # Brute force: per eps, the scored rows below it, their clusters, the kept ones.
    s = sc.score.astype(np.float64)
    kept = np.unique(sel.indices)
    ref = []
    for e in DEFAULT_EPS:
        gone = s < e
        ref.append({"eps": e, "removed": int(gone.sum()), "kept": int((~np.isnan(s)).sum() - gone.sum()),
                    "fraction": float(gone.sum() / (~np.isnan(s)).sum()),
                    "clusters_affected": len(set(sc.cluster[gone].tolist())),
                    "in_selection": int(gone[kept].sum())})
    assert any(r["removed"] for r in ref)
    # the duplicates are kept when inverted (lowest scores) or when every row is kept
    assert any(r["in_selection"] for r in ref) == bool(how.get("invert") or how["pr"] == 0)
    for embeddings in (None, emb_dir):
        args = dict(embeddings=embeddings, random_draws=2, mmd_sample=None)
        want = inspect(tmp_path / "sel.h5", scores=tmp_path / "scores.h5", **args).to_dict()
        assert want["duplicates"] == ref
        with monkeypatch.context() as mp:  # streamed: no side loaded whole, no id array read
            mp.setattr("prunekit.selection.inspection.load_selection", _refuse)
            mp.setattr("prunekit.selection.inspection.load_scores", _refuse)
            mp.setattr(Embeddings, "ids", property(_refuse))
            got = inspect(tmp_path / "sel", scores=tmp_path / "scores", **args).to_dict()
        assert got == {**want, "selection": str(tmp_path / "sel")}
        assert ("mmd" in got) == (embeddings is not None)


def test_the_embeddings_ids_are_still_checked_row_by_row(tmp_path, emb_dir, monkeypatch):
    # The same vectors (the same fingerprint) under other ids: positions no longer name the
    # selection's rows, so the report comes from matching by id, as for the loaded objects.
    moved = tmp_path / "moved"
    shutil.copytree(emb_dir, moved)
    with h5py.File(moved / "part_1.h5", "a") as f:
        f["ids"][...] = np.roll(f["ids"][()], 1)  # shard 1's ids move by one row
    emb = pk.load_embeddings(emb_dir)
    sel = select(pk.score(emb, "kmeans", k=3, seed=0, progress=False), pr=0.5)
    sel.save(tmp_path / "sel/")
    sel.save(tmp_path / "sel.h5")
    assert pk.load_embeddings(moved).fingerprint == emb.fingerprint
    args = dict(random_draws=2, mmd_sample=None)
    want = inspect(tmp_path / "sel.h5", embeddings=moved, **args).to_dict()
    got = inspect(tmp_path / "sel", embeddings=moved, **args).to_dict()
    assert got == {**want, "selection": str(tmp_path / "sel")}
    by_position = inspect(tmp_path / "sel", embeddings=emb_dir, **args).to_dict()
    assert by_position["mmd"] != got["mmd"]  # the check mattered


# -- the embeddings' labels, counted as the kept rows stream -----------------------------------

SHARDS = [(0, 170), (170, N)]
NAN_ROWS = [5, 171, 250]


@pytest.fixture
def labelled(tmp_path):
    """Shards with labels (``lab``) and the same vectors without (``plain``): scores of
    ``plain`` have no labels, so the per-label table comes from the embeddings. Three
    NaN rows carry label 99, a label no usable row has."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((N, 8)).astype(np.float32)
    x[NAN_ROWS] = np.nan
    labels = rng.integers(0, 6, N)
    labels[180:] += 10  # labels 10..15 only in shard 1
    labels[NAN_ROWS] = 99
    ids = np.array([f"img/{i:04d}.png" for i in rng.permutation(N)], dtype=object)
    for name in ("lab", "plain"):
        (tmp_path / name).mkdir()
        for i, (a, b) in enumerate(SHARDS):
            with h5py.File(tmp_path / name / f"part_{i}.h5", "w") as f:
                f["embeddings"] = x[a:b]
                f["ids"] = ids[a:b].astype(h5py.string_dtype())
                if name == "lab":
                    f["labels"] = labels[a:b]
    return tmp_path, labels


def _label_table(labels: np.ndarray, kept: np.ndarray, draws: np.ndarray | None) -> dict:
    """Brute force: per label of the usable rows, rows before, distinct kept rows, draws."""
    usable = np.setdiff1d(np.arange(N), NAN_ROWS)
    ids = sorted(set(labels[usable].tolist()))
    out = {"ids": ids, "before": [int((labels[usable] == g).sum()) for g in ids],
           "kept": [int((labels[kept] == g).sum()) for g in ids]}
    out["coverage"] = float(np.mean([k > 0 for k in out["kept"]]))
    if draws is not None:
        out["draws"] = [int(draws[labels[kept] == g].sum()) for g in ids]
    return out


@pytest.mark.parametrize("held", [True, False])  # labels kept by the load, or read per shard
@pytest.mark.parametrize("how", [dict(pr=0.5, balance="clusters"),
                                 dict(pr=0.0, balance="clusters", oversample=True), "shard 0"])
def test_the_label_table_of_folders_streams_the_embeddings_labels(labelled, monkeypatch, held,
                                                                  how):
    d, labels = labelled
    if not held:
        monkeypatch.setattr("prunekit.io.sides.held_in_memory", lambda *a: False)
    sc = pk.score(pk.load_embeddings(d / "plain", drop_nonfinite=True), "kmeans", k=3, seed=0,
                  progress=False)
    assert sc.labels is None
    if how == "shard 0":  # no kept row in shard 1: its labels are read at the end
        sel = pk.Selection(indices=np.arange(0, 170, 4), n_total=N, pr=0.75,
                           ids=sc.ids[np.arange(0, 170, 4)])
        assert not np.isin(sel.indices, NAN_ROWS).any()
    else:
        sel = select(sc, **how)
    for obj, name in ((sc, "scores"), (sel, "sel")):
        obj.save(d / f"{name}/")
        obj.save(d / f"{name}.h5")
    draws = None if sel.counts is None else sel.counts
    ref = _label_table(labels, sel.indices, draws)
    assert 99 not in ref["ids"] and any(g >= 10 for g in ref["ids"])
    args = dict(embeddings=d / "lab", drop_nonfinite=True, random_draws=2, mmd_sample=None)
    for scores in ((None, None), (d / "scores.h5", d / "scores")):
        want = inspect(d / "sel.h5", scores=scores[0], **args).to_dict()
        assert want["labels"] == ref
        with monkeypatch.context() as mp:  # streamed: no labels, ids or side loaded whole
            mp.setattr("prunekit.selection.inspection.load_selection", _refuse)
            mp.setattr("prunekit.selection.inspection.load_scores", _refuse)
            mp.setattr(Embeddings, "labels", property(_refuse))
            mp.setattr(Embeddings, "ids", property(_refuse))
            got = inspect(d / "sel", scores=scores[1], **args).to_dict()
        assert got == {**want, "selection": str(d / "sel")}
