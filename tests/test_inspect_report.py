"""Typed results: pk.inspect's InspectionReport, pk.stability's StabilityStudy, short reprs."""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

import prunekit as pk
from prunekit.cli import main
from prunekit.flow.study import StudyOptionError, check_study
from prunekit.io.provenance import jsonable
from prunekit.methods import REGISTRY, Method, Summary
from prunekit.selection.inspection import GroupTable, InspectionReport, MMDBlock, render

# Eight rows in three clusters and two labels; the selection keeps rows 0, 3, 5, 6 drawn
# 1, 2, 1 and 3 times.
CLUSTER = np.array([0, 0, 0, 1, 1, 2, 2, 2])
LABELS = np.array([0, 1, 0, 1, 0, 1, 0, 1])


def toy(method="kmeans", counts=(1, 2, 1, 3)):
    scores = pk.Scores(score=np.arange(8.0), method=method, n_total=8, cluster=CLUSTER,
                       labels=LABELS)
    sel = pk.Selection(indices=np.array([0, 3, 5, 6]), n_total=8, pr=0.5, method=method,
                       counts=None if counts is None else np.array(counts),
                       params={"balance": "clusters"})
    return scores, sel


def test_counts_and_tables_are_the_hand_counted_ones():
    scores, sel = toy()
    rep = pk.inspect(sel, scores=scores)
    assert isinstance(rep, InspectionReport)
    assert (rep.selection, rep.n_total, rep.n_kept, rep.pr, rep.draws) == ("selection", 8, 4, 0.5, 7)
    # clusters 0, 1, 2 hold 3, 2, 3 rows; kept distinct rows 0 | 3 | 5, 6; draws 1 | 2 | 1 + 3
    assert rep.clusters == GroupTable(ids=[0, 1, 2], before=[3, 2, 3], kept=[1, 1, 2],
                                      coverage=1.0, draws=[1, 2, 4])
    # label 0: rows 0, 2, 4, 6 (kept 0 x1, 6 x3); label 1: rows 1, 3, 5, 7 (kept 3 x2, 5 x1)
    assert rep.labels == GroupTable(ids=[0, 1], before=[4, 4], kept=[2, 2], coverage=1.0,
                                    draws=[4, 3])
    assert rep.mmd is None and rep.extra == {} and rep.duplicates is None
    assert list(rep.to_dict()) == ["selection", "n_total", "n_kept", "pr", "method", "params",
                                   "draws", "clusters", "labels"]
    assert rep.to_dict()["clusters"] == {"ids": [0, 1, 2], "before": [3, 2, 3], "kept": [1, 1, 2],
                                         "coverage": 1.0, "draws": [1, 2, 4]}


def test_render_is_the_text_of_the_command():
    scores, sel = toy()
    assert pk.inspect(sel, scores=scores).render() == "\n".join([
        "selection: kept 4 of 8 rows (pr 0.5, method kmeans, balance clusters)",
        "  oversampled: 7 draws",
        "clusters: 3, coverage 1.000 (kept per cluster: min 1, max 2)",
        "   cluster   before     kept    draws",
        "         0        3        1        1",
        "         1        2        1        2",
        "         2        3        2        4",
        "labels: 2, coverage 1.000 (kept per label: min 2, max 2)",
        "     label   before     kept    draws",
        "         0        4        2        4",
        "         1        4        2        3",
    ])


def test_long_tables_are_cut_after_forty_groups():
    table = GroupTable(ids=list(range(45)), before=[2] * 45, kept=[1] * 44 + [0], coverage=44 / 45)
    lines = table.render("clusters")
    assert lines[0] == "clusters: 45, coverage 0.978 (kept per cluster: min 0, max 1)"
    assert len(lines) == 2 + 40 + 1 and lines[-1] == "  ... 5 more (--json for all)"
    assert lines[-2] == "        39        2        1"


def test_mmd_block_text():
    m = MMDBlock(sigma=1.23456, n_features=64, n_kept=10, n_full=100, n_sample=100, kept=0.0123,
                 kept_error=None, random=[0.02, 0.04], random_mean=0.03, random_std=0.01,
                 same_embeddings=True)
    assert m.render() == ["RFF-MMD to the full set (sigma 1.235, 64 features): kept 0.01230   "
                          "random subsets of 10: 0.03000 +- 0.01000 (2 draws)"]
    sampled = MMDBlock(**{**m.to_dict(), "n_sample": 50, "kept_error": 0.002, "random": [],
                          "random_mean": None, "random_std": None, "same_embeddings": False})
    assert sampled.render() == [
        "RFF-MMD to the full set (sigma 1.235, 64 features): kept 0.01230 +- 0.00200",
        "  (estimated on a seeded sample of 50 of 100 rows; +- is the jackknife standard error)",
        "  (these embeddings are not the ones the selection was made from)",
    ]


def test_the_report_reads_like_its_dict(tmp_path):
    scores, sel = toy(counts=None)
    x = np.random.default_rng(0).standard_normal((8, 3))
    rep = pk.inspect(sel, scores=scores, embeddings=pk.Embeddings.from_array(x), random_draws=2)
    d = rep.to_dict()
    assert list(d) == ["selection", "n_total", "n_kept", "pr", "method", "params", "clusters",
                       "mmd", "labels"]
    assert rep["mmd"]["kept"] == rep.mmd.kept and rep["mmd"] == rep.mmd.to_dict()
    assert rep.get("draws") is None and "draws" not in rep and "labels" in rep
    assert dict(rep) == d and rep == d and len(rep) == len(d) and list(rep.keys()) == list(d)
    assert jsonable(rep) == jsonable(d)  # what the CLI's --json prints
    back = InspectionReport.from_dict(json.loads(json.dumps(jsonable(d))))
    assert back == rep and back.mmd == rep.mmd and back.render() == rep.render() == render(d)
    r = repr(rep)
    assert r == ("InspectionReport('selection': kept 4 of 8, pr 0.5, method 'kmeans'; "
                 "clusters, labels, mmd)")


def test_cli_prints_render_and_to_dict(tmp_path):
    scores, sel = toy()
    scores.save(tmp_path / "sc.h5")
    sel.save(tmp_path / "sel.h5")
    rep = pk.inspect(tmp_path / "sel.h5", scores=tmp_path / "sc.h5")
    run = CliRunner().invoke
    text = run(main, ["inspect", str(tmp_path / "sel.h5"), "--scores", str(tmp_path / "sc.h5")])
    as_json = run(main, ["inspect", str(tmp_path / "sel.h5"), "--scores", str(tmp_path / "sc.h5"),
                         "--json"])
    assert text.exit_code == 0 and as_json.exit_code == 0, (text.output, as_json.output)
    assert text.output == rep.render() + "\n"
    assert as_json.output == json.dumps(jsonable(rep.to_dict()), indent=1) + "\n"


def test_a_methods_summary_hooks_add_entries_and_lines(monkeypatch):
    def add(scores, kept):
        return {"toy": {"kept_rows": np.asarray(kept).tolist()}}

    def lines(report):
        return [f"toy kept rows {report['toy']['kept_rows']}"] if "toy" in report else []

    base = REGISTRY["random"]
    monkeypatch.setitem(REGISTRY, "toy", Method("toy", base.fn, base.params,
                                                 summary=Summary(inspect=add, render=lines)))
    scores, sel = toy(method="toy", counts=None)
    rep = pk.inspect(sel, scores=scores)
    assert rep.extra == {"toy": {"kept_rows": [0, 3, 5, 6]}}
    assert list(rep.to_dict())[-3:] == ["clusters", "toy", "labels"]  # between them, as before
    assert rep["toy"] == {"kept_rows": [0, 3, 5, 6]}
    text = rep.render().split("\n")
    assert text[-1] == "toy kept rows [0, 3, 5, 6]" and text[-2].startswith("         1 ")


def test_semdedup_duplicates_are_a_typed_entry():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 6))
    x[1] = x[0]  # one exact duplicate
    sc = pk.score(x, "semdedup", k=2, seed=0, progress=False)
    rep = pk.inspect(pk.select(sc, pr=0.5), scores=sc)
    assert rep.duplicates == rep["duplicates"] == rep.extra["duplicates"]
    assert [r["eps"] for r in rep.duplicates] == [0.001, 0.01, 0.05, 0.1]
    assert rep.duplicates[0]["removed"] == 1
    assert "near-duplicates (semdedup" in rep.render()


# ------------------------------------------------------------------------------- reprs


def test_reprs_summarise_instead_of_printing_arrays():
    n = 5000
    sel = pk.Selection(indices=np.arange(0, n, 2), n_total=n, pr=0.5, method="kmeans", seed=3,
                       ids=np.arange(0, n, 2) + 10, counts=np.full(n // 2, 2))
    assert repr(sel) == ("Selection(n_kept=2500, n_total=5000, pr=0.5, method='kmeans', seed=3, "
                         "ids=True, counts=True, draws=5000)")
    plain = pk.Selection(indices=np.array([1, 2]), n_total=4, pr=0.5)
    assert repr(plain) == ("Selection(n_kept=2, n_total=4, pr=0.5, method='unknown', seed=None, "
                           "ids=False, counts=False)")
    score = np.arange(float(n))
    score[[7, 9]] = np.nan
    sc = pk.Scores(score=score, method="kmeans", n_total=n, cluster=np.zeros(n, dtype=np.int64),
                   source="emb.h5")
    assert repr(sc) == ("Scores(method='kmeans', n_total=5000, n_scored=4998, source='emb.h5', "
                        "with=['cluster'])")
    x = np.zeros((n, 3), dtype=np.float32)
    x[4] = np.nan
    emb = pk.Embeddings.from_array(x, ids=np.arange(n), drop_nonfinite=True)
    assert repr(emb) == (f"Embeddings('<array>', n_total=5000, dim=3, dtype=float32, usable=4999, "
                         f"key='embeddings', ids=True, labels=False, "
                         f"fingerprint='{emb.fingerprint[:12]}')")


def test_embeddings_name_and_reader_keep_their_old_names_for_a_release(tmp_path):
    x = np.arange(12.0).reshape(4, 3)
    np.save(tmp_path / "e.npy", x)
    emb = pk.load_embeddings(tmp_path / "e.npy")
    assert emb.name == str(tmp_path / "e.npy") and emb.path == tmp_path / "e.npy"
    np.testing.assert_array_equal(emb.reader.read_rows(np.array([1, 3])), x[[1, 3]])
    assert pk.Embeddings.from_array(x).name == "<array>"
    with pytest.warns(DeprecationWarning, match=r"Embeddings.source is now Embeddings.name"):
        assert emb.source == emb.name
    with pytest.warns(DeprecationWarning, match=r"Embeddings.source_obj is now Embeddings.reader"):
        assert emb.source_obj is emb.reader
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new names do not warn
        assert emb.name and emb.reader is not None


# ------------------------------------------------------------------------- stability study


@pytest.fixture()
def gmm(tmp_path):
    g = pk.flow.gaussian_mixture(40, 5, 3, spread=0.3, seed=2)
    g.save(tmp_path / "g.h5")
    return tmp_path / "g.h5"


def test_study_is_the_file_and_the_table_of_the_command(gmm, tmp_path, monkeypatch):
    argv = ["prunekit", "stability", str(gmm)]
    monkeypatch.setattr(sys, "argv", argv)
    out = tmp_path / "s.json"
    res = CliRunner().invoke(main, ["stability", str(gmm), "--pr", "0.25", "0.5", "--seed", "3",
                                    "--steps", "8", "--n-sources", "16", "-q", "-o", str(out)])
    assert res.exit_code == 0, res.output
    study = pk.stability(gmm, prs=[0.25, 0.5], seed=3, steps=8, n_sources=16)
    assert out.read_text() == study.to_json()  # command = sys.argv, byte for byte
    assert res.output == study.render() + f"\nwrote {out}\n"
    assert study.render().split("\n")[0] == ("subset                     pr    kept retained "
                                             "unchanged dev.median   dev.p95")
    assert [r["n_kept"] for r in study.rows] == [30, 20] and study.settings["data"] == str(gmm)
    # it reads like the document it used to be
    assert study["rows"] is study.rows and dict(study) == study.to_dict()
    assert list(study) == ["prunekit_version", "settings", "rows"]
    assert json.loads(study.to_json(command=["x"]))["command"] == ["x"]
    assert repr(study) == f"StabilityStudy(2 rows, data {str(gmm)!r}, subsets 'random')"


def test_dimension_sweep_from_the_library_equals_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prunekit"])
    out = tmp_path / "d.json"
    res = CliRunner().invoke(main, ["stability", "gmm", "--dims", "2", "6", "--pr", "0.5",
                                    "--n", "30", "--components", "3", "--n-sources", "12",
                                    "--steps", "5", "-q", "-o", str(out)])
    assert res.exit_code == 0, res.output
    study = pk.stability("gmm", dims=[2, 6], prs=[0.5], n=30, components=3, n_sources=12, steps=5)
    assert out.read_text() == study.to_json()
    assert study.settings["gmm"] == {"n": 30, "components": 3, "spread": 0.5}
    assert [(r["dim"], r["n_kept"]) for r in study.rows] == [(2, 15), (6, 15)]
    assert study.render().split("\n")[1].startswith("     2 random ")
    assert study.title() == ("closed-form flow: synthetic GMM (30 points), 12 sources, euler K=5, "
                             "float32")


def test_plot_writes_the_figure(gmm, tmp_path):
    pytest.importorskip("matplotlib")
    study = pk.stability(gmm, prs=[0.5], steps=4, n_sources=8)
    path = study.plot(tmp_path / "s.png")
    assert path.read_bytes() == study.figure() and path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("kw, lib, cli", [
    (dict(dims=[4], prs=[0.5]), "pass data as the word 'gmm'", "pass DATA as the word 'gmm'"),
    (dict(data="gmm", dims=[4], prs=[0.5], selections=["a.h5"]),
     "selections does not apply to a dims sweep", "--selection does not apply to a --dims sweep"),
    (dict(data="gmm", dims=[4], prs=[0.5], sources=np.zeros((2, 4))),
     "sources does not apply", "--sources does not apply"),
    (dict(data="gmm", dims=[4]), "give prs", "add --pr"),
    (dict(data="gmm", prs=[0.5]), "give dims", "add --dims"),
    (dict(prs=[0.5], spread=0.2), "spread sets the synthetic data", "--spread sets"),
    (dict(), "either as selections or as pr values", "either as --selection FILE"),
    (dict(prs=[0.5], invert=True), "give scores too", "add --scores SCORES.h5"),
    (dict(selections=["a.h5"], balance="labels"), "not with selections", "not with --selection"),
    (dict(prs=[0.5], sources="x.npy", n_sources=3), "either sources or n_sources",
     "either --sources FILE or --n-sources M"),
])
def test_options_that_do_not_go_together_are_named_for_each_caller(kw, lib, cli):
    kw.setdefault("data", "emb.h5")
    with pytest.raises(StudyOptionError) as err:
        check_study(**kw)
    assert lib in str(err.value) and cli in err.value.cli_message()
    with pytest.raises(StudyOptionError, match=lib):  # pk.stability checks before any work
        pk.stability(**kw)
