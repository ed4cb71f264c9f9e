"""The demo's typed results and the report tables rendered from them (no training needed)."""

from __future__ import annotations

import importlib
import json
import sys
from dataclasses import replace

import pytest

from prunekit_lfm.demo_results import (
    C2FRow,
    C2FStage,
    DataStage,
    DemoResults,
    DemoSettings,
    EvaluationStage,
    FidelityRow,
    PruningStage,
    RunRow,
    SelectionRow,
    SimilarityRow,
    StabilityStage,
    VaeStage,
)
from prunekit_lfm.demo_scale import QUICK
from prunekit_lfm.report import _intro, c2f_table, fidelity_table, markdown_table, similarity_table


def _summary(mean):
    return {"mean": mean, "median": mean}


def _measures(cos, base):
    return {key: {"pairs": _summary(cos), "baseline": _summary(base)}
            for key in ("latent_cosine", "feature_cosine", "ssim", "psnr")}


def _fidelity(criterion, pr, fd):
    return FidelityRow(criterion, pr, 10, fd, 0.5, 0.25, 0.3333, 3, 20, 20, "pixels")


def _results():
    sim = {name: SimilarityRow(crit, pr, 10, "full", name, 20, 0, "same class", 20, "pixels",
                               _measures(cos, 0.5))
           for name, crit, pr, cos in [("random@0.5", "random", 0.5, 0.9), ("kcenter@0.25", "kcenter", 0.25, 0.95)]}
    rows = [C2FRow(t, k, 4 - k, 100 - 50 * k // 4, 1 - 0.5 * k / 4, 1 - 0.1 * k, 1.0, 0.0, 3.0 + k, 0.5, 0.5, 0.5)
            for t, k in [(0.0, 0), (0.5, 2), (1.0, 4)]]
    scale = replace(QUICK, n_samples=20, lfm_steps=5, batch_size=8, sample_steps=4)
    fidelity = {"full": _fidelity("full", 0.0, 2.0), "random@0.5": _fidelity("random", 0.5, 4.0)}
    return DemoResults(
        settings=DemoSettings(scale, seed=0, threads=1, effort=1.5, criteria_definitions={}),
        data=DataStage("digits", 8, 100, 20, "stratified", "pixels", 0.9),
        vae=VaeStage("small", 5, [4, 4, 4], 1.2, 0.01),
        pruning=PruningStage("latents", {"random@0.5": SelectionRow("random", 0.5, 10, 3, [4, 3, 3],
                                                                    10, [1] * 10)}),
        runs={"full": RunRow("runs/full", 5, 100, 0.4, "tiny")},
        evaluation=EvaluationStage(similarity=sim, fidelity=fidelity),
        c2f=C2FStage("tiny", "fine", 0.25, rows, 0.9, 0.5, "cheapest"),
        stability=StabilityStage("closed form", 8, 4, [{"criterion": "random", "pr": 0.5}]),
        timings={"total": 1.0, "c2f_wall": {"0.5": {"wall_ratio": 0.75}}},
    )


def test_tables_render_the_typed_fields_in_order():
    r = _results()
    head, rows = similarity_table(r)
    assert [row[0] for row in rows] == ["kcenter@0.25", "random@0.5"]  # by criterion, then pr
    assert rows[1][4:6] == ["0.900", "0.500"]  # latent cosine of the pairs, then of the baseline
    head, rows = fidelity_table(r)
    assert [row[0] for row in rows] == ["full", "random@0.5"] and rows[1][4] == "4.00"
    head, rows = c2f_table(r)
    assert [row[-1] for row in rows] == ["", "<- picked", ""]
    assert rows[1][3:6] == ["0.750", "1.33x", "0.75"]  # FLOPs ratio, speed-up, wall ratio of this run
    assert markdown_table((head, rows)).count("\n") == 4  # header, rule and three rows
    assert r.c2f.auto_row.t_switch == 0.5


def test_results_json_is_the_dataclasses_as_plain_data():
    d = json.loads(json.dumps(_results().to_dict()))
    assert d["evaluation"]["fidelity"]["random@0.5"]["fd"] == 4.0
    assert d["c2f"]["rows"][1]["coarse_steps"] == 2 and d["data"]["n_test"] == 20
    assert d["pruning"]["embeddings"] == "latents"
    assert d["pruning"]["selections"]["random@0.5"]["kept_per_cluster"] == [4, 3, 3]
    # the settings stay flat: the scale's fields beside seed, threads and effort
    assert (d["settings"]["name"], d["settings"]["n_samples"], d["settings"]["effort"]) == \
        ("quick", 20, 1.5)
    assert d["settings"]["prs"] == [0.5] and "scale" not in d["settings"]


def test_intro_names_the_setting_from_the_typed_settings():
    line = _intro(_results())[-1]
    assert line == ("Setting 'quick' (effort x1.5, seed 0): flow-matching models 'tiny' trained 5 "
                    "steps each (batch 8, lr 0.001), sampled with 4 Euler steps; total time 1 s.")


def test_a_stage_result_with_a_renamed_field_fails_where_it_is_built():
    with pytest.raises(TypeError):
        FidelityRow(criterion="full", pr=0.0, n_kept=1, fid=1.0, precision=0, recall=0, f_score=0,  # fid: no field
                   k=3, n_real=1, n_generated=1, features="")


@pytest.mark.parametrize("module, old, new", [
    ("prunekit_lfm.demo", "Plan", "DemoScale"),
    ("prunekit_lfm.demo_results", "QualityRow", "FidelityRow"),
    ("prunekit_lfm.report", "quality_table", "fidelity_table"),
    ("prunekit_lfm.evaluate", "quality", "fidelity"),
])
def test_old_names_still_work_for_one_release_with_a_warning(module, old, new):
    mod = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=f"{old} is now {new}"):
        assert getattr(mod, old) is getattr(mod, new)
    with pytest.raises(AttributeError):
        mod.no_such_name  # noqa: B018


@pytest.mark.parametrize("old, new", [
    ("prunekit_lfm.paths", "prunekit_lfm.fm_path"),
    ("prunekit_lfm.shard_dir", "prunekit.io.shard_dir"),
])
def test_old_module_paths_give_the_new_module_with_a_warning(monkeypatch, old, new):
    monkeypatch.delitem(sys.modules, old, raising=False)  # imported afresh: the warning again
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        got = importlib.import_module(old)
    assert got is importlib.import_module(new)
