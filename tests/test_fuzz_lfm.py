"""The plug-in's commands against hostile or broken inputs: one clean error, nothing written.

The style of test_fuzz_cli.py: each case runs ``prunekit lfm ...`` in a directory holding a
corpus of good and broken files (runs, VAE folders, latent stores, TorchScript models,
image folders) and asserts exit status 2, one ``Error:`` line naming what was wrong, no
traceback, and no file created, changed or removed (so no code ran from a pickle either:
the planted pickle would create ``pwned``).
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
from click.testing import CliRunner  # noqa: E402
from lfm_stand_ins import make_run  # noqa: E402
from test_fuzz_cli import check_clean_failure, snapshot  # noqa: E402

from prunekit.cli import main  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated
BIG = str(2**64)
LAST = str(2**63 - 1)


class _Plant:
    """A pickle that creates ``pwned`` when unpickled."""

    def __reduce__(self):
        return (open, ("pwned", "w"))


class _Raises(torch.nn.Module):
    def forward(self, x):
        if x.shape[0] > 0:
            raise RuntimeError("boom from the model")
        return x


class _Wide(torch.nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3)).repeat(1, 4)


def _vae_folders(d):
    """vae/ (good) and broken copies: pickled only, NaN, a tensor missing, no weights."""
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file, save_file

    from prunekit_lfm.vae import save_vae, vae_config

    torch.manual_seed(0)
    save_vae(AutoencoderKL(**{**vae_config("small", sample_size=16), "block_out_channels": (16, 16, 16),
                              "norm_num_groups": 8}), d / "vae")
    state = load_file(d / "vae" / "diffusion_pytorch_model.safetensors")
    for name in ("vae_bin", "vae_nan", "vae_missing", "vae_none"):
        (d / name).mkdir()
        (d / name / "config.json").write_bytes((d / "vae" / "config.json").read_bytes())
    (d / "vae_bin" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(_Plant()))
    nan = {k: v.clone() for k, v in state.items()}
    nan["decoder.conv_out.bias"][0] = float("nan")
    save_file(nan, d / "vae_nan" / "diffusion_pytorch_model.safetensors")
    save_file({k: v for k, v in state.items() if k != "decoder.conv_out.bias"},
              d / "vae_missing" / "diffusion_pytorch_model.safetensors")


def _runs(d):
    from safetensors.torch import load_file, save_file

    make_run(d / "run", vae=str(d / "vae"))
    make_run(d / "run_cond", num_classes=3)
    make_run(d / "run_vaebin", vae=str(d / "vae_bin"))
    make_run(d / "nanrun", seed=1)
    state = load_file(d / "nanrun" / "ema.safetensors")
    state[sorted(state)[0]].view(-1)[0] = float("nan")
    save_file(state, d / "nanrun" / "ema.safetensors", metadata={"step": "1"})


def _latents(d):
    from prunekit_lfm.latents import LatentStore, save_latents

    z = np.random.default_rng(0).normal(size=(24, 4, 4, 4)).astype(np.float32)
    labels = np.arange(24) % 3
    save_latents(d / "lat.h5", LatentStore(latents=z, ids=np.arange(24), labels=labels))
    big = z.copy()
    big[5] = 1e30
    save_latents(d / "big.h5", LatentStore(latents=big, ids=np.arange(24)))
    neg = labels.copy()
    neg[7] = -1
    save_latents(d / "neg.h5", LatentStore(latents=z, ids=np.arange(24), labels=neg))


def _images(d):
    from PIL import Image

    np.save(d / "x.npy", np.random.default_rng(1).uniform(size=(8, 16, 16)).astype(np.float32))
    for folder in ("imgs", "imgs_link", "outside"):
        (d / folder).mkdir()
        Image.new("RGB", (16, 16), (10, 20, 30)).save(d / folder / "a.png")
    (d / "imgs_link" / "b.png").symlink_to(d / "outside" / "a.png")
    with tarfile.open(d / "evil.tar", "w") as tar:
        data = (d / "imgs" / "a.png").read_bytes()
        for name in ("good.png", "../evil.png"):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    torch.jit.script(_Raises()).save(str(d / "raise.pt"))
    torch.jit.script(_Wide()).save(str(d / "enc.pt"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("lfm_corpus")
    _vae_folders(d)
    _runs(d)
    _latents(d)
    _images(d)
    return d


S = ["--n", "2", "--steps", "1", "--device", "cpu", "-q"]  # a quick sampling
TS = ["--encoder", "torchscript:enc.pt", "--size", "8", "--device", "cpu", "-q"]

# (id, argv, words the one-line message must contain)
CASES = [
    # 1. a VAE folder is loaded from safetensors only; a pickled .bin is refused unopened
    ("sample-vae-bin", ["sample", "run", *S, "--vae", "vae_bin", "-o", "o.h5"], "a pickle"),
    ("encode-vae-bin", ["encode", "x.npy", "--vae", "vae_bin", "-o", "l.h5", "-q"], "a pickle"),
    ("sample-config-vae-bin", ["sample", "run_vaebin", *S, "-o", "o.h5"], "vae_bin"),
    # 3. ids (relative file names, tar keys) never lead outside their folder
    ("embed-symlink-out", ["embed", "imgs_link", *TS, "-o", "e.h5"], "'b.png' leads outside"),
    ("encode-symlink-out", ["encode", "imgs_link", "--vae", "vae", "-o", "l.h5", "-q"], "leads outside"),
    ("embed-tar-dotdot", ["embed", "evil.tar", *TS, "-o", "e.h5"], "contains '..'"),
    # 4. a TorchScript model that raises: one line, no partial output
    ("embed-script-raises", ["embed", "x.npy", "--encoder", "torchscript:raise.pt", "--size", "8",
                             "-o", "e.h5", "-q"], "boom from the model"),
    ("embed-script-raises-shards", ["embed", "x.npy", "--encoder", "torchscript:raise.pt", "--size", "8",
                                    "--shard-rows", "2", "-o", "e", "-q"], "boom from the model"),
    ("metrics-features-raise", ["metrics", "x.npy", "--real", "x.npy", "--features", "torchscript:raise.pt",
                                "-o", "m.json", "-q"], "boom from the model"),
    ("compare-features-raise", ["compare", "run", "run", *S, "--features", "torchscript:raise.pt",
                                "-o", "c.json"], "boom from the model"),
    # 5. NaN, missing or absent weights are refused by file and tensor
    ("sample-nan-run", ["sample", "nanrun", *S, "-o", "o.h5"], "NaN/inf weights in weights file nanrun"),
    ("sample-nan-coarse", ["sample", "--coarse", "nanrun", "--fine", "run", *S, "-o", "o.h5"], "nanrun"),
    ("c2f-sweep-nan-coarse", ["c2f-sweep", "--coarse", "nanrun", "--fine", "run", *S], "NaN/inf weights"),
    ("compare-nan-run", ["compare", "nanrun", "run", *S, "-o", "c.json"], "NaN/inf weights"),
    ("score-nan-run", ["score", "nanrun", "lat.h5", "--device", "cpu", "-o", "sc.h5", "-q"], "NaN/inf"),
    ("sample-vae-nan", ["sample", "run", *S, "--vae", "vae_nan", "-o", "o.h5"], "'decoder.conv_out.bias'"),
    ("encode-vae-nan", ["encode", "x.npy", "--vae", "vae_nan", "-o", "l.h5", "-q"], "NaN/inf weights"),
    ("sample-vae-missing", ["sample", "run", *S, "--vae", "vae_missing", "-o", "o.h5"],
     "lack 1 of the model's tensors"),
    ("encode-vae-none", ["encode", "x.npy", "--vae", "vae_none", "-o", "l.h5", "-q"], "has no weights file"),
    # 6. latents of absurd magnitude; a loss that becomes non-finite
    ("train-latents-1e30", ["train", "big.h5", "-o", "trun", "--device", "cpu", "-q"], "unit scale"),
    ("train-diverges", ["train", "lat.h5", "-o", "trun", "--steps", "40", "--lr", "1e30", "--batch-size", "8",
                        "--device", "cpu", "-q"], "training diverged"),
    # 7. labels that are not class indices
    ("train-negative-label", ["train", "neg.h5", "--conditional", "-o", "trun", "--device", "cpu", "-q"],
     "label -1"),
    # 9. sizes that cannot fit and integers beyond int64
    ("sample-steps-1e9", ["sample", "run", "--steps", "1000000000", "-o", "o.h5"], "at most 100000"),
    ("c2f-sweep-steps-1e9", ["c2f-sweep", "--coarse", "run", "--fine", "run", "--steps", "1000000000"],
     "at most 100000"),
    ("sample-start-last", ["sample", "run", *S, "--start", LAST, "-o", "o.h5"], "2**63 - 1"),
    ("sample-start-big", ["sample", "run", *S, "--start", BIG, "-o", "o.h5"], "--start"),
    ("sample-n-big", ["sample", "run", "--n", BIG, "-o", "o.h5"], "--n"),
    ("sample-labels-big", ["sample", "run_cond", *S, "--labels", BIG, "-o", "o.h5"], "--labels must be a 64-bit integer"),
    ("c2f-sweep-n-huge", ["c2f-sweep", "--coarse", "run", "--fine", "run", "--n", str(10**9)], "of memory"),
    ("c2f-sweep-repeats-big", ["c2f-sweep", "--coarse", "run", "--fine", "run", "--repeats", BIG],
     "--repeats"),
    ("compare-n-huge", ["compare", "run", "run", "--n", str(10**9), "-o", "c.json"], "of memory"),
    ("train-steps-big", ["train", "lat.h5", "-o", "trun", "--steps", BIG], "--steps must be a 64-bit"),
    ("train-batch-big", ["train", "lat.h5", "-o", "trun", "--batch-size", BIG], "--batch-size must be a 64"),
    ("train-vae-steps-big", ["train-vae", "x.npy", "-o", "v2", "--steps", BIG], "--steps"),
    ("score-batch-big", ["score", "run", "lat.h5", "--batch-size", BIG, "-o", "sc.h5"], "--batch-size"),
]

# 8. a full disk: every writer checks the free space first (disk_usage reports 1000 bytes)
DISK_CASES = [
    ("sample-full", ["sample", "run", *S, "-o", "o.h5", "--png", "g.png"], "o.h5"),
    ("train-full", ["train", "lat.h5", "-o", "trun", "--steps", "2", "--batch-size", "8", "--device", "cpu",
                    "-q"], "trun"),
    ("train-vae-full", ["train-vae", "x.npy", "-o", "v2", "--steps", "1", "--device", "cpu", "-q"], "v2"),
    ("encode-full", ["encode", "x.npy", "--vae", "vae", "-o", "l.h5", "-q"], "l.h5"),
    ("embed-shards-full", ["embed", "x.npy", *TS, "--shard-rows", "2", "-o", "e"], "e.parts"),
    ("score-full", ["score", "run", "lat.h5", "--device", "cpu", "-o", "sc.h5", "-q"], "sc.h5"),
]


def _params(cases):
    return [pytest.param(argv, message, id=name) for name, argv, message in cases]


@pytest.mark.parametrize("argv, message", _params(CASES))
def test_lfm_bad_input_is_one_clean_error_and_writes_nothing(corpus, monkeypatch, argv, message):
    monkeypatch.chdir(corpus)
    monkeypatch.setenv("PRUNEKIT_AVAILABLE_MEMORY", str(2**30))
    before = snapshot(corpus)
    result = CliRunner().invoke(main, ["lfm", *argv])
    check_clean_failure(result, message)
    assert snapshot(corpus) == before
    assert not (corpus / "pwned").exists()


@pytest.mark.parametrize("argv, message", _params(DISK_CASES))
def test_lfm_full_disk_is_one_clean_error_and_writes_nothing(corpus, monkeypatch, argv, message):
    import prunekit_lfm.guards as guards

    class Usage:
        total, used, free = 1 << 40, 1 << 40, 1000

    monkeypatch.chdir(corpus)
    monkeypatch.setattr(guards.shutil, "disk_usage", lambda path: Usage())
    before = snapshot(corpus)
    result = CliRunner().invoke(main, ["lfm", *argv])
    check_clean_failure(result, "is free")
    assert message in result.stderr
    assert snapshot(corpus) == before


def test_the_corpus_commands_work_without_the_defect(corpus, monkeypatch, tmp_path):
    """The same commands on the intact files succeed (so each case above tests its defect)."""
    monkeypatch.chdir(corpus)
    for argv in (["sample", "run", *S, "-o", str(tmp_path / "o.h5"), "--png", str(tmp_path / "g.png")],
                 ["sample", "run", *S, "--start", str(2**63 - 3), "-o", str(tmp_path / "o2.h5")],
                 ["sample", "--coarse", "run", "--fine", "run", *S, "-o", str(tmp_path / "o3.h5")],
                 ["encode", "imgs", "--vae", "vae", "-o", str(tmp_path / "l.h5"), "-q"],
                 ["embed", "imgs", *TS, "-o", str(tmp_path / "e.h5")],
                 ["train", "neg.h5", "-o", str(tmp_path / "trun"), "--steps", "2", "--batch-size", "8",
                  "--device", "cpu", "-q"]):
        result = CliRunner().invoke(main, ["lfm", *argv])
        assert result.exit_code == 0, (argv, result.output)
    assert os.path.exists(tmp_path / "trun" / "ema.safetensors")
