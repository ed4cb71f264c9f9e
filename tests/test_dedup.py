"""SemDeDup scores against hand-computed cases and an O(n^2) brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest
from dedup_reference import semdedup_reference
from resume_faults import InjectedFailure, killed_after

import prunekit as pk
from prunekit.errors import PrunekitError
from prunekit.methods import dedup
from prunekit.seeds import role_rng


def unit(deg: float) -> list[float]:
    a = np.deg2rad(deg)
    return [np.cos(a), np.sin(a)]


def brute_force_removed(x: np.ndarray, clusters, distance, keep: str, eps: float, seed=0):
    """SemDeDup's rule with loops in float64: removed if cos to ANY earlier item > 1 - eps."""
    x = np.asarray(x, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    out = np.zeros(len(x), dtype=bool)
    for c in np.unique(clusters):
        rows = np.flatnonzero(clusters == c)
        if keep == "random":
            rng = role_rng(seed, dedup.ORDER_ROLE, int(c))
            order = rows[rng.permutation(rows.size)]
        else:
            sign = -1 if keep == "hard" else 1
            order = sorted(rows, key=lambda r: (sign * distance[r], r))
        for j_pos, j in enumerate(order):
            for i in order[:j_pos]:
                if float(x[i] @ x[j]) > 1 - eps:
                    out[j] = True
    return out


def brute_force_scores(x, clusters, distance, keep, seed=0):
    x = np.asarray(x, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    score = np.empty(len(x))
    for c in np.unique(clusters):
        rows = np.flatnonzero(clusters == c)
        order = [r for _, r in sorted(((-distance[r] if keep == "hard" else distance[r]), r)
                                      for r in rows)]
        for j_pos, j in enumerate(order):
            sims = [float(x[i] @ x[j]) for i in order[:j_pos]]
            score[j] = 1 - max(sims) if sims else 2.0
    return score


def planted(n_clusters=4, per=30, dim=16, seed=0):
    """Clusters with exact and near duplicates planted inside them."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, dim)) * 3
    x, clusters = [], []
    for c in range(n_clusters):
        pts = centers[c] + rng.standard_normal((per, dim))
        pts[1] = pts[0]  # exact duplicate
        pts[3] = pts[2] + 1e-3 * rng.standard_normal(dim)  # near duplicate
        pts[5] = pts[4] + 5e-2 * rng.standard_normal(dim)
        x.append(pts)
        clusters += [c] * per
    x = np.concatenate(x).astype(np.float32)
    clusters = np.array(clusters)
    cent = np.stack([x[clusters == c].mean(axis=0) for c in range(n_clusters)])
    cn = cent / np.linalg.norm(cent, axis=1, keepdims=True)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    distance = 1 - np.einsum("ij,ij->i", xn, cn[clusters])
    return x, clusters, distance


def test_hand_computed_cluster():
    # Keep order given directly: 0 deg, 10 deg, 90 deg, 12 deg.
    x = np.array([unit(0), unit(10), unit(90), unit(12)], dtype=np.float32)
    score = dedup.semdedup_cluster(x, np.array([0, 1, 2, 3]))
    expected = [2.0, 1 - np.cos(np.deg2rad(10)), 1 - np.cos(np.deg2rad(80)),
                1 - np.cos(np.deg2rad(2))]
    np.testing.assert_allclose(score, expected, atol=1e-6)
    # Another order: the 12-degree item first, then 0 degrees is 12 away from it.
    score = dedup.semdedup_cluster(x, np.array([3, 0, 1, 2]))
    expected = [1 - np.cos(np.deg2rad(12)), 1 - np.cos(np.deg2rad(2)),
                1 - np.cos(np.deg2rad(78)), 2.0]
    np.testing.assert_allclose(score, expected, atol=1e-6)


def test_earlier_removed_items_still_count():
    # Chain 0 -> 8 -> 16 degrees: at eps = 1 - cos(10 deg) the middle item is removed for
    # its 8-degree neighbour, and the last one for the (removed) middle one, as in SemDeDup.
    x = np.array([unit(0), unit(8), unit(16)], dtype=np.float32)
    score = dedup.semdedup_cluster(x, np.arange(3))
    eps = 1 - np.cos(np.deg2rad(10))
    assert dedup.removed(score, eps).tolist() == [False, True, True]


@pytest.mark.parametrize("keep", ["hard", "easy"])
def test_scores_match_brute_force(keep):
    x, clusters, distance = planted()
    got = semdedup_reference(x, clusters, distance, keep=keep)
    np.testing.assert_allclose(got, brute_force_scores(x, clusters, distance, keep), atol=2e-6)


@pytest.mark.parametrize("keep", ["hard", "easy", "random"])
def test_removed_sets_match_brute_force(keep):
    x, clusters, distance = planted(seed=1)
    score = semdedup_reference(x, clusters, distance, keep=keep, seed=7)
    # Thresholds between distinct scores (far from any pair's distance), plus SemDeDup's usual ones.
    s = np.unique(score)
    mids = (s[:-1] + s[1:]) / 2
    gaps = s[1:] - s[:-1]
    eps_values = list(mids[gaps > 1e-4][:: max(1, len(mids) // 12)]) + [0.001, 0.01]
    for eps in eps_values:
        expected = brute_force_removed(x, clusters, distance, keep, eps, seed=7)
        np.testing.assert_array_equal(dedup.removed(score, eps), expected, err_msg=f"eps={eps}")


def test_planted_duplicates_removed_hard_keeps_furthest():
    x, clusters, distance = planted(seed=2)
    score = semdedup_reference(x, clusters, distance, keep="hard")
    gone = dedup.removed(score, 1e-5)
    for c in range(4):
        base = 30 * c
        # Of the exact pair (0, 1) and the near pair (2, 3), one each is removed: the one
        # nearer the centroid (identical distances: the higher row).
        assert gone[base] + gone[base + 1] == 1
        assert gone[base + 2] + gone[base + 3] == 1
        assert gone[base + 1]
        nearer = base + 2 if distance[base + 2] < distance[base + 3] else base + 3
        assert gone[nearer]
    assert gone.sum() == 8  # nothing else is that close


def test_block_size_does_not_change_scores():
    x, clusters, distance = planted(n_clusters=1, per=101, seed=3)
    xn = dedup.normalized(x)
    order = dedup.keep_order(distance, "hard")
    whole = dedup.semdedup_cluster(xn, order)
    assert dedup.block_rows(101, 4 * 101 * 7) == 7
    assert dedup.block_rows(101, 1) == 1
    for budget in (1, 4 * 101 * 7):
        np.testing.assert_allclose(dedup.semdedup_cluster(xn, order, block_bytes=budget), whole,
                                   rtol=0, atol=1e-6)


def test_removal_grows_with_eps_and_counts():
    x, clusters, distance = planted(seed=4)
    score = semdedup_reference(x, clusters, distance)
    prev = np.zeros(len(x), dtype=bool)
    for eps in (1e-4, 1e-2, 0.1, 0.5, 1.0):
        gone = dedup.removed(score, eps)
        assert not (prev & ~gone).any()
        prev = gone
    rows = dedup.duplicate_counts(score, eps=(1e-5, 2.0), clusters=clusters)
    assert rows[0] == {"eps": 1e-5, "removed": 8, "kept": 112, "fraction": 8 / 120,
                       "clusters_affected": 4}
    # eps = 2 removes everything but each cluster's first item.
    assert rows[1]["removed"] == 120 - 4


def test_keep_orders():
    d = np.array([0.3, 0.1, 0.3, 0.5])
    assert dedup.keep_order(d, "hard").tolist() == [3, 0, 2, 1]
    assert dedup.keep_order(d, "easy").tolist() == [1, 0, 2, 3]
    a = dedup.keep_order(np.zeros(50), "random", seed=3, cluster=5)
    assert sorted(a.tolist()) == list(range(50))
    np.testing.assert_array_equal(a, dedup.keep_order(np.zeros(50), "random", seed=3, cluster=5))
    assert not np.array_equal(a, dedup.keep_order(np.zeros(50), "random", seed=3, cluster=6))
    assert not np.array_equal(a, dedup.keep_order(np.zeros(50), "random", seed=4, cluster=5))


def test_random_order_per_cluster_is_independent_of_other_clusters():
    x, clusters, distance = planted(seed=5)
    full = semdedup_reference(x, clusters, distance, keep="random", seed=11)
    rows = np.flatnonzero(clusters == 2)
    alone = semdedup_reference(x[rows], clusters[rows], distance[rows], keep="random", seed=11)
    np.testing.assert_array_equal(full[rows], alone)


def test_errors():
    with pytest.raises(PrunekitError, match="all zero"):
        dedup.normalized(np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(PrunekitError, match="keep order 'soft'"):
        dedup.keep_order(np.zeros(3), "soft")
    with pytest.raises(PrunekitError, match="permutation"):
        dedup.semdedup_cluster(np.eye(3, dtype=np.float32), np.array([0, 0, 1]))
    for bad in (0, -0.1, 2.5, "x"):
        with pytest.raises(PrunekitError, match=r"eps must"):
            dedup.removed(np.zeros(3), bad)


# ----------------------------------------------------------------------------- method and CLI


def test_engines_give_identical_bytes(monkeypatch):
    from prunekit.compute import grouping
    from prunekit.runtime.engine import LocalEngine

    monkeypatch.setattr(grouping, "BATCH_ROWS", 30)  # one cluster per task
    x, _, _ = planted(seed=6)
    scores = []
    for workers in (1, 2):
        with pk.runtime(engine=LocalEngine(workers)):
            scores.append(pk.score(x, "semdedup", k=4, seed=1, progress=False).score)
    assert scores[0].tobytes() == scores[1].tobytes()


def test_method_scores_match_brute_force_on_its_own_clusters():

    x, _, _ = planted(seed=7)
    for keep in ("hard", "easy"):
        sc = pk.score(x, "semdedup", k=4, seed=0, keep=keep, progress=False)
        km = pk.score(x, "kmeans", k=4, seed=0, progress=False)
        np.testing.assert_array_equal(sc.cluster, km.cluster)  # same clustering as kmeans
        ref = brute_force_scores(x, sc.cluster, sc.centroid_distance, keep)
        np.testing.assert_allclose(sc.score, ref, atol=2e-6)
        assert sc.params["keep"] == keep and sc.params["duplicates"][0]["eps"] == 0.001


def test_within_uses_the_kmeans_clusters_and_distances():

    x, _, _ = planted(seed=8)
    km = pk.score(x, "kmeans", k=3, seed=1, progress=False)
    sc = pk.score(x, "semdedup", within=km, progress=False)
    np.testing.assert_array_equal(sc.cluster, km.cluster)
    ref = brute_force_scores(x, km.cluster, km.centroid_distance, "hard")
    np.testing.assert_allclose(sc.score, ref, atol=2e-6)


def test_select_eps_equals_semdedup_and_pr_removes_most_redundant_first():

    x, _, _ = planted(seed=9)
    sc = pk.score(x, "semdedup", k=4, seed=0, progress=False)
    expected_removed = brute_force_removed(x, sc.cluster, sc.centroid_distance, "hard", 0.02)
    sel = dedup.select_eps(sc, 0.02)
    np.testing.assert_array_equal(sel.indices, np.flatnonzero(~expected_removed))
    assert sel.params["removed"] == expected_removed.sum() and sel.method == "semdedup"
    # --pr removing as many rows removes the same ones (no ties among those scores).
    by_pr = pk.select(sc, pr=expected_removed.sum() / len(x))
    np.testing.assert_array_equal(by_pr.indices, sel.indices)
    km = pk.score(x, "kmeans", k=4, seed=0, progress=False)
    with pytest.raises(PrunekitError, match="method 'kmeans'"):
        dedup.select_eps(km, 0.02)
    with pytest.raises(PrunekitError, match="removes every row"):
        dedup.select_eps(pk.Scores(score=np.full(3, 0.5), method="semdedup", n_total=3), 0.9)


def test_cli_score_and_select_eps(tmp_path, monkeypatch):
    import h5py
    from click.testing import CliRunner

    from prunekit.cli import main

    x, _, _ = planted(seed=10)
    with h5py.File(tmp_path / "emb.h5", "w") as f:
        f["embeddings"] = x
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(main, ["score", "emb.h5", "-m", "semdedup", "--k", "4", "--keep", "easy",
                               "-o", "sd.h5", "--quiet"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("sd.h5: semdedup scored 120 of 120 rows (near-duplicates removed "
                                 "at eps 0.001: ")
    res = runner.invoke(main, ["select", "sd.h5", "--eps", "1e-5", "-o", "sel.h5"])
    assert res.exit_code == 0, res.output
    assert res.output == "sel.h5: kept 112 of 120 scored rows (semdedup eps 1e-05: 8 near-duplicates removed)\n"
    with h5py.File("sel.h5") as f:
        assert f["indices"].shape == (112,) and f.attrs["method"] == "semdedup"
    for args, msg in ((["--eps", "0.1", "--pr", "0.5"], "threshold alone"),
                      (["--eps", "3"], "--eps must lie in"),
                      (["--eps", "0.1", "--balance", "clusters"], "threshold alone")):
        res = runner.invoke(main, ["select", "sd.h5", "-o", "bad.h5", *args])
        assert res.exit_code == 2 and msg in res.output, res.output
        assert not (tmp_path / "bad.h5").exists()
    res = runner.invoke(main, ["score", "emb.h5", "-m", "semdedup", "--keep", "soft", "-o", "b.h5"])
    assert res.exit_code == 2 and not (tmp_path / "b.h5").exists()


def test_inspect_reports_duplicate_counts(tmp_path):
    from prunekit.selection.inspection import inspect, render

    x, _, _ = planted(seed=11)
    sc = pk.score(x, "semdedup", k=4, seed=0, progress=False)
    sel = pk.select(sc, pr=0.5)
    report = inspect(sel, scores=sc)
    rows = {r["eps"]: r for r in report["duplicates"]}
    assert list(rows) == [0.001, 0.01, 0.05, 0.1]
    for eps, r in rows.items():
        gone = sc.score < eps
        assert r["removed"] == gone.sum() and r["in_selection"] == gone[sel.indices].sum()
    # Three planted pairs per cluster (the 5e-2 one too: distance ~1e-4); pr 0.5 drops them.
    assert rows[0.001]["removed"] == 12 and rows[0.001]["in_selection"] == 0
    text = render(report)
    assert "near-duplicates (semdedup" in text and "eps 0.001  removes 12 (10.00 %)" in text


def test_a_cluster_beyond_the_memory_budget_is_refused(monkeypatch):

    x, _, _ = planted(seed=12)  # 120 x 16: one cluster of 120 rows holds 2 x 7680 bytes
    # ... and its similarity block, 120 x 120 float32 and a one-byte mask: 72 000 bytes.
    # (k-means before it holds 120 x (16 x 8 + 24) + 16 x 8 = 18 368 bytes: 32K is enough.)
    monkeypatch.setenv("PRUNEKIT_MEMORY", "32K")
    with pytest.raises(PrunekitError, match=r"largest cluster has 120 rows: .* \(15.0 KiB\) and "
                       r"a similarity block \(70.3 KiB\), 85.3 KiB in all, more than the memory "
                       r"budget of 32.0 KiB. .* larger --k"):
        pk.score(x, "semdedup", k=1, progress=False)
    monkeypatch.setenv("PRUNEKIT_MEMORY", str(2 * 7680 + 72_000))  # exactly enough
    sc = pk.score(x, "semdedup", k=1, progress=False)
    monkeypatch.delenv("PRUNEKIT_MEMORY")
    # The blocks follow the data, not the budget: the same bytes as with a generous budget.
    assert sc.score.tobytes() == pk.score(x, "semdedup", k=1, progress=False).score.tobytes()


def test_grouped_path_equals_in_memory_and_mean_order_without_distances(monkeypatch):
    from prunekit.compute import grouping

    monkeypatch.setattr(grouping, "BATCH_ROWS", 50)  # several clusters per task, several tasks
    x, _, _ = planted(n_clusters=6, per=25, seed=13)
    sc = pk.score(x, "semdedup", k=6, seed=2, progress=False)
    mem = semdedup_reference(x, sc.cluster, sc.centroid_distance)
    assert sc.score.tobytes() == mem.tobytes()
    # Clusters from a file without distances: the items are ordered by their cosine
    # distance to the normalised cluster mean.
    bare = pk.Scores(score=np.zeros(len(x)), method="kmeans", n_total=len(x), cluster=sc.cluster,
                     source_fingerprint=sc.source_fingerprint)
    got = pk.score(x, "semdedup", within=bare, keep="easy", progress=False)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    means = np.stack([xn[sc.cluster == c].mean(axis=0) for c in range(6)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    dist = 1 - np.einsum("ij,ij->i", xn, means[sc.cluster])
    np.testing.assert_allclose(got.score, brute_force_scores(x, sc.cluster, dist, "easy"), atol=2e-6)


def test_interrupted_cli_run_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    import h5py
    from click.testing import CliRunner

    from prunekit.cli import main
    from prunekit.compute import grouping
    from prunekit.methods import semdedup as method

    monkeypatch.setattr(grouping, "BATCH_ROWS", 30)  # one cluster of 30 per task
    x, _, _ = planted(seed=14)
    with h5py.File(tmp_path / "emb.h5", "w") as f:
        f["embeddings"] = x
    runner = CliRunner()
    assert runner.invoke(main, ["score", str(tmp_path / "emb.h5"), "-m", "kmeans", "--k", "4",
                                "-o", str(tmp_path / "km.h5"), "-q"]).exit_code == 0
    args = ["score", str(tmp_path / "emb.h5"), "-m", "semdedup", "--within", str(tmp_path / "km.h5"),
            "-q"]
    assert runner.invoke(main, [*args, "-o", str(tmp_path / "ref.h5")]).exit_code == 0
    with killed_after(1 + 1 + 1 + 2):  # cluster ids, grouping (1 chunk, 1 bucket), 2 of 4 clusters
        r = runner.invoke(main, [*args, "-o", str(tmp_path / "out.h5")])
    assert isinstance(r.exception, InjectedFailure) and not (tmp_path / "out.h5").exists()
    calls = []
    task = method._batch_task
    monkeypatch.setattr(method, "_batch_task", lambda s, item: (calls.append(item), task(s, item))[1])
    r = runner.invoke(main, [*args, "-o", str(tmp_path / "out.h5"), "--resume"])
    assert r.exit_code == 0, r.output
    assert len(calls) == 2  # only the clusters not recorded before the failure
    with h5py.File(tmp_path / "ref.h5") as a, h5py.File(tmp_path / "out.h5") as b:
        assert a["score"][()].tobytes() == b["score"][()].tobytes()


@pytest.mark.slow
def test_ray_engine_gives_the_local_bytes():
    ray = pytest.importorskip("ray")
    from prunekit.runtime.engine import LocalEngine, RayEngine

    x, _, _ = planted(seed=15)
    km = pk.score(x, "kmeans", k=4, seed=0, progress=False)
    with pk.runtime(engine=LocalEngine(1)):
        local = pk.score(x, "semdedup", within=km, keep="random", seed=5, progress=False)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with pk.runtime(engine=RayEngine(2)):
            remote = pk.score(x, "semdedup", within=km, keep="random", seed=5, progress=False)
    finally:
        if started:
            ray.shutdown()
    assert remote.score.tobytes() == local.score.tobytes()


def test_zero_rows_are_named_by_position():

    x, _, _ = planted(seed=16)
    x[[7, 64]] = 0
    with pytest.raises(PrunekitError, match="rows 7, 64 are all zero"):  # one cluster: both zero
        pk.score(x, "semdedup", k=4, progress=False)
