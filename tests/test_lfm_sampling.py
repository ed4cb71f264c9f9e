"""Solvers, per-index noise, coarse-to-fine sampling, cost accounting, the sample CLIs."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from lfm_stand_ins import LinearVelocity, make_run, randomize

from prunekit.cli import main
from prunekit.errors import PrunekitError
from prunekit_lfm.c2f import SweepRow, parse_t_switches, pick, similarity, sweep
from prunekit_lfm.cost import count_flops, forward_flops
from prunekit_lfm.models import build_model
from prunekit_lfm.sampling import SamplingConfig as C
from prunekit_lfm.sampling import coarse_steps, noise, sample, sample_c2f
from prunekit_lfm.solvers import integrate

# ----------------------------------------------------------------------------- solvers


def _decay(x, t, k):
    return -x


@pytest.mark.parametrize("steps", [1, 4, 10])
def test_euler_and_heun_on_linear_decay_match_their_closed_forms(steps):
    # dx/dt = -x: Euler multiplies by (1 - h) per step, Heun by (1 - h + h^2 / 2).
    x0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    h = 1.0 / steps
    torch.testing.assert_close(integrate(_decay, x0, steps, "euler"), x0 * (1 - h) ** steps,
                               rtol=1e-14, atol=0)
    torch.testing.assert_close(integrate(_decay, x0, steps, "heun"), x0 * (1 - h + h * h / 2) ** steps,
                               rtol=1e-14, atol=0)


def test_euler_error_is_first_order_and_heun_second_order():
    x0 = torch.ones(1, dtype=torch.float64)
    exact = math.exp(-1.0)

    def err(solver, k):
        return abs(float(integrate(_decay, x0, k, solver)) - exact)

    assert err("euler", 40) / err("euler", 80) == pytest.approx(2.0, rel=0.02)
    assert err("heun", 40) / err("heun", 80) == pytest.approx(4.0, rel=0.02)
    assert err("heun", 10) < err("euler", 10) / 10


def test_time_dependent_field_euler_misses_by_one_over_k_heun_is_exact():
    # dx/dt = 2t: x(1) = x0 + 1. Euler sums 2 (k/K) / K over k < K = (K - 1) / K.
    x0 = torch.zeros(2, dtype=torch.float64)

    def v(x, t, k):
        return torch.full_like(x, 2 * t)

    for steps in (1, 3, 8):
        assert float(integrate(v, x0, steps, "euler")[0]) == pytest.approx(1 - 1 / steps, abs=1e-14)
        assert float(integrate(v, x0, steps, "heun")[0]) == pytest.approx(1.0, abs=1e-14)


def test_solvers_pass_the_step_index_to_both_heun_stages():
    seen = []

    def v(x, t, k):
        seen.append((t, k))
        return x

    integrate(v, torch.zeros(1), 3, "heun")
    assert seen == [(0, 0), (1 / 3, 0), (1 / 3, 1), (2 / 3, 1), (2 / 3, 2), (1.0, 2)]
    seen.clear()
    integrate(v, torch.zeros(1), 3, "euler")
    assert seen == [(0, 0), (1 / 3, 1), (2 / 3, 2)]


# ----------------------------------------------------------------------------- noise, sampling


def test_noise_of_a_sample_depends_only_on_seed_and_index():
    full = noise(7, range(6), (2, 3, 3))
    assert torch.equal(noise(7, [4, 1], (2, 3, 3)), full[[4, 1]])
    assert not torch.equal(noise(8, [1], (2, 3, 3)), full[[1]])
    assert not torch.equal(full[0], full[1])


@pytest.fixture(scope="module")
def tiny_pair():
    """A coarse (tiny) and a fine (small) conditional DiT with random weights, 4x4x4 latents."""
    coarse = randomize(build_model("tiny", sample_size=4, in_channels=4, num_classes=3), 1)
    fine = randomize(build_model("small", sample_size=4, in_channels=4, num_classes=3), 2)
    return coarse, fine


def test_sample_i_is_the_same_for_any_n(tiny_pair):
    model = tiny_pair[0]
    r3 = sample(model, 3, C(seed=0, steps=3, batch_size=2), progress=False)
    r5 = sample(model, 5, C(seed=0, steps=3, batch_size=2), progress=False)
    assert torch.equal(r3.latents, r5.latents[:3])
    assert r5.indices.tolist() == [0, 1, 2, 3, 4]
    assert r5.labels.tolist() == [0, 1, 2, 0, 1]  # label i mod classes by default
    again = sample(model, 3, C(seed=0, steps=3, batch_size=2), progress=False)
    assert torch.equal(again.latents, r3.latents)
    other = sample(model, 3, C(seed=1, steps=3, batch_size=2), progress=False)
    assert not torch.allclose(other.latents, r3.latents)
    # Another batch size changes only float rounding.
    r_b3 = sample(model, 5, C(seed=0, steps=3, batch_size=3), progress=False)
    torch.testing.assert_close(r_b3.latents, r5.latents, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("solver,cfg", [("euler", 1.0), ("heun", 2.5)])
def test_c2f_boundaries_are_exactly_the_single_models(tiny_pair, solver, cfg):
    coarse, fine = tiny_pair
    cfg_ = C(seed=3, steps=4, solver=solver, cfg=cfg, batch_size=2)
    fine_only = sample(fine, 3, cfg_, progress=False)
    coarse_only = sample(coarse, 3, cfg_, progress=False)
    assert torch.equal(sample_c2f(coarse, fine, 3, cfg_, t_switch=0.0, progress=False).latents,
                       fine_only.latents)
    assert torch.equal(sample_c2f(coarse, fine, 3, cfg_, t_switch=1.0, progress=False).latents,
                       coarse_only.latents)
    mid = sample_c2f(coarse, fine, 3, cfg_, t_switch=0.5, progress=False).latents
    assert not torch.allclose(mid, fine_only.latents) and not torch.allclose(mid, coarse_only.latents)


def test_c2f_step_split():
    assert [coarse_steps(s, 10) for s in (0, 0.05, 0.1, 0.3, 0.7, 0.95, 1)] == [0, 1, 1, 3, 7, 10, 10]


def test_forward_flops_of_a_linear_map_by_hand():
    full, low = LinearVelocity(channels=2, size=4), LinearVelocity(channels=2, size=4, rank=4)
    d = 32
    assert forward_flops(full, 5, (2, 4, 4)) == 2 * 5 * d * d
    assert forward_flops(low, 5, (2, 4, 4)) == 2 * 5 * (d * 4 + 4 * d)


def test_one_attention_layer_counts_its_projections_and_attention_on_the_cpu():
    from diffusers.models.attention_processor import Attention

    b, s, width, heads = 2, 16, 32, 4
    layer = Attention(query_dim=width, heads=heads, dim_head=width // heads, bias=True).eval()
    x = torch.randn(b, s, width)
    projections = 4 * 2 * b * s * width * width  # q, k, v and the output projection
    attention = 2 * 2 * b * heads * s * s * (width // heads)  # Q K^T and softmax(.) V
    assert count_flops(layer, x) == projections + attention
    q = torch.randn(b, heads, s, 8)
    assert count_flops(torch.nn.functional.scaled_dot_product_attention, q, q, q) == 4 * b * heads * s * s * 8


def _dit_flops_by_hand(depth, width, tokens, channels, patch):
    """One DiT forward pass on one latent, 2 FLOPs per multiply-add, counted layer by layer."""
    embed = 2 * (256 * width + width * width)  # timestep MLP; runs in every block and once at the end
    block = (2 * 6 * width * width  # adaLN modulation (on the conditioning vector)
             + 4 * 2 * tokens * width * width  # q, k, v, out projections
             + 2 * 2 * tokens * tokens * width  # attention: Q K^T and softmax(.) V over all heads
             + 2 * 2 * tokens * width * 4 * width)  # MLP, hidden 4 x width
    patchify = 2 * tokens * channels * patch**2 * width
    final = 2 * width * 2 * width + 2 * tokens * width * patch**2 * channels
    return patchify + (depth + 1) * embed + depth * block + final


@pytest.mark.parametrize("preset,depth,width,device", [("tiny", 2, 96, "cpu"), ("DiT-S/2", 12, 384, "meta")])
def test_dit_flops_match_the_hand_count_including_attention(preset, depth, width, device):
    model = build_model(preset, sample_size=32, in_channels=4, num_classes=0, device=device)
    expected = _dit_flops_by_hand(depth, width, tokens=16 * 16, channels=4, patch=2)
    assert forward_flops(model, 1, (4, 32, 32), device=device) == expected
    assert forward_flops(model, 3, (4, 32, 32), device=device) == 3 * expected  # linear in the batch


@pytest.mark.parametrize("solver,cfg", [("euler", 1.0), ("heun", 3.0)])
def test_c2f_flops_are_calls_times_per_call_flops(solver, cfg):
    coarse = LinearVelocity(channels=2, size=4, num_classes=2, rank=4, seed=1)
    fine = LinearVelocity(channels=2, size=4, num_classes=2, seed=2)
    n, batch, steps, d = 5, 2, 10, 32
    res = sample_c2f(coarse, fine, n, C(seed=0, steps=steps, solver=solver, cfg=cfg, batch_size=batch),
                     t_switch=0.7, progress=False)
    rows = batch * (2 if cfg != 1 else 1)  # the last batch is filled up: every pass has `rows` rows
    per_step = 2 if solver == "heun" else 1
    batches = math.ceil(n / batch)
    c, f = res.cost.models["coarse"], res.cost.models["fine"]
    assert c.calls == 7 * per_step * batches and f.calls == 3 * per_step * batches
    coarse_call, fine_call = 2 * rows * (d * 4 + 4 * d), 2 * rows * d * d
    assert c.flops == c.calls * coarse_call and f.flops == f.calls * fine_call
    assert res.cost.flops == c.calls * coarse_call + f.calls * fine_call
    assert c.flops_per_row / f.flops_per_row == pytest.approx(8 / 32)
    assert res.cost.calls == c.calls + f.calls and res.params["coarse_steps"] == 7


def test_dit_coarse_call_costs_the_models_flop_ratio(tiny_pair):
    coarse, fine = tiny_pair
    res = sample_c2f(coarse, fine, 2, C(seed=0, steps=4, batch_size=2), t_switch=0.5, progress=False)
    c, f = res.cost.models["coarse"], res.cost.models["fine"]
    fc, ff = forward_flops(coarse, 2, (4, 4, 4)), forward_flops(fine, 2, (4, 4, 4))
    assert 0 < fc < ff
    assert (c.flops / c.calls) / (f.flops / f.calls) == fc / ff
    assert res.cost.flops == c.calls * fc + f.calls * ff


def test_cfg_one_is_the_conditional_velocity_and_guidance_mixes_all_channels():
    model = LinearVelocity(channels=2, size=2, num_classes=3, seed=4)
    steps, y = 3, torch.tensor([2, 0])
    x0 = noise(0, [0, 1], (2, 2, 2))

    def euler(v):
        x = x0.clone()
        for k in range(steps):
            x = x + v(x, torch.full((2,), k / steps)) / steps
        return x

    null = torch.full((2,), 3)
    with torch.no_grad():
        plain = euler(lambda x, t: model(x, t, y))
        guided = euler(lambda x, t: model(x, t, null) + 2.0 * (model(x, t, y) - model(x, t, null)))
    r1 = sample(model, 2, C(seed=0, steps=steps, labels=[2, 0]), progress=False)
    assert r1.cost.calls == steps and r1.cost.models["model"].rows == 2 * steps
    torch.testing.assert_close(r1.latents, plain, rtol=1e-6, atol=1e-6)
    r2 = sample(model, 2, C(seed=0, steps=steps, labels=[2, 0], cfg=2.0), progress=False)
    assert r2.cost.calls == steps and r2.cost.models["model"].rows == 4 * steps
    torch.testing.assert_close(r2.latents, guided, rtol=1e-6, atol=1e-6)


def test_label_and_guidance_errors():
    uncond = LinearVelocity(num_classes=0)
    with pytest.raises(PrunekitError, match="unconditional"):
        sample(uncond, 2, C(seed=0, steps=1, labels=[1]), progress=False)
    with pytest.raises(PrunekitError, match="class-conditional"):
        sample(uncond, 2, C(seed=0, steps=1, cfg=2.0), progress=False)
    cond = LinearVelocity(num_classes=3)
    with pytest.raises(PrunekitError, match="one label or exactly 2"):
        sample(cond, 2, C(seed=0, steps=1, labels=[0, 1, 2]), progress=False)
    with pytest.raises(PrunekitError, match="outside"):
        sample(cond, 2, C(seed=0, steps=1, labels=[3]), progress=False)
    with pytest.raises(PrunekitError, match="t_switch"):
        sample_c2f(cond, cond, 2, C(seed=0, steps=1), t_switch=1.5, progress=False)
    with pytest.raises(PrunekitError, match="latents"):
        sample_c2f(cond, LinearVelocity(channels=3, num_classes=3), 2, C(seed=0, steps=1), t_switch=0.5,
                   progress=False)


# ----------------------------------------------------------------------------- sweep


def test_similarity_by_hand():
    a = torch.tensor([[[[1.0, 0.0]]], [[[1.0, 1.0]]]])
    b = torch.tensor([[[[0.0, 2.0]]], [[[2.0, 2.0]]]])
    cos, mse = similarity(a, b)
    np.testing.assert_allclose(cos, [0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(mse, [2.5, 1.0])


def test_parse_t_switches_accepts_commas_and_lists():
    assert parse_t_switches(["0,0.5", "1", 0.3]) == [0.0, 0.3, 0.5, 1.0]
    with pytest.raises(PrunekitError, match=r"\[0, 1\]"):
        parse_t_switches(["1.2"])
    with pytest.raises(PrunekitError, match="not a number"):
        parse_t_switches(["x"])


def test_sweep_rows_and_auto_pick(tiny_pair):
    coarse, fine = tiny_pair
    res = sweep(coarse, fine, [0, 0.5, 1], 3, C(seed=0, steps=4, batch_size=2), tol=-1.0, repeats=2,
                progress=False)
    r0, r5, r1 = res.rows
    assert (r0.flops_ratio, r0.cos_mean, r0.mse_mean) == (1.0, pytest.approx(1.0), 0.0)
    assert r1.coarse_steps == 4 and r1.flops_ratio == pytest.approx(res.flops_per_call_ratio)
    assert r5.coarse_steps == 2 and r5.flops_ratio == pytest.approx(0.5 + 0.5 * res.flops_per_call_ratio)
    assert r5.ideal_flops_ratio == pytest.approx(r5.flops_ratio)  # 0.5 * 4 steps is on the grid
    assert res.auto == 1.0  # any similarity passes tol = -1: the cheapest wins
    assert "t_switch" in res.table() and "<- auto" in res.table()


def _row(t, flops, cos):
    return SweepRow(t, 0, 0, flops, flops / 100, 0.0, 1.0, 1.0, cos, cos, 0.0, 0.0)


def test_pick_cheapest_above_tolerance_else_fine_only():
    rows = [_row(0.0, 100, 1.0), _row(0.5, 60, 0.95), _row(0.7, 45, 0.95), _row(1.0, 20, 0.7)]
    assert pick(rows, 0.9) == 0.7
    assert pick(rows, 0.96) == 0.0
    assert pick(rows, 0.6) == 1.0
    assert pick(rows[1:], 0.99) == 0.0  # nothing qualifies: the fine model alone
    with pytest.raises(PrunekitError, match="tolerance"):
        pick(rows, 1.5)


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    return make_run(base / "coarse", "tiny", seed=1), make_run(base / "fine", "small", seed=2)


def _invoke(*args):
    return CliRunner().invoke(main, ["lfm", *map(str, args)], catch_exceptions=False)


def test_cli_sample_writes_latents_and_cost(runs, tmp_path):
    from prunekit_lfm.runs import load_run

    out = tmp_path / "s.h5"
    r = _invoke("sample", runs[1], "--n", 3, "--steps", 2, "--batch-size", 2, "--seed", 5,
                "--device", "cpu", "-o", out, "--quiet")
    assert r.exit_code == 0, r.output
    model, _ = load_run(runs[1])
    ref = sample(model, 3, C(seed=5, steps=2, batch_size=2), progress=False)
    with h5py.File(out) as f:
        assert np.array_equal(f["latents"][()], ref.latents.numpy())
        assert f["indices"][()].tolist() == [0, 1, 2]
        assert f.attrs["seed"] == 5 and f.attrs["model_calls"] == 4
        assert f.attrs["flops"] == ref.cost.flops
        assert "images" not in f  # the run has no VAE
        cost = json.loads(f.attrs["cost"])
        assert cost["models"]["model"]["calls"] == 4


def test_cli_c2f_sample_equals_library(runs, tmp_path):
    from prunekit_lfm.runs import load_run

    out = tmp_path / "c.h5"
    r = _invoke("sample", "--coarse", runs[0], "--fine", runs[1], "--t-switch", 0.5, "--n", 2,
                "--steps", 4, "--device", "cpu", "-o", out, "--quiet")
    assert r.exit_code == 0, r.output
    (c, _), (f_, _) = load_run(runs[0]), load_run(runs[1])
    ref = sample_c2f(c, f_, 2, C(seed=0, steps=4), t_switch=0.5, progress=False)
    with h5py.File(out) as f:
        assert np.array_equal(f["latents"][()], ref.latents.numpy())
        assert f.attrs["t_switch"] == 0.5 and f.attrs["coarse_steps"] == 2
    assert "coarse: 2 calls" in r.output and "fine: 2 calls" in r.output


def test_cli_sample_decodes_and_writes_png(tmp_path):
    from diffusers import AutoencoderKL

    from prunekit_lfm.vae import save_vae, vae_config

    vae = AutoencoderKL(**{**vae_config("small", sample_size=16), "block_out_channels": (16, 16, 16),
                           "norm_num_groups": 8})
    save_vae(vae, tmp_path / "vae")
    run = make_run(tmp_path / "run", "tiny", vae=str(tmp_path / "vae"))
    out, png = tmp_path / "s.h5", tmp_path / "grid.png"
    r = _invoke("sample", run, "--n", 3, "--steps", 1, "--device", "cpu", "-o", out, "--png", png, "-q")
    assert r.exit_code == 0, r.output
    with h5py.File(out) as f:
        assert f["images"].shape == (3, 16, 16, 3) and f["images"].dtype == np.uint8
    from PIL import Image

    assert Image.open(png).size == (2 * 16 + 3 * 2, 2 * 16 + 3 * 2)  # 2 x 2 grid, 2 px gaps


@pytest.mark.parametrize("args,message", [
    (["sample", "{tmp}/missing", "--n", "2"], "run directory not found"),
    (["sample", "--coarse", "{coarse}", "--fine", "{fine}", "--t-switch", "1.5"], "t_switch"),
    (["sample", "--coarse", "{coarse}"], "--fine"),
    (["sample", "{fine}", "--t-switch", "0.5"], "--coarse"),
    (["sample", "{fine}", "--png", "{tmp}/grid.png"], "no VAE"),
    (["sample", "{fine}", "--labels", "1"], "unconditional"),
    (["sample", "{fine}", "--vae", "{tmp}/no-vae"], "folder not found"),
    (["c2f-sweep", "--coarse", "{coarse}", "--fine", "{fine}", "--t-switch", "0", "2"], "t_switch"),
    (["c2f-sweep", "--coarse", "{coarse}", "--fine", "{fine}", "--auto", "3"], "tolerance"),
    (["c2f-sweep", "--coarse", "{tmp}/missing", "--fine", "{fine}"], "run directory not found"),
    (["c2f-sweep", "--coarse", "{coarse}", "--fine", "{fine}", "--repeats", "0", "--n", "1",
      "--steps", "1"], "--repeats"),
])
def test_cli_errors_exit_2_and_write_nothing(runs, tmp_path, args, message):
    fill = {"tmp": tmp_path, "coarse": runs[0], "fine": runs[1]}
    args = [a.format(**fill) for a in args]
    r = CliRunner().invoke(main, ["lfm", *args, "-o", str(tmp_path / "out.h5"), "--device", "cpu"])
    assert r.exit_code == 2, r.output
    assert "Error" in r.output and message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "out.h5").exists() and not (tmp_path / "grid.png").exists()


def test_cli_sweep_space_and_comma_lists_and_json(runs, tmp_path):
    out = tmp_path / "sweep.json"
    r = _invoke("c2f-sweep", "--coarse", runs[0], "--fine", runs[1], "--t-switch", 0, 0.5, 1,
                "--n", 2, "--steps", 2, "--auto", -1, "--device", "cpu", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert [row["t_switch"] for row in data["rows"]] == [0.0, 0.5, 1.0]
    assert data["auto"] == 1.0 and "<- auto" in r.output
    r2 = _invoke("c2f-sweep", "--coarse", runs[0], "--fine", runs[1], "--t-switch", "0,0.5",
                 "--t-switch", "1", "--n", 2, "--steps", 2, "--device", "cpu", "-o", out, "-q")
    assert r2.exit_code == 0, r2.output
    rows2 = json.loads(out.read_text())["rows"]
    assert [row["t_switch"] for row in rows2] == [0.0, 0.5, 1.0]
    assert [row["flops"] for row in rows2] == [row["flops"] for row in data["rows"]]


def test_cli_compare_refuses_a_coarse_run_from_another_latent_space(runs, tmp_path):
    other = make_run(tmp_path / "other-vae", "tiny", seed=3, vae=str(tmp_path / "vae-b"))
    out = tmp_path / "compare.json"
    r = CliRunner().invoke(main, ["lfm", "compare", str(runs[1]), str(runs[1]), "--coarse-b", str(other),
                                  "--t-switch-b", "0.5", "--n", "2", "--steps", "1", "-o", str(out), "-q"])
    assert r.exit_code == 2, r.output
    assert "one latent space" in r.output and "Traceback" not in r.output and not out.exists()


def test_cli_compare_passes_guidance_to_both_sides(tmp_path):
    run = make_run(tmp_path / "cond", "tiny", seed=4, num_classes=3)

    def compare(cfg):
        out = tmp_path / f"compare-{cfg}.json"
        r = CliRunner().invoke(main, ["lfm", "compare", str(run), str(run), "--cfg", cfg, "--n", "6",
                                      "--steps", "2", "-o", str(out), "-q"])
        assert r.exit_code == 0, r.output
        return json.loads(out.read_text())

    guided, plain = compare("2.5"), compare("1")
    assert guided["settings"]["cfg"] == 2.5 and plain["settings"]["cfg"] == 1
    for side in ("a", "b"):  # 2 steps of 6 samples; a guided call also evaluates the null half
        assert guided["cost"][side]["models"]["model"]["rows"] == 24
        assert plain["cost"][side]["models"]["model"]["rows"] == 12


def test_compare_baseline_pairs_samples_of_the_same_class():
    from prunekit_lfm.evaluate import paired_similarity
    from prunekit_lfm.generate import DecodedSamples

    labels = np.array([0, 1, 0, 1, 0, 1])
    sign = np.where(labels == 0, 1.0, -1.0)
    wobble = np.array([0.1, 0.2, -0.1, 0.3, 0.0, -0.2])
    z = np.stack([sign, wobble], axis=1).reshape(6, 2, 1, 1)  # class sets the sign of channel 0
    a = DecodedSamples("a", z, None, np.arange(6), labels, 0)
    res = paired_similarity(a, a)
    base = res["measures"]["latent_cosine"]["baseline"]
    # pairs (0,2), (2,4), (4,0), (1,3), (3,5), (5,1): same sign, cosine near +1 (across classes: near -1)
    expected = np.mean([
        float(z[i].ravel() @ z[j].ravel() / np.linalg.norm(z[i]) / np.linalg.norm(z[j]))
        for i, j in [(0, 2), (1, 3), (2, 4), (3, 5), (4, 0), (5, 1)]
    ])
    assert base["mean"] == pytest.approx(expected) and expected > 0.9
    assert res["baseline_pairs"] == 6 and "same class" in res["baseline"]
    other = DecodedSamples("b", z, None, np.arange(6), labels[::-1].copy(), 0)
    with pytest.raises(PrunekitError, match="different labels"):
        paired_similarity(a, other)
