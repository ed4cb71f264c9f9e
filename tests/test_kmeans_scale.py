"""k-means without a big driver: the sample drawn by chunk tasks, k-means|| seeding and Lloyd
as chunk tasks, the same bytes on any number of workers, and the memory rules."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from resume_faults import InjectedFailure, killed_after
from sklearn.metrics import adjusted_rand_score

import prunekit as pk
from prunekit.compute import cluster
from prunekit.compute.cluster import (
    FitSample,
    SamplePlan,
    _Fit,
    _greedy_pp,
    check_sample_fits,
    draw_sample,
    expected_candidates,
    kmeans,
    kmeans_streamed,
    lloyd_step,
    sample_bytes,
    sample_in_memory,
    sample_quotas,
    seed_parallel,
)
from prunekit.runtime import engine as engine_mod
from prunekit.runtime.engine import LocalEngine
from prunekit.runtime.resume import WorkDir
from prunekit.seeds import role_rng


@pytest.fixture
def small_fit_chunks(monkeypatch):
    """Fit chunks of 128 rows (at least k) and data chunks of 64 rows at d = 8."""
    monkeypatch.setattr(cluster, "FIT_CHUNK_BYTES", 128 * 4 * 8)
    monkeypatch.setattr(cluster, "FIT_MIN_CHUNK_ROWS", 128)
    monkeypatch.setattr(engine_mod, "MIN_CHUNK_ROWS", 64)
    monkeypatch.setattr(engine_mod, "CHUNK_BYTES", 64 * 4 * 8)


def blobs(n=3000, k=30, d=8, seed=0, spread=1.0):
    """k separated Gaussian blobs: centres 10 apart on average, unit noise."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-10, 10, (k, d))
    labels = rng.integers(0, k, n)
    return (centres[labels] + spread * rng.standard_normal((n, d))).astype(np.float32), labels


def same(a, b):
    return np.asarray(a).tobytes() == np.asarray(b).tobytes()


# --------------------------------------------------------------------- the sample's draw


def test_largest_remainder_apportionment_by_hand():
    # 4 of 10 rows over chunks of 5, 3, 2: 2.0, 1.2, 0.8 -> floors 2, 1, 0 and the one row
    # left to the largest remainder (0.8).
    np.testing.assert_array_equal(sample_quotas([5, 3, 2], 4), [2, 1, 1])
    # Equal remainders: the earlier chunks first.
    np.testing.assert_array_equal(sample_quotas([1, 1, 1, 1], 2), [1, 1, 0, 0])
    np.testing.assert_array_equal(sample_quotas([3, 0, 4], 7), [3, 0, 4])  # every row
    np.testing.assert_array_equal(sample_quotas([3, 0, 4], 9), [3, 0, 4])
    big = sample_quotas([2**40, 2**40 + 1], 2**41)  # products beyond int64: exact
    assert big.sum() == 2**41 and big.tolist() == [2**40, 2**40]


def test_sample_drawn_per_chunk_by_hand(tmp_path, monkeypatch):
    # Shards of 10 and 6 rows in chunks of 4 rows: 4, 4, 2 | 4, 2; rows 1 and 15 are NaN,
    # so the chunks hold 3, 4, 2, 4, 1 usable rows (14). 7 of them: 1.5, 2, 1, 2, 0.5 ->
    # floors 1, 2, 1, 2, 0 and the last row to the earlier of the two remainders of 1/2.
    monkeypatch.setattr(engine_mod, "MIN_CHUNK_ROWS", 4)
    monkeypatch.setattr(engine_mod, "CHUNK_BYTES", 4 * 4 * 2)
    x = np.arange(32, dtype=np.float32).reshape(16, 2)
    x[[1, 15]] = np.nan
    np.save(tmp_path / "e_0.npy", x[:10])
    np.save(tmp_path / "e_1.npy", x[10:])
    emb = pk.load_embeddings(tmp_path, drop_nonfinite=True)
    usable = [[0, 2, 3], [4, 5, 6, 7], [8, 9], [10, 11, 12, 13], [14]]
    quotas = [2, 2, 1, 2, 0]
    np.testing.assert_array_equal(sample_quotas([3, 4, 2, 4, 1], 7), quotas)
    rows = []
    for chunk, (u, q) in enumerate(zip(usable, quotas, strict=True)):
        pick = role_rng(5, "kmeans sample", chunk).choice(len(u), q, replace=False)
        rows += [u[i] for i in np.sort(pick)]
    runs = [draw_sample(emb.reader, emb.usable_rows, 7, seed=5, spherical=False,
                        engine=LocalEngine(w), progress=False)[0].array for w in (1, 3)]
    np.testing.assert_array_equal(runs[0], x[rows])
    assert same(runs[0], runs[1])
    # Written to a scratch .npy instead: the same rows, and the digest of their bytes.
    sample, digest = draw_sample(emb.reader, emb.usable_rows, 7, seed=5, spherical=False,
                                 engine=LocalEngine(2), path=tmp_path / "s.npy", progress=False)
    assert same(np.load(tmp_path / "s.npy"), runs[0]) and sample.array is None
    assert same(sample.read(0, 7), runs[0]) and same(sample.take([6, 0]), runs[0][[6, 0]])
    assert digest == hashlib.blake2b(runs[0].tobytes(), digest_size=32).hexdigest()
    # Every usable row when the sample is all of them (normalised when spherical).
    every = draw_sample(emb.reader, emb.usable_rows, 14, seed=5, spherical=True,
                        engine=LocalEngine(1), progress=False)[0].array
    np.testing.assert_allclose(every, x[emb.rows] / np.linalg.norm(x[emb.rows], axis=1)[:, None],
                               rtol=1e-6)


# ------------------------------------------------------------- same bytes on any engine


@pytest.mark.parametrize("spherical", [False, True])
def test_fit_same_bytes_for_one_two_three_workers(small_fit_chunks, spherical):
    x, _ = blobs(n=1500, k=12, spread=2.0)
    runs = [kmeans(x, 12, seed=3, spherical=spherical, restarts=2, engine=LocalEngine(w),
                   progress=False) for w in (1, 2, 3)]
    assert len(cluster.fit_chunks(1500, 8, 12)) == 12  # 128-row chunks: many tasks
    for r in runs[1:]:
        for name in ("centroids", "labels", "distance"):
            assert same(getattr(r, name), getattr(runs[0], name)), name
        assert r.inertia == runs[0].inertia and r.restart == runs[0].restart
    assert runs[0].backend == "chunked"


def test_streamed_fit_same_bytes_in_memory_or_scratch_and_any_workers(small_fit_chunks,
                                                                      monkeypatch):
    x, _ = blobs(n=3000, k=10, spread=2.0)
    x[[7, 2000]] = np.nan
    emb = pk.Embeddings.from_array(x, drop_nonfinite=True)
    kw = dict(plan=SamplePlan(1200, emb.n, "u"), seed=8, spherical=False, full_passes=1,
              progress=False)
    memory = kmeans_streamed(emb.reader, emb.usable_rows, 10, engine=LocalEngine(1), **kw)
    monkeypatch.setattr(cluster, "SAMPLE_MEMORY_MAX", 1000)  # the sample goes to a file
    assert not sample_in_memory(1200, 8) and sample_in_memory(1200, 8, "faiss")
    files = [kmeans_streamed(emb.reader, emb.usable_rows, 10, engine=LocalEngine(w), **kw)
             for w in (1, 3)]
    for r in files:
        for name in ("centroids", "labels", "distance"):
            assert same(getattr(r, name), getattr(memory, name)), name


def test_lloyd_step_adds_chunk_sums_in_chunk_order(small_fit_chunks):
    x, _ = blobs(n=1000, k=6, spread=3.0, seed=2)
    cent = x[:6].copy()
    # The reference: per chunk of 128 rows, each cluster's rows added one by one in float64,
    # the chunks' sums then added in chunk order.
    sums, counts = np.zeros((6, 8)), np.zeros(6, dtype=np.int64)
    for a in range(0, 1000, 128):
        block = x[a : a + 128]
        lab = np.argmin(((block[:, None, :].astype(np.float64) - cent[None]) ** 2).sum(-1), 1)
        part = np.zeros((6, 8))
        for row, c in zip(block.astype(np.float64), lab, strict=True):
            part[c] += row
        sums += part
        counts += np.bincount(lab, minlength=6)
    ref = (sums / counts[:, None]).astype(np.float32)
    for workers in (1, 3):
        run = _Fit(FitSample.of(x), 6, False, LocalEngine(workers), 0, None)
        got = lloyd_step(run, cent)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
        assert same(got, lloyd_step(_Fit(FitSample.of(x), 6, False, LocalEngine(1), 0, None),
                                    cent))


def test_lloyd_tree_equals_the_flat_sum_for_any_workers(small_fit_chunks, monkeypatch):
    # Small integers: every float64 sum is exact, so any order of additions gives the same
    # bytes and the tree must equal a plain sum over all rows. 40 chunks of 128 rows, three
    # chunks a task: 14 tasks whose sums a tree of fan-in 8 adds in two levels.
    rng = np.random.default_rng(5)
    x = rng.integers(-50, 50, (5000, 8)).astype(np.float32)
    cent = x[:6].copy()
    monkeypatch.setattr(cluster, "LLOYD_ROWS_PER_CLUSTER", 64)  # 384 rows: 3 chunks
    monkeypatch.setattr(cluster, "LLOYD_FLAT_BYTES", 0)
    assert cluster.lloyd_tree(5000, 8, 6) == (3, 8)
    assert engine_mod.tree_sizes(14, 8) == [14, 2, 1]
    lab = np.argmin(((x[:, None, :].astype(np.float64) - cent[None]) ** 2).sum(-1), 1)
    sums = np.zeros((6, 8))
    np.add.at(sums, lab, x.astype(np.float64))
    ref = (sums / np.bincount(lab, minlength=6)[:, None]).astype(np.float32)
    for workers in (1, 2, 3):
        run = _Fit(FitSample.of(x), 6, False, LocalEngine(workers), 0, None)
        assert [len(g) for g in run.groups] == [3] * 13 + [1] and run.fan_in == 8
        assert same(lloyd_step(run, cent), ref)


def test_lloyd_tree_same_bytes_for_any_workers_on_real_numbers(small_fit_chunks, monkeypatch):
    x, _ = blobs(n=6000, k=12, spread=2.0, seed=3)
    monkeypatch.setattr(cluster, "LLOYD_FLAT_BYTES", 0)
    monkeypatch.setattr(cluster, "LLOYD_FAN_IN", 3)
    group, fan_in = cluster.lloyd_tree(6000, 8, 12)
    assert (group, fan_in) == (1, 3)  # 47 chunks, one a task: 47 -> 16 -> 6 -> 2 -> 1
    runs = [kmeans(x, 12, seed=4, spherical=False, restarts=1, iters=5,
                   engine=LocalEngine(w), progress=False) for w in (1, 2, 3)]
    for r in runs[1:]:
        for name in ("centroids", "labels", "distance"):
            assert same(getattr(r, name), getattr(runs[0], name)), name
    # The flat combine (one run of every task's sums) gives the same clusters.
    monkeypatch.setattr(cluster, "LLOYD_FLAT_BYTES", 1 << 30)
    flat = kmeans(x, 12, seed=4, spherical=False, restarts=1, iters=5, engine=LocalEngine(1),
                  progress=False)
    np.testing.assert_array_equal(flat.labels, runs[0].labels)
    np.testing.assert_allclose(flat.centroids, runs[0].centroids, rtol=1e-6)


def test_lloyd_tree_follows_the_sample_and_k_only():
    # Wide rows, k = 1000: 1024-row chunks, four a task (4 k rows); the tasks' sums exceed
    # LLOYD_FLAT_BYTES, so a tree of fan-in 8 adds them. Small k: one chunk a task, one run.
    assert cluster.fit_chunk_rows(768, 1000) == 1024
    assert cluster.lloyd_tree(256_000, 768, 1000) == (4, 8)
    assert cluster.lloyd_tree(1_000_000, 64, 100) == (1, 62)
    assert cluster.lloyd_tree(100, 64, 100) == (1, 2)


def test_empty_cluster_takes_the_farthest_row_ties_to_the_lower_position():
    # Two groups and a third centroid far away that no row is nearest to. The rows farthest
    # from their centroids are 3 and 5 (the same distance): row 3, the lower position, moves
    # to the empty cluster and leaves its own.
    x = np.array([[0, 0], [1, 0], [0, 1], [-3, 0], [10, 0], [13, 0], [10, 1]], np.float32)
    cent = np.array([[0, 0], [10, 0], [100, 100]], np.float32)
    run = _Fit(FitSample.of(x), 3, False, LocalEngine(1), 0, None)
    new = lloyd_step(run, cent)
    np.testing.assert_allclose(new[0], x[[0, 1, 2]].mean(0), rtol=1e-6)
    np.testing.assert_allclose(new[1], x[[4, 5, 6]].mean(0), rtol=1e-6)
    np.testing.assert_array_equal(new[2], x[3])


# ------------------------------------------------------------------------------ seeding


def test_kmeans_parallel_picks_are_a_function_of_the_seed(small_fit_chunks):
    x, _ = blobs(n=2000, k=20)
    sample = FitSample.of(x)
    assert sample.rows > expected_candidates(20)  # the oversampling rounds run

    def picks(seed, workers, r=0):
        return seed_parallel(_Fit(sample, 20, False, LocalEngine(workers), seed, None), r)

    a = picks(7, 1)
    assert same(a, picks(7, 3)) and same(a, picks(7, 2))
    assert not same(a, picks(8, 1)) and not same(a, picks(7, 1, r=1))
    rows = {tuple(row) for row in x}
    assert a.shape == (20, 8) and all(tuple(c) in rows for c in a)  # centroids are rows
    assert len({tuple(c) for c in a}) == 20


def test_weighted_greedy_pp_never_picks_a_row_of_weight_zero():
    x, _ = blobs(n=200, k=5, seed=4)
    w = np.zeros(200)
    w[::3] = np.arange(1, 68)
    chosen, potential = _greedy_pp(x, 10, np.random.default_rng(0), weights=w)
    assert np.all(w[chosen] > 0) and len(set(chosen.tolist())) == 10
    d2 = ((x[:, None, :].astype(np.float64) - x[chosen][None]) ** 2).sum(-1).min(1)
    assert potential == pytest.approx(float(w @ d2), rel=1e-5)


def greedy_reference(s, k, rng, trials, w):
    """Weighted greedy k-means++ in float64, one row at a time in spirit: the same draws."""
    s64 = s.astype(np.float64)
    m = s.shape[0]
    cum = np.cumsum(w)
    chosen = [min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), m - 1)]
    closest = ((s64 - s64[chosen[0]]) ** 2).sum(1)
    for _ in range(1, k):
        cum = np.cumsum(closest * w)
        cand = np.minimum(np.searchsorted(cum, rng.random(trials) * cum[-1], side="right"),
                          m - 1)
        d2 = np.minimum(closest[:, None], ((s64[:, None, :] - s64[cand][None]) ** 2).sum(-1))
        best = int(np.argmin((d2 * w[:, None]).sum(0)))
        chosen.append(int(cand[best]))
        closest = d2[:, best]
    return np.array(chosen)


def test_threaded_greedy_pp_same_bytes_as_one_thread(monkeypatch):
    # 1000 weighted candidates in blocks of 64 rows: 16 blocks shared out over the threads.
    monkeypatch.setattr(cluster, "GREEDY_BLOCK_ROWS", 64)
    x, _ = blobs(n=1000, k=25, seed=6)
    w = np.random.default_rng(1).integers(1, 9, 1000).astype(np.float64)
    runs = [_greedy_pp(x, 25, np.random.default_rng(3), weights=w, threads=t) for t in (1, 2, 3)]
    for chosen, potential in runs[1:]:
        assert same(chosen, runs[0][0]) and potential == runs[0][1]
    ref = greedy_reference(x, 25, np.random.default_rng(3), 2 + int(np.log(25)), w)
    np.testing.assert_array_equal(runs[0][0], ref)
    unweighted = [_greedy_pp(x, 25, np.random.default_rng(3), threads=t) for t in (1, 3)]
    assert same(unweighted[0][0], unweighted[1][0]) and unweighted[0][1] == unweighted[1][1]


def test_one_reclustering_try_runs_on_every_worker_to_the_same_bytes(small_fit_chunks,
                                                                     monkeypatch):
    monkeypatch.setattr(cluster, "GREEDY_BLOCK_ROWS", 64)
    monkeypatch.setattr(cluster, "RECLUSTER_WORK", 1.0)  # one try: it gets every worker
    seen = []
    real = cluster._greedy_pp

    def spy(*args, **kw):
        seen.append(kw.get("threads", 1))
        return real(*args, **kw)

    monkeypatch.setattr(cluster, "_greedy_pp", spy)
    x, _ = blobs(n=2000, k=20)
    picks = [seed_parallel(_Fit(FitSample.of(x), 20, False, LocalEngine(w), 7, None), 0)
             for w in (1, 2, 3)]
    cores = len(os.sched_getaffinity(0))
    assert seen == [min(w, cores) for w in (1, 2, 3)]  # the workers, at most the cores
    assert same(picks[0], picks[1]) and same(picks[0], picks[2])


def test_fewer_distinct_rows_than_k_still_gives_k_centroids():
    x = np.repeat(np.eye(3, dtype=np.float32), 30, axis=0)  # 3 distinct rows, k = 5
    res = kmeans(x, 5, seed=0, spherical=False, restarts=1, progress=False)
    assert res.centroids.shape == (5, 3) and res.inertia == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("spherical", [False, True])
def test_one_restart_recovers_planted_clusters_for_every_seed(small_fit_chunks, spherical):
    # 30 separated blobs, one restart: k-means|| on 3000 rows (301 candidates expected),
    # the best of ten weighted re-clusterings, then Lloyd.
    x, truth = blobs(n=3000, k=30)
    for seed in range(6):
        res = kmeans(x, 30, seed=seed, restarts=1, spherical=spherical, progress=False)
        assert adjusted_rand_score(truth, res.labels) >= 0.99, seed


# -------------------------------------------------------------------------- refusals


def test_memory_rules_refuse_with_the_numbers(monkeypatch):
    plan = SamplePlan(10_000, 10_000, "all rows")
    need = sample_bytes(10_000, 50, 64)  # sample, 24 B a row, 501 candidates, centroids
    assert need == 10_000 * (64 * 4 + 24) + 501 * 64 * 4 + 50 * 64 * 12
    check_sample_fits(plan, 50, 64, need)
    with pytest.raises(pk.PrunekitError, match=r"holds all 10,000 rows in memory \(64 "
                       r"dimensions as float32\).*Raise --memory"):
        check_sample_fits(plan, 50, 64, need - 1)
    # A sample beyond SAMPLE_MEMORY_MAX lives in a scratch file: the driver holds the rest.
    monkeypatch.setattr(cluster, "SAMPLE_MEMORY_MAX", 1 << 20)
    scratch = sample_bytes(10_000, 50, 64, in_memory=False)
    assert scratch == need - 10_000 * 64 * 4
    check_sample_fits(plan, 50, 64, scratch)
    with pytest.raises(pk.PrunekitError, match="keeps all 10,000 rows in a scratch file"):
        check_sample_fits(plan, 50, 64, scratch - 1)
    with pytest.raises(pk.PrunekitError, match="holds all 10,000 rows in memory"):
        check_sample_fits(plan, 50, 64, scratch, backend="faiss")  # faiss needs it in memory
    assert sample_bytes(10_000, 50, 64, seeding="subsample") == need - 501 * 64 * 4


def test_bad_options_are_refused():
    x, _ = blobs(n=100, k=3)
    with pytest.raises(pk.PrunekitError, match="unknown k-means seeding 'random'"):
        kmeans(x, 3, seeding="random", progress=False)
    with pytest.raises(pk.PrunekitError, match="k=101"):
        kmeans(x, 101, progress=False)
    with pytest.raises(pk.PrunekitError, match="--iters >= 1"):
        kmeans(x, 3, iters=0, progress=False)
    on_disk = FitSample(100, 8, path="/nonexistent.npy")
    with pytest.raises(pk.PrunekitError, match="faiss backend needs the sample in memory"):
        cluster.fit(on_disk, 3, backend="faiss", progress=False)
    with pytest.raises(pk.PrunekitError, match="seeding must be one of parallel, subsample"):
        pk.score(x, "kmeans", k=3, seeding="random", progress=False)


# ----------------------------------------------------------------------------- resume


def test_interrupted_scratch_fit_resumes_to_the_same_bytes(small_fit_chunks, tmp_path,
                                                           monkeypatch):
    monkeypatch.setattr(cluster, "SAMPLE_MEMORY_MAX", 1000)
    monkeypatch.setattr(cluster, "STATE_EVERY_S", 0.0)  # record after every iteration
    x, _ = blobs(n=3000, k=10, spread=3.0)
    emb = pk.Embeddings.from_array(x)
    kw = dict(plan=SamplePlan(1500, emb.n, "u"), seed=1, spherical=False, restarts=1,
              iters=8, engine=LocalEngine(2), progress=False)
    ref = kmeans_streamed(emb.reader, emb.usable_rows, 10, **kw)
    work = WorkDir(tmp_path / "work")
    # Records: the sample file, the seeding's centroids (2), then 2 per Lloyd iteration.
    with killed_after(1 + 2 + 2 * 3), pytest.raises(InjectedFailure):
        kmeans_streamed(emb.reader, emb.usable_rows, 10, work=work, **kw)
    assert (tmp_path / "work" / cluster.SAMPLE_FILE).is_file()
    calls = {"draw": 0, "lloyd": 0}
    for name, key in (("_draw_chunk", "draw"), ("_fit_lloyd_chunk", "lloyd")):
        fn = getattr(cluster, name)

        def counted(shared, item, fn=fn, key=key):
            calls[key] += 1
            return fn(shared, item)

        monkeypatch.setattr(cluster, name, counted)
    again = kmeans_streamed(emb.reader, emb.usable_rows, 10, work=WorkDir(tmp_path / "work"),
                            **kw)
    assert calls["draw"] == 0  # the recorded sample file verified and was reused
    assert calls["lloyd"] <= 12 * 5  # 12 fit chunks, at most the 5 iterations left
    for name in ("centroids", "labels", "distance"):
        assert same(getattr(again, name), getattr(ref, name)), name
    # A sample file whose rows changed is drawn again.
    path = tmp_path / "work" / cluster.SAMPLE_FILE
    data = bytearray(path.read_bytes())
    data[-4:] = np.float32(1e6).tobytes()
    path.write_bytes(bytes(data))
    work = WorkDir(tmp_path / "work")
    assert cluster._recorded_sample(path, work, 1500, 8) is None


def test_ray_workers_fit_from_the_scratch_sample_to_the_local_bytes(small_fit_chunks,
                                                                    monkeypatch):
    pytest.importorskip("ray")
    from prunekit.runtime.engine import RayEngine

    monkeypatch.setattr(cluster, "SAMPLE_MEMORY_MAX", 1000)  # workers read the sample file
    x, _ = blobs(n=2000, k=8, spread=2.0)
    emb = pk.Embeddings.from_array(x)
    kw = dict(plan=SamplePlan(900, emb.n, "u"), seed=2, spherical=True, progress=False)
    local = kmeans_streamed(emb.reader, emb.usable_rows, 8, engine=LocalEngine(1), **kw)
    with RayEngine(2, quiet=True) as eng:
        far = kmeans_streamed(emb.reader, emb.usable_rows, 8, engine=eng, **kw)
    for name in ("centroids", "labels", "distance"):
        assert same(getattr(far, name), getattr(local, name)), name


# ------------------------------------------------------------------ streamed Lloyd passes


def counted(monkeypatch, name):
    """Replace ``cluster.name`` (a task function) by a wrapper counting its calls."""
    calls = []
    fn = getattr(cluster, name)

    def wrapper(*args):
        calls.append(args[-1])
        return fn(*args)

    monkeypatch.setattr(cluster, name, wrapper)
    return calls


@pytest.mark.parametrize("recorded", [False, True])
def test_full_pass_sends_the_driver_one_sum_a_group_added_by_the_tree(small_fit_chunks,
                                                                      monkeypatch, tmp_path,
                                                                      recorded):
    # Small integers: every float64 sum is exact, so the pass must equal one plain Lloyd
    # update from the fit's centroids. 79 data chunks of 64 rows; at most 8 groups: 10
    # chunks a group (the last 9), whose sums a tree of fan-in 3 adds in two levels.
    monkeypatch.setattr(cluster, "PASS_GROUPS_MAX", 8)
    monkeypatch.setattr(cluster, "LLOYD_FAN_IN", 3)
    rng = np.random.default_rng(7)
    x = rng.integers(-50, 50, (5000, 8)).astype(np.float32)
    emb = pk.Embeddings.from_array(x)
    groups = cluster.pass_groups(emb.reader.chunks(64), 64, 6)
    assert [len(g) for g in groups] == [10] * 7 + [9]
    assert engine_mod.tree_sizes(8, 3) == [8, 3, 1]
    chunks, tasks = counted(monkeypatch, "_lloyd_chunk"), counted(monkeypatch, "_lloyd_group")
    combines = counted(monkeypatch, "_add_sums")  # the fit's Lloyd uses it too
    kw = dict(plan=SamplePlan(1000, emb.n, "u"), seed=3, spherical=False, progress=False)
    c0 = kmeans_streamed(emb.reader, emb.usable_rows, 6, engine=LocalEngine(1), **kw).centroids
    fit_combines = len(combines)
    lab = cluster.nearest(x, c0, spherical=False)
    sums = np.zeros((6, 8))
    np.add.at(sums, lab, x.astype(np.float64))
    ref = (sums / np.bincount(lab, minlength=6)[:, None]).astype(np.float32)
    for workers in (1, 2, 3):
        for calls in (chunks, tasks, combines):
            calls.clear()
        work = WorkDir(tmp_path / f"w{workers}") if recorded else None
        res = kmeans_streamed(emb.reader, emb.usable_rows, 6, full_passes=1, work=work,
                              engine=LocalEngine(workers), **kw)
        assert same(res.centroids, ref)
        # 79 chunks read; the driver gets 8 group sums and adds them by 3 + 1 combines
        assert len(chunks) == 79 and len(tasks) == 8
        assert len(combines) - fit_combines == 3 + 1


def test_full_passes_same_bytes_any_workers_recorded_or_not_and_resumed(small_fit_chunks,
                                                                         monkeypatch, tmp_path):
    monkeypatch.setattr(cluster, "PASS_GROUPS_MAX", 8)  # 79 chunks: 8 groups (10, ..., 9)
    monkeypatch.setattr(cluster, "LLOYD_FAN_IN", 3)
    x, _ = blobs(n=5000, k=10, spread=2.0, seed=4)
    x[[11, 4000]] = np.nan
    emb = pk.Embeddings.from_array(x.astype(np.float16), drop_nonfinite=True)
    kw = dict(plan=SamplePlan(900, emb.n, "u"), seed=5, spherical=True, full_passes=2,
              progress=False)

    def run(workers, work=None):
        return kmeans_streamed(emb.reader, emb.usable_rows, 10, engine=LocalEngine(workers),
                               work=work, **kw)

    ref = run(1)
    runs = [run(w) for w in (2, 3)] + [run(w, WorkDir(tmp_path / f"w{w}")) for w in (1, 3)]
    for r in runs:
        for name in ("centroids", "labels", "distance"):
            assert same(getattr(r, name), getattr(ref, name)), name
    # Killed in the second pass: the sample (2 records), pass 1's 8 groups and its
    # centroids, then 3 groups of pass 2. One worker: the group tasks record themselves, so
    # with more the records present at a kill depend on which tasks were running.
    work = tmp_path / "work"
    with killed_after(2 + 8 + 1 + 3), pytest.raises(InjectedFailure):
        run(1, WorkDir(work))
    assert not (work / "pass-0").exists()  # folded into centroids-1
    assert sorted(p.name for p in (work / "pass-1").iterdir()) == [
        f"{i:08d}.npy" for i in range(3)]
    chunks, tasks = counted(monkeypatch, "_lloyd_chunk"), counted(monkeypatch, "_lloyd_group")
    again = run(3, WorkDir(work))
    assert len(tasks) == 8 - 3 and len(chunks) == 4 * 10 + 9  # groups 3..7 only
    for name in ("centroids", "labels", "distance"):
        assert same(getattr(again, name), getattr(ref, name)), name


class Receiving(LocalEngine):
    """A local engine listing, by ``desc``, what each map or reduce hands its caller (the
    driver); the leaves a reduce adds up by its tree are not handed over."""

    def __init__(self, workers):
        super().__init__(workers)
        self.received, self._reducing = {}, False

    def _map(self, fn, items, shared, *, desc, **kw):
        for value in super()._map(fn, items, shared, desc=desc, **kw):
            if not self._reducing:
                self.received.setdefault(desc, []).append(value)
            yield value

    def reduce(self, fn, items, shared=None, *, desc="", **kw):
        self._reducing = True
        try:
            root = super().reduce(fn, items, shared, desc=desc, **kw)
        finally:
            self._reducing = False
        self.received.setdefault(desc, []).append(root)
        return root


def test_with_a_work_dir_the_driver_receives_one_sum_a_pass(small_fit_chunks, monkeypatch,
                                                            tmp_path):
    # 79 chunks in 8 groups whose tasks record their own sums: the driver gets the tree's
    # root alone, also when some groups come from the records of a killed run.
    monkeypatch.setattr(cluster, "PASS_GROUPS_MAX", 8)
    monkeypatch.setattr(cluster, "LLOYD_FAN_IN", 3)
    x, _ = blobs(n=5000, k=6, spread=2.0, seed=9)
    emb = pk.Embeddings.from_array(x)
    kw = dict(plan=SamplePlan(900, emb.n, "u"), seed=2, spherical=False, full_passes=2,
              progress=False)

    def run(engine, work=None):
        return kmeans_streamed(emb.reader, emb.usable_rows, 6, engine=engine, work=work, **kw)

    ref = run(LocalEngine(1))
    passes = ("Lloyd pass 1", "Lloyd pass 2")
    for workers in (1, 2, 3):
        eng = Receiving(workers)
        res = run(eng, WorkDir(tmp_path / f"w{workers}"))
        for desc in passes:
            ((present, sums, counts),) = eng.received[desc]  # one value: the root
            assert sums.shape == (present.size, 8) and counts.sum() == 5000
        assert same(res.centroids, ref.centroids) and same(res.labels, ref.labels)
    work = tmp_path / "killed"
    with killed_after(2 + 3), pytest.raises(InjectedFailure):  # sample, 3 groups of pass 1
        run(LocalEngine(1), WorkDir(work))
    tasks = counted(monkeypatch, "_lloyd_group")
    eng = Receiving(3)
    again = run(eng, WorkDir(work))
    assert len(tasks) == (8 - 3) + 8 and [len(eng.received[d]) for d in passes] == [1, 1]
    assert same(again.centroids, ref.centroids) and same(again.labels, ref.labels)
