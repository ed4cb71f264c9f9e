"""Loss and gradient scores: values by hand, order independence, the scores file and its CLI."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from lfm_stand_ins import LinearVelocity, make_run

from prunekit.cli import main
from prunekit.errors import PrunekitError
from prunekit.selection.scores import load_scores
from prunekit.selection.subset import load_selection
from prunekit_lfm.latents import LatentStore, load_latents, save_latents
from prunekit_lfm.scoring import (
    GradNorms,
    noise_bank,
    normalise,
    raw_batches,
    score_items,
    t_grid,
)


def test_t_grid_and_normalisation_by_hand():
    np.testing.assert_allclose(t_grid(4), [0.125, 0.375, 0.625, 0.875])
    raw = np.array([[1.0, 2.0], [3.0, 6.0]])  # column means 2 and 4
    score, means = normalise(raw)
    np.testing.assert_allclose(means, [2.0, 4.0])
    np.testing.assert_allclose(score, [0.5, 1.5])
    with pytest.raises(PrunekitError, match="non-finite"):
        normalise(np.array([[np.nan, 1.0]]))


def test_noise_bank_depends_on_seed_only():
    a = noise_bank(3, 4, (2, 2, 2))
    assert torch.equal(a, noise_bank(3, 4, (2, 2, 2)))
    assert torch.equal(a[:2], noise_bank(3, 2, (2, 2, 2)))
    assert not torch.equal(a, noise_bank(4, 4, (2, 2, 2)))


def _brute_force(model, latents, labels, criterion, t_points, bank, seed):
    """r_ij by the definition: one item, one t, one noise at a time, in float64 where possible."""
    x0s = noise_bank(seed, bank, latents.shape[1:])
    out = np.zeros((latents.shape[0], t_points))
    d = latents[0].size
    for i, x1 in enumerate(torch.as_tensor(latents)):
        for j, t in enumerate(t_grid(t_points)):
            vals = []
            for x0 in x0s:
                xt = (1 - t) * x0 + t * x1
                y = torch.tensor([labels[i]])
                if criterion == "loss":
                    with torch.no_grad():
                        v = model(xt[None], torch.tensor([t], dtype=torch.float32), y)[0]
                    vals.append(float(((v - (x1 - x0)).double() ** 2).sum()) / d)
                else:  # the linear stand-in: d/dW of mean((W x + t w + e_y - u)^2)
                    vals.append(_linear_grad_norm(model, xt, x1, x0, t, int(y[0]), d))
            out[i, j] = np.mean(vals)
    return out


@torch.no_grad()
def _linear_grad_norm(model, xt, x1, x0, t, y, d):
    h = xt.flatten().double()
    w = model.maps[0].weight.double()
    res = w @ h + t * model.w.double() + model.emb[y].double() - (x1 - x0).flatten().double()
    g = 2 * res / d  # d loss / d output
    return float((g @ g) * (h @ h) + t * t * (g @ g) + g @ g)  # ||dW||^2 + ||dw||^2 + ||de_y||^2


@pytest.mark.parametrize("criterion", ["loss", "grad"])
def test_raw_batches_match_the_definition(criterion):
    model = LinearVelocity(channels=2, size=2, num_classes=2, seed=3)
    latents = np.random.default_rng(0).normal(size=(5, 2, 2, 2)).astype(np.float32)
    labels = np.array([0, 1, 2, 1, 0])  # 2 = the null label
    blocks = list(raw_batches(model, latents, labels, criterion=criterion, t_points=3, bank=2,
                              seed=7, batch_size=2, progress=False))
    assert [start for start, _ in blocks] == [0, 2, 4]
    raw = np.concatenate([block for _, block in blocks])
    ref = _brute_force(model, latents, labels, criterion, 3, 2, 7)
    np.testing.assert_allclose(raw, ref, rtol=2e-5)


def test_grad_norms_do_not_change_the_model_or_its_frozen_flags():
    model = LinearVelocity(channels=2, size=2, seed=1)
    model.w.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 2, 2, 2)
    out = GradNorms(model)(x, torch.randn(3, 2, 2, 2), torch.rand(3), torch.zeros(3, dtype=torch.long))
    assert out.shape == (3,) and (out > 0).all()
    assert not model.w.requires_grad and model.maps[0].weight.requires_grad
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A conditional tiny run and a 12-item latent store it fits (4x4x4 latents, string ids)."""
    base = tmp_path_factory.mktemp("score")
    run = make_run(base / "run", "tiny", seed=5, num_classes=3)
    rng = np.random.default_rng(1)
    store = LatentStore(latents=rng.normal(size=(12, 4, 4, 4)).astype(np.float32),
                        ids=np.array([f"img{i:02d}.png" for i in range(12)], dtype=object),
                        labels=rng.integers(0, 3, 12))
    path = save_latents(base / "latents.h5", store)
    return run, path, base


@pytest.mark.parametrize("criterion", ["loss", "grad"])
def test_scores_do_not_depend_on_item_order(data, tmp_path, criterion):
    run, path, _ = data
    store = load_latents(path)
    perm = np.random.default_rng(2).permutation(store.n)
    shuffled = save_latents(tmp_path / "shuffled.h5", LatentStore(
        latents=store.latents[perm], ids=store.ids[perm], labels=store.labels[perm]))
    kw = dict(criterion=criterion, t_points=3, noise_bank=2, seed=0, batch_size=5, progress=False)
    a = score_items(run, path, **kw)
    b = score_items(run, shuffled, **kw)
    by_id = dict(zip(b.ids.tolist(), b.score, strict=True))
    np.testing.assert_allclose(a.score, [by_id[i] for i in a.ids.tolist()], rtol=1e-6)
    assert a.score.mean() == pytest.approx(1.0)  # each t's column has mean 1 after normalising
    assert np.ptp(a.score) > 0.01


def test_score_file_contract_and_determinism(data, tmp_path):
    run, path, _ = data
    out = tmp_path / "scores.h5"
    args = ["lfm", "score", str(run), str(path), "--t-points", "3", "--noise-bank", "2",
            "--device", "cpu", "-o", str(out), "-q"]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    sc = load_scores(out)
    store = load_latents(path)
    assert sc.method == "loss" and sc.n_total == 12
    assert sc.ids.tolist() == store.ids.tolist() and sc.labels.tolist() == store.labels.tolist()
    assert sc.source == str(path) and sc.source_fingerprint == store.fingerprint
    assert sc.params["t_grid"] == [1 / 6, 0.5, 5 / 6] and sc.params["noise_bank"] == 2
    ref = score_items(run, path, t_points=3, noise_bank=2, seed=0, progress=False)
    assert np.array_equal(sc.score, ref.score)
    other = score_items(run, path, t_points=3, noise_bank=2, seed=1, progress=False)
    assert not np.allclose(other.score, ref.score)


def test_prunekit_select_reads_the_scores(data, tmp_path):
    run, path, _ = data
    scores = tmp_path / "scores.h5"
    sc = score_items(run, path, t_points=2, noise_bank=1, progress=False)
    sc.save(scores)
    order = np.argsort(-sc.score, kind="stable")
    for flag, expect in (([], order[:6]), (["--invert"], order[6:])):
        sel_path = tmp_path / "sel.h5"
        r = CliRunner().invoke(main, ["select", str(scores), "--pr", "0.5", *flag, "-o", str(sel_path)],
                               catch_exceptions=False)
        assert r.exit_code == 0, r.output
        sel = load_selection(sel_path)
        assert sel.indices.tolist() == sorted(expect.tolist())
        assert sel.ids.tolist() == [f"img{i:02d}.png" for i in sorted(expect.tolist())]


def test_score_cli_errors_exit_2_and_write_nothing(data, tmp_path):
    run, path, base = data
    wrong = save_latents(tmp_path / "wrong.h5", LatentStore(
        latents=np.zeros((3, 4, 8, 8), np.float32), ids=np.arange(3)))
    cases = [
        ([str(tmp_path / "missing"), str(path)], "run directory not found"),
        ([str(run), str(tmp_path / "missing.h5")], "not found"),
        ([str(run), str(wrong)], "shape"),
        ([str(run), str(path), "--t-points", "0"], "--t-points"),
        ([str(run), str(path), "--noise-bank", "0"], "--noise-bank"),
    ]
    out = tmp_path / "scores.h5"
    for args, message in cases:
        r = CliRunner().invoke(main, ["lfm", "score", *args, "--device", "cpu", "-o", str(out)])
        assert r.exit_code == 2, (args, r.output)
        assert "Error" in r.output and message in r.output and "Traceback" not in r.output
        assert not out.exists()
    r = CliRunner().invoke(main, ["lfm", "score", str(run), str(path), "--criterion", "bogus"])
    assert r.exit_code == 2 and not out.exists()
    with h5py.File(path) as f:  # the input is untouched
        assert f["latents"].shape == (12, 4, 4, 4)


def test_a_trained_run_samples_and_scores_from_the_cli(data, tmp_path):
    from prunekit_lfm.train import train

    _, path, _ = data
    run = tmp_path / "run"
    train(str(path), str(run), model="tiny", steps=2, batch_size=4, conditional=True, seed=0,
          progress=False, device="cpu")
    out = tmp_path / "scores.h5"
    r = CliRunner().invoke(main, ["lfm", "score", str(run), str(path), "--no-ema", "--t-points", "2",
                                  "--noise-bank", "1", "--device", "cpu", "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert load_scores(out).params["steps_done"] == 2
    samples = tmp_path / "s.h5"
    r = CliRunner().invoke(main, ["lfm", "sample", str(run), "--n", "2", "--steps", "2", "--cfg", "2",
                                  "--labels", "1", "--device", "cpu", "-o", str(samples), "-q"])
    assert r.exit_code == 0, r.output
    with h5py.File(samples) as f:
        assert f["labels"][()].tolist() == [1, 1] and f.attrs["model_calls"] == 2
