"""The flow-matching path and loss, the trainer, run directories, exact resume, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from prunekit.cli import main
from prunekit.errors import PrunekitError
from prunekit.selection.subset import Selection
from prunekit_lfm import runs
from prunekit_lfm.fm_path import fm_loss, interpolate, sample_t, target
from prunekit_lfm.latents import LatentStore, save_latents
from prunekit_lfm.models import build_model
from prunekit_lfm.train import DataOrder, Dist, _Trainer, train

torch.set_num_threads(1)
FAST = dict(model="tiny", batch_size=8, lr=1e-3, progress=False, device="cpu")


# ----------------------------------------------------------------------------- flow


def test_path_endpoints_midpoint_and_target():
    x0, x1 = torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 4.0]])
    assert interpolate(x0, x1, torch.tensor([0.0])).tolist() == [[1.0, -2.0]]
    assert interpolate(x0, x1, torch.tensor([1.0])).tolist() == [[3.0, 4.0]]
    assert interpolate(x0, x1, 0.5).tolist() == [[2.0, 1.0]]
    assert target(x0, x1).tolist() == [[2.0, 6.0]]
    # per-item t broadcasts over the other dimensions
    xb = interpolate(torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2), torch.tensor([0.25, 0.75]))
    assert xb[0].unique().tolist() == [0.25] and xb[1].unique().tolist() == [0.75]


def test_fm_loss_hand_computed_and_zero_for_the_exact_velocity():
    x0 = torch.tensor([[[[1.0, 2.0]]], [[[0.0, -1.0]]]])  # [2, 1, 1, 2]
    x1 = torch.tensor([[[[1.0, 0.0]]], [[[2.0, 1.0]]]])
    t = torch.tensor([0.3, 0.6])
    zero = lambda x, t, y: torch.zeros_like(x)  # noqa: E731
    # (x1 - x0)^2 per item: [0, 4] -> mean 2 ; [4, 4] -> mean 4
    assert fm_loss(zero, x1, x0, t, reduction="none").tolist() == [2.0, 4.0]
    assert fm_loss(zero, x1, x0, t).item() == 3.0
    # data at the origin: x_t = (1 - t) x0, so v = -x / (1 - t) is exact
    exact = lambda x, t, y: -x / (1 - t.reshape(-1, 1, 1, 1))  # noqa: E731
    assert fm_loss(exact, torch.zeros_like(x0), x0, t).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(PrunekitError, match="reduction"):
        fm_loss(zero, x1, x0, t, reduction="sum")


def test_sample_t_ranges_seeding_and_schedules():
    a = sample_t(1000, torch.Generator().manual_seed(0))
    b = sample_t(1000, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.dtype == torch.float32 and 0 <= a.min() and a.max() < 1
    ln = sample_t(4000, torch.Generator().manual_seed(1), "logit_normal")
    assert 0 < ln.min() and ln.max() < 1
    assert abs(ln.median().item() - 0.5) < 0.03 and ln.std() < a.std()  # concentrated mid-path
    with pytest.raises(PrunekitError, match="t schedule"):
        sample_t(3, None, "cosine")


def test_data_order_is_endless_epoch_permutations():
    order = DataOrder(n=5, batch=3, seed=0)
    stream = torch.cat([order.batch_rows(s) for s in range(5)])  # 15 positions = 3 epochs
    for e in range(3):
        assert sorted(stream[5 * e: 5 * e + 5].tolist()) == [0, 1, 2, 3, 4]
        assert torch.equal(stream[5 * e: 5 * e + 5], order.permutation(e))
    assert torch.equal(DataOrder(5, 3, 0).batch_rows(3), order.batch_rows(3))
    assert not torch.equal(DataOrder(5, 5, 1).batch_rows(0), DataOrder(5, 5, 0).batch_rows(0))
    assert order.position(4) == {"epoch": 2, "offset": 2}


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 13), batch=st.integers(1, 9), seed=st.integers(0, 2**31), steps=st.integers(1, 6))
def test_data_order_property_every_epoch_is_a_permutation(n, batch, seed, steps):
    order = DataOrder(n, batch, seed)
    stream = torch.cat([order.batch_rows(s) for s in range(steps)]).tolist()
    for start in range(0, len(stream) - n + 1, n):
        assert sorted(stream[start:start + n]) == list(range(n))
    assert order.position(steps) == {"epoch": steps * batch // n, "offset": steps * batch % n}


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    """48 latents [4, 4, 4] in three separated clusters, labelled, with string ids."""
    d = tmp_path_factory.mktemp("lat")
    rng = np.random.default_rng(0)
    labels = np.arange(48) % 3
    centers = np.array([-1.5, 0.0, 1.5], np.float32)[labels]
    z = centers[:, None, None, None] + 0.2 * rng.standard_normal((48, 4, 4, 4)).astype(np.float32)
    path = d / "latents.h5"
    save_latents(path, LatentStore(z, np.array([f"img{i:02d}.png" for i in range(48)], dtype=object),
                                   labels=labels, scale_factor=0.5, vae="/vaes/x", image_size=8))
    return path


def _losses(run_dir):
    return [r["loss"] for r in runs.read_log(run_dir)]


def test_loss_decreases_on_a_tiny_run(latents, tmp_path):
    train(str(latents), str(tmp_path / "run"), steps=60, checkpoint_every=100, seed=0, **FAST)
    losses = _losses(tmp_path / "run")
    assert len(losses) == 60 and [r["step"] for r in runs.read_log(tmp_path / "run")] == list(range(1, 61))
    assert np.mean(losses[-10:]) < 0.75 * np.mean(losses[:10])


def test_run_dir_layout_config_and_load_run(latents, tmp_path):
    run = tmp_path / "run"
    cfg = train(str(latents), str(run), steps=4, checkpoint_every=2, seed=3, conditional=True, **FAST)
    assert sorted(p.name for p in run.iterdir()) == sorted(
        [runs.CONFIG, runs.MODEL, runs.EMA, runs.OPTIMIZER, runs.TRAINER_STATE, runs.LOG, runs.LOCK])
    stored = json.loads((run / runs.CONFIG).read_text())
    assert stored["steps_done"] == 4 and stored["num_classes"] == 3 and stored["conditional"]
    assert stored["model"]["preset"] == "tiny" and stored["scale_factor"] == 0.5
    assert stored["vae"] == "/vaes/x" and stored["n_train"] == 48 and stored["sample_size"] == 4
    assert stored["latents"] == str(latents.resolve()) and len(stored["latents_fingerprint"]) == 32
    state = runs.read_trainer_state(run)
    assert state["step"] == 4 and state["data_position"] == {"epoch": 0, "offset": 32}
    moments = load_file(str(run / runs.OPTIMIZER))  # AdamW: step, exp_avg, exp_avg_sq per parameter
    n_params = len(list(runs.load_run(run)[0].parameters()))
    assert len(moments) == 3 * n_params and all(k.startswith("state.") for k in moments)
    model, config = runs.load_run(run)
    assert not model.training and config == cfg and model.num_classes == 3
    ema_sd, raw = model.state_dict(), runs.load_run(run, ema=False)[0].state_dict()
    assert any(not torch.equal(ema_sd[k], raw[k]) for k in raw)  # the EMA lags the weights


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    g = torch.Generator().manual_seed(0)
    m = build_model("tiny", sample_size=4, in_channels=4, num_classes=2)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    runs.save_weights(tmp_path / "w.safetensors", m, 7)
    fresh = build_model("tiny", sample_size=4, in_channels=4, num_classes=2, seed=99)
    runs.load_weights(tmp_path / "w.safetensors", fresh)
    assert runs.weights_step(tmp_path / "w.safetensors") == 7
    blocks = fresh.net.transformer_blocks
    shared = zip(blocks[1].norm1.emb.parameters(), blocks[0].norm1.emb.parameters(), strict=True)
    assert all(p is q for p, q in shared)  # the shared embedder stays shared
    x, t, y = torch.randn(3, 4, 4, 4, generator=g), torch.rand(3, generator=g), torch.tensor([0, 1, 2])
    assert torch.equal(m.eval()(x, t, y), fresh.eval()(x, t, y))
    other = build_model("small", sample_size=4, in_channels=4)
    with pytest.raises(PrunekitError, match="does not fit"):
        runs.load_weights(tmp_path / "w.safetensors", other)


def test_same_seed_same_weight_bytes(latents, tmp_path):
    for name in ("a", "b"):
        train(str(latents), str(tmp_path / name), steps=3, seed=5, **FAST)
    for f in (runs.MODEL, runs.EMA):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")


def test_resume_continues_exactly(latents, tmp_path, monkeypatch):
    opts = dict(seed=1, conditional=True, checkpoint_every=4, **FAST)
    train(str(latents), str(tmp_path / "full"), steps=14, **opts)
    # an interrupted run: it crashes during step 7, after the checkpoint at step 4
    original = _Trainer.train_step

    def crash(self, step):
        if step == 6:
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(_Trainer, "train_step", crash)
    with pytest.raises(KeyboardInterrupt):
        train(str(latents), str(tmp_path / "cut"), steps=14, **opts)
    monkeypatch.setattr(_Trainer, "train_step", original)
    assert runs.read_config(tmp_path / "cut").steps_done == 4 and len(_losses(tmp_path / "cut")) == 4
    train(str(latents), str(tmp_path / "cut"), steps=14, resume=True, **opts)
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "full")
    for f in (runs.MODEL, runs.EMA):
        assert (tmp_path / "cut" / f).read_bytes() == (tmp_path / "full" / f).read_bytes()
    # resuming a finished run with more steps extends it
    cfg = train(str(latents), str(tmp_path / "cut"), steps=16, resume=True, **opts)
    assert cfg.steps_done == 16 and len(_losses(tmp_path / "cut")) == 16


def test_resume_refuses_other_settings_and_fresh_runs_refuse_used_dirs(latents, tmp_path):
    run = tmp_path / "run"
    train(str(latents), str(run), steps=2, seed=0, **FAST)
    with pytest.raises(PrunekitError, match=r"lr: run has 0.001, now 0.01"):
        train(str(latents), str(run), steps=4, seed=0, resume=True, **{**FAST, "lr": 1e-2})
    with pytest.raises(PrunekitError, match="not empty; pass resume=True"):
        train(str(latents), str(run), steps=2, seed=0, **FAST)
    with pytest.raises(PrunekitError, match="holds no run"):
        train(str(latents), str(tmp_path / "none"), steps=2, resume=True, **FAST)
    (tmp_path / "file").write_text("x")
    with pytest.raises(PrunekitError, match="is a file"):
        train(str(latents), str(tmp_path / "file"), steps=2, **FAST)


def test_label_dropout_and_unconditional_null_labels(latents, tmp_path):
    def first_batch(conditional, dropout):
        from prunekit_lfm.latents import load_latents

        store = load_latents(latents)
        cfg = runs.TrainConfig(model={}, sample_size=4, in_channels=4, num_classes=3 if conditional else 0,
                             conditional=conditional, latents="", batch_size=48, cfg_dropout=dropout)
        net = build_model("tiny", sample_size=4, in_channels=4, num_classes=cfg.num_classes)
        tr = _Trainer(cfg, net, store, np.arange(48), tmp_path, Dist(), torch.device("cpu"))
        return tr.batch(0), tr.labels, tr.order.batch_rows(0)

    (x1, x0, t, y), labels, rows = first_batch(True, 0.0)
    assert torch.equal(y, labels[rows])  # no dropout: the true labels
    (_, _, _, y), labels, rows = first_batch(True, 0.5)
    dropped = y == 3
    assert 10 < dropped.sum() < 38 and torch.equal(y[~dropped], labels[rows][~dropped])
    (_, _, _, y), _, _ = first_batch(False, 0.5)
    assert y.tolist() == [0] * 48  # unconditional: the null label (= num_classes = 0)


def test_conditional_needs_labels(tmp_path):
    path = tmp_path / "l.h5"
    save_latents(path, LatentStore(np.zeros((4, 4, 4, 4), np.float32), np.arange(4)))
    with pytest.raises(PrunekitError, match="conditional needs labels"):
        train(str(path), str(tmp_path / "run"), steps=1, conditional=True, **FAST)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- selections


def test_selection_applied_by_ids_with_counts(latents, tmp_path):
    ids = np.array(["img05.png", "img01.png", "img40.png"], dtype=object)
    sel = tmp_path / "sel.h5"
    Selection(indices=[0, 1, 2], n_total=99, pr=0.5, ids=ids, counts=[1, 2, 3]).save(sel)
    run = tmp_path / "run"
    cfg = train(str(latents), str(run), selection=str(sel), steps=1, **{**FAST, "batch_size": 6})
    assert cfg.n_train == 6 and cfg.selection == str(sel.resolve())
    from prunekit_lfm.latents import load_latents
    from prunekit_lfm.train import _training_rows

    rows, _ = _training_rows(load_latents(latents), str(latents), str(sel))
    assert rows.tolist() == [5, 1, 1, 40, 40, 40]


def test_selection_mismatches_name_both_files(latents, tmp_path):
    bad_ids = tmp_path / "bad_ids.h5"
    Selection(indices=[0], n_total=48, pr=0.9, ids=np.array(["nope.png"], dtype=object)).save(bad_ids)
    with pytest.raises(PrunekitError, match=r"selection file .*bad_ids.h5 has 1 ids that latents file .*latents.h5 lacks"):
        train(str(latents), str(tmp_path / "r1"), selection=str(bad_ids), steps=1, **FAST)
    plain = tmp_path / "plain.h5"
    save_latents(plain, LatentStore(np.zeros((10, 4, 4, 4), np.float32), np.arange(10)))
    wrong_n = tmp_path / "wrong_n.h5"
    Selection(indices=[0, 3], n_total=12, pr=0.8).save(wrong_n)
    with pytest.raises(PrunekitError, match=r"wrong_n.h5 was made for 12 rows but latents file .*plain.h5 has 10"):
        train(str(plain), str(tmp_path / "r2"), selection=str(wrong_n), steps=1, **FAST)
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_selection_from_another_data_set_with_position_ids_exits_2(tmp_path):
    # Both files have integer ids 0..n-1 (positions): every id of the 7-row selection
    # exists among the 10 latents, but the rows are unrelated.
    plain = tmp_path / "plain.h5"
    save_latents(plain, LatentStore(np.zeros((10, 4, 4, 4), np.float32), np.arange(10)))
    other = tmp_path / "other.h5"
    Selection(indices=[0, 3, 4], n_total=7, pr=0.5, ids=np.array([0, 3, 4])).save(other)
    run = tmp_path / "run"
    r = _cli(plain, "--selection", other, "-o", run, "--steps", 1, "--batch-size", 4, "--device", "cpu", "-q")
    assert r.exit_code == 2, r.output
    assert "other.h5 was made for 7 rows but latents file" in r.output and "plain.h5 has 10" in r.output
    assert "Traceback" not in r.output and not run.exists()


# ----------------------------------------------------------------------------- CLI


def _cli(*args):
    return CliRunner().invoke(main, ["lfm", "train", *map(str, args)])


def test_cli_trains_and_resumes(latents, tmp_path):
    run = tmp_path / "run"
    r = _cli(latents, "--model", "tiny", "-o", run, "--steps", 2, "--batch-size", 4, "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    assert "trained 2 steps on 48 latents" in r.output
    r = _cli(latents, "-o", run, "--steps", 3, "--batch-size", 4, "--device", "cpu", "--resume", "-q")
    assert r.exit_code == 0, r.output
    assert runs.read_config(run).steps_done == 3


def test_cli_names_a_json_model_by_what_it_is(latents, tmp_path):
    spec = tmp_path / "model.json"
    spec.write_text(json.dumps({"preset": "tiny", "num_layers": 1}))
    r = _cli(latents, "--model", spec, "-o", tmp_path / "run", "--steps", 1, "--batch-size", 4, "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    assert "custom model (from preset tiny) trained 1 steps" in r.output
    spec.write_text(json.dumps({"preset": "tiny"}))
    r = _cli(latents, "--model", spec, "-o", tmp_path / "run2", "--steps", 1, "--batch-size", 4, "--device", "cpu", "-q")
    assert "run2: tiny trained 1 steps" in r.output


@pytest.mark.parametrize("args,message", [
    (["{tmp}/missing.h5", "-o", "{tmp}/run"], "latents file not found"),
    (["{lat}", "-o", "{tmp}/run", "--model", "DiT-Q/2"], "not a preset"),
    (["{lat}", "-o", "{tmp}/run", "--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["{lat}", "-o", "{tmp}/run", "--ema", "1.5"], "ema must be"),
    (["{lat}", "-o", "{tmp}/run", "--checkpoint-every", "0"], "--checkpoint-every must be an integer >= 1"),
    (["{lat}", "-o", "{tmp}/run", "--selection", "{tmp}/nosel.h5"], "selection file not found"),
    (["{lat}", "-o", "{tmp}/run", "--resume"], "holds no run"),
])
def test_cli_errors_exit_2_and_write_nothing(latents, tmp_path, args, message):
    args = [a.format(tmp=tmp_path, lat=latents) for a in args]
    r = _cli(*args, "--steps", 1, "--device", "cpu", "-q")
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
    assert r.output.startswith("Error:")
    assert not (tmp_path / "run").exists()


def test_cli_refuses_a_used_run_dir_and_leaves_it_alone(latents, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("keep me")
    r = _cli(latents, "-o", run, "--steps", 1, "--device", "cpu", "-q")
    assert r.exit_code == 2 and "not empty" in r.output
    assert [p.name for p in run.iterdir()] == ["notes.txt"]


def test_ranks_shard_one_global_batch_and_its_noise(latents, tmp_path):
    """Two torchrun ranks see exactly the interleaved halves of the single-process batch."""
    from prunekit_lfm.latents import load_latents

    store = load_latents(latents)

    def batch(rank, world):
        cfg = runs.TrainConfig(model={}, sample_size=4, in_channels=4, num_classes=3, conditional=True,
                             latents="", batch_size=8, cfg_dropout=0.3, seed=2)
        net = build_model("tiny", sample_size=4, in_channels=4, num_classes=3)
        tr = _Trainer(cfg, net, store, np.arange(48), tmp_path, Dist(rank, world), torch.device("cpu"))
        return tr.batch(5)

    whole = batch(0, 1)
    halves = [batch(r, 2) for r in range(2)]
    for i, full in enumerate(whole):
        assert torch.equal(full[0::2], halves[0][i]) and torch.equal(full[1::2], halves[1][i])


def test_resume_refuses_a_checkpoint_whose_files_disagree(latents, tmp_path):
    run = tmp_path / "run"
    train(str(latents), str(run), steps=2, checkpoint_every=1, seed=0, **FAST)
    saved = (run / runs.EMA).read_bytes()
    train(str(latents), str(run), steps=3, resume=True, checkpoint_every=1, seed=0, **FAST)
    (run / runs.EMA).write_bytes(saved)  # as if the write of step 3's EMA never happened
    with pytest.raises(PrunekitError, match=r"disagree on the step \(\[2, 3\]\)"):
        train(str(latents), str(run), steps=4, resume=True, checkpoint_every=1, seed=0, **FAST)
    (run / runs.EMA).unlink()
    with pytest.raises(PrunekitError, match="missing ema.safetensors"):
        train(str(latents), str(run), steps=4, resume=True, checkpoint_every=1, seed=0, **FAST)


def test_a_conditional_unet_trains_and_loads(latents, tmp_path):
    run = tmp_path / "unet"
    train(str(latents), str(run), steps=2, seed=0, conditional=True, **{**FAST, "model": "unet-tiny"})
    model, cfg = runs.load_run(run, ema=False)
    assert cfg.model["preset"] == "unet-tiny" and model.net.class_embedding.num_embeddings == 4
    x = torch.zeros(2, 4, 4, 4)
    assert model(x, torch.tensor([0.1, 0.9]), torch.tensor([0, 3])).shape == x.shape


@pytest.mark.slow
def test_torchrun_with_two_cpu_processes_trains_like_one_process(latents, tmp_path):
    """DDP under torchrun (gloo): the same global batches, so the same run up to float sums."""
    import shutil

    from torchrun_helper import run_two_processes

    args = ["lfm", "train", str(latents), "--steps", "3", "--batch-size", "8", "--lr", "1e-3",
            "--checkpoint-every", "2", "--seed", "1", "--device", "cpu", "-q"]
    code, _, stderr = run_two_processes(
        [*args, "-o", str(tmp_path / "ddp")],
        before_try=lambda: shutil.rmtree(tmp_path / "ddp", ignore_errors=True))
    assert code == 0, stderr[-3000:]
    train(str(latents), str(tmp_path / "one"), steps=3, checkpoint_every=2, seed=1,
          **{**FAST, "batch_size": 8})
    one, two = runs.read_config(tmp_path / "one"), runs.read_config(tmp_path / "ddp")
    assert (two.world_size, two.steps_done, two.n_train) == (2, 3, one.n_train)
    np.testing.assert_allclose(_losses(tmp_path / "ddp"), _losses(tmp_path / "one"), rtol=1e-5)
    a, b = runs.load_run(tmp_path / "one", ema=False)[0], runs.load_run(tmp_path / "ddp", ema=False)[0]
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)
