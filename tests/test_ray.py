"""The Ray engine on a 2-CPU local cluster: same bytes as the local engine, retries, failures.

One cluster for the whole module (starting Ray takes seconds); skipped without Ray.
"""

from __future__ import annotations

import os
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import prunekit as pk
from prunekit.cli import main
from prunekit.compute import grouping
from prunekit.runtime import engine as engine_mod
from prunekit.runtime.engine import LocalEngine, RayEngine, use

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def shards(tmp_path, monkeypatch):
    """Two .npy shards (float16) that the workers open themselves; chunks of 64 rows."""
    monkeypatch.setattr(engine_mod, "MIN_CHUNK_ROWS", 64)
    monkeypatch.setattr(engine_mod, "CHUNK_BYTES", 64 * 4 * 8)
    monkeypatch.setattr(grouping, "BATCH_ROWS", 150)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((5, 8)) * 3
    x = (centres[rng.integers(0, 5, 1300)] + rng.standard_normal((1300, 8))).astype(np.float16)
    d = tmp_path / "emb"
    d.mkdir()
    np.save(d / "part_0.npy", x[:700])
    np.save(d / "part_1.npy", x[700:])
    return d


def run_all(emb, fn):
    out = []
    for eng in (LocalEngine(2), RayEngine(1), RayEngine(2)):
        with use(eng):
            out.append(fn())
    return out


def test_kmeans_and_within_same_bytes_local_ray1_ray2(shards):
    emb = pk.load_embeddings(shards)
    kms = run_all(emb, lambda: pk.score(emb, "kmeans", k=5, sample=500, full_passes=2,
                                        seed=3, progress=False))
    for other in kms[1:]:
        for name in ("score", "cluster", "centroids", "centroid_distance"):
            assert getattr(other, name).tobytes() == getattr(kms[0], name).tobytes(), name
    herds = run_all(emb, lambda: pk.score(emb, "herding", within=kms[0], max_keep=40,
                                          progress=False))
    for other in herds[1:]:
        assert other.order.tobytes() == herds[0].order.tobytes()
        assert other.score.tobytes() == herds[0].score.tobytes()
    assert herds[0].order.size == 5 * 40


def test_cli_ray_engine_writes_the_local_arrays(shards, tmp_path):
    runner = CliRunner()
    outs = {}
    for name, extra in (("local", []), ("ray", ["--engine", "ray", "--workers", "2"])):
        out = tmp_path / f"{name}.h5"
        r = runner.invoke(main, ["score", str(shards), "-m", "kmeans", "--k", "4", "--sample",
                                 "400", "-o", str(out), "-q", *extra])
        assert r.exit_code == 0, r.output
        with h5py.File(out) as f:
            outs[name] = {k: f[k][()].tobytes() for k in ("score", "cluster", "centroids")}
    assert outs["ray"] == outs["local"]


def die_once(marker, item):
    """Kills its worker process the first time it runs (a crashed machine), then works."""
    if item == 2 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return item * 10


def always_die(shared, item):
    os._exit(1)


def user_error(shared, item):
    raise pk.PrunekitError(f"shard {item} is broken")


def test_dead_worker_is_retried(tmp_path):
    eng = RayEngine(2)
    marker = str(tmp_path / "died")
    assert list(eng.map(die_once, range(4), marker, progress=False)) == [0, 10, 20, 30]
    assert os.path.exists(marker)


def test_failures_become_clean_errors(monkeypatch):
    with pytest.raises(pk.PrunekitError, match="shard 1 is broken"):
        list(RayEngine(2).map(user_error, [1, 2], progress=False))
    monkeypatch.setattr(engine_mod, "RAY_MAX_RETRIES", 0)
    with pytest.raises(pk.PrunekitError, match="could not finish after 0 retries"):
        list(RayEngine(1).map(always_die, [1], progress=False))
