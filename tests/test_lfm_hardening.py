"""The plug-in under hostile or careless use: no code from run files, no overwritten inputs,
a locked run directory, and one clean error (exit 2, nothing written) for every bad input."""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import sys

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from lfm_stand_ins import make_run

from prunekit.cli import main
from prunekit_lfm import runs
from prunekit_lfm.latents import LatentStore, save_latents
from prunekit_lfm.train import train

torch.set_num_threads(1)
FAST = dict(model="tiny", batch_size=8, lr=1e-3, progress=False, device="cpu")


class _Plant:
    """A pickle that creates a marker file when unpickled: what a hostile run dir would hold."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path, marker):
    path.write_bytes(pickle.dumps(_Plant(marker)))


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _error(r, *needles):
    """Exit 2, one 'Error:' line, no traceback, every needle in the message."""
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and r.output.count("Error") >= 1, r.output
    for needle in needles:
        assert needle in r.output, r.output


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("lat") / "latents.h5"
    save_latents(path, LatentStore(latents=rng.normal(size=(24, 4, 4, 4)).astype(np.float32),
                                   ids=np.arange(24), labels=np.arange(24) % 3))
    return path


@pytest.fixture
def trained(latents, tmp_path):
    run = tmp_path / "run"
    train(str(latents), str(run), steps=2, checkpoint_every=1, seed=0, **FAST)
    return run


def _resume(latents, run):
    return _invoke("lfm", "train", latents, "-o", run, "--steps", 3, "--batch-size", 8, "--lr", 1e-3,
                   "--device", "cpu", "--resume", "-q")


# ----------------------------------------------------------------------------- no pickles


def test_resume_refuses_a_pickled_state_pt_without_opening_it(latents, trained, tmp_path):
    marker = tmp_path / "pwned"
    _plant(trained / runs.LEGACY_STATE, marker)
    before = {p.name: p.read_bytes() for p in trained.iterdir()}
    _error(_resume(latents, trained), "state.pt", "never loads pickles")
    assert not marker.exists()
    assert {p.name: p.read_bytes() for p in trained.iterdir()} == before


@pytest.mark.parametrize("name", [runs.OPTIMIZER, runs.MODEL, runs.EMA])
def test_a_pickle_in_place_of_a_checkpoint_file_is_refused_and_never_run(latents, trained, tmp_path, name):
    marker = tmp_path / "pwned"
    _plant(trained / name, marker)
    _error(_resume(latents, trained), name, "not a safetensors file")
    assert not marker.exists()


def test_truncated_weights_on_resume_exit_2(latents, trained):
    data = (trained / runs.MODEL).read_bytes()
    (trained / runs.MODEL).write_bytes(data[: len(data) // 2])
    _error(_resume(latents, trained), "model.safetensors", "truncated")


def test_resume_state_is_safetensors_and_json_only(trained):
    for path in trained.iterdir():
        head = path.read_bytes()[:2]
        assert head != b"\x80\x04" and not path.name.endswith((".pt", ".pkl"))  # no pickle protocol header
    state = json.loads((trained / runs.TRAINER_STATE).read_text())
    assert state["step"] == 2 and state["data_position"] == {"epoch": 0, "offset": 16}
    assert state["optimizer"]["param_groups"][0]["lr"] == 1e-3


# ----------------------------------------------------------------------------- the lock


def test_a_second_training_into_a_locked_run_dir_fails_naming_the_lock(latents, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / runs.LOCK, "w") as held:  # another training process holds the directory
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = _invoke("lfm", "train", latents, "-o", run, "--steps", 1, "--device", "cpu", "-q")
        _error(r, "in use", str(run / runs.LOCK))
        assert sorted(p.name for p in run.iterdir()) == [runs.LOCK]  # nothing else written
    r = _invoke("lfm", "train", latents, "-o", run, "--steps", 1, "--batch-size", 8, "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output  # released: the directory is usable again


def test_the_lock_is_held_while_training_and_dropped_after(latents, tmp_path, monkeypatch):
    from prunekit_lfm.train import _Trainer

    run, seen = tmp_path / "run", []
    original = _Trainer.train_step

    def probe(self, step):
        with open(run / runs.LOCK) as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append("free")
            except BlockingIOError:
                seen.append("held")
        return original(self, step)

    monkeypatch.setattr(_Trainer, "train_step", probe)
    train(str(latents), str(run), steps=2, seed=0, **FAST)
    assert seen == ["held", "held"]
    with open(run / runs.LOCK) as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if still held


# ----------------------------------------------------------------------------- inputs stay


def test_sample_refuses_to_write_into_the_run_it_reads(tmp_path):
    run = make_run(tmp_path / "run")
    before = (run / runs.EMA).read_bytes()
    _error(_invoke("lfm", "sample", run, "--n", 2, "--steps", 1, "-o", run / runs.EMA, "-q"),
           "lies inside", str(run))
    assert (run / runs.EMA).read_bytes() == before


def test_score_refuses_to_overwrite_its_latents(latents, tmp_path):
    run = make_run(tmp_path / "run", sample_size=4, in_channels=4)
    copy = tmp_path / "lat.h5"
    copy.write_bytes(latents.read_bytes())
    _error(_invoke("lfm", "score", run, copy, "-o", copy, "-q"), "the command's input")
    assert copy.read_bytes() == latents.read_bytes()


def test_compare_checks_its_output_before_sampling(tmp_path, monkeypatch):
    import prunekit_lfm.generate as generate

    run = make_run(tmp_path / "run")
    monkeypatch.setattr(generate, "draw", lambda *a, **k: pytest.fail("sampled before checking -o"))
    _error(_invoke("lfm", "compare", run, run, "-o", run / "cmp.json", "-q"), "lies inside")
    (tmp_path / "fifo").mkdir()
    _error(_invoke("lfm", "compare", run, run, "-o", tmp_path / "fifo", "-q"), "directory")


def test_metrics_and_encode_refuse_to_overwrite_their_inputs(tmp_path):
    images = tmp_path / "images.npy"
    np.save(images, np.zeros((4, 8, 8), dtype=np.float32))
    before = images.read_bytes()
    _error(_invoke("lfm", "metrics", images, "--real", images, "-o", images), "the command's input")
    (tmp_path / "vae").mkdir()
    _error(_invoke("lfm", "encode", images, "--vae", tmp_path / "vae", "-o", images), "the command's input")
    assert images.read_bytes() == before


def test_training_on_a_selection_whose_ids_disagree_with_its_indices_exits_2(latents, tmp_path):
    sel = tmp_path / "sel.h5"
    with h5py.File(sel, "w") as f:
        f["indices"] = np.arange(10, dtype=np.int64)
        f["ids"] = np.arange(3, dtype=np.int64)
        f.attrs.update({"pr": 0.5, "n_total": 24, "n_kept": 10, "method": "random"})
    r = _invoke("lfm", "train", latents, "--selection", sel, "-o", tmp_path / "run", "--steps", 1,
                "--device", "cpu", "-q")
    _error(r, "ids")
    assert not (tmp_path / "run").exists()


def test_latent_store_side_datasets_must_match_the_latents(latents, tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(latents.read_bytes())
    with h5py.File(bad, "a") as f:
        del f["labels"]
        f["labels"] = np.zeros(5, dtype=np.int64)
    r = _invoke("lfm", "train", bad, "-o", tmp_path / "run", "--steps", 1, "--device", "cpu", "-q")
    _error(r, str(bad), "labels")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- bad numbers


@pytest.mark.parametrize("args,needle", [
    (["train", "{lat}", "-o", "{tmp}/out", "--lr", "nan"], "--lr must be a number > 0 (got nan)"),
    (["train", "{lat}", "-o", "{tmp}/out", "--lr", "inf"], "--lr must be a number > 0 (got inf)"),
    (["train", "{lat}", "-o", "{tmp}/out", "--device", "bogus"], "bogus"),
    (["train", "{lat}", "-o", "{tmp}/out", "--seed", "-1"], "--seed"),
    (["train", "{lat}", "-o", "{tmp}/out", "--seed", str(2**63)], "--seed"),
    (["train", "{lat}", "-o", "{tmp}/out", "--model", "{tmp}/neg.json"], "num_layers=-2"),
    (["train", "{lat}", "-o", "{tmp}/out", "--grad-clip", "-1"], "--grad-clip must be"),
    (["encode", "digits", "--vae", "{tmp}", "-o", "{tmp}/out", "--size", "-4"], "--size"),
    (["encode", "digits", "--vae", "{tmp}", "-o", "{tmp}/out", "--size", "0"], "--size"),
    (["train-vae", "digits", "-o", "{tmp}/out", "--image-size", "-2"], "--image-size"),
    (["train-vae", "digits", "-o", "{tmp}/out", "--lr", "nan"], "--lr"),
    (["sample", "{run}", "-o", "{tmp}/out", "--device", "bogus"], "bogus"),
    (["sample", "{run}", "-o", "{tmp}/out", "--seed", "-3"], "--seed"),
    (["sample", "{run}", "-o", "{tmp}/out", "--n", "1e12"], "--n"),
    (["sample", "{run}", "-o", "{tmp}/out", "--n", str(10**12)], "needs"),
    (["sample", "{run}", "-o", "{tmp}/out", "--cfg", "nan"], "--cfg"),
    (["score", "{run}", "{lat}", "-o", "{tmp}/out", "--seed", "-1"], "--seed"),
    (["compare", "{run}", "{run}", "-o", "{tmp}/out", "--seed", "-1"], "--seed"),
    (["c2f-sweep", "--coarse", "{run}", "--fine", "{run}", "-o", "{tmp}/out", "--device", "bogus"], "bogus"),
])
def test_bad_numbers_exit_2_and_write_nothing(latents, tmp_path, args, needle):
    run = make_run(tmp_path / "run")
    (tmp_path / "neg.json").write_text(json.dumps({"preset": "tiny", "num_layers": -2}))
    before = sorted(p.name for p in tmp_path.iterdir())
    args = [a.format(lat=latents, tmp=tmp_path, run=run) for a in args]
    _error(_invoke("lfm", *args), needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_demo_refuses_an_infinite_budget_and_a_negative_seed(tmp_path):
    _error(_invoke("demo", "--budget", "inf", "-o", tmp_path / "d"), "--budget")
    _error(_invoke("demo", "--seed", "-1", "-o", tmp_path / "d"), "--seed")
    assert not (tmp_path / "d").exists()


def test_a_decompression_bomb_in_an_image_folder_is_a_clean_error(tmp_path, monkeypatch):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("L", (64, 64)).save(folder / "bomb.png")  # 4096 pixels > 2 x the limit below
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    r = _invoke("lfm", "train-vae", folder, "-o", tmp_path / "vae", "--steps", 1, "--device", "cpu", "-q")
    _error(r, "bomb.png", "too large to decode safely")
    assert not (tmp_path / "vae").exists()


# ----------------------------------------------------------------------------- no torch


@pytest.mark.parametrize("args", [["lfm", "train", "x.h5", "-o", "run"], ["lfm", "sample", "run"],
                                  ["lfm", "compare", "a", "b"], ["demo", "--quick"]])
def test_without_torch_the_commands_say_how_to_install_the_plug_in(tmp_path, args):
    import subprocess

    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        "class _NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'diffusers'):\n"
        "            raise ModuleNotFoundError(f\"No module named '{name}'\", name=name)\n"
        "sys.meta_path.insert(0, _NoTorch())\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "prunekit", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and 'pip install "prunekit[lfm]"' in proc.stderr
    assert "torch" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sitecustomize.py"]


# ----------------------------------------------------------------------------- Ctrl-C


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_during_the_final_write_exits_130_and_leaves_no_file(tmp_path, monkeypatch):
    import prunekit_lfm.sampling as sampling

    run = make_run(tmp_path / "run")
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(sampling, "stamp", _interrupt)  # inside the atomic write, after the datasets
    r = _invoke("lfm", "sample", run, "--n", 2, "--steps", 1, "--device", "cpu", "-o", out / "s.h5", "-q")
    assert r.exit_code == 130, r.output
    assert "Traceback" not in r.output and list(out.iterdir()) == []


def test_ctrl_c_while_writing_the_png_removes_the_samples_file_too(tmp_path, monkeypatch):
    from diffusers import AutoencoderKL

    import prunekit_lfm.generate as generate
    from prunekit_lfm.vae import save_vae, vae_config

    vae = AutoencoderKL(**{**vae_config("small", sample_size=16), "block_out_channels": (16, 16, 16),
                           "norm_num_groups": 8})
    save_vae(vae, tmp_path / "vae")
    run = make_run(tmp_path / "run", vae=str(tmp_path / "vae"))
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(generate, "save_grid", _interrupt)
    r = _invoke("lfm", "sample", run, "--n", 2, "--steps", 1, "--device", "cpu", "-o", out / "s.h5",
                "--png", out / "g.png", "-q")
    assert r.exit_code == 130, r.output
    assert list(out.iterdir()) == []


def test_an_edited_config_json_is_validated_when_the_run_is_read(tmp_path):
    run = make_run(tmp_path / "run")
    data = json.loads((run / runs.CONFIG).read_text())
    for key, value, needle in [("lr", -1.0, "lr must be a number > 0"), ("steps", "many", "steps must be an integer"),
                               ("seed", -5, "seed")]:
        (run / runs.CONFIG).write_text(json.dumps({**data, key: value}))
        _error(_invoke("lfm", "sample", run, "--n", 2, "--steps", 1, "-o", tmp_path / "s.h5", "-q"),
               "config.json", needle)
    assert not (tmp_path / "s.h5").exists()


# ----------------------------------------------------------------------------- VAE folders: safetensors only


def _tiny_vae(seed=0):
    from diffusers import AutoencoderKL

    from prunekit_lfm.vae import vae_config

    torch.manual_seed(seed)
    return AutoencoderKL(**{**vae_config("small", sample_size=16), "block_out_channels": (16, 16, 16),
                            "norm_num_groups": 8})


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    from prunekit_lfm.vae import save_vae

    return save_vae(_tiny_vae(), tmp_path_factory.mktemp("vae") / "vae")


@pytest.mark.parametrize("route", ["encode --vae", "sample --vae", "run config.json", "pipeline vae/"])
def test_a_vae_folder_holding_only_a_pickled_bin_is_refused_and_never_unpickled(vae_dir, tmp_path, route):
    marker, out = tmp_path / "pwned", tmp_path / "out.h5"
    bad = tmp_path / "bad"
    folder = bad / "vae" if route == "pipeline vae/" else bad
    folder.mkdir(parents=True)
    (folder / "config.json").write_bytes((vae_dir / "config.json").read_bytes())
    _plant(folder / "diffusion_pytorch_model.bin", marker)
    if route == "encode --vae":
        r = _invoke("lfm", "encode", "digits", "--vae", bad, "-o", out, "--device", "cpu", "-q")
    else:
        run = make_run(tmp_path / "run", vae=str(bad) if route == "run config.json" else None)
        vae = [] if route == "run config.json" else ["--vae", bad]
        r = _invoke("lfm", "sample", run, "--n", 2, "--steps", 1, *vae, "-o", out, "--device", "cpu", "-q")
    _error(r, str(folder / "diffusion_pytorch_model.bin"), "a pickle", "loads safetensors only",
           "torch.load(", "weights_only=True", "save_file(")
    assert not marker.exists() and not out.exists()


def test_the_conversion_command_in_the_message_makes_the_folder_loadable(vae_dir, tmp_path):
    import subprocess

    from safetensors.torch import load_file

    from prunekit.errors import PrunekitError
    from prunekit_lfm.vae import load_vae

    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "config.json").write_bytes((vae_dir / "config.json").read_bytes())
    original = load_file(vae_dir / "diffusion_pytorch_model.safetensors")
    torch.save(original, folder / "diffusion_pytorch_model.bin")  # a trusted legacy file
    with pytest.raises(PrunekitError) as info:
        load_vae(folder)
    code = str(info.value).split('python -c "', 1)[1].rsplit('"', 1)[0]
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    state = load_vae(folder).state_dict()
    assert sorted(state) == sorted(original)
    for name, tensor in original.items():
        assert torch.equal(state[name], tensor), name


@pytest.mark.parametrize("damage, needles", [
    ("nan", ["NaN/inf weights in the VAE weights", "diffusion_pytorch_model.safetensors", "'{name}'"]),
    ("missing", ["lack 1 of the model's tensors", "'{name}'", "initialise them at random"]),
    ("absent", ["has no weights file", "would be random"]),
])
def test_a_vae_with_nan_or_missing_weights_is_refused_by_name(vae_dir, tmp_path, damage, needles):
    from safetensors.torch import load_file, save_file

    from prunekit.errors import PrunekitError
    from prunekit_lfm.vae import load_vae

    folder = tmp_path / "vae"
    folder.mkdir()
    (folder / "config.json").write_bytes((vae_dir / "config.json").read_bytes())
    state = load_file(vae_dir / "diffusion_pytorch_model.safetensors")
    name = "decoder.conv_out.weight"
    if damage == "nan":
        state[name].view(-1)[5] = float("nan")
    elif damage == "missing":
        del state[name]
    if damage != "absent":
        save_file(state, folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(PrunekitError) as info:
        load_vae(folder)
    for needle in needles:
        assert needle.format(name=name) in str(info.value), str(info.value)


# ----------------------------------------------------------------------------- NaN weights in a run


def test_nan_weights_in_a_run_are_refused_naming_the_file_and_the_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    from prunekit.errors import PrunekitError
    from prunekit_lfm.runs import load_run

    run = make_run(tmp_path / "run")
    state = load_file(run / runs.EMA)
    name = sorted(state)[4]
    state[name].view(-1)[0] = float("inf")
    save_file(state, run / runs.EMA, metadata={"step": "1"})
    with pytest.raises(PrunekitError, match=f"NaN/inf weights in weights file {run / runs.EMA} "
                                            rf"\(first: tensor '{name}'\)"):
        load_run(run)
    load_run(run, ema=False)  # the other file is intact


# ----------------------------------------------------------------------------- dependency floors


def test_dependency_floors_exclude_versions_with_known_holes():
    import re
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    extras = {spec for specs in project["optional-dependencies"].values() for spec in specs}
    floors = {m.group(1): m.group(2) for s in extras if (m := re.match(r"([a-z-]+)>=([\d.]+)", s))}
    assert floors["torch"] == "2.6"  # CVE-2025-32434: weights_only bypass before 2.6
    assert floors["pyarrow"] == "14.0.1"  # CVE-2023-47248
    assert floors["ray"] == "2.52"  # the first Ray with token authentication


# ----------------------------------------------------------------------------- latents, labels, divergence


def test_latents_far_from_unit_scale_are_refused_at_load(tmp_path):
    from prunekit.errors import PrunekitError
    from prunekit_lfm.latents import load_latents

    z = np.random.default_rng(0).normal(size=(6, 4, 2, 2)).astype(np.float32)
    save_latents(tmp_path / "ok.h5", LatentStore(latents=z * 1e5, ids=np.arange(6)))
    assert load_latents(tmp_path / "ok.h5").n == 6  # large but sane
    z[4, 1, 0, 1] = -1e30
    save_latents(tmp_path / "big.h5", LatentStore(latents=z, ids=np.arange(6)))
    with pytest.raises(PrunekitError, match=r"values up to 1e\+30 \(rows 4\).*rescale"):
        load_latents(tmp_path / "big.h5")
    r = _invoke("lfm", "train", tmp_path / "big.h5", "-o", tmp_path / "run", "--steps", 1, "--device", "cpu")
    _error(r, "big.h5", "unit scale")
    assert not (tmp_path / "run").exists()


def test_training_that_diverges_stops_naming_the_step_and_leaves_no_run(latents, tmp_path):
    r = _invoke("lfm", "train", latents, "-o", tmp_path / "run", "--steps", 40, "--lr", 1e30,
                "--batch-size", 8, "--device", "cpu", "-q")
    _error(r, "training diverged", "at step 2", "nothing was kept", "--lr")
    assert list(tmp_path.iterdir()) == []


def test_a_diverged_run_keeps_its_last_finite_checkpoint(latents, tmp_path):
    from prunekit.errors import PrunekitError
    from prunekit_lfm.runs import load_run

    run = tmp_path / "run"
    with pytest.raises(PrunekitError, match=r"at step 2; .*last checkpoint \(step 1\)"):
        train(str(latents), str(run), steps=40, checkpoint_every=1, seed=0,
              **{**FAST, "lr": 1e30})
    assert runs.read_checkpoint(run)["step"] == 1 and runs.read_config(run).steps_done == 1
    assert [row["step"] for row in runs.read_log(run)] == [1]
    load_run(run)  # finite weights: sampling works


def test_conditional_training_on_negative_labels_is_refused_before_writing(tmp_path):
    from prunekit.errors import PrunekitError

    z = np.random.default_rng(0).normal(size=(8, 4, 4, 4)).astype(np.float32)
    labels = np.array([0, 1, 2, -1, 0, 1, 2, 0])
    save_latents(tmp_path / "lat.h5", LatentStore(latents=z, ids=np.arange(8), labels=labels))
    with pytest.raises(PrunekitError, match=r"1 label outside \[0, 1000000\) \(first: row 3, id 3, label -1\)"):
        train(str(tmp_path / "lat.h5"), str(tmp_path / "run"), steps=1, conditional=True, **FAST)
    assert not (tmp_path / "run").exists()
    train(str(tmp_path / "lat.h5"), str(tmp_path / "run"), steps=1, **FAST)  # unconditional: unused


# ----------------------------------------------------------------------------- full disks


class _Usage:
    def __init__(self, free):
        self.total, self.used, self.free = 1 << 40, 0, free


def _free(monkeypatch, free):
    """Pretend every file system has ``free`` bytes left (shutil.disk_usage as the guards see it)."""
    import prunekit_lfm.guards as guards

    monkeypatch.setattr(guards.shutil, "disk_usage", lambda path: _Usage(free))


def test_check_space_adds_up_writes_on_one_file_system_and_names_them(tmp_path, monkeypatch):
    from prunekit.errors import PrunekitError
    from prunekit_lfm.guards import SPACE_MARGIN, check_space, needed_bytes

    a, b = tmp_path / "a.h5", tmp_path / "sub" / "b.png"  # b's folder does not exist yet
    need = needed_bytes(10_000) + needed_bytes(5_000)
    assert need == 15_150 + 2 * SPACE_MARGIN
    _free(monkeypatch, need)
    check_space([(a, 10_000), (b, 5_000)], "test")  # exactly enough
    _free(monkeypatch, need - 1)
    with pytest.raises(PrunekitError, match=f"test: writing {a}, {b} needs about .* but only .* is free"):
        check_space([(a, 10_000), (b, 5_000)], "test")


def test_sample_refuses_a_full_disk_before_sampling(tmp_path, monkeypatch):
    import prunekit_lfm.generate as generate

    run = make_run(tmp_path / "run")
    _free(monkeypatch, 1000)
    monkeypatch.setattr(generate, "draw", lambda *a, **k: pytest.fail("sampled onto a full disk"))
    _error(_invoke("lfm", "sample", run, "--n", 4, "-o", tmp_path / "s.h5", "-q"), "s.h5", "is free")
    assert not (tmp_path / "s.h5").exists()


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs: a file system that really fills up (needs root to mount)."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    d = tmp_path / "full"
    d.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(d)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("precheck", [True, False], ids=["free-space-check", "write-fails"])
def test_commands_on_a_full_file_system_exit_2_and_leave_nothing(small_fs, vae_dir, latents, tmp_path,
                                                                  monkeypatch, precheck):
    """With the free-space check, and (disabled, so that the writes really fail) without it."""
    if not precheck:
        _free(monkeypatch, 1 << 40)
    run = make_run(tmp_path / "run", vae=str(vae_dir))
    script = tmp_path / "enc.pt"

    class Wide(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3)).repeat(1, 100)

    torch.jit.script(Wide()).save(str(script))
    images = tmp_path / "images.npy"  # 80 latents of 4 x 32 x 32 float32: 1.25 MiB
    np.save(images, np.random.default_rng(0).integers(0, 256, (80, 32, 32), dtype=np.uint8))
    full = small_fs
    commands = [
        ["sample", run, "--n", 2000, "--steps", 1, "-o", full / "s.h5", "--png", full / "g.png"],
        ["embed", "digits", "--encoder", f"torchscript:{script}", "--size", 8, "-o", full / "emb",
         "--shard-rows", 500],
        ["train", latents, "-o", full / "run", "--steps", 2, "--batch-size", 8],
        ["train-vae", images, "-o", full / "vae", "--size", "base", "--image-size", 32, "--steps", 1,
         "--batch-size", 4],
        ["encode", images, "--vae", vae_dir, "-o", full / "lat.h5", "--size", 128],
    ]
    for args in commands:
        r = _invoke("lfm", *args, "--device", "cpu", "-q")
        _error(r, str(full))
        assert ("is free" if precheck else "the file system is full") in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1, r.output
        assert os.listdir(full) == [], (args[0], os.listdir(full))
