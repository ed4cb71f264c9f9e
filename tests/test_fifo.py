"""Named pipes (FIFOs) as inputs: every command refuses them by name instead of blocking.

Opening a FIFO for reading waits for a writer that never comes, so each case runs the CLI
in a subprocess with a timeout: a regression fails the test (TimeoutExpired) rather than
hanging the suite. Each asserts exit status 2, one line on stderr naming the FIFO, and no
output written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import prunekit as pk

TIMEOUT = 120  # seconds; a blocked open never returns, a refusal takes about a second


@pytest.fixture(scope="module")
def d(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fifo")
    x = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32)
    with h5py.File(d / "emb.h5", "w") as f:
        f["embeddings"] = x
        f["labels"] = np.arange(20) % 2
    emb = pk.load_embeddings(d / "emb.h5")
    scores = pk.score(emb, "kmeans", k=2, seed=0, progress=False)
    scores.save(d / "scores.h5")
    pk.select(scores, 0.5).save(d / "sel.h5")
    for name in ("pipe.h5", "pipe.csv", "pipe.npy", "pipe.json"):
        os.mkfifo(d / name)
    (d / "shards").mkdir()
    np.save(d / "shards" / "part_0.npy", x[:10])
    os.mkfifo(d / "shards" / "part_1.npy")  # found by listing the folder
    return d


CASES = [
    ("info", ["info", "pipe.h5"], "pipe.h5"),
    ("info-shard-in-folder", ["info", "shards"], "part_1.npy"),
    ("info-shard-by-glob", ["info", "shards/*.npy"], "part_1.npy"),
    ("score", ["score", "pipe.h5", "-m", "random", "-o", "out.h5"], "pipe.h5"),
    ("score-loss-from", ["score", "emb.h5", "-m", "loss", "--from", "pipe.csv", "-o", "out.h5"], "pipe.csv"),
    ("score-loss-json", ["score", "emb.h5", "-m", "loss", "--from", "pipe.json", "-o", "out/"],
     "pipe.json"),
    ("score-within", ["score", "emb.h5", "-m", "herding", "--within", "pipe.h5", "-o", "out.h5"], "pipe.h5"),
    ("plan", ["plan", "pipe.h5", "-m", "kmeans"], "pipe.h5"),
    ("stability", ["stability", "pipe.h5", "--pr", "0.5", "-o", "out.json"], "pipe.h5"),
    ("stability-selection", ["stability", "emb.h5", "--selection", "pipe.h5", "-o", "out.json"], "pipe.h5"),
    ("stability-sources", ["stability", "emb.h5", "--pr", "0.5", "--sources", "pipe.npy", "-o", "out.json"],
     "pipe.npy"),
    ("inspect-embeddings", ["inspect", "sel.h5", "--embeddings", "pipe.h5"], "pipe.h5"),
    ("inspect-selection", ["inspect", "pipe.h5"], "pipe.h5"),
    ("select-scores", ["select", "pipe.h5", "--pr", "0.5", "-o", "out.h5"], "pipe.h5"),
    ("select-labels-from", ["select", "scores.h5", "--pr", "0.5", "--balance", "labels", "--labels-from",
                            "pipe.h5", "-o", "out.h5"], "pipe.h5"),
    ("export", ["export", "pipe.h5", "--format", "json", "-o", "out.json"], "pipe.h5"),
]


@pytest.mark.parametrize("argv, name", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_fifo_input_is_refused_by_name(d, argv, name):
    res = subprocess.run([sys.executable, "-m", "prunekit", *argv], cwd=d, capture_output=True,
                         text=True, timeout=TIMEOUT, env={**os.environ, "XDG_CACHE_HOME": str(d / "xdg")})
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and lines[0].startswith("Error:"), res.stderr
    assert name in lines[0] and "FIFO" in lines[0], lines[0]
    assert not (d / "out.h5").exists() and not (d / "out.json").exists()


def test_library_refuses_a_fifo_shard_and_check_input_names_the_kind(d):
    from prunekit.io.atomic import check_input

    with pytest.raises(pk.PrunekitError, match=r"shard .*part_1\.npy is a FIFO, not a regular file"):
        pk.load_embeddings(d / "shards")
    with pytest.raises(pk.PrunekitError, match=r"input file .*pipe\.csv is a FIFO"):
        check_input(d / "pipe.csv")
    with pytest.raises(pk.PrunekitError, match=r"is a device"):
        check_input("/dev/null")
    with pytest.raises(pk.PrunekitError, match=r"is a directory"):
        check_input(d / "shards")
    assert check_input(d / "emb.h5") == d / "emb.h5"
