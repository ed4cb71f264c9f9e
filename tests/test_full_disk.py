"""A full disk: every core command that writes ends with one line, exit 2, and no file left.

A real file system that fills up: a 64 KiB tmpfs (mounting needs root; skipped otherwise).
The inputs live outside it; each output is too large for it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

import prunekit as pk


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    d = tmp_path_factory.mktemp("full")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64K", "tmpfs", str(d)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    x = np.random.default_rng(0).standard_normal((20000, 16)).astype(np.float32)
    with h5py.File(d / "e.h5", "w") as f:
        f["embeddings"] = x
        f["ids"] = np.arange(20000, dtype=np.int64) * 7
    scores = pk.score(pk.load_embeddings(d / "e.h5"), "kmeans", k=4, seed=0, progress=False)
    scores.save(d / "km.h5")
    pk.select(scores, pr=0.1, balance="clusters").save(d / "sel.h5")
    return d


def run(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prunekit", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


COMMANDS = {
    "score h5": ["score", "{i}/e.h5", "-m", "kmeans", "--k", "4", "-q", "-o", "{o}/s.h5"],
    "score folder": ["score", "{i}/e.h5", "-m", "random", "-q", "-o", "{o}/parts/"],
    "select": ["select", "{i}/km.h5", "--pr", "0.1", "-o", "{o}/sel.h5"],
    "export json": ["export", "{i}/sel.h5", "--format", "json", "-o", "{o}/sel.json"],
    "export txt": ["export", "{i}/sel.h5", "--format", "txt", "-o", "{o}/sel.txt"],
    "export npy": ["export", "{i}/sel.h5", "--format", "npy", "-o", "{o}/sel.npy"],
    "inspect html": ["inspect", "{i}/sel.h5", "--scores", "{i}/km.h5", "--embeddings",
                     "{i}/e.h5", "--html", "{o}/page"],
    "synth": ["synth", "gmm", "--n", "20000", "--dim", "16", "--components", "4",
              "-o", "{o}/g.h5"],
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_full_disk_is_one_line_exit_2_and_leaves_nothing(name, full, inputs):
    args = [a.format(i=inputs, o=full) for a in COMMANDS[name]]
    proc = run(*args, cwd=inputs)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), proc.stderr
    assert lines[0].endswith("No space left on device.") or "free space" in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    assert os.listdir(full) == []  # no partial output, no temp file, no work directory


def test_info_on_a_full_disk_still_answers_without_a_cache(full, inputs):
    # The scan cache is a convenience: a folder with no room for it changes nothing.
    data = np.random.default_rng(1).standard_normal((500, 8)).astype(np.float32)
    shards = full / "shards"
    shards.mkdir()
    for i in range(2):
        np.save(shards / f"part_{i}.npy", data)
    filler = full / "filler"
    try:
        with open(filler, "wb") as f:
            f.write(b"x" * (1 << 20))
    except OSError:
        pass  # the disk is full now
    try:
        proc = run("info", str(shards), cwd=inputs)
        assert proc.returncode == 0, proc.stderr
        assert "1,000" in proc.stdout or "1000" in proc.stdout
        assert sorted(os.listdir(shards)) == ["part_0.npy", "part_1.npy"]
    finally:
        filler.unlink(missing_ok=True)
        for f in shards.iterdir():
            f.unlink()
        shards.rmdir()
