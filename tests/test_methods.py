"""Herding, k-center and loss import against brute-force references and hand-made cases."""

from __future__ import annotations

import itertools
import json

import h5py
import numpy as np
import pytest

import prunekit as pk
from prunekit.compute.kernels import RandomFourierFeatures, median_sigma, rbf
from prunekit.methods import herding as herding_mod
from prunekit.methods.greedy import interleave, order_scores


def gauss(n, d, seed):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def mmd2(k_full: np.ndarray, subset: list[int]) -> float:
    """Exact MMD^2 between the subset's and the full set's empirical measures."""
    s = np.asarray(subset)
    return float(k_full[np.ix_(s, s)].mean() - 2.0 * k_full[s].mean() + k_full.mean())


# ----------------------------------------------------------------------------- herding


def brute_force_herding(x: np.ndarray, sigma: float, m: int) -> list[int]:
    """Greedy MMD: add the item whose addition gives the smallest MMD^2 to the full set."""
    k_full = rbf(x, x, sigma)
    picked: list[int] = []
    for _ in range(m):
        cands = [i for i in range(len(x)) if i not in picked]
        vals = [mmd2(k_full, picked + [i]) for i in cands]
        picked.append(cands[int(np.argmin(vals))])  # argmin: first (lowest index) on ties
    return picked


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_herding_equals_greedy_mmd(seed):
    x = gauss(40, 3, seed)
    emb = pk.Embeddings.from_array(x)
    s = pk.score(emb, "herding", kernel="exact", sigma=1.3, progress=False)
    ref = brute_force_herding(x, 1.3, 40)
    np.testing.assert_array_equal(s.order, ref)
    np.testing.assert_array_equal(s.score[s.order], 40 - np.arange(40))


def test_exact_herding_ties_go_to_lowest_index():
    x = np.zeros((5, 2), np.float32)  # all identical: every step is a tie
    s = pk.score(pk.Embeddings.from_array(x), "herding", kernel="exact", progress=False)
    np.testing.assert_array_equal(s.order, [0, 1, 2, 3, 4])


def test_rff_kernel_approaches_exact_as_dim_grows():
    x = gauss(60, 4, 2)
    sigma = median_sigma(x)
    exact = rbf(x, x, sigma)
    err = {}
    for dim in (64, 4096):
        z = RandomFourierFeatures(4, sigma, dim, seed=0).transform(x).astype(np.float64)
        err[dim] = np.abs(z @ z.T - exact).mean()
    assert err[4096] < 0.35 * err[64]  # Monte-Carlo error ~ 1/sqrt(D): 8x in expectation


def test_rff_herding_with_many_features_tracks_exact():
    x = gauss(80, 3, 3)
    emb = pk.Embeddings.from_array(x)
    exact = pk.score(emb, "herding", kernel="exact", sigma=1.5, max_keep=10, progress=False)
    rff = pk.score(emb, "herding", sigma=1.5, rff_dim=16384, max_keep=10, progress=False)
    k_full = rbf(x, x, 1.5)
    assert mmd2(k_full, list(rff.order)) < 1.5 * mmd2(k_full, list(exact.order))


@pytest.mark.parametrize("kernel", ["exact", "rff"])
def test_herding_mmd_below_random_subsets(kernel):
    x = gauss(300, 5, 4)
    sigma = median_sigma(x)
    k_full = rbf(x, x, sigma)
    s = pk.score(pk.Embeddings.from_array(x), "herding", kernel=kernel, max_keep=30, progress=False)
    herd = mmd2(k_full, list(s.order))
    rng = np.random.default_rng(0)
    randoms = [mmd2(k_full, list(rng.choice(300, 30, replace=False))) for _ in range(50)]
    assert herd < min(randoms)


def test_rff_herding_is_seeded(tmp_path):
    emb = pk.Embeddings.from_array(gauss(200, 6, 11))
    runs = [pk.score(emb, "herding", max_keep=40, seed=s, progress=False) for s in (3, 3, 4)]
    paths = [r.save(tmp_path / f"h{i}.h5") for i, r in enumerate(runs)]
    with h5py.File(paths[0]) as a, h5py.File(paths[1]) as b, h5py.File(paths[2]) as c:
        assert a["order"][()].tobytes() == b["order"][()].tobytes()
        assert a["score"][()].tobytes() == b["score"][()].tobytes()
        assert a["order"][()].tobytes() != c["order"][()].tobytes()


def test_herding_max_keep_scores_and_dropped_rows():
    x = gauss(30, 3, 5)
    x[[4, 17]] = np.inf
    emb = pk.Embeddings.from_array(x, drop_nonfinite=True)
    s = pk.score(emb, "herding", kernel="exact", sigma=2.0, max_keep=6, progress=False)
    ref = brute_force_herding(x[emb.rows], 2.0, 6)
    np.testing.assert_array_equal(s.order, emb.rows[ref])  # positions in the source
    np.testing.assert_array_equal(s.score[s.order], 28 - np.arange(6))
    assert np.isnan(s.score[[4, 17]]).all()
    rest = np.setdiff1d(emb.rows, s.order)
    assert np.isneginf(s.score[rest]).all()


def test_herding_within_clusters_interleaves_per_cluster_orders():
    x = gauss(90, 3, 6)
    emb = pk.Embeddings.from_array(x)
    km = pk.score(emb, "kmeans", k=3, spherical=False, progress=False)
    s = pk.score(emb, "herding", kernel="exact", sigma=1.0, within=km, progress=False)
    np.testing.assert_array_equal(s.cluster, km.cluster)
    per = []
    for c in range(3):
        rows = np.flatnonzero(km.cluster == c)
        per.append(rows[brute_force_herding(x[rows], 1.0, rows.size)])
    np.testing.assert_array_equal(s.order, interleave(per))
    for c in range(3):  # top-q by score inside a cluster = that cluster's herding prefix
        rows = np.flatnonzero(km.cluster == c)
        q = 5
        top = rows[np.argsort(-s.score[rows], kind="stable")[:q]]
        np.testing.assert_array_equal(top, per[c][:q])


def test_within_max_keep_is_per_cluster(tmp_path):
    x = gauss(60, 2, 7)
    emb = pk.Embeddings.from_array(x)
    km = pk.score(emb, "kmeans", k=4, progress=False)
    path = km.save(tmp_path / "km.h5")
    s = pk.score(emb, "herding", within=str(path), max_keep=2, progress=False)
    assert s.order.size == 8
    np.testing.assert_array_equal(np.bincount(km.cluster[s.order]), [2, 2, 2, 2])
    np.testing.assert_array_equal(km.cluster[s.order[:4]], [0, 1, 2, 3])


def test_within_must_match_embeddings_and_have_clusters(tmp_path):
    x = gauss(40, 2, 8)
    km = pk.score(pk.Embeddings.from_array(x), "kmeans", k=2, progress=False)
    other = pk.Embeddings.from_array(x + 1)
    with pytest.raises(pk.PrunekitError, match="other embeddings"):
        pk.score(other, "herding", within=km, progress=False)
    rnd = pk.score(pk.Embeddings.from_array(x), "random", progress=False)
    with pytest.raises(pk.PrunekitError, match="no 'cluster'"):
        pk.score(pk.Embeddings.from_array(x), "herding", within=rnd, progress=False)


def test_herding_option_errors(monkeypatch):
    emb = pk.Embeddings.from_array(gauss(20, 2, 9))
    monkeypatch.setattr(herding_mod, "EXACT_MAX_ROWS", 10)
    with pytest.raises(pk.PrunekitError, match="--kernel rff"):
        pk.score(emb, "herding", kernel="exact", progress=False)
    for bad in ("-1", "zero", 0.0, "nan"):
        with pytest.raises(pk.PrunekitError, match="parameter sigma must be a number > 0"):
            pk.score(emb, "herding", sigma=bad, progress=False)
    with pytest.raises(pk.PrunekitError, match="parameter max_keep must be an integer >= 1"):
        pk.score(emb, "herding", max_keep=0, progress=False)


def test_interleave_and_order_scores_by_hand():
    got = interleave([np.array([5, 1, 7]), np.array([2]), np.array([0, 9])])
    np.testing.assert_array_equal(got, [5, 2, 0, 1, 9, 7])
    sc = order_scores(np.array([3, 0]), 5)
    np.testing.assert_array_equal(sc, [4, -np.inf, -np.inf, 5, -np.inf])


# ----------------------------------------------------------------------------- k-center


def brute_force_farthest_first(x: np.ndarray, m: int) -> list[int]:
    x = x.astype(np.float64)
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    first = int(np.argmin(np.sqrt(((x - x.mean(0)) ** 2).sum(-1))))
    picked = [first]
    while len(picked) < m:
        cover = d[:, picked].min(axis=1)
        cover[picked] = -1
        picked.append(int(np.argmax(cover)))
    return picked


def radius(x: np.ndarray, centres) -> float:
    d = np.sqrt(((x[:, None].astype(np.float64) - x[list(centres)][None]) ** 2).sum(-1))
    return float(d.min(axis=1).max())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kcenter_matches_brute_force(seed):
    x = gauss(50, 4, seed)
    s = pk.score(pk.Embeddings.from_array(x), "kcenter", progress=False)
    np.testing.assert_array_equal(s.order, brute_force_farthest_first(x, 50))
    np.testing.assert_array_equal(s.score[s.order], 50 - np.arange(50))


def test_kcenter_cosine_is_farthest_first_on_unit_rows():
    x = gauss(40, 5, 3) * np.random.default_rng(0).uniform(0.5, 3.0, (40, 1)).astype(np.float32)
    s = pk.score(pk.Embeddings.from_array(x), "kcenter", metric="cosine", max_keep=12, progress=False)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_array_equal(s.order, brute_force_farthest_first(unit, 12))
    assert np.isneginf(s.score).sum() == 28


@pytest.mark.parametrize("seed", range(4))
def test_kcenter_radius_within_twice_optimum(seed):
    x = gauss(11, 2, 10 + seed)
    s = pk.score(pk.Embeddings.from_array(x), "kcenter", progress=False)
    for m in (1, 2, 3, 4):
        opt = min(radius(x, c) for c in itertools.combinations(range(11), m))
        assert radius(x, s.order[:m]) <= 2.0 * opt + 1e-9


def test_kcenter_within_clusters_interleaves_per_cluster_traversals():
    x = gauss(60, 3, 11)
    emb = pk.Embeddings.from_array(x)
    km = pk.score(emb, "kmeans", k=3, spherical=False, progress=False)
    s = pk.score(emb, "kcenter", within=km, max_keep=7, progress=False)
    np.testing.assert_array_equal(s.cluster, km.cluster)
    per = []
    for c in range(3):  # each cluster from its own mean, as if it were the whole set
        rows = np.flatnonzero(km.cluster == c)
        per.append(rows[brute_force_farthest_first(x[rows], 7)])
    np.testing.assert_array_equal(s.order, interleave(per))
    assert np.isneginf(s.score).sum() == 60 - 21
    with pytest.raises(pk.PrunekitError, match="other embeddings"):
        pk.score(pk.Embeddings.from_array(x + 1), "kcenter", within=km, progress=False)


def test_kcenter_duplicates_tie_to_lowest_index():
    x = np.array([[0, 0], [5, 0], [0, 0], [5, 0], [5, 0]], np.float32)
    s = pk.score(pk.Embeddings.from_array(x), "kcenter", progress=False)
    # mean (3, 0): nearest is row 1; farthest then row 0; the rest are all at distance 0.
    np.testing.assert_array_equal(s.order, [1, 0, 2, 3, 4])
    with pytest.raises(pk.PrunekitError, match="metric"):
        pk.score(pk.Embeddings.from_array(x), "kcenter", metric="manhattan", progress=False)


# ----------------------------------------------------------------------------- loss import


@pytest.fixture
def emb_ids():
    return pk.Embeddings.from_array(gauss(5, 2, 0), ids=[10, 20, 30, 40, 50])


VALUES = {10: 0.5, 20: -1.0, 30: 2.5, 40: 0.0, 50: 7.0}
EXPECTED = np.array([0.5, -1.0, 2.5, 0.0, 7.0])


def write_formats(tmp_path):
    """The same scores, shuffled, in every format (id-carrying ones) -> paths."""
    order = [30, 10, 50, 40, 20]
    paths = {}
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["score"] = [VALUES[i] for i in order]
        f["ids"] = order
    paths["h5"] = tmp_path / "s.h5"
    paths["json"] = tmp_path / "s.json"
    paths["json"].write_text(json.dumps({str(i): VALUES[i] for i in order}))
    paths["csv"] = tmp_path / "s.csv"
    paths["csv"].write_text("id,loss\n" + "".join(f"{i},{VALUES[i]}\n" for i in order))
    paths["csv_nohdr"] = tmp_path / "n.csv"
    paths["csv_nohdr"].write_text("".join(f"{i}, {VALUES[i]}\n" for i in order))
    return paths


def test_loss_import_by_id_from_every_format(tmp_path, emb_ids):
    for kind, path in write_formats(tmp_path).items():
        s = pk.score(emb_ids, "loss", from_file=str(path), progress=False)
        np.testing.assert_array_equal(s.score, EXPECTED, err_msg=kind)
        assert s.params["matched_by"] == "id"


def test_loss_import_by_position(tmp_path, emb_ids):
    np.save(tmp_path / "s.npy", EXPECTED)
    (tmp_path / "l.json").write_text(json.dumps(list(EXPECTED)))
    with h5py.File(tmp_path / "p.h5", "w") as f:
        f["score"] = EXPECTED
    no_ids = pk.Embeddings.from_array(gauss(5, 2, 0))
    for name in ("s.npy", "l.json", "p.h5"):
        s = pk.score(emb_ids, "loss", from_file=str(tmp_path / name), progress=False)
        np.testing.assert_array_equal(s.score, EXPECTED)
        assert s.params["matched_by"] == "position"
    # ids in the file but not in the embeddings: by position, in file order.
    s = pk.score(no_ids, "loss", from_file=str(write_formats(tmp_path)["csv"]), progress=False)
    np.testing.assert_array_equal(s.score, [VALUES[i] for i in (30, 10, 50, 40, 20)])


def test_loss_string_ids_and_dropped_rows(tmp_path):
    x = gauss(4, 2, 1)
    x[2, 0] = np.nan
    emb = pk.Embeddings.from_array(x, ids=["a", "b", "c", "d"], drop_nonfinite=True)
    (tmp_path / "s.json").write_text(json.dumps({"d": 4.0, "a": 1.0, "b": 2.0}))
    s = pk.score(emb, "loss", from_file=str(tmp_path / "s.json"), progress=False)
    np.testing.assert_array_equal(s.score[[0, 1, 3]], [1.0, 2.0, 4.0])
    assert np.isnan(s.score[2])


def test_loss_missing_and_extra_ids_are_named(tmp_path, emb_ids):
    (tmp_path / "s.csv").write_text("10,1\n20,2\n30,3\n99,9\n77,7\n")
    with pytest.raises(pk.PrunekitError) as err:
        pk.score(emb_ids, "loss", from_file=str(tmp_path / "s.csv"), progress=False)
    msg = str(err.value)
    assert "2 embedding ids have no score (e.g. 40, 50)" in msg
    assert "2 ids are not in the embeddings (e.g. 99, 77)" in msg  # in file order


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("s.json", json.dumps({"10": 1, "20": None, "30": 1, "40": 1, "50": 1}), "not a number"),
        ("s.json", json.dumps({"10": 1, "20": "NaN", "30": 1, "40": 1, "50": 1}), "not a number"),
        ("s.json", '"hello"', "JSON object"),
        ("s.json", "{not json", "not valid JSON"),
        ("s.json", '{"10": 1, "20": 1, "10": 2, "30": 1, "40": 1, "50": 1}',
         r"s.json has duplicate ids \(e.g. 10\); each id needs one score"),  # json keeps one
        ("s.json", '{"10": 1, "20": 1, "30": 1, "40": 1, "50": 1', "ends at byte 44 .* cut short"),
        ("s.json", "[1, 2, 3, 4, 5] [6]", "extra data after the closing ']' at byte 16"),
        ("s.json", "\ufeff[1, 2, 3, 4, 5]", "starts with a UTF-8 byte order mark"),
        ("s.json", " ", "s.json is empty"),
        ("s.json", "[1, 2, [3], 4, 5]", r"s.json item 2 \(byte 7\) is a JSON array, not a number"),
        ("s.json", "[1, 2, 3, 4, 1e999999]", "has 1 non-finite scores"),  # json reads inf
        ("s.csv", "10,1\n20\n", "fields"),
        ("s.csv", "id,score\n10,1\n20,abc\n", "not a number"),
        ("s.csv", "10,1\n10,2\n20,1\n30,1\n40,1\n50,1\n", "duplicate ids"),
        ("s.csv", "x1,1\n", "not an integer"),
        ("s.txt", "1\n2\n", "cannot tell the format"),
    ],
)
def test_loss_bad_files(tmp_path, emb_ids, name, content, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(pk.PrunekitError, match=match):
        pk.score(emb_ids, "loss", from_file=str(tmp_path / name), progress=False)


def test_loss_json_is_streamed_never_parsed_whole(tmp_path, emb_ids, monkeypatch):
    def whole(*a, **k):
        raise AssertionError("a loss file was parsed whole")

    monkeypatch.setattr(json, "load", whole)
    monkeypatch.setattr(json, "loads", whole)
    (tmp_path / "s.json").write_text('{"50": 7, "40": 0, "20": -1.0, "10": 0.5, "30": 2.5e0}')
    (tmp_path / "l.json").write_text("[0.5, -1, 25e-1, -0, 7.0]")
    for name, matched in (("s.json", "id"), ("l.json", "position")):
        s = pk.score(emb_ids, "loss", from_file=str(tmp_path / name), progress=False)
        assert s.score.tobytes() == EXPECTED.tobytes() and s.params["matched_by"] == matched
    (tmp_path / "u.json").write_bytes(b'{"10": 1, "2\xff0": 2}')
    with pytest.raises(pk.PrunekitError, match=r"u.json is not UTF-8 text \(invalid start byte "
                                               r"at byte 12\); save the JSON as UTF-8."):
        pk.score(emb_ids, "loss", from_file=str(tmp_path / "u.json"), progress=False)


def test_loss_nonfinite_length_and_missing_file(tmp_path, emb_ids):
    np.save(tmp_path / "nan.npy", np.array([1.0, np.nan, 2.0, np.inf, 0.0]))
    with pytest.raises(pk.PrunekitError, match=r"2 non-finite scores .* rows 1, 3"):
        pk.score(emb_ids, "loss", from_file=str(tmp_path / "nan.npy"), progress=False)
    np.save(tmp_path / "short.npy", np.ones(4))
    with pytest.raises(pk.PrunekitError, match="has 4 scores but"):
        pk.score(emb_ids, "loss", from_file=str(tmp_path / "short.npy"), progress=False)
    np.save(tmp_path / "two.npy", np.ones((5, 2)))
    with pytest.raises(pk.PrunekitError, match="1-D"):
        pk.score(emb_ids, "loss", from_file=str(tmp_path / "two.npy"), progress=False)
    with pytest.raises(pk.PrunekitError, match="not found"):
        pk.score(emb_ids, "loss", from_file=str(tmp_path / "nope.csv"), progress=False)
    with pytest.raises(pk.PrunekitError, match="parameter from_file is required"):
        pk.score(emb_ids, "loss", progress=False)


def test_numpy_fallback_without_faiss_gives_the_same_orders(monkeypatch):
    from prunekit.methods import greedy

    emb = pk.Embeddings.from_array(gauss(120, 6, 12))
    with_faiss = [pk.score(emb, m, max_keep=25, progress=False).order for m in ("herding", "kcenter")]
    monkeypatch.setattr(greedy, "_faiss", lambda: None)
    without = [pk.score(emb, m, max_keep=25, progress=False).order for m in ("herding", "kcenter")]
    for a, b in zip(with_faiss, without, strict=True):
        np.testing.assert_array_equal(a, b)


def test_loss_csv_errors_name_the_file_line_counting_blank_lines(tmp_path):
    from prunekit.methods.loss import read_score_file

    p = tmp_path / "s.csv"
    p.write_text("id,score\n\n1,0.5\n\n2,x\n")
    with pytest.raises(pk.PrunekitError, match=r"s\.csv line 5: score 'x' is not a number"):
        read_score_file(p)
