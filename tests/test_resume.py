"""``score --resume``: a run interrupted after some chunks or clusters continues, same bytes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from resume_faults import InjectedFailure, killed_after

from prunekit.cli import main
from prunekit.compute import cluster, grouping
from prunekit.io import atomic
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
    # Killed after the sample (2 records) and 5 of 16 one-chunk groups of the first pass
    # (one worker: group tasks record themselves, so with more a kill keeps what was running).
    with killed_after(2 + 5):
        r = score([*args, "-o", out, "--workers", "1"])
    assert isinstance(r.exception, InjectedFailure) and not out.exists()
    assert (tmp_path / ".prunekit-work").is_dir()
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
    with killed_after(1 + 16 + 1 + 2):  # cluster ids, 16 chunks, 1 bucket; then 2 batches
        assert isinstance(score([*args, "-o", out]).exception, InjectedFailure)
    calls.clear()
    assert score([*args, "-o", out, "--resume"]).exit_code == 0
    assert len(calls) == n_batches - 2
    assert arrays(out, ("score", "order", "cluster")) == arrays(tmp_path / "ref.h5",
                                                                ("score", "order", "cluster"))


def test_without_resume_old_progress_is_discarded(emb_file, tmp_path, monkeypatch):
    args = [emb_file, "-m", "kmeans", "--k", "6", "--sample", "300", "-o", tmp_path / "out.h5"]
    with killed_after(4):
        assert isinstance(score(args).exception, InjectedFailure)
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


# ---------------------------------------------------------------- records are verified


def interrupted_kmeans(emb_file, tmp_path, monkeypatch, out):
    """A k-means run killed after the sample (2 records) and 5 of 16 Lloyd groups (one
    chunk each; one worker, so that exactly groups 0-4 are recorded)."""
    args = [emb_file, "-m", "kmeans", "--k", "6", "--sample", "300", "--full-passes", "2"]
    assert score([*args, "-o", tmp_path / "ref.h5"]).exit_code == 0
    with killed_after(2 + 5):
        r = score([*args, "-o", out, "--workers", "1"])
        assert isinstance(r.exception, InjectedFailure)
    (work,) = (tmp_path / ".prunekit-work").glob("out.h5.*")
    return args, work


def test_a_tampered_record_is_recomputed_to_the_same_bytes(emb_file, tmp_path, monkeypatch,
                                                           caplog):
    out = tmp_path / "out.h5"
    args, work = interrupted_kmeans(emb_file, tmp_path, monkeypatch, out)
    rec = work / "pass-0" / "00000004.npy"
    data = bytearray(rec.read_bytes())
    data[-8:] = np.float64(1e6).tobytes()  # the group's last sum, checksum left as it was
    rec.write_bytes(bytes(data))
    lloyd = counting(monkeypatch, cluster, "_lloyd_chunk")
    r = score([*args, "-o", out, "--resume"])
    assert r.exit_code == 0, r.output
    assert len(lloyd) == (16 - 4) + 16  # group 4's sums did not verify: computed again
    names = ("score", "cluster", "centroids", "centroid_distance")
    assert arrays(out, names) == arrays(tmp_path / "ref.h5", names)
    assert "1 resume record(s)" in caplog.text and "did not verify" in caplog.text


def test_a_record_in_the_old_format_or_from_another_run_is_discarded(tmp_path):
    a, b = resume.WorkDir(tmp_path / "a"), resume.WorkDir(tmp_path / "b")
    a.save("x", np.arange(4))
    np.testing.assert_array_equal(a.load("x"), np.arange(4))
    (tmp_path / "b").mkdir(mode=0o700)
    (tmp_path / "b" / "x.npy").write_bytes((tmp_path / "a" / "x.npy").read_bytes())
    assert b.load("x") is None and b.discarded == 1  # the checksum covers the run's key
    np.save(tmp_path / "a" / "y.npy", np.arange(3))  # a plain .npy (no checksum)
    assert a.load("y") is None and a.discarded == 1
    assert not (tmp_path / "a" / "y.npy").exists()


def test_a_symlink_planted_as_a_record_is_never_followed(emb_file, tmp_path, monkeypatch):
    out = tmp_path / "out.h5"
    args, work = interrupted_kmeans(emb_file, tmp_path, monkeypatch, out)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    rec = work / "pass-0" / "00000002.npy"
    rec.unlink()
    rec.symlink_to(victim)
    r = score([*args, "-o", out, "--resume"])
    assert r.exit_code == 0, r.output
    assert victim.read_text() == "keep me"
    names = ("score", "cluster", "centroids", "centroid_distance")
    assert arrays(out, names) == arrays(tmp_path / "ref.h5", names)


def test_the_work_directory_is_private(emb_file, tmp_path, monkeypatch):
    _, work = interrupted_kmeans(emb_file, tmp_path, monkeypatch, tmp_path / "out.h5")
    assert stat.S_IMODE(os.lstat(work.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(work).st_mode) == 0o700
    files = [p for p in work.rglob("*") if p.is_file()]
    assert files and {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o600}  # records
    assert {stat.S_IMODE(p.stat().st_mode) for p in work.rglob("*") if p.is_dir()} == {0o700}
    assert not list(work.parent.glob("*.lock"))  # the lock goes with the run


@pytest.mark.parametrize("plant, why", [
    ("symlink", "is a symbolic link"),
    ("open", "is writable by other users (mode 777)"),
    ("file", "is not a directory"),
])
def test_an_untrusted_work_directory_is_refused(emb_file, tmp_path, plant, why):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    wd = tmp_path / ".prunekit-work"
    if plant == "symlink":
        wd.symlink_to(elsewhere)
    elif plant == "open":
        wd.mkdir()
        wd.chmod(0o777)
    else:
        wd.write_text("")
    r = score([emb_file, "-m", "kmeans", "--k", "6", "-o", tmp_path / "out.h5", "--resume"])
    assert r.exit_code == 2, r.output
    assert f"the work directory {wd} {why}" in r.output
    assert f"Remove it (rm -r '{wd}')" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "out.h5").exists() and list(elsewhere.iterdir()) == []


def test_records_never_write_through_a_planted_temporary_name(tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    tokens = iter(["aaaa", "bbbb"])
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda n: next(tokens))
    work = resume.WorkDir(tmp_path / "w")
    (tmp_path / "w").mkdir(mode=0o700)
    (tmp_path / "w" / f"{atomic.TMP_PREFIX}{os.getpid()}.aaaa").symlink_to(victim)
    work.save("x", np.arange(3))  # the first name is taken: the next random one is used
    assert victim.read_text() == "keep me"
    np.testing.assert_array_equal(work.load("x"), np.arange(3))
    assert stat.S_IMODE(os.lstat(tmp_path / "w" / "x.npy").st_mode) == 0o600


# ---------------------------------------------------------------- one run per output


def test_a_second_run_on_the_same_output_exits_2(emb_file, tmp_path):
    km = tmp_path / "km.h5"
    assert score([emb_file, "-m", "kmeans", "--k", "6", "-o", km]).exit_code == 0
    out = tmp_path / "out.h5"
    args = [emb_file, "-m", "herding", "--within", km, "--max-keep", "30", "-o", out]
    other = resume.work_dir_for(out, fingerprint="f", method="kmeans", params={})
    with resume.open_work_dir(other, resume=False, output=out):  # another run holds it
        r = score(args)
        assert r.exit_code == 2, r.output
        assert f"another prunekit run is writing {out} (pid {os.getpid()})" in r.output
        assert "Traceback" not in r.output and not out.exists()
    r = score(args)
    assert r.exit_code == 0, r.output
    assert not (tmp_path / ".prunekit-work").exists()


def test_the_lock_is_exclusive_across_processes(tmp_path):
    out = tmp_path / "out.h5"
    path = resume.work_dir_for(out, fingerprint="f", method="m", params={})
    code = ("import sys; from prunekit.runtime import resume; from prunekit.errors import "
            "PrunekitError\ntry:\n    resume.open_work_dir(resume.work_dir_for(sys.argv[1], "
            "fingerprint='g', method='m', params={}), resume=False)\nexcept PrunekitError as e:"
            "\n    print(e)\nelse:\n    print('acquired')")
    with resume.open_work_dir(path, resume=False, output=out):
        held = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True,
                              text=True, check=True).stdout
    free = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True,
                          text=True, check=True).stdout
    assert f"another prunekit run is writing {out} (pid {os.getpid()})" in held
    assert free.strip() == "acquired"
