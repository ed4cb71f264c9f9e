"""`prunekit demo --quick` end to end, and `prunekit lfm compare` / `metrics` on its runs.

One quick demo runs per module (about 1.5 minutes on 2 CPU cores). Two full quick runs
would exceed the test budget, so same-seed reproducibility is checked by rerunning cheap
deterministic sub-steps: training one subset model again from the demo's latents and
selection (weights must be bit-identical) and recomputing that model's evaluation
(numbers must equal those in results.json exactly).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from prunekit.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The quick demo's output, made once per test session even under pytest -n (xdist).

    xdist workers share the parent of their temporary folders; a file lock lets the first
    worker run the demo and the others reuse it.
    """
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out = shared / "demo-quick"
    with FileLock(str(shared / "demo-quick.lock")):
        if not (out / "report" / "results.json").is_file():
            res = CliRunner().invoke(main, ["demo", "--quick", "-o", str(out), "--quiet"])
            assert res.exit_code == 0, res.output + repr(res.exception)
            assert "index.html" in res.output
    return out


@pytest.fixture(scope="module")
def results(demo) -> dict:
    return json.loads((demo / "report" / "results.json").read_text())


def test_files_exist(demo):
    report = demo / "report"
    for name in ("index.html", "report.md", "results.json"):
        assert (report / name).stat().st_size > 0
    for name in ("samples.png", "pr_curves.png", "c2f.png", "stability.png"):
        assert (report / name).read_bytes()[:8] == PNG
    assert (demo / "vae" / "config.json").is_file()
    assert (demo / "data" / "latents.h5").is_file()
    assert (demo / "data" / "digits_classifier.pt").is_file()
    for model in ("full", "random_0.5", "kmeans-furthest_0.5", "loss_0.5", "drop-clusters_0.5"):
        assert (demo / "runs" / model / "ema.safetensors").is_file()
    assert (demo / "selections" / "random_0.5.h5").is_file()
    html = (report / "index.html").read_text()
    assert "not Inception" in html and "<img src='samples.png'" in html


def _tables(markdown: str) -> list[list[list[str]]]:
    """Every pipe table of a Markdown text as rows of cells (header first, rule dropped)."""
    tables, current = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r"-+", c) for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def test_markdown_tables_parse_and_match_results(demo, results):
    tables = _tables((demo / "report" / "report.md").read_text())
    assert len(tables) == 5
    for t in tables:
        assert len({len(r) for r in t}) == 1  # every row as wide as the header
    fidelity = next(t for t in tables if t[0][:5] == ["model", "criterion", "pr", "kept", "FD"])
    rows = {r[0]: r for r in fidelity[1:]}
    assert set(rows) == set(results["evaluation"]["fidelity"])
    for name, r in rows.items():
        q = results["evaluation"]["fidelity"][name]
        assert float(r[4]) == pytest.approx(q["fd"], abs=0.006)
        assert float(r[5]) == pytest.approx(q["precision"], abs=0.0006)
        assert float(r[6]) == pytest.approx(q["recall"], abs=0.0006)


def test_numbers_in_sane_ranges(results):
    d = results["data"]
    assert d["n_train"] + d["n_test"] == 1797
    assert d["classifier_test_accuracy"] > 0.9
    assert "VAE latents flattened" in results["pruning"]["embeddings"]
    assert "not Inception" in d["features"]
    fidelity = results["evaluation"]["fidelity"]
    for q in fidelity.values():
        assert 0 <= q["precision"] <= 1 and 0 <= q["recall"] <= 1 and 0 <= q["f_score"] <= 1
        assert math.isfinite(q["fd"]) and q["fd"] >= 0
        assert q["n_real"] == d["n_test"] and q["k"] == 3
    # real images against real images are the quality floor
    assert fidelity["real training images"]["fd"] < fidelity["full"]["fd"]
    sel = results["pruning"]["selections"]
    kept = {s["n_kept"] for name, s in sel.items() if s["criterion"] != "drop-clusters"}
    assert kept == {718}  # round(0.5 * 1437) = round(718.5), half to even
    drop = sel["drop-clusters@0.5"]
    assert drop["clusters_present"] == 5 and len(drop["dropped_clusters"]) == 5
    assert drop["n_kept"] <= 718 and sum(drop["kept_per_cluster"]) == drop["n_kept"]
    for name, s in results["evaluation"]["similarity"].items():
        m = s["measures"]
        assert set(m) == {"latent_cosine", "latent_mse", "psnr", "ssim", "feature_cosine"}
        for key in ("latent_cosine", "feature_cosine", "ssim"):
            assert -1 <= m[key]["pairs"]["mean"] <= 1 and -1 <= m[key]["baseline"]["mean"] <= 1
            assert sum(m[key]["pairs"]["histogram"]["counts"]) == s["n"]
        # the same noise gives closer latents than unrelated noise
        assert m["latent_cosine"]["pairs"]["mean"] > m["latent_cosine"]["baseline"]["mean"], name
    rows = results["c2f"]["rows"]
    assert rows[0]["t_switch"] == 0 and rows[0]["flops_ratio"] == 1 and rows[0]["latent_cos_to_fine_mean"] == pytest.approx(1)
    ratios = [r["flops_ratio"] for r in rows]
    assert all(a > b for a, b in zip(ratios, ratios[1:], strict=False))  # more coarse steps, fewer FLOPs
    assert results["c2f"]["auto_t_switch"] in [r["t_switch"] for r in rows]
    for r in results["stability"]["rows"]:
        assert 0 <= r["unchanged_fraction"] <= 1 and r["path_deviation_median"] >= 0
    # every stage is timed, and the timings (the only numbers that vary) are kept apart
    stages = {"data", "vae", "scores", "train", "evaluate", "c2f", "stability"}
    assert set(results["timings"]) == stages | {"total", "c2f_wall"}
    rounding = 0.0005 * (len(stages) + 1) + 1e-9  # each timing is rounded to 1 ms
    assert sum(results["timings"][s] for s in stages) <= results["timings"]["total"] + rounding
    assert set(results["timings"]["c2f_wall"]) == {f"{r['t_switch']:g}" for r in rows}


def test_same_seed_rerun_of_a_sub_step_is_identical(demo, results, tmp_path):
    from prunekit_lfm.demo import QUICK
    from prunekit_lfm.evaluate import fidelity, paired_similarity, to_unit
    from prunekit_lfm.features import digits_split, get_extractor
    from prunekit_lfm.generate import draw
    from prunekit_lfm.latents import load_images
    from prunekit_lfm.sampling import SamplingConfig
    from prunekit_lfm.train import train

    p = QUICK
    rerun = tmp_path / "random_0.5"
    train(str(demo / "data" / "latents.h5"), str(rerun), model=p.model, selection=str(demo / "selections" / "random_0.5.h5"),
          steps=p.lfm_steps, batch_size=p.batch_size, lr=p.lr, ema=p.ema, seed=0, checkpoint_every=p.lfm_steps,
          progress=False)
    for f in ("model.safetensors", "ema.safetensors"):
        assert (rerun / f).read_bytes() == (demo / "runs" / "random_0.5" / f).read_bytes()

    extractor = get_extractor(f"digits-classifier:{demo / 'data' / 'digits_classifier.pt'}")
    config = SamplingConfig(steps=p.sample_steps, seed=0, device="cpu")
    full, _ = draw(demo / "runs" / "full", p.n_samples, config, vae=str(demo / "vae"), name="full")
    mine, _ = draw(rerun, p.n_samples, config, vae=str(demo / "vae"), name="random@0.5")
    sim = paired_similarity(full, mine, extractor)
    assert sim["measures"] == results["evaluation"]["similarity"]["random@0.5"]["measures"]
    real = to_unit(load_images("digits", p.image_size)[0][digits_split(0)[1]])
    q = fidelity(mine.images, real, extractor)
    for key in ("fd", "precision", "recall", "f_score"):
        assert q[key] == results["evaluation"]["fidelity"]["random@0.5"][key]


def test_compare_cli_reproduces_the_demo_numbers(demo, results, tmp_path):
    out = tmp_path / "compare.json"
    clf = demo / "data" / "digits_classifier.pt"
    args = ["lfm", "compare", str(demo / "runs" / "full"), str(demo / "runs" / "random_0.5"), "--n", "64",
            "--steps", "12", "--features", f"digits-classifier:{clf}", "-o", str(out), "--quiet"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    got = json.loads(out.read_text())
    want = results["evaluation"]["similarity"]["random@0.5"]["measures"]
    for key in want:
        assert got["measures"][key]["pairs"]["mean"] == pytest.approx(want[key]["pairs"]["mean"], rel=1e-12)
        assert got["measures"][key]["baseline"]["mean"] == pytest.approx(want[key]["baseline"]["mean"], rel=1e-12)
    assert "latent cosine" in res.output


def test_compare_a_run_with_itself(demo, tmp_path):
    out = tmp_path / "self.json"
    run = str(demo / "runs" / "full")
    res = CliRunner().invoke(main, ["lfm", "compare", run, run, "--n", "16", "--steps", "4", "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    m = json.loads(out.read_text())["measures"]
    assert m["latent_cosine"]["pairs"]["mean"] == pytest.approx(1.0)
    assert m["latent_mse"]["pairs"]["max"] == 0.0
    assert m["ssim"]["pairs"]["min"] == pytest.approx(1.0)
    assert m["psnr"]["pairs"]["n_infinite"] == 16
    assert m["latent_cosine"]["baseline"]["mean"] < 0.99


def test_compare_c2f_side_at_zero_equals_fine_only(demo, tmp_path):
    out = tmp_path / "c2f.json"
    full, rnd = str(demo / "runs" / "full"), str(demo / "runs" / "random_0.5")
    res = CliRunner().invoke(main, ["lfm", "compare", full, full, "--coarse-b", rnd, "--t-switch-b", "0",
                                    "--n", "8", "--steps", "4", "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["measures"]["latent_mse"]["pairs"]["max"] == 0.0


def test_metrics_cli_real_against_itself(demo, tmp_path):
    from prunekit_lfm.features import digits_images, digits_split

    images, _ = digits_images()
    path = tmp_path / "held_out.npy"
    np.save(path, images[digits_split(0)[1]])  # (N, 8, 8) floats in [0, 1]
    out = tmp_path / "metrics.json"
    res = CliRunner().invoke(main, ["lfm", "metrics", str(path), "--real", "digits-test", "--features",
                                    f"digits-classifier:{demo / 'data' / 'digits_classifier.pt'}", "-o", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    m = json.loads(out.read_text())
    assert m["fd"] == pytest.approx(0.0, abs=1e-6)
    assert (m["precision"], m["recall"], m["n_real"], m["n_generated"]) == (1.0, 1.0, 360, 360)


@pytest.mark.parametrize(
    "args, message",
    [
        (["lfm", "metrics", "missing.npy", "--real", "digits-test"], "not found"),
        (["lfm", "metrics", "{held}", "--real", "digits-test", "--features", "inception"], "unknown feature extractor"),
        (["lfm", "metrics", "{held}", "--real", "digits-test", "--k", "0"], "--k"),
        (["lfm", "compare", "nope_a", "nope_b"], "run directory not found"),
        (["lfm", "compare", "nope_a", "nope_b", "--coarse-a", "x"], "go together"),
        (["demo", "--effort", "0"], "--effort"),
        (["demo", "--budget", "0"], "--budget"),  # the old name, checked under its own name
        (["demo", "--effort", "2", "--budget", "2"], "give --effort alone"),
    ],
)
def test_cli_errors_exit_2_and_write_nothing(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "held.npy", np.zeros((4, 8, 8), dtype=np.float32))
    args = [a.replace("{held}", str(tmp_path / "held.npy")) for a in args]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["held.npy"]


def test_demo_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    res = CliRunner().invoke(main, ["demo", "--quick", "-o", str(tmp_path), "-q"])
    assert res.exit_code == 2 and "not written by `prunekit demo`" in res.output
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_budget_is_a_hidden_deprecated_alias_of_effort(tmp_path):
    help_text = CliRunner().invoke(main, ["demo", "--help"]).output
    assert "--effort" in help_text and "--budget" not in help_text
    # accepted (2 is a valid factor) with a warning; --threads 0 then stops it before any work
    res = CliRunner().invoke(main, ["demo", "--budget", "2", "--threads", "0", "-o", str(tmp_path / "d")])
    assert res.exit_code == 2 and "--threads must be at least 1" in res.output
    assert "Warning: --budget is now --effort" in res.output and not (tmp_path / "d").exists()


def test_the_loss_selection_is_tied_to_the_embeddings_it_is_studied_on(demo, results):
    """The loss scores come from the latent store; they carry the fingerprint of the
    flattened latents the demo selects, inspects and studies on (and the store's in params)."""
    import h5py

    import prunekit as pk
    from prunekit.flow.study import selection_subset
    from prunekit.selection.subset import load_selection
    from prunekit_lfm.latents import load_latents

    store = load_latents(demo / "data" / "latents.h5")
    flat = store.latents.reshape(store.n, -1).astype(np.float64)
    emb = pk.Embeddings.from_array(flat, ids=store.ids, labels=store.labels)
    kmeans, loss = (load_selection(demo / "selections" / f"{m}_0.5.h5")
                    for m in ("kmeans-furthest", "loss"))
    assert loss.source_fingerprint == kmeans.source_fingerprint == emb.fingerprint
    with h5py.File(demo / "selections" / "scores_loss.h5") as f:
        assert json.loads(f.attrs["params"])["latents_fingerprint"] == store.fingerprint
    assert selection_subset(loss, emb, "loss@0.5").rows.size == 718
    stab = {r["model"]: r for r in results["stability"]["rows"]}
    assert stab["loss@0.5"]["n_kept"] == 718
