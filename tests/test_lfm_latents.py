"""Images, the latent store and the small VAE: round trips, determinism, errors, the CLI."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from prunekit.cli import main
from prunekit.errors import PrunekitError
from prunekit_lfm.latents import (
    LatentStore,
    decode,
    encode,
    load_images,
    load_latents,
    save_latents,
)
from prunekit_lfm.vae import load_vae, save_vae, train_vae, vae_config

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- store


def test_store_round_trip_keeps_everything(tmp_path):
    z = np.arange(2 * 4 * 2 * 2, dtype=np.float32).reshape(2, 4, 2, 2)
    store = LatentStore(z, np.array(["a.png", "b/c.png"], dtype=object), labels=np.array([3, 1]),
                        scale_factor=0.18215, shift_factor=0.1, vae="/v", image_size=16, source="imgs")
    save_latents(tmp_path / "l.h5", store, command=["prunekit", "lfm", "encode"])
    back = load_latents(tmp_path / "l.h5")
    assert np.array_equal(back.latents, z) and back.ids.tolist() == ["a.png", "b/c.png"]
    assert back.labels.tolist() == [3, 1] and back.num_classes == 4 and back.shape == (4, 2, 2)
    assert (back.scale_factor, back.shift_factor, back.vae, back.image_size, back.source) == (
        pytest.approx(0.18215), pytest.approx(0.1), "/v", 16, "imgs")
    assert back.fingerprint == store.fingerprint
    with h5py.File(tmp_path / "l.h5") as f:
        assert f.attrs["fingerprint"] == store.fingerprint and "prunekit_version" in f.attrs
    z2 = z.copy()
    z2[1, 0, 0, 0] += 1
    assert LatentStore(z2, np.arange(2)).fingerprint != LatentStore(z, np.arange(2)).fingerprint


def _h5(path, **datasets):
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f.create_dataset(k, data=v)
    return path


@pytest.mark.parametrize("make,message", [
    (lambda p: p / "missing.h5", "latents file not found"),
    (lambda p: (p / "x.h5").write_text("no") and p / "x.h5", "not an HDF5 file"),
    (lambda p: _h5(p / "x.h5", other=np.zeros(3)), "has no dataset 'latents'"),
    (lambda p: _h5(p / "x.h5", latents=np.zeros((2, 4, 2, 2))), "has no dataset 'ids'"),
    (lambda p: _h5(p / "x.h5", latents=np.zeros((2, 8)), ids=np.arange(2)), r"must be float \[N, C, h, w\]"),
    (lambda p: _h5(p / "x.h5", latents=np.full((2, 1, 1, 1), np.nan), ids=np.arange(2)), "NaN/inf in rows 0, 1"),
    (lambda p: _h5(p / "x.h5", latents=np.zeros((2, 1, 1, 1)), ids=np.array([4, 4])), "duplicate ids"),
    (lambda p: _h5(p / "x.h5", latents=np.zeros((2, 1, 1, 1)), ids=np.arange(3)), "ids has shape"),
])
def test_bad_latent_files_are_prunekit_errors(tmp_path, make, message):
    with pytest.raises(PrunekitError, match=message):
        load_latents(make(tmp_path))


# ----------------------------------------------------------------------------- images


def test_digits_are_rgb_in_minus_one_one_with_labels():
    from sklearn.datasets import load_digits

    d = load_digits()
    x, ids, labels = load_images("digits", 8)  # native size: no resampling
    assert x.shape == (1797, 3, 8, 8) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0], d.images / 8.0 - 1.0, atol=1e-6)
    assert np.array_equal(x[:, 0], x[:, 2]) and ids.tolist() == list(range(1797))
    assert np.array_equal(labels, d.target)
    up, _, _ = load_images("digits", 16)
    assert up.shape == (1797, 3, 16, 16) and up.min() >= -1 and up.max() <= 1


def test_npy_and_h5_arrays(tmp_path):
    gray = np.array([[[0, 255], [255, 0]]], dtype=np.uint8).repeat(3, axis=0)  # [3, 2, 2]
    np.save(tmp_path / "g.npy", gray)
    x, ids, labels = load_images(tmp_path / "g.npy", None)
    assert x.shape == (3, 3, 2, 2) and x[0, 1].tolist() == [[-1.0, 1.0], [1.0, -1.0]]
    assert ids.tolist() == [0, 1, 2] and labels is None
    hwc = np.zeros((2, 4, 4, 3), np.float32)
    hwc[1, :, :, 0] = 1.0
    _h5(tmp_path / "i.h5", images=hwc, ids=np.array([b"p", b"q"]), labels=np.array([0, 1]))
    x, ids, labels = load_images(tmp_path / "i.h5", 4)
    assert x.shape == (2, 3, 4, 4) and x[1, 0].min() == 1.0 and x[1, 1].max() == -1.0
    assert ids.tolist() == ["p", "q"] and labels.tolist() == [0, 1]
    np.save(tmp_path / "bad.npy", np.full((2, 4, 4), 2.0, np.float32))
    with pytest.raises(PrunekitError, match=r"must lie in \[0, 1\]"):
        load_images(tmp_path / "bad.npy", 4)
    with pytest.raises(PrunekitError, match="images not found"):
        load_images(tmp_path / "nothing.npy", 4)


def test_folder_of_images_with_class_subfolders(tmp_path):
    from PIL import Image

    for cls, value in (("cat", 0), ("dog", 255)):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (6, 4), (value, value, value)).save(tmp_path / cls / f"{i}.png")
    x, ids, labels = load_images(tmp_path, 4)
    assert ids.tolist() == ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"]
    assert labels.tolist() == [0, 0, 1, 1] and x.shape == (4, 3, 4, 4)
    assert x[0].max() == -1.0 and x[3].min() == 1.0
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrunekitError, match="no image files"):
        load_images(tmp_path / "empty", 4)


# ----------------------------------------------------------------------------- VAE


@pytest.fixture(scope="module")
def images():
    x, _, _ = load_images("digits", 16)
    return x[:96]


@pytest.fixture(scope="module")
def vae(images):
    return train_vae(images, steps=3, batch_size=16, seed=0, progress=False)


def test_vae_shapes_scaling_and_determinism(vae, images):
    z = encode(images, vae, batch_size=40, progress=False)
    assert z.shape == (96, 4, 8, 8) and z.dtype == np.float32
    # scaling_factor = 1 / std of the posterior means over the training images
    assert float(z.std()) == pytest.approx(1.0, rel=1e-4)
    assert np.array_equal(z, encode(images, vae, batch_size=40, progress=False))  # deterministic
    np.testing.assert_allclose(z, encode(images, vae, batch_size=7, progress=False), atol=1e-5)
    back = decode(z[:5], vae, batch_size=2)
    assert back.shape == (5, 3, 16, 16) and back.min() >= -1 and back.max() <= 1
    again = train_vae(images, steps=3, batch_size=16, seed=0, progress=False)
    assert np.array_equal(z, encode(images, again, progress=False))  # seeded training


def test_vae_save_load_round_trip(vae, images, tmp_path):
    save_vae(vae, tmp_path / "vae")
    assert (tmp_path / "vae" / "config.json").is_file()
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = load_vae(tmp_path / "vae")
    assert loaded.config.scaling_factor == vae.config.scaling_factor
    assert np.array_equal(encode(images[:8], loaded, progress=False), encode(images[:8], vae, progress=False))
    with pytest.raises(PrunekitError, match="not empty"):
        save_vae(vae, tmp_path / "vae")
    assert [p.name for p in tmp_path.iterdir()] == ["vae"]  # no temporary folders left


def test_shift_factor_is_applied_both_ways(images):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(**{**vae_config("small", sample_size=16), "scaling_factor": 2.0, "shift_factor": 0.5})
    mean = vae.encode(torch.as_tensor(images[:2])).latent_dist.mean.detach().numpy()
    z = encode(images[:2], vae, progress=False)
    np.testing.assert_allclose(z, (mean - 0.5) * 2.0, atol=1e-6)
    direct = vae.decode(torch.as_tensor(mean)).sample.clamp(-1, 1).detach().numpy()
    np.testing.assert_allclose(decode(z, vae), direct, atol=1e-5)


def test_load_vae_errors(tmp_path):
    with pytest.raises(PrunekitError, match="must be a directory with config.json"):
        load_vae(tmp_path / "nope")
    (tmp_path / "f").write_text("x")
    with pytest.raises(PrunekitError, match="must be a directory with config.json"):
        load_vae(tmp_path / "f")


# ----------------------------------------------------------------------------- CLI


def _cli(*args):
    return CliRunner().invoke(main, ["lfm", *map(str, args)])


def test_cli_train_vae_then_encode_digits(tmp_path):
    r = _cli("train-vae", "digits", "-o", tmp_path / "vae", "--steps", 1, "--batch-size", 8,
             "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    assert "16x16 images -> 8x8x4 latents" in r.output
    r = _cli("encode", "digits", "--vae", tmp_path / "vae", "-o", tmp_path / "l.h5", "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    store = load_latents(tmp_path / "l.h5")
    assert store.latents.shape == (1797, 4, 8, 8) and store.image_size == 16
    assert store.vae == str((tmp_path / "vae").resolve()) and store.labels is not None
    assert store.scale_factor == pytest.approx(load_vae(tmp_path / "vae").config.scaling_factor)


@pytest.mark.parametrize("args,message", [
    (["encode", "digits", "--vae", "{tmp}/novae", "-o", "{tmp}/out.h5"], "must be a directory with config.json"),
    (["encode", "{tmp}/none.npy", "--vae", "{vae}", "-o", "{tmp}/out.h5"], "images not found"),
    (["encode", "digits", "--vae", "{vae}", "-o", "{tmp}/out.h5", "--size", "15"], "divisible"),
    (["train-vae", "digits", "-o", "{vae}"], "not empty"),
    (["train-vae", "digits", "-o", "{tmp}/out.h5", "--steps", "0"], "--steps"),
    (["train-vae", "digits", "-o", "{tmp}/out.h5", "--image-size", "15"], "divisible"),
])
def test_cli_errors_exit_2_and_write_nothing(vae, tmp_path, args, message):
    vae_dir = save_vae(vae, tmp_path / "existing_vae")
    before = sorted(p.name for p in tmp_path.iterdir())
    r = _cli(*[a.format(tmp=tmp_path, vae=vae_dir) for a in args], "--device", "cpu", "-q")
    assert r.exit_code == 2, r.output
    assert r.output.startswith("Error:") and message in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("size,side,latent", [("small", 16, 8), ("base", 256, 32)])
def test_vae_sizes_give_the_documented_latent_shapes(size, side, latent):
    from diffusers import AutoencoderKL

    from prunekit_lfm.vae import downsampling

    with torch.device("meta"):
        vae = AutoencoderKL(**vae_config(size, sample_size=side))
        mean = vae.encode(torch.empty(1, 3, side, side)).latent_dist.mean
    assert tuple(mean.shape) == (1, 4, latent, latent) and downsampling(size) == side // latent


def test_image_sources_stream_the_same_images_in_batches(vae, tmp_path):
    from prunekit_lfm.latents import open_images

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(10, 16, 16, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", arr)
    _h5(tmp_path / "a.h5", images=arr, labels=np.arange(10) % 2)
    whole, _, _ = load_images(tmp_path / "a.npy", 16)
    for path in ("a.npy", "a.h5"):
        src = open_images(tmp_path / path, 16)
        batches = [src.read(a, min(a + 4, src.n)) for a in range(0, src.n, 4)]
        assert src.n == 10 and np.array_equal(np.concatenate(batches), whole)
        assert np.array_equal(encode(src, vae, batch_size=4, progress=False),
                              encode(whole, vae, batch_size=4, progress=False))
    assert open_images(tmp_path / "a.h5", 16).labels.tolist() == [0, 1] * 5
    _h5(tmp_path / "bad.h5", images=np.zeros((2, 5, 6, 7), np.uint8))
    with pytest.raises(PrunekitError, match=r"must be \[N, H, W\], \[N, H, W, 3\] or \[N, 3, H, W\]"):
        open_images(tmp_path / "bad.h5", 16)
