"""`prunekit synth gmm` and `prunekit stability` end to end (in-process, tiny data)."""

from __future__ import annotations

import json
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import prunekit as pk
from prunekit.cli import main
from prunekit.cli.common import expand_values as expand_greedy
from prunekit.flow import ClosedFormField, compare_subsets, gaussian_mixture
from prunekit.io.provenance import read_params
from prunekit.seeds import role_rng, role_seed

N, DIM = 40, 6
FAST = ["--steps", "12", "--n-sources", "24", "--quiet"]


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture()
def gmm(tmp_path):
    path = tmp_path / "gmm.h5"
    res = run("synth", "gmm", "--n", N, "--dim", DIM, "--components", 3, "--spread", 0.3, "--seed", 1, "-o", path)
    assert res.exit_code == 0, res.output
    return path


def rows_of(path) -> list[dict]:
    return json.loads(path.read_text())["rows"]


def test_synth_writes_a_valid_embeddings_file(gmm):
    emb = pk.load_embeddings(gmm)
    assert (emb.n_total, emb.dim, emb.dtype) == (N, DIM, np.float32)
    assert sorted(np.bincount(emb.labels).tolist()) == [13, 13, 14]
    with h5py.File(gmm, "r") as f:
        assert read_params(f.attrs) == {"n": N, "dim": DIM, "components": 3, "spread": 0.3, "seed": 1}
        assert f["means"].shape == (3, DIM)
    direct = gaussian_mixture(N, DIM, 3, spread=0.3, seed=1)
    np.testing.assert_array_equal(emb.array(), direct.points)


def test_synth_errors_exit_2_and_write_nothing(tmp_path):
    out = tmp_path / "bad.h5"
    res = run("synth", "gmm", "--n", 3, "--dim", 2, "--components", 5, "-o", out)
    assert res.exit_code == 2 and "components" in res.output
    assert list(tmp_path.iterdir()) == []


def test_stability_json_schema_and_values(gmm, tmp_path):
    out = tmp_path / "s.json"
    res = run("stability", gmm, "--pr", "0.25", "0.5", "0.75", "-o", out, "--seed", 3, *FAST)
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    s = doc["settings"]
    assert (s["steps"], s["solver"], s["dtype"], s["seed"], s["n_sources"], s["n_train"], s["dim"]) == (
        12, "euler", "float32", 3, 24, N, DIM)
    assert s["subsets"] == "random"
    keys = {"pr", "n_kept", "n_sources", "n_retained", "unchanged_fraction",
            "path_deviation_median", "path_deviation_p95"}
    assert [r["pr"] for r in doc["rows"]] == [0.25, 0.5, 0.75]
    assert [r["n_kept"] for r in doc["rows"]] == [30, 20, 10]
    # The same numbers from the library, with the subsets and sources built by hand:
    # random scores are uniform draws from the seed and the subset keeps the highest.
    x1 = pk.load_embeddings(gmm).array()
    # (each from its own stream of the seed, see prunekit.seeds)
    random_scores = pk.score(pk.load_embeddings(gmm), "random", seed=role_seed(3, "random subsets"), progress=False)
    order = np.argsort(-random_scores.score, kind="stable")
    x0 = role_rng(3, "sources").standard_normal((24, DIM))
    comps = compare_subsets(ClosedFormField(x1), [order[:k] for k in (30, 20, 10)], x0, steps=12, progress=False)
    for row, c in zip(doc["rows"], comps, strict=True):
        assert keys <= set(row) and row["n_sources"] == 24
        assert row["n_retained"] == c.n_retained
        assert row["unchanged_fraction"] == c.unchanged_fraction
        assert row["path_deviation_median"] == c.deviation_median
        assert row["path_deviation_p95"] == c.deviation_p95
    assert "unchanged" in res.output  # the table


def test_pr_accepts_spaces_commas_and_repeats(gmm, tmp_path):
    forms = [["--pr", "0.2", "0.6"], ["--pr", "0.2,0.6"], ["--pr", "0.2", "--pr", "0.6"], ["--pr=0.2", "0.6"]]
    results = []
    for i, form in enumerate(forms):
        out = tmp_path / f"{i}.json"
        assert run("stability", gmm, *form, "-o", out, *FAST).exit_code == 0
        results.append(rows_of(out))
    assert all(r == results[0] for r in results) and len(results[0]) == 2


def test_expand_greedy_stops_at_options_and_non_numbers():
    greedy = {"--pr": lambda s: s.replace(".", "", 1).isdigit(), "--selection": lambda s: not s.startswith("-")}
    assert expand_greedy(["d.h5", "--pr", "0.1", "0.2", "-o", "x"], greedy) == [
        "d.h5", "--pr", "0.1", "--pr", "0.2", "-o", "x"]
    assert expand_greedy(["--pr", "0.1", "d.h5"], greedy) == ["--pr", "0.1", "d.h5"]
    assert expand_greedy(["d", "--selection", "a", "b", "--", "--pr", "1"], greedy) == [
        "d", "--selection", "a", "--selection", "b", "--", "--pr", "1"]


def test_selection_files_and_the_full_set_against_itself(gmm, tmp_path):
    emb = pk.load_embeddings(gmm)
    scores = pk.score(emb, "random", seed=5, progress=False)
    full, half = tmp_path / "full.h5", tmp_path / "half.h5"
    pk.select(scores, 0.0).save(full)
    pk.select(scores, 0.5).save(half)
    out = tmp_path / "s.json"
    res = run("stability", gmm, "--selection", full, half, "-o", out, *FAST)
    assert res.exit_code == 0, res.output
    a, b = rows_of(out)
    assert (a["selection"], a["pr"], a["n_kept"]) == (str(full), 0.0, N)
    assert (a["unchanged_fraction"], a["n_retained"], a["path_deviation_p95"]) == (1.0, 24, 0.0)
    assert (b["selection"], b["pr"], b["n_kept"]) == (str(half), 0.5, 20)
    assert b["path_deviation_p95"] > 0


def test_scores_file_goes_through_select(gmm, tmp_path):
    emb = pk.load_embeddings(gmm)
    scores_path = tmp_path / "scores.h5"
    scores = pk.score(emb, "random", seed=8, progress=False)
    scores.cluster = emb.labels.copy()  # three groups to balance over
    scores.save(scores_path)
    outs = {}
    for flag in ([], ["--invert"]):
        out = tmp_path / f"s{len(flag)}.json"
        res = run("stability", gmm, "--pr", "0.5", "--scores", scores_path, "--balance", "clusters",
                  *flag, "-o", out, *FAST)
        assert res.exit_code == 0, res.output
        outs[bool(flag)] = rows_of(out)[0]
    assert outs[False]["method"] == "random" and outs[False]["balance"] == "clusters"
    assert outs[True]["invert"] is True and outs[False]["n_kept"] == outs[True]["n_kept"] == 20
    # With the same sources, a different subset gives different deviations.
    assert outs[False]["path_deviation_median"] != outs[True]["path_deviation_median"]


def test_scores_of_other_data_are_named_in_the_error(gmm, tmp_path):
    other = pk.score(pk.Embeddings.from_array(np.ones((N + 1, DIM))), "random", progress=False)
    other.save(tmp_path / "other.h5")
    res = run("stability", gmm, "--pr", "0.5", "--scores", tmp_path / "other.h5", *FAST)
    assert res.exit_code == 2
    assert f"--scores {tmp_path / 'other.h5'} was made for {N + 1} rows" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gmm.h5", "other.h5"]


def test_sources_file_is_used_as_is(gmm, tmp_path):
    x0 = np.random.default_rng(11).standard_normal((7, DIM)) * 2.0
    src = tmp_path / "x0.npy"
    np.save(src, x0)
    out = tmp_path / "s.json"
    res = run("stability", gmm, "--pr", "0.5", "--sources", src, "--steps", 10, "--dtype", "float64",
              "--solver", "heun", "-o", out, "--quiet")
    assert res.exit_code == 0, res.output
    row = rows_of(out)[0]
    x1 = pk.load_embeddings(gmm).array(np.float64)
    keep = np.argsort(-pk.score(pk.load_embeddings(gmm), "random", seed=role_seed(0, "random subsets"),
                                progress=False).score, kind="stable")[:20]
    (c,) = compare_subsets(ClosedFormField(x1, dtype="float64"), [keep], x0, steps=10, solver="heun", progress=False)
    assert row["n_sources"] == 7 and row["path_deviation_median"] == c.deviation_median
    np.save(src, x0[:, :3])
    res = run("stability", gmm, "--pr", "0.5", "--sources", src, "-o", tmp_path / "bad.json")
    assert res.exit_code == 2 and "(M, 6)" in res.output
    assert not (tmp_path / "bad.json").exists()


def test_plot_writes_a_png(gmm, tmp_path):
    out, fig = tmp_path / "s.json", tmp_path / "s.png"
    res = run("stability", gmm, "--pr", "0.3", "0.7", "-o", out, "--plot", fig, *FAST)
    assert res.exit_code == 0, res.output
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_install(gmm, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    res = run("stability", gmm, "--pr", "0.5", "-o", tmp_path / "s.json", "--plot", tmp_path / "s.png", *FAST)
    assert res.exit_code == 2 and 'pip install "prunekit[plot]"' in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gmm.h5"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pr", "1.0"], "[0, 1)"),
        ([], "either as --selection"),
        (["--pr", "0.5", "--balance", "clusters"], "--scores"),
        (["--pr", "0.5", "--steps", "0"], "x>=1"),
        (["--pr", "0.5", "--dims", "4"], "'gmm'"),
        (["--pr", "0.5", "--components", "4"], "--dims"),
        (["--pr", "0.5", "--selection", "x.h5"], "one of the two"),
        (["--pr", "0.5", "--n-sources", "0"], "x>=1"),
    ],
)
def test_stability_errors_exit_2_and_write_nothing(gmm, tmp_path, args, message):
    res = run("stability", gmm, *args, "-o", tmp_path / "s.json", "--plot", tmp_path / "s.png", "--quiet")
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gmm.h5"]


def test_same_seed_gives_identical_numbers(gmm, tmp_path):
    docs = []
    for name, seed in (("a", 4), ("b", 4), ("c", 5)):
        out = tmp_path / f"{name}.json"
        assert run("stability", gmm, "--pr", "0.5", "--seed", seed, "-o", out, *FAST).exit_code == 0
        docs.append(json.loads(out.read_text()))
    assert docs[0]["rows"] == docs[1]["rows"] and docs[0]["settings"] == docs[1]["settings"]
    assert docs[0]["rows"] != docs[2]["rows"]


def test_dimension_sweep(tmp_path):
    out = tmp_path / "d.json"
    res = run("stability", "gmm", "--dims", "2", "16", "--pr", "0.5", "0.75", "--n", 30, "--components", 3,
              "--n-sources", 16, "--steps", 8, "-o", out, "--quiet")
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert [(r["dim"], r["pr"]) for r in doc["rows"]] == [(2, 0.5), (2, 0.75), (16, 0.5), (16, 0.75)]
    assert [r["n_kept"] for r in doc["rows"]] == [15, 8, 15, 8]
    assert doc["settings"]["gmm"] == {"n": 30, "components": 3, "spread": 0.5}
    assert doc["settings"]["dims"] == [2, 16]


def test_nonfinite_rows_are_dropped_on_request(tmp_path):
    x = gaussian_mixture(N, DIM, 3, seed=2).points
    x[7, 2] = np.nan
    data = tmp_path / "x.npy"
    np.save(data, x)
    out = tmp_path / "s.json"
    res = run("stability", data, "--pr", "0.5", "-o", out, *FAST)
    assert res.exit_code == 2 and "--drop-nonfinite" in res.output and not out.exists()
    res = run("stability", data, "--pr", "0.5", "--drop-nonfinite", "-o", out, *FAST)
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["settings"]["n_train"] == N - 1 and doc["rows"][0]["n_kept"] == 20  # round(0.5 * 39)
    sel = tmp_path / "sel.h5"
    pk.Selection(indices=np.array([3, 7, 9]), n_total=N, pr=0.9).save(sel)
    res = run("stability", data, "--selection", sel, "--drop-nonfinite", "-o", tmp_path / "t.json")
    assert res.exit_code == 2 and "row 7" in res.output


def test_dimension_sweep_honours_block_and_sample_and_refuses_balance(tmp_path):
    """--block only splits the work (the same rows up to float32 rounding); --sample represents a larger mixture by a
    seeded sample, exactly as stability on those points as data does; --balance/--invert
    need scores, which a sweep has none of."""
    common = ("--pr", "0.5", "--n", 40, "--components", 3, "--n-sources", 12, "--steps", 6,
              "--quiet")
    docs = {}
    for name, extra in (("plain", ()), ("block", ("--block", 7)), ("sample", ("--sample", 25))):
        out = tmp_path / f"{name}.json"
        res = run("stability", "gmm", "--dims", "3", *common, *extra, "-o", out)
        assert res.exit_code == 0, res.output
        docs[name] = json.loads(out.read_text())
    blocked, plain = docs["block"]["rows"][0], docs["plain"]["rows"][0]
    assert blocked["n_retained"] == plain["n_retained"]  # float32 sums differ in rounding only
    assert blocked == {k: v if isinstance(v, str) else pytest.approx(v, rel=1e-5)
                       for k, v in plain.items()}
    row = docs["sample"]["rows"][0]
    assert row["n_kept_data"] == 20 and row["n_kept"] < 20
    gmm = gaussian_mixture(40, 3, 3, spread=0.5, seed=0).points
    ref = pk.stability(gmm, prs=[0.5], n_sources=12, steps=6, sample=25, seed=0)
    assert {k: v for k, v in row.items() if k != "dim"} == ref.rows[0]
    for flag in (("--balance", "clusters"), ("--invert",)):
        res = run("stability", "gmm", "--dims", "3", *common, *flag, "-o", tmp_path / "x.json")
        assert res.exit_code == 2 and "--dims sweep takes random subsets" in res.output
        assert not (tmp_path / "x.json").exists()
