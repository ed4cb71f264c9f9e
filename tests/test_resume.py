"""``score --resume``: a run interrupted after some chunks or clusters continues, same bytes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from prunekit.cli import main
from prunekit.compute import cluster, grouping
from prunekit.methods import herding
from prunekit.runtime import engine as engine_mod
from prunekit.runtime import resume


@pytest.fixture
def emb_file(tmp_path, monkeypatch):
    """1000 x 8 float16 rows in 16 chunks of 64; Lloyd state recorded after every chunk."""
    monkeypatch.setattr(engine_mod, "MIN_CHUNK_ROWS", 64)
    monkeypatch.setattr(engine_mod, "CHUNK_BYTES", 64 * 4 * 8)
    monkeypatch.setattr(grouping, "BATCH_ROWS", 120)
    monkeypatch.setattr(cluster, "STATE_EVERY_S", 0.0)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((6, 8))[rng.integers(0, 6, 1000)] * 3
         + rng.standard_normal((1000, 8))).astype(np.float16)
    path = tmp_path / "emb.h5"
    with h5py.File(path, "w") as f:
        f["embeddings"] = x
    return path


def counting(monkeypatch, module, name):
    """Replace module.name by a wrapper that counts its calls."""
    calls = []
    fn = getattr(module, name)

    def wrapper(shared, item):
        calls.append(item)
        return fn(shared, item)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def arrays(path, names):
    with h5py.File(path) as f:
        return {n: f[n][()].tobytes() for n in names}


def score(args):
    return CliRunner().invoke(main, ["score", *map(str, args), "-q"])


def test_interrupted_kmeans_resumes_to_the_same_bytes(emb_file, tmp_path, monkeypatch):
    args = [emb_file, "-m", "kmeans", "--k", "6", "--sample", "300", "--full-passes", "2"]
    assert score([*args, "-o", tmp_path / "ref.h5"]).exit_code == 0
    out = tmp_path / "out.h5"
    # Killed after the sample (2 records) and 5 of 16 chunks of the first Lloyd pass.
    monkeypatch.setattr(resume, "FAIL_AFTER", 2 + 3 * 5)
    r = score([*args, "-o", out])
    assert isinstance(r.exception, resume.InjectedFailure) and not out.exists()
    assert (tmp_path / ".prunekit-work").is_dir()
    monkeypatch.setattr(resume, "FAIL_AFTER", None)
    lloyd = counting(monkeypatch, cluster, "_lloyd_chunk")
    assign = counting(monkeypatch, cluster, "_assign_chunk")
    r = score([*args, "-o", out, "--resume"])
    assert r.exit_code == 0, r.output
    assert len(lloyd) == (16 - 5) + 16 and len(assign) == 16  # the 5 recorded chunks are reused
    names = ("score", "cluster", "centroids", "centroid_distance")
    assert arrays(out, names) == arrays(tmp_path / "ref.h5", names)
    assert not (tmp_path / ".prunekit-work").exists()  # removed once the output exists


def test_interrupted_herding_within_resumes_per_cluster_batch(emb_file, tmp_path, monkeypatch):
    km = tmp_path / "km.h5"
    assert score([emb_file, "-m", "kmeans", "--k", "6", "-o", km]).exit_code == 0
    args = [emb_file, "-m", "herding", "--within", km, "--max-keep", "30"]
    assert score([*args, "-o", tmp_path / "ref.h5"]).exit_code == 0
    calls = counting(monkeypatch, herding, "_herd_batch")
    assert score([*args, "-o", tmp_path / "ref2.h5"]).exit_code == 0
    n_batches = len(calls)
    assert n_batches >= 4
    calls.clear()
    out = tmp_path / "out.h5"
    monkeypatch.setattr(resume, "FAIL_AFTER", 1 + 2)  # the grouped rows, then 2 batches
    assert isinstance(score([*args, "-o", out]).exception, resume.InjectedFailure)
    monkeypatch.setattr(resume, "FAIL_AFTER", None)
    calls.clear()
    assert score([*args, "-o", out, "--resume"]).exit_code == 0
    assert len(calls) == n_batches - 2
    assert arrays(out, ("score", "order", "cluster")) == arrays(tmp_path / "ref.h5",
                                                                ("score", "order", "cluster"))


def test_without_resume_old_progress_is_discarded(emb_file, tmp_path, monkeypatch):
    args = [emb_file, "-m", "kmeans", "--k", "6", "--sample", "300", "-o", tmp_path / "out.h5"]
    monkeypatch.setattr(resume, "FAIL_AFTER", 4)
    assert isinstance(score(args).exception, resume.InjectedFailure)
    monkeypatch.setattr(resume, "FAIL_AFTER", None)
    assign = counting(monkeypatch, cluster, "_assign_chunk")
    assert score(args).exit_code == 0
    assert len(assign) == 16  # every chunk computed again


def test_work_dir_key_covers_inputs_method_and_params(tmp_path):
    base = dict(fingerprint="f", method="kmeans", params={"k": 3})
    a = resume.work_dir_for(tmp_path / "o.h5", **base)
    assert a.parent == tmp_path / ".prunekit-work" and a.name.startswith("o.h5.")
    assert a == resume.work_dir_for(tmp_path / "o.h5", **base)
    assert a != resume.work_dir_for(tmp_path / "o.h5", **{**base, "fingerprint": "g"})
    assert a != resume.work_dir_for(tmp_path / "o.h5", **{**base, "params": {"k": 4}})
    assert a != resume.work_dir_for(tmp_path / "p.h5", **base)
