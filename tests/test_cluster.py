"""k-means: planted clusters, backend agreement, chunked assignment, determinism."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

import prunekit as pk
from prunekit.compute.cluster import (
    AUTO_RESTARTS_WORK,
    assign,
    auto_restarts,
    kmeans,
    kmeanspp,
    normalize_rows,
)


def planted(n=1200, k=8, d=16, seed=0, spread=0.15):
    """k well-separated directions (for spherical) that are also separated blobs."""
    rng = np.random.default_rng(seed)
    centres = normalize_rows(rng.standard_normal((k, d))) * 5.0
    labels = rng.integers(0, k, n)
    return (centres[labels] + spread * 5.0 * rng.standard_normal((n, d)) / np.sqrt(d)).astype(np.float32), labels


@pytest.mark.parametrize("backend", ["faiss", "sklearn"])
@pytest.mark.parametrize("spherical", [True, False])
def test_recovers_planted_clusters(backend, spherical):
    x, truth = planted()
    res = kmeans(x, 8, iters=20, seed=3, spherical=spherical, backend=backend, progress=False)
    assert adjusted_rand_score(truth, res.labels) >= 0.95
    assert res.backend == backend


@pytest.mark.parametrize("spherical", [True, False])
def test_backends_agree_in_inertia(spherical):
    # Overlapping clusters, so Lloyd has work to do and the backends' paths can differ.
    x, _ = planted(n=2000, k=12, d=8, seed=1, spread=0.8)
    a = kmeans(x, 12, iters=15, seed=0, spherical=spherical, backend="faiss", progress=False)
    b = kmeans(x, 12, iters=15, seed=0, spherical=spherical, backend="sklearn", progress=False)
    assert abs(a.inertia - b.inertia) <= 0.03 * min(a.inertia, b.inertia)


def test_assign_matches_brute_force_in_chunks():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((101, 5)).astype(np.float32)
    c = rng.standard_normal((7, 5)).astype(np.float32)
    labels, dist, sq = assign(x, c, spherical=False, chunk=13)
    full = ((x[:, None, :].astype(np.float64) - c[None].astype(np.float64)) ** 2).sum(-1)
    np.testing.assert_array_equal(labels, full.argmin(1))
    np.testing.assert_allclose(sq, full.min(1), rtol=1e-12)
    np.testing.assert_allclose(dist, np.sqrt(full.min(1)), rtol=1e-12)
    xs, cs = normalize_rows(x.copy()), normalize_rows(c.copy())
    labels, dist, sq = assign(xs, cs, spherical=True, chunk=10)
    cos = xs.astype(np.float64) @ cs.T.astype(np.float64)
    np.testing.assert_array_equal(labels, cos.argmax(1))
    np.testing.assert_allclose(dist, 1.0 - cos.max(1), atol=1e-12)
    np.testing.assert_allclose(sq, 2.0 * dist, atol=1e-6)  # unit vectors: |x - c|^2 = 2 (1 - cos)


def test_spherical_centroids_unit_and_inertia_consistent():
    x, _ = planted(n=600, k=5, seed=4)
    before = x.copy()
    res = kmeans(x, 5, seed=0, progress=False)
    np.testing.assert_array_equal(x, before)  # normalised on a copy
    np.testing.assert_allclose(np.linalg.norm(res.centroids, axis=1), 1.0, atol=1e-5)
    assert res.inertia == pytest.approx(2.0 * res.distance.sum(), rel=1e-5)
    assert (res.distance >= -1e-12).all() and (res.distance <= 2.0).all()


def test_auto_restarts_follow_problem_size():
    # Small and medium problems: scikit-learn's ten seedings ...
    assert auto_restarts(1797, 10, 64, 25) == 10
    assert auto_restarts(10_000, 24, 256, 25) == 10
    # ... larger ones as many as fit in AUTO_RESTARTS_WORK multiply-adds: Lloyd, k-means||'s
    # distances to its 1 + 5 x 2k = 241 candidates, and ten re-clusterings of them ...
    one = (40_000 * 24 * 256 * 25 + 40_000 * 256 * 241
           + 10 * 241 * 24 * 256 * (2 + np.log(24)))
    assert auto_restarts(40_000, 24, 256, 25) == int(AUTO_RESTARTS_WORK // one) == 3
    one = 40_000 * 24 * 256 * 25 + 4096 * 24 * 256 * (2 + np.log(24))  # greedy on 4096 rows
    assert auto_restarts(40_000, 24, 256, 25, "subsample") == int(AUTO_RESTARTS_WORK // one) == 4
    # ... and large ones one, today's cost.
    assert auto_restarts(1_000_000, 1000, 512, 25) == 1
    x, _ = planted(n=300, k=3, seed=2)
    assert kmeans(x, 3, progress=False).restarts == 10
    assert kmeans(x, 3, restarts=2, progress=False).restarts == 2


@pytest.mark.parametrize("data_seed,spherical", [(100, True), (103, False)])
def test_defaults_find_planted_clusters_for_every_seed(data_seed, spherical):
    # One k-means++ seeding (the old default) misses a cluster for some of these seeds.
    x, truth = planted(n=1200, k=12, d=16, seed=data_seed)
    for seed in range(12):
        s = pk.score(x, "kmeans", k=12, seed=seed, spherical=spherical, progress=False)
        assert adjusted_rand_score(truth, s.cluster) >= 0.99, seed


@pytest.mark.parametrize("k", [10, 24])
def test_defaults_match_sklearn_n_init_10_on_digits(k):
    from sklearn.cluster import KMeans
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float32)
    ref = KMeans(k, n_init=10, random_state=0).fit(x.astype(np.float64)).inertia_
    for seed in range(3):
        s = pk.score(x, "kmeans", k=k, seed=seed, spherical=False, progress=False)
        assert s.params["restarts_used"] == 10
        assert s.params["inertia"] <= 1.005 * ref, (seed, s.params["inertia"] / ref)


def test_kmeanspp_distinct_centres_and_duplicates():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 3)).astype(np.float32)
    c = kmeanspp(x, 10, np.random.default_rng(1), spherical=False)
    assert len({tuple(r) for r in c}) == 10
    dup = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)  # 3 distinct points, k = 5
    res = kmeans(dup, 5, seed=0, spherical=False, backend="sklearn", progress=False)
    assert res.inertia == pytest.approx(0.0, abs=1e-9)


def test_k_larger_than_n_is_an_error():
    with pytest.raises(pk.PrunekitError, match="k=11"):
        kmeans(np.zeros((10, 2), np.float32), 11, progress=False)
    with pytest.raises(pk.PrunekitError, match="backend"):
        kmeans(np.ones((10, 2), np.float32), 2, backend="gpu", progress=False)


@pytest.mark.parametrize("backend", ["faiss", "sklearn"])
def test_seeded_runs_are_byte_identical(tmp_path, backend):
    x, _ = planted(n=700, k=6, seed=6, spread=0.6)
    emb = pk.Embeddings.from_array(x)
    paths = []
    for i in range(2):
        s = pk.score(emb, "kmeans", k=6, seed=11, backend=backend, restarts=2, progress=False)
        paths.append(s.save(tmp_path / f"s{i}.h5", command=["x"]))
    other = pk.score(emb, "kmeans", k=6, seed=12, backend=backend, progress=False)
    with h5py.File(paths[0]) as a, h5py.File(paths[1]) as b:
        for name in ("score", "cluster", "centroids", "centroid_distance"):
            assert a[name][()].tobytes() == b[name][()].tobytes(), name
        assert a.attrs["params"] == b.attrs["params"]
        assert a["centroids"][()].tobytes() != other.centroids.tobytes()


def test_kmeans_method_scores_distance_to_own_centroid():
    x, _ = planted(n=300, k=4, seed=8)
    x[5] = np.nan
    emb = pk.Embeddings.from_array(x, drop_nonfinite=True)
    s = pk.score(emb, "kmeans", k=4, spherical=False, progress=False)
    assert np.isnan(s.score[5]) and s.cluster[5] == -1
    ok = np.flatnonzero(~np.isnan(s.score))
    own = np.linalg.norm(x[ok].astype(np.float64) - s.centroids[s.cluster[ok]].astype(np.float64), axis=1)
    np.testing.assert_allclose(s.score[ok], own, rtol=1e-9)
    np.testing.assert_array_equal(s.score, s.centroid_distance)
    assert s.params["k"] == 4 and s.params["spherical"] is False
