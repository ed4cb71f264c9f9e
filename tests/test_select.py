"""Turning scores into selections: top-k, invert, ties, NaN rows, clusters, labels, drops."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from quota_refs import ref_balanced, ref_proportional

from prunekit import PrunekitError, Scores, select

NAN = np.nan


def make(score, cluster=None, labels=None, ids=None, order=None) -> Scores:
    score = np.asarray(score, dtype=np.float64)
    return Scores(
        score=score,
        method="test",
        n_total=score.size,
        cluster=None if cluster is None else np.asarray(cluster, dtype=np.int64),
        labels=None if labels is None else np.asarray(labels, dtype=np.int64),
        ids=None if ids is None else np.asarray(ids),
        order=order,
        source="hand-made",
        source_fingerprint="abc123",
    )


def ref_cluster_select(score, cluster, quotas_by_id, invert=False):
    """Brute force: per cluster, sort by (score desc | asc, index) and take the quota."""
    kept = []
    for c, quota in quotas_by_id.items():
        members = [i for i in range(len(score)) if cluster[i] == c and not np.isnan(score[i])]
        sign = 1 if invert else -1
        members.sort(key=lambda i: (sign * score[i], i))
        kept += members[:quota]
    return sorted(kept)


def test_top_k_and_invert():
    s = make([0.1, 0.9, 0.5, 0.7])
    assert select(s, 0.5).indices.tolist() == [1, 3]
    assert select(s, 0.5, invert=True).indices.tolist() == [0, 2]
    assert select(s, 0.0).indices.tolist() == [0, 1, 2, 3]
    assert select(s, 0.99).indices.tolist() == [1]  # at least one row


def test_ties_go_to_the_lowest_index():
    s = make([1.0, 1.0, 1.0, 1.0, 0.0])
    assert select(s, 0.6).indices.tolist() == [0, 1]
    s = make([0.0, 2.0, 0.0, 2.0, 0.0, 1.0])
    assert select(s, 0.5).indices.tolist() == [1, 3, 5]
    assert select(s, 0.5, invert=True).indices.tolist() == [0, 2, 4]
    assert select(s, 1 / 3, invert=True).indices.tolist() == [0, 2, 4, 5]
    # -0.0 and 0.0 compare equal: a tie, not an order
    s = make([0.0, -0.0, 0.0, -0.0])
    assert select(s, 0.5).indices.tolist() == [0, 1]
    assert select(make([0.0, -0.0, 0.0, -0.0], cluster=[0, 0, 0, 0]), 0.5, balance="clusters").indices.tolist() == [0, 1]


def test_nan_rows_are_never_picked():
    s = make([NAN, 5.0, NAN, 1.0, 3.0], cluster=[-1, 0, -1, 1, 1])
    sel = select(s, 0.0)
    assert sel.indices.tolist() == [1, 3, 4]  # kept = round(1.0 * 3 eligible)
    assert select(s, 0.34, invert=True).indices.tolist() == [3, 4]  # round(0.66 * 3) = 2
    assert sel.n_total == 5 and sel.params["n_eligible"] == 3
    assert select(s, 0.0, balance="clusters").indices.tolist() == [1, 3, 4]
    with pytest.raises(PrunekitError, match="no eligible"):
        select(make([NAN, NAN]), 0.5)


def test_greedy_order_is_respected():
    # herding / k-center store score = N - position, unpicked rows -inf
    n, order = 10, np.array([7, 2, 9, 0])
    score = np.full(n, -np.inf)
    score[order] = n - np.arange(order.size)
    s = make(score, order=order)
    assert select(s, 0.7).indices.tolist() == [2, 7, 9]  # the first three picks
    assert select(s, 0.6).indices.tolist() == [0, 2, 7, 9]
    # inverted: the last picks first, never the unpicked rows
    assert select(s, 0.8, invert=True).indices.tolist() == [0, 9]
    assert select(s, 0.6, invert=True).indices.tolist() == [0, 2, 7, 9]


def test_keeping_more_than_the_greedy_picks_is_refused_unless_filled_at_random():
    n, order = 10, np.array([7, 2, 9, 0])
    score = np.full(n, -np.inf)
    score[order] = n - np.arange(order.size)
    s = make(score, order=order)
    for invert in (False, True):
        with pytest.raises(PrunekitError, match=r"picked 4 of 10 rows, but this selection keeps 5, "
                                                r"1 of them never picked.*pr >= 0\.6"):
            select(s, 0.5, invert=invert)
    filled = select(s, 0.3, fill="random", seed=5)
    assert set(order) <= set(filled.indices.tolist()) and filled.n_kept == 7
    assert filled.params["n_filled"] == 3 and filled.params["fill"] == "random"
    # the filled rows are a seeded random draw, not the lowest indices
    rng_rows = [select(s, 0.3, fill="random", seed=seed).indices.tolist() for seed in range(6)]
    assert rng_rows[0] == select(s, 0.3, fill="random", seed=0).indices.tolist()
    assert len({tuple(r) for r in rng_rows}) > 1
    assert all(sorted(set(r) - set(order.tolist())) for r in rng_rows)
    # per cluster: a cluster whose quota exceeds its picks is refused as well
    cl = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    sc = make(score, cluster=cl, order=order)  # picks: 0, 2 in cluster 0; 7, 9 in cluster 1
    assert select(sc, 0.6, balance="clusters").indices.tolist() == [0, 2, 7, 9]
    with pytest.raises(PrunekitError, match="keep fewer rows"):
        select(sc, 0.5, balance="clusters")
    with pytest.raises(PrunekitError, match="unknown fill"):
        select(s, 0.5, fill="lowest")


def test_infinite_scores_order_correctly():
    s = make([np.inf, 0.0, -np.inf, 1e300, -1e300])
    assert select(s, 0.4).indices.tolist() == [0, 1, 3]
    assert select(s, 0.4, invert=True).indices.tolist() == [1, 2, 4]


def test_balanced_clusters_hand_made():
    # cluster sizes (2, 10, 5, 7), kept 15 -> quotas (2, 5, 4, 4), shuffled rows
    rng = np.random.default_rng(3)
    cluster = rng.permutation(np.repeat([0, 1, 2, 3], [2, 10, 5, 7]))
    score = rng.standard_normal(cluster.size)
    s = make(score, cluster=cluster)
    pr = 1 - 15 / 24
    sel = select(s, pr, balance="clusters")
    assert np.bincount(cluster[sel.indices], minlength=4).tolist() == [2, 5, 4, 4]
    assert sel.indices.tolist() == ref_cluster_select(score, cluster, {0: 2, 1: 5, 2: 4, 3: 4})
    inv = select(s, pr, balance="clusters", invert=True)
    assert inv.indices.tolist() == ref_cluster_select(score, cluster, {0: 2, 1: 5, 2: 4, 3: 4}, True)


def test_cluster_ids_need_not_be_contiguous():
    # ids 40, 7, 900 with sizes 3, 3, 3; kept 4 -> level 1 + one extra to the LOWEST id (7)
    cluster = np.array([40, 40, 40, 7, 7, 7, 900, 900, 900])
    s = make(np.arange(9, dtype=float), cluster=cluster)
    sel = select(s, 1 - 4 / 9, balance="clusters")
    assert sel.indices.tolist() == [2, 4, 5, 8]
    # negative and huge ids keep the same order of ids: 7 -> -5, 40 -> 10**12, 900 -> 10**15
    far = make(np.arange(9, dtype=float), cluster=np.repeat([10**12, -5, 10**15], 3))
    assert select(far, 1 - 4 / 9, balance="clusters").indices.tolist() == [2, 4, 5, 8]


def test_proportional():
    # sizes (2, 10, 5, 7), kept 12 -> (1, 5, 2, 4)
    cluster = np.repeat([0, 1, 2, 3], [2, 10, 5, 7])
    score = -np.arange(24, dtype=float)  # earlier rows first inside each cluster
    sel = select(make(score, cluster=cluster), 0.5, balance="proportional")
    assert sel.indices.tolist() == [0, 2, 3, 4, 5, 6, 12, 13, 17, 18, 19, 20]


def test_labels_from_scores_or_argument():
    labels = np.array([0, 0, 0, 0, 1, 1])
    score = np.array([6.0, 5, 4, 3, 1, 0])
    assert select(make(score), 0.5).indices.tolist() == [0, 1, 2]
    balanced = [0, 1, 4]  # level 1 each, the extra to the larger label (0)
    assert select(make(score, labels=labels), 0.5, balance="labels").indices.tolist() == balanced
    got = select(make(score), 0.5, balance="labels", labels=labels)
    assert got.indices.tolist() == balanced and got.params["group_by"] == "label"
    with pytest.raises(PrunekitError, match="--labels-from"):
        select(make(score), 0.5, balance="labels")
    with pytest.raises(PrunekitError, match="one per row"):
        select(make(score), 0.5, balance="labels", labels=labels[:3])


def test_missing_cluster_is_explained():
    for kwargs in ({"balance": "clusters"}, {"balance": "proportional"}, {"drop_clusters": [1]}):
        with pytest.raises(PrunekitError, match="kmeans"):
            select(make([1.0, 2.0]), 0.5, **kwargs)


def test_drop_clusters_by_id():
    cluster = np.repeat([0, 1, 2], [4, 4, 2])
    score = np.arange(10, dtype=float)
    s = make(score, cluster=cluster)
    sel = select(s, 0.5, drop_clusters=[1])  # kept round(0.5 * 10) = 5 of the 6 remaining
    assert sel.indices.tolist() == [1, 2, 3, 8, 9]
    assert sel.params["dropped"] == [1]
    # kept is capped by what remains: 9 wanted, 6 left
    assert select(s, 0.1, drop_clusters=[1]).indices.tolist() == [0, 1, 2, 3, 8, 9]
    bal = select(s, 0.5, balance="clusters", drop_clusters=[0])  # sizes (4, 2) kept 5 -> (3, 2)
    assert bal.indices.tolist() == [5, 6, 7, 8, 9]
    with pytest.raises(PrunekitError, match="cannot drop clusters 5"):
        select(s, 0.5, drop_clusters=[5])
    with pytest.raises(PrunekitError, match="every row"):
        select(s, 0.5, drop_clusters=[0, 1, 2])
    with pytest.raises(PrunekitError, match="fraction"):
        select(s, 0.5, drop_clusters=1.5)
    with pytest.raises(PrunekitError, match="list"):
        select(s, 0.5, drop_clusters=1)


def test_drop_a_fraction_of_clusters_is_seeded():
    cluster = np.repeat(np.arange(8), 5)
    s = make(np.arange(40, dtype=float), cluster=cluster)
    a = select(s, 0.0, drop_clusters=0.25, seed=1)
    b = select(s, 0.0, drop_clusters=0.25, seed=1)
    assert a.params["dropped"] == b.params["dropped"] and len(a.params["dropped"]) == 2
    assert np.array_equal(a.indices, b.indices)
    assert not np.isin(cluster[a.indices], a.params["dropped"]).any()
    assert a.n_kept == 30
    draws = {tuple(select(s, 0.0, drop_clusters=0.25, seed=k).params["dropped"]) for k in range(10)}
    assert len(draws) > 1


def test_drop_labels_under_label_balance():
    labels = np.array([0, 0, 1, 1, 2, 2])
    s = make(np.arange(6, dtype=float), labels=labels)
    sel = select(s, 0.0, balance="labels", drop_clusters=[1])
    assert sel.indices.tolist() == [0, 1, 4, 5]


def test_oversampling():
    cluster = np.array([0, 1, 1, 1, 2, 2])
    score = np.array([0.0, 1.0, 3.0, 2.0, 5.0, 4.0])
    sel = select(make(score, cluster=cluster), 0.0, balance="clusters", oversample=True)
    assert sel.indices.tolist() == list(range(6))
    # every cluster reaches 3 draws; cluster 2 spreads 3 over 2 items, the better one twice
    assert sel.counts.tolist() == [3, 1, 1, 1, 2, 1]
    assert np.bincount(cluster[sel.repeated_indices()]).tolist() == [3, 3, 3]
    with pytest.raises(PrunekitError, match="pr = 0"):
        select(make(score, cluster=cluster), 0.5, oversample=True)
    with pytest.raises(PrunekitError, match="kmeans"):
        select(make(score), 0.0, oversample=True)


@pytest.mark.parametrize("pr", [-0.1, 1.0, 2.0])
def test_pr_out_of_range(pr):
    with pytest.raises(PrunekitError, match="outside"):
        select(make([1.0, 2.0]), pr)


def test_unknown_balance():
    with pytest.raises(PrunekitError, match="unknown balance"):
        select(make([1.0, 2.0]), 0.5, balance="cluster")


def test_provenance_fields_are_copied():
    s = make([3.0, 1.0, 2.0], ids=np.array(["a", "b", "c"], dtype=object))
    sel = select(s, 1 / 3, seed=7)
    assert sel.indices.tolist() == [0, 2]
    assert sel.ids.tolist() == ["a", "c"]
    assert sel.source_fingerprint == "abc123" and sel.method == "test" and sel.seed == 7
    assert sel.pr == pytest.approx(1 / 3) and sel.params["balance"] == "none"


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 120),
    k=st.integers(1, 6),
    pr=st.floats(0.0, 0.95),
    seed=st.integers(0, 1000),
    invert=st.booleans(),
    balance=st.sampled_from(["none", "clusters", "proportional"]),
)
def test_select_matches_brute_force(n, k, pr, seed, invert, balance):
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, k, n)
    score = rng.integers(0, 5, n).astype(float)  # many ties
    score[rng.random(n) < 0.1] = NAN
    s = make(score, cluster=np.where(np.isnan(score), -1, cluster))
    elig = ~np.isnan(score)
    if not elig.any():
        return
    kept = max(1, round((1 - pr) * int(elig.sum())))
    sel = select(s, pr, balance=balance, invert=invert)
    assert sel.n_kept == kept and not np.isnan(score[sel.indices]).any()
    if balance == "none":
        sign = 1 if invert else -1
        expected = sorted(sorted(np.flatnonzero(elig), key=lambda i: (sign * score[i], i))[:kept])
        assert sel.indices.tolist() == expected
    else:
        got = np.bincount(cluster[sel.indices], minlength=k)
        present = np.unique(cluster[elig])
        sizes = np.bincount(cluster[elig], minlength=k)[present].tolist()
        ref = ref_balanced if balance == "clusters" else ref_proportional
        assert got[present].tolist() == ref(sizes, kept)
        quota = {c: int(got[c]) for c in range(k)}
        assert sel.indices.tolist() == ref_cluster_select(score, cluster, quota, invert)


def test_many_groups_path_agrees_with_the_per_group_loop(monkeypatch):
    # above LOOP_GROUPS clusters, one global ranking sort replaces the loop over groups
    rng = np.random.default_rng(11)
    cases = []
    for _ in range(12):
        n = int(rng.integers(20, 200))
        cluster = rng.integers(0, int(rng.integers(1, 12)), n) * 3 + 1
        score = rng.integers(0, 4, n).astype(float)
        score[rng.random(n) < 0.1] = NAN
        s = make(score, cluster=cluster)
        for kwargs in ({"balance": "clusters"}, {"balance": "proportional", "invert": True},
                       {"balance": "clusters", "oversample": True}):
            pr = 0.0 if kwargs.get("oversample") else float(rng.uniform(0, 0.9))
            cases.append((s, pr, kwargs))
    loop = [select(s, pr, **kw) for s, pr, kw in cases]
    monkeypatch.setattr("prunekit.selection.subset.LOOP_GROUPS", 0)
    for (s, pr, kw), expected in zip(cases, loop, strict=True):
        got = select(s, pr, **kw)
        assert got.indices.tolist() == expected.indices.tolist()
        if kw.get("oversample"):
            assert got.counts.tolist() == expected.counts.tolist()


def test_resolve_rows_refuses_integer_ids_from_a_data_set_of_another_size():
    from prunekit.selection.subset import Selection, resolve_rows

    sel = Selection(indices=[0, 3], n_total=7, pr=0.5, ids=np.array([0, 3]))
    with pytest.raises(PrunekitError, match="made for 7 rows but target has 10"):
        resolve_rows(sel, 10, np.arange(10))
    # String ids (file names) may select from a store of another size.
    named = Selection(indices=[0, 3], n_total=7, pr=0.5, ids=np.array(["a", "d"], dtype=object))
    rows = resolve_rows(named, 4, np.array(["d", "c", "b", "a"], dtype=object))
    assert rows.tolist() == [3, 0]
    # Same size, integer ids: matched by id, not position.
    assert resolve_rows(sel, 7, np.array([6, 5, 4, 3, 2, 1, 0])).tolist() == [6, 3]


def test_id_positions_matches_a_brute_force_lookup():
    from prunekit.io.ids import id_positions

    rng = np.random.default_rng(4)
    for kind in ("int", "str"):
        ids = rng.permutation(1000)[:200] * 7 - 300
        wanted = rng.choice(np.concatenate([ids, [10**12, -5]]), size=50)
        if kind == "str":
            ids = np.array([f"img{v}.png" for v in ids], dtype=object)
            wanted = np.array([f"img{v}.png" for v in wanted], dtype=object)
        lookup = {v: i for i, v in enumerate(ids.tolist())}
        pos, found = id_positions(wanted, ids)
        assert found.tolist() == [v in lookup for v in wanted.tolist()]
        assert pos[found].tolist() == [lookup[v] for v in wanted.tolist() if v in lookup]
    # an integer id never matches the string of its digits
    pos, found = id_positions(np.array([5]), np.array(["5"], dtype=object))
    assert not found.any()
    assert id_positions(np.array([], dtype=np.int64), np.array([1]))[1].size == 0
