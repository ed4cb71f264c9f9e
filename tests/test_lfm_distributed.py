"""Per-item commands under torchrun: batches shared out over the ranks, the same file as one process.

The torchrun tests start two CPU processes (gloo) on tiny inputs whose batches do not
split evenly (4 batches, the last one short), and compare every dataset and attribute of
the file with a single-process run (the creation time and the command line aside).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from lfm_stand_ins import make_run
from torchrun_helper import run_two_processes

from prunekit.cli import main
from prunekit.errors import PrunekitError
from prunekit_lfm.distributed import Dist, Shards, batch_starts, load_part, save_part
from prunekit_lfm.latents import LatentStore, save_latents

torch.set_num_threads(1)  # the same threads as each torchrun process (OMP_NUM_THREADS=1)


# ----------------------------------------------------------------------------- batches


@pytest.mark.parametrize("n,batch,world", [(10, 3, 2), (7, 2, 3), (5, 8, 2), (12, 4, 4), (1, 1, 3)])
def test_batch_b_goes_to_rank_b_mod_w_and_every_batch_once(n, batch, world):
    per_rank = [list(batch_starts(n, batch, Dist(rank, world))) for rank in range(world)]
    single = list(batch_starts(n, batch, Dist()))
    assert single == list(range(0, n, batch))  # the batches of one process
    assert sorted(a for starts in per_rank for a in starts) == single  # each exactly once
    for rank, starts in enumerate(per_rank):
        assert all((a // batch) % world == rank for a in starts)


def test_parts_round_trip_and_refuse_a_wrong_row_count(tmp_path):
    block = np.arange(12, dtype=np.float32).reshape(3, 4)
    save_part(tmp_path, 6, block)
    assert [p.name for p in tmp_path.iterdir()] == ["part-000000000006.npy"]  # no temporary left
    assert load_part(tmp_path, 6, 3).tobytes() == block.tobytes()
    with pytest.raises(PrunekitError, match="holds 3 rows, not 2; delete"):
        load_part(tmp_path, 6, 2)
    with pytest.raises(PrunekitError, match="cannot read .*part-000000000009.npy"):
        load_part(tmp_path, 9, 3)


def test_one_process_gathers_in_memory_without_a_folder(tmp_path):
    with Shards.beside(tmp_path / "out.h5", Dist()) as shards:
        assert shards.folder is None and list(shards.starts(5, 2)) == [0, 2, 4]
        blocks = ((a, np.full((min(2, 5 - a), 1), a)) for a in shards.starts(5, 2))
        assert shards.gather(blocks, 5, 2).ravel().tolist() == [0, 0, 2, 2, 4]
        with pytest.raises(PrunekitError, match="no items"):
            shards.gather(iter(()), 0, 2)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- torchrun


def _torchrun(args: list[str], output: Path, fresh: bool = True) -> str:
    """``prunekit ARGS`` as two CPU processes under torchrun; its stdout.

    ``fresh``: remove the output and its parts first (also before the retry).
    """
    def clean() -> None:
        if fresh:
            output.unlink(missing_ok=True)
            shutil.rmtree(f"{output}.parts", ignore_errors=True)

    code, stdout, stderr = run_two_processes([*args, "-o", str(output)], before_try=clean,
                                             timeout=120)
    assert code == 0, stderr[-3000:]
    assert not Path(f"{output}.parts").exists()  # the parts are merged and removed
    return stdout


def _one_process(args: list[str], output: Path) -> str:
    r = CliRunner().invoke(main, [*args, "-o", str(output)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


def _assert_same_file(a: Path, b: Path) -> None:
    """Same datasets (names, dtypes, shapes, bytes) and attributes, but `created` and `command`."""
    with h5py.File(a) as fa, h5py.File(b) as fb:
        assert sorted(fa) == sorted(fb)
        for name in fa:
            da, db = fa[name][()], fb[name][()]
            assert (da.dtype, da.shape) == (db.dtype, db.shape), name
            if da.dtype.kind == "O":  # variable-length strings
                assert da.tolist() == db.tolist(), name
            else:
                assert da.tobytes() == db.tobytes(), name
        skip = {"created", "command"}
        assert sorted(set(fa.attrs) - skip) == sorted(set(fb.attrs) - skip)
        for key in set(fa.attrs) - skip:
            assert np.array_equal(fa.attrs[key], fb.attrs[key]), key
        assert json.loads(fa.attrs["params"]) == json.loads(fb.attrs["params"])


@pytest.mark.slow
def test_torchrun_encode_writes_the_file_one_process_writes(tmp_path):
    from prunekit_lfm.latents import load_images
    from prunekit_lfm.vae import save_vae, train_vae

    x, _, _ = load_images("digits", 16)
    vae_dir = save_vae(train_vae(x[:32], steps=1, batch_size=16, seed=0, progress=False), tmp_path / "vae")
    images = tmp_path / "images.npy"
    np.save(images, np.random.default_rng(0).integers(0, 256, (10, 16, 16, 3), dtype=np.uint8))
    args = ["lfm", "encode", str(images), "--vae", str(vae_dir), "--batch-size", "3", "--device", "cpu",
            "-q"]
    stdout = _torchrun(args, tmp_path / "two.h5")
    one = _one_process(args, tmp_path / "one.h5")
    assert stdout == one.replace(str(tmp_path / "one.h5"), str(tmp_path / "two.h5"))  # rank 0 only
    _assert_same_file(tmp_path / "one.h5", tmp_path / "two.h5")


@pytest.mark.slow
def test_torchrun_score_writes_the_file_one_process_writes(tmp_path):
    run = make_run(tmp_path / "run", "tiny", seed=3, num_classes=3)
    rng = np.random.default_rng(4)
    latents = save_latents(tmp_path / "latents.h5", LatentStore(
        latents=rng.normal(size=(10, 4, 4, 4)).astype(np.float32),
        ids=np.array([f"im{i}" for i in range(10)], dtype=object), labels=rng.integers(0, 3, 10)))
    args = ["lfm", "score", str(run), str(latents), "--t-points", "3", "--noise-bank", "2",
            "--batch-size", "3", "--seed", "5", "--device", "cpu", "-q"]
    stdout = _torchrun(args, tmp_path / "two.h5")
    one = _one_process(args, tmp_path / "one.h5")
    assert stdout == one.replace(str(tmp_path / "one.h5"), str(tmp_path / "two.h5"))
    _assert_same_file(tmp_path / "one.h5", tmp_path / "two.h5")
    with h5py.File(tmp_path / "two.h5") as f:  # normalised over all items, not one rank's
        assert f["score"][()].mean() == pytest.approx(1.0)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchrun_embed_resumes_a_one_process_run_and_writes_the_same_file(tmp_path):
    """One process is killed after two of four batches; two processes finish the other two."""
    from prunekit_lfm import embed as E

    class Net(torch.nn.Module):
        def forward(self, x):
            return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)

    net = tmp_path / "net.pt"
    torch.jit.script(Net()).save(str(net))
    images = tmp_path / "images.npy"
    np.save(images, np.random.default_rng(1).integers(0, 256, (10, 12, 20, 3), dtype=np.uint8))
    args = ["lfm", "embed", str(images), "--encoder", f"torchscript:{net}", "--size", "8",
            "--normalize", "--batch-size", "3", "--device", "cpu", "-q"]
    one = _one_process(args, tmp_path / "one.h5")

    inputs = E.open_inputs(images)
    real_read = inputs.read

    def killed_at_third_batch(a, b):
        if a == 6:
            raise KeyboardInterrupt
        return real_read(a, b)

    inputs.read = killed_at_third_batch
    two = tmp_path / "two.h5"
    with pytest.raises(KeyboardInterrupt):
        E.embed_to_file(inputs, E.load_encoder(f"torchscript:{net}", size=8), two, batch_size=3,
                        normalize=True, progress=False)
    parts = sorted(p.name for p in Path(f"{two}.parts").iterdir())
    assert parts == ["part-000000000000.npy", "part-000000000003.npy", "settings.json"]
    stdout = _torchrun([*args, "--resume"], two, fresh=False)
    assert stdout == one.replace(str(tmp_path / "one.h5"), str(two))
    _assert_same_file(tmp_path / "one.h5", two)
