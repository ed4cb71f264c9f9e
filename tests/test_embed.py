"""``prunekit lfm embed``: tiny randomly initialised CLIP / DINOv2 / SigLIP models, saved and
loaded back through the real path, against direct calls of the same models."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402

from prunekit.cli import main  # noqa: E402
from prunekit.errors import PrunekitError  # noqa: E402
from prunekit_lfm import embed as E  # noqa: E402

VISION = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
              image_size=32, patch_size=8)
TEXT = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
            vocab_size=99, max_position_embeddings=16)


def embed_all(inputs, enc, **kw) -> np.ndarray:
    """Every feature of ``inputs`` in one array, batch after batch."""
    return np.concatenate([feats for _, feats in E.embed_batches(inputs, enc, **kw)])


def build(kind: str):
    """A tiny model of ``kind`` and the image processor its family uses, seeded."""
    torch.manual_seed({"clip": 0, "dinov2": 1, "siglip": 2}[kind])
    if kind == "clip":
        model = transformers.CLIPModel(transformers.CLIPConfig(
            text_config=TEXT, vision_config=VISION, projection_dim=16))
        proc = transformers.CLIPImageProcessor(size={"shortest_edge": 32},
                                               crop_size={"height": 32, "width": 32})
    elif kind == "dinov2":
        model = transformers.Dinov2Model(transformers.Dinov2Config(**VISION))
        proc = transformers.BitImageProcessor(size={"shortest_edge": 36}, do_center_crop=True,
                                              crop_size={"height": 32, "width": 32},
                                              image_mean=[0.485, 0.456, 0.406],
                                              image_std=[0.229, 0.224, 0.225])
    else:
        model = transformers.SiglipModel(transformers.SiglipConfig(
            text_config=TEXT, vision_config=VISION))
        proc = transformers.SiglipImageProcessor(size={"height": 32, "width": 32})
    return model.eval(), proc


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{kind: (folder, the in-memory model that was saved)}."""
    out = {}
    for kind in E.ENCODERS:
        folder = tmp_path_factory.mktemp(kind)
        model, proc = build(kind)
        model.save_pretrained(folder)
        proc.save_pretrained(folder)
        out[kind] = (folder, model)
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Seven RGB PNGs of different sizes in two class folders (cats: 3, dogs: 4)."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(7):
        cls = "cats" if i < 3 else "dogs"
        (root / cls).mkdir(exist_ok=True)
        h, w = 30 + 7 * i, 50 - 3 * i
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / cls / f"im{i}.png")
    return root


def direct(kind, model, pixel_values):
    """The encoder's features by a direct call of the model's parts."""
    with torch.no_grad():
        if kind == "clip":
            return model.visual_projection(model.vision_model(pixel_values=pixel_values).pooler_output)
        if kind == "siglip":
            return model.vision_model(pixel_values=pixel_values).pooler_output
        return model(pixel_values=pixel_values).last_hidden_state[:, 0]


@pytest.mark.parametrize("kind", E.ENCODERS)
def test_features_equal_a_direct_call_on_processed_pixels(kind, models, photos):
    folder, model = models[kind]
    enc = E.load_encoder(kind, folder)
    inputs = E.open_inputs(photos)
    assert inputs.ids.tolist() == [f"cats/im{i}.png" for i in range(3)] + [
        f"dogs/im{i}.png" for i in range(3, 7)]
    got = embed_all(inputs, enc, batch_size=3, normalize=False)
    proc = transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    pils = [Image.open(photos / name).convert("RGB") for name in inputs.ids]
    pv = proc(images=pils, return_tensors="pt")["pixel_values"]  # the standard uint8 route
    assert pv.shape == (7, 3, 32, 32)
    expected = direct(kind, model, pv).numpy()
    assert got.shape == expected.shape == (7, 16 if kind == "clip" else 32)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)
    # Normalised by default: unit rows in the same directions.
    unit = embed_all(inputs, enc, batch_size=4)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(unit, expected / np.linalg.norm(expected, axis=1, keepdims=True),
                               atol=2e-6)


def test_cli_writes_core_embeddings_deterministically(models, photos, tmp_path):
    import prunekit as pk

    folder, _ = models["clip"]
    outs = []
    for name in ("a.h5", "b.h5"):
        out = tmp_path / name
        res = CliRunner().invoke(main, ["lfm", "embed", str(photos), "-o", str(out), "--weights",
                                        str(folder), "--labels", "--batch-size", "2", "--quiet"])
        assert res.exit_code == 0, res.output
        outs.append(out)
    assert res.output == (f"{out}: 7 embeddings from clip ({folder}), L2-normalised, float32, "
                          "labels: yes\n")
    with h5py.File(outs[0]) as a, h5py.File(outs[1]) as b:
        assert a["embeddings"][()].tobytes() == b["embeddings"][()].tobytes()
        assert a.attrs["encoder"] == "clip" and bool(a.attrs["normalize"]) is True
        assert a.attrs["image_size"] == 32 and a.attrs["weights"] == str(folder)
        assert json.loads(a.attrs["params"])["dtype"] == "float32"
    emb = pk.load_embeddings(outs[0])
    assert emb.n_total == 7 and emb.dim == 16 and emb.dtype == np.float32
    assert emb.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert emb.ids[3] == "dogs/im3.png"
    assert not (tmp_path / "a.h5.parts").exists()
    # float16 and no normalisation, no labels: the same numbers, rounded.
    res = CliRunner().invoke(main, ["lfm", "embed", str(photos), "-o", str(tmp_path / "h.h5"),
                                    "--weights", str(folder), "--dtype", "float16",
                                    "--no-normalize", "--quiet"])
    assert res.exit_code == 0, res.output
    enc = E.load_encoder("clip", folder)
    raw = embed_all(E.open_inputs(photos), enc, normalize=False)
    with h5py.File(tmp_path / "h.h5") as f:
        assert f["embeddings"].dtype == np.float16 and "labels" not in f
        assert bool(f.attrs["normalize"]) is False
        np.testing.assert_array_equal(f["embeddings"][()], raw.astype(np.float16))


def test_resume_continues_and_gives_the_same_bytes(models, photos, tmp_path):
    folder, _ = models["dinov2"]
    enc = E.load_encoder("dinov2", folder)
    full = tmp_path / "full.h5"
    E.embed_to_file(E.open_inputs(photos), enc, full, batch_size=2, progress=False)

    inputs = E.open_inputs(photos)
    reads = []
    real_read = inputs.read

    def failing(a, b):
        reads.append(a)
        if a == 4:
            raise KeyboardInterrupt  # killed during the third batch
        return real_read(a, b)

    inputs.read = failing
    out = tmp_path / "out.h5"
    with pytest.raises(KeyboardInterrupt):
        E.embed_to_file(inputs, enc, out, batch_size=2, progress=False)
    assert not out.exists()
    parts = tmp_path / "out.h5.parts"
    assert sorted(p.name for p in parts.iterdir()) == [
        "part-000000000000.npy", "part-000000000002.npy", "settings.json"]
    with pytest.raises(PrunekitError, match="pass --resume"):
        E.embed_to_file(E.open_inputs(photos), enc, out, batch_size=2, progress=False)
    with pytest.raises(PrunekitError, match=r"other settings \(batch_size\)"):
        E.embed_to_file(E.open_inputs(photos), enc, out, batch_size=3, resume=True, progress=False)
    reads.clear()
    inputs.read = lambda a, b: (reads.append(a), real_read(a, b))[1]
    E.embed_to_file(inputs, enc, out, batch_size=2, resume=True, progress=False)
    assert reads == [4, 6]  # only the unfinished batches
    assert not parts.exists()
    with h5py.File(full) as a, h5py.File(out) as b:
        assert a["embeddings"][()].tobytes() == b["embeddings"][()].tobytes()
        assert a["ids"][()].tolist() == b["ids"][()].tolist()


def test_webdataset_shards_give_keys_labels_and_the_same_features(models, photos, tmp_path):
    wds = pytest.importorskip("webdataset")
    folder, _ = models["siglip"]
    names = sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*.png"))
    for shard in range(2):
        with wds.TarWriter(str(tmp_path / f"train-{shard:03d}.tar")) as sink:
            for i, name in enumerate(names):
                if i % 2 == shard:
                    sink.write({"__key__": f"s{i:04d}", "png": (photos / name).read_bytes(),
                                "cls": str(int(name.startswith("dogs")))})
    spec = str(tmp_path / "train-{000..001}.tar")
    inputs = E.open_inputs(spec, labels=True)
    assert inputs.ids.tolist() == ["s0000", "s0002", "s0004", "s0006", "s0001", "s0003", "s0005"]
    assert inputs.labels.tolist() == [0, 0, 1, 1, 0, 1, 1]
    enc = E.load_encoder("siglip", folder)
    got = embed_all(inputs, enc)
    ref = embed_all(E.open_inputs(photos), enc)
    np.testing.assert_allclose(got, ref[[0, 2, 4, 6, 1, 3, 5]], rtol=0, atol=1e-6)  # other batches
    # A folder holding only the shards reads the same.
    assert E.open_inputs(tmp_path).ids.tolist() == inputs.ids.tolist()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_arrays_and_torchscript(tmp_path):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (5, 12, 20, 3), dtype=np.uint8)
    np.save(tmp_path / "imgs.npy", arr)

    class Net(torch.nn.Module):
        def forward(self, x):
            return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)

    torch.jit.script(Net()).save(str(tmp_path / "net.pt"))
    enc = E.load_encoder(f"torchscript:{tmp_path / 'net.pt'}", size=8)
    assert not enc.normalize_default
    inputs = E.open_inputs(tmp_path / "imgs.npy")
    assert inputs.ids.tolist() == [0, 1, 2, 3, 4] and inputs.labels is None
    got = embed_all(inputs, enc, batch_size=2)
    x = torch.from_numpy(arr.astype(np.float32) / 255).permute(0, 3, 1, 2)[:, :, :, 4:16]  # center 12x12
    x = torch.nn.functional.interpolate(x, size=(8, 8), mode="bilinear", antialias=True,
                                        align_corners=False).clamp(0, 1)
    expected = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    with pytest.warns(DeprecationWarning, match="embed_images goes in the next release"):
        old = E.embed_images(inputs, enc, batch_size=2, progress=False)
    np.testing.assert_array_equal(old, got)


def test_errors_name_the_fix(models, photos, tmp_path):
    with pytest.raises(PrunekitError, match="unknown encoder 'vit'"):
        E.load_encoder("vit")
    with pytest.raises(PrunekitError, match="no clip model found locally"):
        E.load_encoder("clip", tmp_path / "nowhere")
    with pytest.raises(PrunekitError, match="no clip model found locally"):
        E.load_encoder("clip", "prunekit-tests/not-a-cached-repo")  # never downloaded
    with pytest.raises(PrunekitError, match="holds a 'dinov2' model, not clip"):
        E.load_encoder("clip", models["dinov2"][0])
    with pytest.raises(PrunekitError, match="--size applies to torchscript"):
        E.load_encoder("clip", models["clip"][0], size=64)
    with pytest.raises(PrunekitError, match="TorchScript model not found"):
        E.load_encoder(f"torchscript:{tmp_path / 'none.pt'}")
    np.save(tmp_path / "imgs.npy", np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(PrunekitError, match="carries no labels"):
        E.open_inputs(tmp_path / "imgs.npy", labels=True)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"not a png")
    enc = E.load_encoder("clip", models["clip"][0])
    with pytest.raises(PrunekitError, match="cannot decode image"):
        E.embed_to_file(E.open_inputs(bad), enc, tmp_path / "o.h5", progress=False)
    assert not (tmp_path / "o.h5").exists() and not (tmp_path / "o.h5.parts").exists()
    res = CliRunner().invoke(main, ["lfm", "embed", str(photos), "-o", str(photos / "cats" / "x.h5"),
                                    "--weights", str(models["clip"][0])])
    assert res.exit_code == 2 and "inside" in res.output


# ----------------------------------------------------------------------------- --shard-rows


def _arrays(path):
    with h5py.File(path) as f:
        return {k: f[k][()] for k in f}, dict(f.attrs)


def test_shard_rows_split_the_single_file_into_a_directory_the_core_reads(models, photos, tmp_path):
    import prunekit as pk

    folder, _ = models["clip"]
    base = ["lfm", "embed", str(photos), "--weights", str(folder), "--labels", "--batch-size", "2",
            "--dtype", "float16", "--quiet"]
    res = CliRunner().invoke(main, [*base, "-o", str(tmp_path / "one.h5")])
    assert res.exit_code == 0, res.output
    out = tmp_path / "out" / "emb"  # the parent is created too
    res = CliRunner().invoke(main, [*base, "-o", str(out), "--shard-rows", "3"])
    assert res.exit_code == 0, res.output
    assert res.output == (f"{out}: 7 embeddings in 3 shards of up to 3 rows from clip ({folder}), "
                          "L2-normalised, float16, labels: yes\n")
    assert sorted(p.name for p in out.iterdir()) == ["part_00000.h5", "part_00001.h5", "part_00002.h5"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.h5", "out"]  # no temp dir or parts
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["emb"]
    one, one_attrs = _arrays(tmp_path / "one.h5")
    shards = [_arrays(out / f"part_0000{i}.h5") for i in range(3)]
    assert [s["embeddings"].shape for s, _ in shards] == [(3, 16), (3, 16), (1, 16)]  # batches of 2
    for k in ("embeddings", "labels"):
        joined = np.concatenate([s[k] for s, _ in shards])
        assert joined.dtype == one[k].dtype and joined.tobytes() == one[k].tobytes()
    assert np.concatenate([s["ids"] for s, _ in shards]).tolist() == one["ids"].tolist()
    assert shards[1][0]["ids"].tolist() == [b"dogs/im3.png", b"dogs/im4.png", b"dogs/im5.png"]
    for _, attrs in shards:
        assert set(attrs) == set(one_attrs)
        for k in ("encoder", "weights", "normalize", "source", "image_size", "prunekit_version"):
            assert attrs[k] == one_attrs[k]
        assert json.loads(attrs["params"]) == {**json.loads(one_attrs["params"]), "shard_rows": 3}
    emb = pk.load_embeddings(out)
    assert emb.n_total == 7 and emb.ids.tolist() == pk.load_embeddings(tmp_path / "one.h5").ids.tolist()
    assert emb.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    res = CliRunner().invoke(main, ["info", str(out)])
    assert res.exit_code == 0, res.output
    assert f"{out} ['embeddings']: 7 x 16 float16" in res.output and "  shards: 3\n" in res.output
    assert "[2] part_00002.h5: 1 rows from 6," in res.output


def test_shard_rows_replace_only_an_earlier_sharded_output(models, photos, tmp_path):
    folder, _ = models["dinov2"]
    out = tmp_path / "emb"

    def run(*extra, output=out):
        return CliRunner().invoke(main, ["lfm", "embed", str(photos), "--encoder", "dinov2",
                                         "--weights", str(folder), "-o", str(output), "--quiet",
                                         *extra])

    out.mkdir()  # an empty directory is taken
    assert run("--shard-rows", "3").exit_code == 0
    first = _arrays(out / "part_00000.h5")[0]["embeddings"]
    res = run("--shard-rows", "5")  # an earlier output is replaced whole: no stale part_00002
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["part_00000.h5", "part_00001.h5"]
    np.testing.assert_array_equal(_arrays(out / "part_00000.h5")[0]["embeddings"][:3], first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb"]
    (out / "notes.txt").write_text("mine")  # no longer an output of this command
    res = run("--shard-rows", "5")
    assert res.exit_code == 2 and "Error: --output" in res.output
    assert "is a non-empty directory (it holds 'notes.txt' and 2 more)" in res.output
    assert (out / "notes.txt").read_text() == "mine" and len(list(out.iterdir())) == 3
    (tmp_path / "file.h5").write_bytes(b"x")
    res = run("--shard-rows", "5", output=tmp_path / "file.h5")
    assert res.exit_code == 2 and "is not a directory; with --shard-rows" in res.output
    res = run("--shard-rows", "5", output=photos / "emb")
    assert res.exit_code == 2 and "inside" in res.output and not (photos / "emb").exists()
    res = run("--shard-rows", "5", output=photos.parent)  # would hold the input images
    assert res.exit_code == 2 and f"holds {photos}" in res.output
    res = run("--shard-rows", "0")
    assert res.exit_code == 2 and "--shard-rows" in res.output
    res = run(output=out)  # without --shard-rows a directory is refused, as before
    assert res.exit_code == 2 and "is a directory" in res.output


def test_shard_rows_leave_nothing_on_failure_and_resume(models, photos, tmp_path):
    folder, _ = models["dinov2"]
    enc = E.load_encoder("dinov2", folder)
    ref = tmp_path / "ref"
    E.embed_to_file(E.open_inputs(photos), enc, ref, batch_size=2, shard_rows=4, progress=False)
    inputs = E.open_inputs(photos)
    real_read = inputs.read

    def failing(a, b):
        if a == 4:
            raise KeyboardInterrupt
        return real_read(a, b)

    inputs.read = failing
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        E.embed_to_file(inputs, enc, out, batch_size=2, shard_rows=4, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parts", "ref"]
    # Resumed with another shard size: the parts do not depend on it.
    inputs.read = real_read
    E.embed_to_file(inputs, enc, out, batch_size=2, shard_rows=3, resume=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "ref"]
    got = np.concatenate([_arrays(out / f"part_0000{i}.h5")[0]["embeddings"] for i in range(3)])
    want = np.concatenate([_arrays(ref / f"part_0000{i}.h5")[0]["embeddings"] for i in range(2)])
    assert got.tobytes() == want.tobytes()
    # A failure while the shards are written (here: the second shard) leaves no directory.
    real_write = E._write_rows

    def write_then_fail(path, *args):
        if path.name == "part_00001.h5":
            raise PrunekitError("disk full")
        real_write(path, *args)

    E._write_rows = write_then_fail
    try:
        with pytest.raises(PrunekitError, match="disk full"):
            E.embed_to_file(E.open_inputs(photos), enc, tmp_path / "new", batch_size=2,
                            shard_rows=4, progress=False)
        with pytest.raises(PrunekitError, match="disk full"):  # an earlier output stays as it was
            E.embed_to_file(E.open_inputs(photos), enc, ref, batch_size=3, shard_rows=2,
                            progress=False)
    finally:
        E._write_rows = real_write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "ref"]
    assert sorted(p.name for p in ref.iterdir()) == ["part_00000.h5", "part_00001.h5"]
    assert _arrays(ref / "part_00000.h5")[0]["embeddings"].tobytes() == want[:4].tobytes()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_shard_rows_under_torchrun_write_the_shards_of_one_process(tmp_path):
    """Two processes share the batches (3 rows each); rank 0 writes shards of 4 rows."""
    import shutil

    from torchrun_helper import run_two_processes

    class Net(torch.nn.Module):
        def forward(self, x):
            return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)

    net = tmp_path / "net.pt"
    torch.jit.script(Net()).save(str(net))
    images = tmp_path / "images.npy"
    np.save(images, np.random.default_rng(2).integers(0, 256, (10, 12, 20, 3), dtype=np.uint8))
    args = ["lfm", "embed", str(images), "--encoder", f"torchscript:{net}", "--size", "8",
            "--batch-size", "3", "--shard-rows", "4", "--device", "cpu", "-q"]
    one, two = tmp_path / "one", tmp_path / "two"
    res = CliRunner().invoke(main, [*args, "-o", str(one)])
    assert res.exit_code == 0, res.output
    code, stdout, stderr = run_two_processes(
        [*args, "-o", str(two)], timeout=120,
        before_try=lambda: (shutil.rmtree(two, ignore_errors=True),
                            shutil.rmtree(f"{two}.parts", ignore_errors=True)))
    assert code == 0, stderr[-3000:]
    assert stdout == res.output.replace(str(one), str(two))
    names = ["part_00000.h5", "part_00001.h5", "part_00002.h5"]
    assert sorted(p.name for p in two.iterdir()) == names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.npy", "net.pt", "one", "two"]
    for name in names:
        a, b = _arrays(one / name)[0], _arrays(two / name)[0]
        assert a["ids"].tolist() == b["ids"].tolist()
        assert a["embeddings"].tobytes() == b["embeddings"].tobytes()
    assert _arrays(two / "part_00002.h5")[0]["ids"].tolist() == [8, 9]  # global positions


# ----------------------------------------------------------------------------- loading runs no code


class _Plant:
    """A pickle that creates a marker file when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_weights_folder_with_only_a_pickled_bin_is_refused_unopened(models, photos, tmp_path):
    import pickle
    import shutil

    folder, marker = tmp_path / "clip-bin", tmp_path / "pwned"
    shutil.copytree(models["clip"][0], folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Plant(marker)))
    res = CliRunner().invoke(main, ["lfm", "embed", str(photos), "-o", str(tmp_path / "e.h5"),
                                    "--weights", str(folder), "--device", "cpu", "-q"])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.output
    assert "pytorch_model.bin, a pickle" in res.stderr and "model.safetensors" in res.stderr
    assert not marker.exists() and not (tmp_path / "e.h5").exists()


def test_hf_weights_with_nan_are_refused(models, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "dino-nan"
    shutil.copytree(models["dinov2"][0], folder)
    state = load_file(folder / "model.safetensors")
    name = sorted(state)[0]
    state[name].view(-1)[0] = float("nan")
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(PrunekitError, match="NaN/inf weights in --weights .*dino-nan"):
        E.load_encoder("dinov2", folder)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_a_torchscript_encoder_that_raises_exits_2_and_leaves_nothing(photos, tmp_path):
    class Raises(torch.nn.Module):
        def forward(self, x):
            if x.shape[0] > 1:
                raise RuntimeError("encoder exploded")
            return x.mean(dim=(2, 3))

    torch.jit.script(Raises()).save(str(tmp_path / "raises.pt"))
    for extra in ([], ["--shard-rows", "2"]):
        out = tmp_path / "out"
        res = CliRunner().invoke(main, ["lfm", "embed", str(photos), "-o", str(out), "--encoder",
                                        f"torchscript:{tmp_path / 'raises.pt'}", "--size", "8",
                                        "--batch-size", "2", "--device", "cpu", "-q", *extra])
        assert res.exit_code == 2, res.output
        assert res.stderr.strip() == (f"Error: TorchScript model {tmp_path / 'raises.pt'} failed on a "
                                      "batch of 2 images: builtins.RuntimeError: encoder exploded")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["raises.pt"]
