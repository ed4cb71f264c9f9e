"""Engines, streamed k-means, rows grouped by cluster, per-cluster greedy methods.

The streamed and per-cluster paths are checked against brute-force references computed
in memory, and against themselves across worker counts (the determinism contract).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import prunekit as pk
from prunekit.compute import grouping
from prunekit.compute.cluster import (
    SamplePlan,
    kmeans,
    kmeans_streamed,
    normalize_rows,
    sample_quotas,
)
from prunekit.compute.kernels import RandomFourierFeatures, median_sigma
from prunekit.methods.greedy import interleave, order_scores
from prunekit.methods.herding import herd_rff
from prunekit.methods.kcenter import farthest_first
from prunekit.runtime import engine as engine_mod
from prunekit.runtime.engine import LocalEngine, chunk_rows_for, make_engine
from prunekit.seeds import role_rng


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 64 rows and batches of 100 rows: many tasks on small data."""
    monkeypatch.setattr(engine_mod, "MIN_CHUNK_ROWS", 64)
    monkeypatch.setattr(engine_mod, "CHUNK_BYTES", 64 * 4 * 8)  # 64 rows at d = 8
    monkeypatch.setattr(grouping, "BATCH_ROWS", 100)


def blobs(n=1500, k=6, d=8, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * 4.0
    labels = rng.integers(0, k, n)
    return (centres[labels] + rng.standard_normal((n, d))).astype(dtype), labels


def square(shared, item):
    return shared * item * item


# ------------------------------------------------------------------------------ engines


@pytest.mark.parametrize("workers", [1, 3])
def test_local_map_yields_in_item_order(workers):
    eng = LocalEngine(workers)
    # Later items are cheaper, so with threads they tend to finish first.
    out = list(eng.map(square, range(40, 0, -1), 2, progress=False))
    assert out == [2 * i * i for i in range(40, 0, -1)]
    assert list(eng.map(square, [], 1, progress=False)) == []


def test_limit_caps_concurrent_calls():
    import threading
    import time

    running, peak, lock = [0], [0], threading.Lock()

    def task(shared, item):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        return item

    assert list(LocalEngine(4).map(task, range(12), limit=2, progress=False)) == list(range(12))
    assert peak[0] <= 2


def test_leaving_a_map_block_by_an_error_stops_its_calls():
    """A caller that raises inside the ``with`` block: the queued calls never start and the
    running ones have finished when the block is left, so none outlives the map."""
    import threading
    import time

    started, running, lock = [], [0], threading.Lock()

    def task(shared, item):
        with lock:
            started.append(item)
            running[0] += 1
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return item

    eng = LocalEngine(2)  # a window of 2 x 2 calls in flight
    with pytest.raises(RuntimeError, match="the caller failed"):
        with eng.map(task, range(50), progress=False) as results:
            for item in results:
                if item == 1:
                    raise RuntimeError("the caller failed")
    assert running[0] == 0 and 2 <= len(started) <= 6
    seen = list(started)
    time.sleep(0.1)
    assert started == seen  # nothing started after the block was left
    with eng.map(task, range(5), progress=False) as results:  # exhausting needs no block
        assert list(results) == list(range(5))


def test_npy_headers_are_parsed_one_at_a_time(tmp_path, monkeypatch):
    """numpy parses .npy headers with ``ast.literal_eval``, which CPython < 3.11.8 cannot run
    on two threads at once: every load in prunekit parses under one lock."""
    import ast
    import threading
    import time

    from prunekit.io import npzio

    np.save(tmp_path / "a.npy", np.arange(6.0))
    inside, peak, lock = [0], [0], threading.Lock()
    real = ast.literal_eval

    def literal_eval(text):
        with lock:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
        time.sleep(0.005)  # widen the window a race would need
        with lock:
            inside[0] -= 1
        return real(text)

    monkeypatch.setattr(ast, "literal_eval", literal_eval)

    def task(shared, i):
        path = tmp_path / "a.npy"
        with open(path, "rb") as fh:
            h = npzio.read_npy_header(fh, str(path))
        return (h.shape, npzio.load_npy(path, mmap=bool(i % 2)).sum())

    out = list(LocalEngine(4).map(task, range(24), progress=False))
    assert out == [((6,), 15.0)] * 24 and peak[0] == 1


def test_no_module_calls_numpy_load_past_the_lock():
    """Every ``.npy`` load goes through :func:`prunekit.io.npzio.load_npy` (pickles refused,
    headers parsed under the lock)."""
    import pathlib

    root = pathlib.Path(pk.__file__).parent.parent
    calls = [f"{p.relative_to(root)}:{i}"
             for pkg in ("prunekit", "prunekit_lfm") for p in sorted((root / pkg).rglob("*.py"))
             if p.name != "npzio.py"
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if "np.load(" in line or "numpy.load(" in line]
    assert calls == []


def leaf(shared, item):
    return str(item)


def bracket(parts):
    return "(" + " ".join(parts) + ")"


def test_reduce_is_a_fixed_tree_whatever_the_workers():
    # 10 leaves, fan-in 3: runs of three (the last shorter), then runs of three of those.
    want = "(((0 1 2) (3 4 5) (6 7 8)) ((9)))"
    assert engine_mod.tree_sizes(10, 3) == [10, 4, 2, 1]
    for workers in (1, 2, 3):
        eng = LocalEngine(workers)
        assert eng.reduce(leaf, range(10), combine=bracket, fan_in=3, progress=False) == want
        assert eng.reduce(leaf, range(3), combine=bracket, fan_in=3, progress=False) == "(0 1 2)"
        assert eng.reduce(leaf, [7], combine=bracket, fan_in=2, progress=False) == "(7)"
        with eng.share([1, 2]) as handle:  # local engines share the object itself
            assert handle == [1, 2]
    assert engine_mod.tree_sizes(64, 8) == [64, 8, 1] and engine_mod.tree_sizes(65, 8) == [
        65, 9, 2, 1]
    with pytest.raises(ValueError, match="fan_in >= 2"):
        engine_mod.tree_sizes(5, 1)


def test_engine_errors_and_choices():
    with pytest.raises(pk.PrunekitError, match=r"workers must be in \[1, 4096\] \(got 0\)"):
        LocalEngine(0)
    with pytest.raises(pk.PrunekitError, match=r"workers must be in \[1, 4096\] \(got 4097\)"):
        LocalEngine(4097)
    with pytest.raises(pk.PrunekitError, match="unknown engine 'spark'"):
        make_engine("spark")
    with pytest.raises(pk.PrunekitError, match="--ray-address needs --engine ray"):
        make_engine("local", ray_address="auto")
    assert chunk_rows_for(256) == 32768 and chunk_rows_for(768) == 8192  # powers of two <= 32 MiB
    assert chunk_rows_for(100_000) == engine_mod.MIN_CHUNK_ROWS


def test_ray_errors_without_a_cluster(monkeypatch):
    with pytest.raises(pk.PrunekitError, match="no Ray head answers at --ray-address 127.0.0.1:1"):
        engine_mod._check_reachable("127.0.0.1:1")  # port 1: nothing listens
    with pytest.raises(pk.PrunekitError, match="is not HOST:PORT"):
        engine_mod._check_reachable("headnode")
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    with pytest.raises(pk.PrunekitError, match=r'pip install "prunekit\[ray\]"'):
        make_engine("ray")


# ---------------------------------------------------------------------- streamed k-means


def test_streamed_kmeans_sample_and_assignment_match_brute_force(small_chunks):
    x, _ = blobs()
    x[[5, 700]] = np.nan
    emb = pk.Embeddings.from_array(x, drop_nonfinite=True)
    res = kmeans_streamed(emb.reader, emb.rows, 6, plan=SamplePlan(600, emb.n, "u"), seed=4,
                          spherical=False, engine=LocalEngine(2), progress=False)
    # The sample: 600 usable rows, each chunk of 64 rows giving its largest-remainder share
    # of its usable rows, drawn by (seed, "kmeans sample", chunk); Lloyd on it alone.
    usable = [np.setdiff1d(np.arange(a, min(a + 64, 1500)), [5, 700]) for a in range(0, 1500, 64)]
    sizes = np.array([u.size for u in usable])
    quotas = sample_quotas(sizes, 600)
    assert quotas.sum() == 600 and np.all(np.abs(quotas - 600 * sizes / 1498) < 1)
    pick = np.concatenate([
        u[np.sort(role_rng(4, "kmeans sample", i).choice(u.size, q, replace=False))]
        for i, (u, q) in enumerate(zip(usable, quotas, strict=True))])
    ref = kmeans(x[pick], 6, seed=4, spherical=False, progress=False)
    np.testing.assert_array_equal(res.centroids, ref.centroids)
    # The assignment: every usable row to its nearest centroid, distances in float64.
    xs = x[emb.rows].astype(np.float64)
    d2 = ((xs[:, None, :] - res.centroids[None].astype(np.float64)) ** 2).sum(-1)
    np.testing.assert_array_equal(res.labels, d2.argmin(1))
    np.testing.assert_allclose(res.distance, np.sqrt(d2.min(1)), rtol=1e-12)
    assert res.inertia == pytest.approx(d2.min(1).sum(), rel=1e-12)


@pytest.mark.parametrize("spherical", [False, True])
def test_streamed_lloyd_pass_is_one_exact_lloyd_update(small_chunks, spherical):
    x, _ = blobs(seed=1, dtype=np.float16)  # float16 on disk: converted chunk by chunk
    emb = pk.Embeddings.from_array(x)
    kw = dict(plan=SamplePlan(300, emb.n, "u"), seed=2, spherical=spherical, progress=False)
    c0 = kmeans_streamed(emb.reader, emb.rows, 6, engine=LocalEngine(1), **kw).centroids
    c1 = kmeans_streamed(emb.reader, emb.rows, 6, full_passes=1, engine=LocalEngine(3),
                         **kw).centroids
    xs = x.astype(np.float32)
    if spherical:
        normalize_rows(xs)
    x64 = xs.astype(np.float64)
    d2 = ((x64[:, None, :] - c0[None].astype(np.float64)) ** 2).sum(-1)
    lab = d2.argmin(1)
    ref = np.stack([x64[lab == c].mean(0) for c in range(6)])
    if spherical:
        ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(c1, ref, rtol=0, atol=2e-6)


def test_streamed_kmeans_same_bytes_for_any_worker_count(small_chunks):
    x, _ = blobs(n=2000, seed=3)
    emb = pk.Embeddings.from_array(x)
    runs = []
    for workers in (1, 2, 5):
        with pk.runtime(engine=LocalEngine(workers)):
            runs.append(pk.score(emb, "kmeans", k=5, sample=700, full_passes=2, seed=9,
                                 progress=False))
    for r in runs[1:]:
        for name in ("score", "cluster", "centroids"):
            assert getattr(r, name).tobytes() == getattr(runs[0], name).tobytes(), name
    assert runs[0].params["sample_rows"] == 700 and runs[0].params["sample_of"] == 2000
    assert "uniform without replacement" in runs[0].params["sample_drawn"]


def test_sample_size_follows_k_and_the_data_shape_only():
    from prunekit.compute.cluster import sample_plan

    # Default: max(256 k, 256 MiB of float32 rows), at most all rows; no budget in sight.
    assert sample_plan(10_000, 10, 64).rows == 10_000
    assert sample_plan(10**7, 1000, 256).rows == (256 << 20) // (4 * 256) == 262_144
    assert sample_plan(10**7, 2000, 256).rows == 256 * 2000
    assert sample_plan(10**8, 10, 32).rows == (256 << 20) // (4 * 32)
    big = sample_plan(10**7, 10, 256)
    assert big.params() == {
        "sample_rows": 262_144, "sample_of": 10**7,
        "sample_drawn": "uniform without replacement within each chunk of the data, the "
                        "chunks' shares by largest remainder, seeded by (seed, 'kmeans sample', "
                        "chunk)",
        "sample_rule": "default: max(256 k, 256 MiB of float32 rows), at most all rows"}
    # --sample: as given, at most all rows, at least k.
    assert sample_plan(10**7, 10, 256, 700).rows == 700
    assert sample_plan(10**7, 10, 256, 700).rule == "given (--sample)"
    everything = sample_plan(500, 10, 8, 10**6)
    assert (everything.rows, everything.drawn) == (500, "all rows")
    with pytest.raises(pk.PrunekitError, match="--sample 9 holds fewer rows than --k 10"):
        sample_plan(10**7, 10, 256, 9)


def test_kmeans_sample_never_shrinks_to_the_budget():
    from prunekit.compute.cluster import sample_bytes
    from prunekit.runtime.memory import human

    x, _ = blobs(n=3000, d=8)
    emb = pk.Embeddings.from_array(x)
    need = sample_bytes(3000, 3, 8)  # all rows: 3000 x (8 x 4 + 24), 31 candidates, centroids
    assert need == 3000 * 56 + 31 * 8 * 4 + 3 * 8 * 12
    with pk.runtime(memory=need):  # exactly enough: the same bytes as with a generous budget
        tight = pk.score(emb, "kmeans", k=3, progress=False)
    with pk.runtime(memory="4G"):
        roomy = pk.score(emb, "kmeans", k=3, progress=False)
    for name in ("score", "cluster", "centroids"):
        assert getattr(tight, name).tobytes() == getattr(roomy, name).tobytes(), name
    assert tight.params["sample_rows"] == 3000 and tight.params["sample_drawn"] == "all rows"
    assert tight.params["sample"] is None
    with pk.runtime(memory=need - 1), pytest.raises(pk.PrunekitError) as err:  # one byte short: refused
        pk.score(emb, "kmeans", k=3, progress=False)
    msg = str(err.value)
    assert f"k-means holds all 3,000 rows in memory (8 dimensions as float32): {human(need)}" \
        in msg and "Raise --memory to at least" in msg and "smaller --sample" in msg
    with pk.runtime(memory=need - 1):  # a smaller --sample fits: 1500 rows drawn
        half = pk.score(emb, "kmeans", k=3, sample=1500, progress=False)
    assert half.params["sample_rows"] == 1500 and half.params["sample"] == 1500
    assert half.params["sample_drawn"].startswith("uniform without replacement")


def test_group_rows_writes_each_cluster_contiguously(tmp_path, small_chunks):
    x, _ = blobs(n=500, d=8, dtype=np.float16)
    x[[3, 77]] = np.nan
    emb = pk.Embeddings.from_array(x, drop_nonfinite=True)
    clusters = np.random.default_rng(0).choice([2, 5, 9], size=emb.n)
    g = grouping.group_rows(emb.reader, emb.rows, clusters, tmp_path / "g.rows",
                            chunk_rows=64, progress=False)
    np.testing.assert_array_equal(g.clusters, [2, 5, 9])
    assert os.path.getsize(tmp_path / "g.rows") == emb.n * 8 * 2  # float16 stays float16
    for i, c in enumerate([2, 5, 9]):
        members = np.flatnonzero(clusters == c)
        np.testing.assert_array_equal(g.rows_of(i), members)
        assert g.read(i).dtype == np.float16
        np.testing.assert_array_equal(g.read(i), x[emb.rows[members]])


def test_batches_close_at_batch_rows():
    sizes = np.array([5, 5, 12, 1, 1, 1])
    assert grouping.batches(sizes, batch_rows=10) == [[0, 1], [2], [3, 4, 5]]
    assert grouping.batches(np.array([3]), batch_rows=10) == [[0]]


# --------------------------------------------------------- per-cluster greedy methods


def reference_within(x, clusters, method, *, seed=0, max_keep=None, metric="euclidean"):
    """The in-memory implementation: the whole matrix, then one herd/traversal per cluster."""
    xs = x.astype(np.float32)
    if method == "herding":
        z = RandomFourierFeatures(x.shape[1], median_sigma(xs, seed=seed), 512, seed).transform(xs)
    elif metric == "cosine":
        normalize_rows(xs)
    orders = []
    for c in np.unique(clusters):
        g = np.flatnonzero(clusters == c)
        m = g.size if max_keep is None else min(max_keep, g.size)
        local = herd_rff(z[g], m) if method == "herding" else farthest_first(xs[g], m)
        orders.append(g[local])
    return interleave(orders)


@pytest.mark.parametrize("method,opts", [("herding", {}), ("herding", {"max_keep": 7}),
                                         ("kcenter", {}), ("kcenter", {"metric": "cosine"})])
def test_within_equals_in_memory_implementation(small_chunks, method, opts):
    x, _ = blobs(n=1200, k=6, d=8, seed=5)
    emb = pk.Embeddings.from_array(x)
    km = pk.score(emb, "kmeans", k=6, seed=1, progress=False)
    with pk.runtime(engine=LocalEngine(2)):
        s = pk.score(emb, method, within=km, progress=False, **opts)
    ref = reference_within(x, km.cluster, method, **opts)
    np.testing.assert_array_equal(s.order, ref)
    np.testing.assert_array_equal(s.score, order_scores(ref, emb.n))
    np.testing.assert_array_equal(s.cluster, km.cluster)


def test_within_leaves_no_temporary_files(tmp_path, monkeypatch, small_chunks):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    x, _ = blobs(n=400, d=8)
    emb = pk.Embeddings.from_array(x)
    km = pk.score(emb, "kmeans", k=3, progress=False)
    pk.score(emb, "kcenter", within=km, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_greedy_over_budget_refuses_with_the_cost():
    x, _ = blobs(n=4000, d=8)
    emb = pk.Embeddings.from_array(x)
    km = pk.score(emb, "kmeans", k=8, progress=False)
    with pk.runtime(memory="64K"):
        with pytest.raises(pk.PrunekitError, match=r"herding without --within holds all 4000 rows"
                                                   r" in memory: .*Use --within SCORES"):
            pk.score(emb, "herding", progress=False)
        with pytest.raises(pk.PrunekitError, match="k-center without --within"):
            pk.score(emb, "kcenter", progress=False)
        s = pk.score(emb, "kcenter", within=km, progress=False)  # clusters of ~500 rows fit
        assert s.order.size == 4000
    with pk.runtime(memory="4K"), pytest.raises(pk.PrunekitError,
                                     match=r"cluster \d+ has \d+ rows .* --memory"):
        pk.score(emb, "kcenter", within=km, progress=False)


def test_streamed_paths_hold_less_than_the_matrix(tmp_path, monkeypatch):
    """k-means with a sample and k-center --within never hold the (N, D) matrix.

    300 000 x 128 float16 on disk is 154 MB as float32; with a 32 MB budget (1 MB chunks)
    the peak of traced allocations stays near the per-row arrays (~60 B a row) plus the
    budget and a task's fixed working memory.
    """
    import tracemalloc

    monkeypatch.setattr(engine_mod, "CHUNK_BYTES", 1 << 20)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((10, 128)).astype(np.float32) * 3
    x = (centres[rng.integers(0, 10, 300_000)] + rng.standard_normal((300_000, 128),
                                                                      dtype=np.float32))
    np.save(tmp_path / "emb.npy", x.astype(np.float16))
    del x
    emb = pk.load_embeddings(tmp_path / "emb.npy")
    matrix = emb.n * emb.dim * 4
    with pk.runtime(memory="32M", engine=LocalEngine(2)):
        tracemalloc.start()
        km = pk.score(emb, "kmeans", k=10, sample=20_000, progress=False)  # 16 MB to fit
        kmeans_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        kc = pk.score(emb, "kcenter", within=km, max_keep=20, progress=False)
        within_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert km.params["sample_rows"] < emb.n and kc.order.size == 200
    assert kmeans_peak < 0.5 * matrix, kmeans_peak
    assert within_peak < 0.5 * matrix, within_peak
