"""Passes over the data a selection's report and streamed select make: each thing found once,
counts exactly those of a brute-force count."""

from __future__ import annotations

import os
from collections import Counter

import h5py
import numpy as np
import pytest

import prunekit as pk
from prunekit import Embeddings
from prunekit.selection import streamed as st
from prunekit.selection.inspection import inspect
from prunekit.selection.quality import mmd_report, write_kept

N = 300
NAN_ROWS = np.array([0, 17, 18, 171, 299])


def _count_dropped(monkeypatch) -> list[int]:
    """A list that grows by one each time any embeddings' dropped rows are found."""
    calls: list[int] = []
    real = Embeddings.dropped_rows

    def counted(self):
        calls.append(1)
        return real(self)

    monkeypatch.setattr(Embeddings, "dropped_rows", counted)
    return calls


def _vectors() -> np.ndarray:
    x = np.random.default_rng(5).standard_normal((N, 6))
    x[NAN_ROWS, 1] = np.nan
    return x


def test_one_mmd_report_finds_the_dropped_rows_once(monkeypatch, tmp_path):
    x = _vectors()
    usable = np.setdiff1d(np.arange(N), NAN_ROWS)
    kept = np.concatenate([usable[::4], usable[::9]])  # repeats weight a row
    args = dict(random_draws=3, seed=2, sample=None, progress=False)
    calls = _count_dropped(monkeypatch)
    # The reference: the clean rows as a plain array, no row dropped, so none looked up.
    ref = mmd_report(Embeddings.from_array(np.delete(x, NAN_ROWS, 0)),
                     np.searchsorted(usable, kept), **args)
    assert calls == []
    emb = Embeddings.from_array(x, drop_nonfinite=True)
    assert mmd_report(emb, kept, **args) == ref and len(calls) == 1
    # Streamed kept rows: found once as they are written, not again by the report.
    u, c = np.unique(kept, return_counts=True)
    kf = write_kept(emb, [(u[:30], c[:30]), (u[30:], c[30:])], tmp_path / "kept.rows")
    assert mmd_report(emb, kf, **args) == ref and len(calls) == 2
    # Sampled (every chunk's rows drawn from the usable ones): the same numbers both ways.
    args["sample"] = 100
    assert mmd_report(emb, kf, **args) == mmd_report(emb, kept, **args) and len(calls) == 3


def test_a_kept_rows_file_of_other_embeddings_is_refused(tmp_path):
    x = _vectors()
    emb = Embeddings.from_array(x, drop_nonfinite=True)
    kf = write_kept(emb, [(np.array([1, 2, 3]), np.ones(3, dtype=np.int64))], tmp_path / "k")
    x[5, 0] = np.inf  # one more row dropped: the file's check no longer holds
    with pytest.raises(ValueError, match="other embeddings"):
        mmd_report(Embeddings.from_array(x, drop_nonfinite=True), kf, progress=False)


def test_inspecting_a_selection_folder_finds_the_dropped_rows_once(monkeypatch, tmp_path):
    x = _vectors().astype(np.float32)
    (tmp_path / "emb").mkdir()
    for i, (a, b) in enumerate([(0, 170), (170, N)]):
        with h5py.File(tmp_path / "emb" / f"part_{i}.h5", "w") as f:
            f["embeddings"] = x[a:b]
    usable = np.setdiff1d(np.arange(N), NAN_ROWS)
    sel = pk.Selection(indices=usable[::3], n_total=N, pr=2 / 3)
    sel.save(tmp_path / "sel/")
    sel.save(tmp_path / "sel.h5")
    args = dict(embeddings=tmp_path / "emb", drop_nonfinite=True, random_draws=2,
                mmd_sample=None)
    want = inspect(tmp_path / "sel.h5", **args).to_dict()  # the in-memory kept rows
    calls = _count_dropped(monkeypatch)
    got = inspect(tmp_path / "sel", **args).to_dict()
    assert len(calls) == 1
    assert got["mmd"] == want["mmd"] and got["mmd"]["n_full"] == N - NAN_ROWS.size


@pytest.mark.parametrize("size", [1, 40, 41, 320, 5000])  # sparse and dense batches of 40
def test_count_into_adds_one_per_index(size):
    rng = np.random.default_rng(size)
    hist = rng.integers(0, 3, size).astype(np.int64)
    idx = rng.integers(0, size, 40)
    idx[:10] = idx[0]  # repeats each count
    want = hist.copy()
    for i, n in Counter(idx.tolist()).items():
        want[i] += n
    st._count_into(hist, idx)
    assert hist.tolist() == want.tolist()


def test_the_first_histogram_counts_each_eligible_row_in_its_bin(tmp_path, monkeypatch):
    import prunekit.io.dataset as ds

    monkeypatch.setattr(ds, "PART_ROWS", 23)  # a dozen parts
    rng = np.random.default_rng(1)
    k, n = 4, 500
    score = rng.integers(-40, 40, n) * 0.25
    score[rng.random(n) < 0.1] = np.nan
    score[rng.random(n) < 0.05] = np.inf
    cluster = rng.integers(0, k, n)
    pk.Scores(score=score, method="kmeans", n_total=n, cluster=cluster, source="emb.h5",
              source_fingerprint="ab" * 16, params={"k": k}).save(tmp_path / "s/")
    folder, r = st._open(os.fspath(tmp_path / "s"))
    rule = st._Rule(folder, "cluster", False, False, np.zeros(0, dtype=np.int64),
                    np.zeros(0, dtype=np.int64))
    c = st._counts(rule, r, k, progress=False)
    ok = ~np.isnan(score)
    want = np.zeros((k, c.window.cells), dtype=np.int64)
    for g, b in zip(cluster[ok], c.window.bins(rule.key(score[ok])), strict=True):
        want[g, b] += 1
    assert c.first.tolist() == want.tolist() and want.sum() == ok.sum()
    assert (want[:, 1:-1] > 0).sum() > k  # the window splits the keys over several bins
