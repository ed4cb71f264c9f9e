"""Rows grouped by cluster: the scatter/gather shuffle on the engine, against a brute-force
reference (a stable argsort of the cluster ids), resumed after kills, in bounded memory."""

from __future__ import annotations

import gc
import operator
import os
import tempfile
import tracemalloc

import h5py
import numpy as np
import pytest
from resume_faults import InjectedFailure, killed_after

import prunekit as pk
from prunekit.compute import grouping
from prunekit.runtime import engine as engine_mod
from prunekit.runtime.context import runtime
from prunekit.runtime.engine import LocalEngine
from prunekit.runtime.resume import WorkDir

D = 3


@pytest.fixture
def small(monkeypatch):
    """Chunks of 64 rows (at D = 3) and buckets of about 100 rows: many tasks of each pass."""
    monkeypatch.setattr(engine_mod, "MIN_CHUNK_ROWS", 64)
    monkeypatch.setattr(engine_mod, "CHUNK_BYTES", 64 * 4 * D)
    monkeypatch.setattr(grouping, "BUCKET_ROWS", 100)


def data(n=1000, seed=0, dtype=np.float16, dropped=(5, 64, 65, 700)):
    """Rows with some non-finite ones, and cluster ids with gaps (0 and 3 absent)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, D)).astype(dtype)
    x[list(dropped)] = np.nan
    emb = pk.Embeddings.from_array(x, drop_nonfinite=True)
    ids = np.array([1, 2, 4, 5, 6, 9, 11, 12, 17, 40])
    labels = ids[rng.integers(0, ids.size, emb.n)]
    return x, emb, labels


def reference(x, emb, labels):
    """The grouped layout by brute force: stable sort of the usable rows by cluster id."""
    order = np.argsort(labels, kind="stable")
    ids, sizes = np.unique(labels, return_counts=True)
    usable = x[np.setdiff1d(np.arange(len(x)), emb.dropped_rows())]
    return ids, np.concatenate(([0], np.cumsum(sizes))), usable[order], order


def echo(shared, item):
    """A batch task: the first position of each of its clusters (checks rows_of in a task)."""
    grouped, _ = shared
    return np.array([grouped.rows_of(g)[0] for g in item[1]], dtype=np.int64)


def grouped_bytes(grouped):
    with open(grouped.path, "rb") as f, open(grouped.members_path, "rb") as m:
        return f.read(), m.read()


def run_map(emb, clusters, workers=1, work=None):
    with runtime(engine=LocalEngine(workers), work_dir=work):
        return grouping.map_clusters(emb, clusters, echo, None, task_bytes=1, desc="t",
                                     progress=False)


# ------------------------------------------------------------------ same layout as a sort


@pytest.mark.parametrize("workers", [1, 2])
def test_grouped_file_is_the_stable_sort_of_the_usable_rows(small, workers):
    x, emb, labels = data()
    ids, offsets, rows, order = reference(x, emb, labels)
    # 996 rows: 10 buckets wanted; ids 0..40 in widths of 5 fill 9 of them.
    assert grouping.bucket_plan(int(labels.max()), emb.n) == (9, 5)
    grouped, results = run_map(emb, labels, workers)
    np.testing.assert_array_equal(grouped.clusters, ids)
    np.testing.assert_array_equal(grouped.offsets, offsets)
    raw, members = grouped_bytes(grouped)
    assert raw == rows.tobytes()  # float16 stays float16, groups in id order
    assert members == order.astype("<i8").tobytes()  # ascending positions inside a group
    for g, c in enumerate(ids):
        np.testing.assert_array_equal(grouped.rows_of(g), np.flatnonzero(labels == c))
        np.testing.assert_array_equal(grouped.read(g), x[emb.positions(np.flatnonzero(labels == c))])
    firsts = np.concatenate([r for _, r in results])
    np.testing.assert_array_equal(firsts, [np.flatnonzero(labels == c)[0] for c in ids])


def test_bytes_do_not_depend_on_buckets_workers_or_held_rows(small, monkeypatch):
    x, emb, labels = data(seed=1)
    want = grouped_bytes(run_map(emb, labels, 1)[0])
    monkeypatch.setattr(grouping, "BUCKET_ROWS", 1 << 30)  # one bucket
    assert grouped_bytes(run_map(emb, labels, 2)[0]) == want
    held = pk.Embeddings.from_array(x, drop_nonfinite=True)
    held.rows = emb.positions(np.arange(emb.n))  # usable rows held as positions
    assert isinstance(held.usable_rows, np.ndarray)
    assert grouped_bytes(run_map(held, labels, 2)[0]) == want


def test_bucket_plan_follows_ids_and_rows_only():
    assert grouping.bucket_plan(0, 10**9) == (1, 1)  # one cluster: one bucket
    assert grouping.bucket_plan(99, 10) == (1, 100)
    b, w = grouping.bucket_plan(999, 10 * grouping.BUCKET_ROWS)
    assert (b, w) == (10, 100)
    b, w = grouping.bucket_plan(1000, 10 * grouping.BUCKET_ROWS)  # 1001 ids over 10 buckets
    assert (b, w) == (10, 101) and (b - 1) * w <= 1000 < b * w


# ----------------------------------------------------------------- the cluster column


def scores_of(emb, cluster):
    return pk.Scores(score=np.zeros(emb.n_total), method="kmeans", n_total=emb.n_total,
                     cluster=cluster)


@pytest.mark.parametrize("form", ["h5", "folder"])
def test_cluster_column_of_a_scores_file_gives_the_array_layout(small, tmp_path, form):
    if form == "folder":
        pytest.importorskip("pyarrow")
    x, emb, labels = data(seed=2)
    full = np.full(emb.n_total, -1, dtype=np.int64)
    full[emb.positions(np.arange(emb.n))] = labels
    path = tmp_path / ("km.h5" if form == "h5" else "km")
    if form == "folder":  # parts of 300 positions: chunks of 64 rows straddle them
        from prunekit.selection.partitioned import save_scores_parts

        save_scores_parts(scores_of(emb, full), path,
                          bounds=[(a, min(a + 300, emb.n_total)) for a in range(0, 1000, 300)])
    else:
        scores_of(emb, full).save(path)
    column = grouping.cluster_column(path, emb.n_total)
    assert column.folder == (form == "folder")
    np.testing.assert_array_equal(column.read(250, 390), full[250:390])
    assert grouped_bytes(run_map(emb, column, 2)[0]) == grouped_bytes(run_map(emb, labels, 1)[0])


def test_an_unclustered_row_names_file_and_rows(small, tmp_path):
    x, emb, labels = data(seed=3)
    full = np.full(emb.n_total, -1, dtype=np.int64)
    full[emb.positions(np.arange(emb.n))] = labels
    full[[300, 301]] = -1
    scores_of(emb, full).save(tmp_path / "km.h5")
    column = grouping.cluster_column(tmp_path / "km.h5", emb.n_total, where="--within file K")
    with pytest.raises(pk.PrunekitError, match=r"^--within file K \['cluster'\] leaves rows "
                       r"300, 301 unclustered \(-1\); score k-means with the same "):
        run_map(emb, column)


def test_cluster_column_is_checked_before_it_is_read(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["score"] = np.zeros(10)
    with pytest.raises(pk.PrunekitError, match=r"a.h5 has no 'cluster' dataset; give the scores "
                       "of 'prunekit score EMB --method kmeans'"):
        grouping.cluster_column(tmp_path / "a.h5", 10)
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f["cluster"] = np.zeros(9, dtype=np.int64)
    with pytest.raises(pk.PrunekitError, match=r"b.h5 \['cluster'\] must hold one integer per "
                       "row of the 10 embeddings"):
        grouping.cluster_column(tmp_path / "b.h5", 10)


def test_array_clusters_are_checked(small):
    _, emb, labels = data()
    with pytest.raises(pk.PrunekitError, match=r"one integer per usable row \(996\)"):
        run_map(emb, labels[:-1])
    bad = labels.copy()
    bad[7] = -1
    with pytest.raises(pk.PrunekitError, match="clusters must be >= 0"):
        run_map(emb, bad)


@pytest.mark.slow
def test_ray_workers_write_the_local_bytes(small, tmp_path):
    ray = pytest.importorskip("ray")
    from prunekit.runtime.engine import RayEngine

    x, emb, labels = data(seed=8)
    full = np.full(emb.n_total, -1, dtype=np.int64)
    full[emb.positions(np.arange(emb.n))] = labels
    scores_of(emb, full).save(tmp_path / "km.h5")
    column = grouping.cluster_column(tmp_path / "km.h5", emb.n_total)
    want = grouped_bytes(run_map(emb, labels, 1)[0])
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with runtime(engine=RayEngine(2)):  # workers read the column and write the pieces
            grouped, _ = grouping.map_clusters(emb, column, operator.is_not, None, task_bytes=1,
                                               desc="t", progress=False)
    finally:
        if started:
            ray.shutdown()
    assert grouped_bytes(grouped) == want


# ------------------------------------------------------------------------------ resume


def counted(monkeypatch, name):
    calls = []
    fn = getattr(grouping, name)
    monkeypatch.setattr(grouping, name, lambda shared, item: calls.append(item) or fn(shared, item))
    return calls


@pytest.mark.parametrize("recorded", [5, 16 + 4])  # in the scatter; in the gather
def test_killed_grouping_resumes_to_the_same_bytes(small, tmp_path, monkeypatch, recorded):
    x, emb, labels = data(seed=4)
    want = grouped_bytes(run_map(emb, labels)[0])
    n_chunks, n_buckets = 16, grouping.bucket_plan(int(labels.max()), emb.n)[0]
    assert n_buckets == 9
    work = WorkDir(tmp_path / "w")
    with killed_after(recorded), pytest.raises(InjectedFailure):
        run_map(emb, labels, 2, work)
    scatter, gather = counted(monkeypatch, "_scatter_task"), counted(monkeypatch, "_gather_task")
    grouped, _ = run_map(emb, labels, 2, work)
    assert grouped_bytes(grouped) == want
    assert len(scatter) == max(0, n_chunks - recorded)  # the recorded chunks are not redone
    assert len(gather) == n_buckets - max(0, recorded - n_chunks)
    assert not (tmp_path / "w" / "scratch" / "groups" / "pieces").exists()  # pieces gone after the gather
    scatter.clear(), gather.clear()
    assert grouped_bytes(run_map(emb, labels, 1, work)[0]) == want
    assert scatter == [] and gather == []  # everything recorded: nothing grouped again


def test_a_lost_piece_or_a_damaged_record_is_computed_again(small, tmp_path, monkeypatch):
    x, emb, labels = data(seed=5)
    want = grouped_bytes(run_map(emb, labels)[0])
    work = WorkDir(tmp_path / "w")
    with killed_after(16), pytest.raises(InjectedFailure):  # every chunk scattered
        run_map(emb, labels, 1, work)
    (tmp_path / "w" / "scratch" / "groups" / "pieces" / "piece-00000003").unlink()
    (rec,) = (tmp_path / "w").glob("groups.shuffle/*/chunk-00000007.npy")
    raw = rec.read_bytes()
    rec.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))  # one bit of its bucket counts
    scatter = counted(monkeypatch, "_scatter_task")
    assert grouped_bytes(run_map(emb, labels, 2, work)[0]) == want
    assert sorted(i for i, _ in scatter) == [3, 7]
    assert work.discarded == 1


# ---------------------------------------------------------------------- bounded memory


def test_driver_memory_is_per_cluster_and_per_chunk_not_per_row(tmp_path, monkeypatch):
    """Grouping 200 000 rows in 98 chunks and 10 buckets: the traced peak of the whole call
    (driver, the inline tasks, the engine's thread-pool check) stays below half of one int64
    per row (1.6 MB); about 0.25 MB is measured."""
    n, k = 200_000, 500
    monkeypatch.setattr(engine_mod, "MIN_CHUNK_ROWS", 64)
    monkeypatch.setattr(engine_mod, "CHUNK_BYTES", 2048 * 4 * 2)
    monkeypatch.setattr(grouping, "BUCKET_ROWS", 20_000)
    rng = np.random.default_rng(6)
    with h5py.File(tmp_path / "emb.h5", "w") as f:
        f["embeddings"] = rng.standard_normal((n, 2)).astype(np.float32)
    labels = rng.integers(0, k, n)
    with h5py.File(tmp_path / "km.h5", "w") as f:
        f["cluster"] = labels
    emb = pk.load_embeddings(tmp_path / "emb.h5")
    column = grouping.cluster_column(tmp_path / "km.h5", n)
    del labels
    run_map(emb, column)  # once before: one-off growth of interpreter tables is not ours
    gc.collect()
    tracemalloc.start()
    try:
        grouped, results = run_map(emb, column)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert grouped.n_groups == k and int(grouped.offsets[-1]) == n and len(results) >= 12
    assert peak < n * 8 // 2, peak


def test_scratch_goes_with_the_result(small, tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    _, emb, labels = data(seed=7)
    grouped, _ = run_map(emb, labels, 2)
    assert len(os.listdir(scratch)) == 1 and grouped.rows_of(0).size  # readable until dropped
    del grouped
    gc.collect()
    assert os.listdir(scratch) == []
    with pytest.raises(pk.PrunekitError):
        run_map(emb, labels[:3])
    assert os.listdir(scratch) == []  # a failed grouping leaves nothing
