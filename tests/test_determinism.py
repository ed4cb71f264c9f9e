"""Same bytes on any machine: thread count, memory budget and free memory never change a result.

Every run is the real CLI in its own process, with ``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` set before BLAS and OpenMP start, with a
``--memory`` budget, or with ``PRUNEKIT_AVAILABLE_MEMORY`` standing in for a machine with
300 MiB or 16 GiB free (the default budget is a share of it). The output files must hold
the same arrays, bit for bit, and the same attributes but ``created`` and ``command``.

The data are unclustered Gaussian rows: many rows lie near a boundary between two
centroids, so a product rounded differently in the last bit moves their label. The
smallest budgets are below what k-means, SemDeDup and herding held with a budget-sized
sample or block before (a 3640-row sample, 600-row similarity blocks), and just above
what they hold now.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from prunekit.runtime.budget import default_budget
from prunekit.runtime.memory import ENV_AVAILABLE

pytestmark = pytest.mark.slow

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
FREE_300M, FREE_16G = 300 << 20, 16 << 30
PROVENANCE = ("created", "command")  # when and how a file was written: differ by design

# (arguments, the smallest --memory that holds the run) per method, on 6000 x 16 float32:
# k-means holds its 6000 rows (6000 x (16 x 4 + 24) bytes, 301 k-means|| candidates and
# 30 centroids as float32 and float64: 0.53 MiB);
# SemDeDup its largest cluster (800 rows twice, 0.1 MiB) and that cluster's 800 x 800
# similarity block (3.1 MiB); herding all rows and their 64 Fourier features (3.8 MiB).
METHODS = {
    "kmeans": (["-m", "kmeans", "--k", "30"], "1M"),
    "semdedup": (["-m", "semdedup", "--k", "8"], "4M"),
    "herding": (["-m", "herding", "--rff-dim", "64", "--max-keep", "300"], "5M"),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("det") / "emb.npy"
    np.save(path, np.random.default_rng(0).standard_normal((6000, 16)).astype(np.float32))
    return path


def prunekit(args: list[str], threads: int, free: int | None = None, cwd=None) -> None:
    """``python -m prunekit ARGS`` on ``threads`` BLAS/OpenMP threads (and ``free`` bytes);
    ``-q`` for ``score``."""
    env = {k: v for k, v in os.environ.items() if k not in ("PRUNEKIT_MEMORY", ENV_AVAILABLE)}
    env.update(dict.fromkeys(THREAD_VARS, str(threads)))
    if free is not None:
        env[ENV_AVAILABLE] = str(free)
    quiet = ["-q"] if args[0] == "score" else []
    res = subprocess.run([sys.executable, "-m", "prunekit", *args, *quiet], env=env, cwd=cwd,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{args}: {res.stdout}{res.stderr}"


def content(path) -> dict:
    """Every dataset as (dtype, shape, bytes) and every attribute but the provenance ones."""
    out = {}
    with h5py.File(path) as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                a = obj[()]
                out[name] = (a.dtype.str, a.shape, a.tobytes())
        f.visititems(visit)
        for name, value in f.attrs.items():
            if name not in PROVENANCE:
                out["@" + name] = value.tobytes() if isinstance(value, np.ndarray) else value
    return out


def test_the_free_memory_stand_in_moves_the_default_budget(monkeypatch):
    # What the runs below rely on: the default budget follows PRUNEKIT_AVAILABLE_MEMORY
    # (a quarter of it, at most 8 GiB), 75 MiB against 4 GiB.
    monkeypatch.setenv(ENV_AVAILABLE, str(FREE_300M))
    assert default_budget() == FREE_300M // 4
    monkeypatch.setenv(ENV_AVAILABLE, str(FREE_16G))
    assert default_budget() == 4 << 30


@pytest.mark.parametrize("method", sorted(METHODS))
def test_same_bytes_for_any_threads_budget_and_free_memory(data, tmp_path, method):
    args, smallest = METHODS[method]
    runs = {  # name -> (threads, --memory, free bytes)
        "1 thread, smallest budget": (1, smallest, None),
        "2 threads, smallest budget": (2, smallest, None),
        "1 thread, 64M": (1, "64M", None),
        "2 threads, 4G": (2, "4G", None),
        "1 thread, 300 MiB free": (1, None, FREE_300M),
        "2 threads, 16 GiB free": (2, None, FREE_16G),
    }
    files = {}
    for i, (name, (threads, memory, free)) in enumerate(runs.items()):
        out = tmp_path / f"run{i}.h5"
        budget = [] if memory is None else ["--memory", memory]
        prunekit(["score", str(data), *args, "-o", str(out), *budget], threads, free)
        files[name] = content(out)
    first, reference = next(iter(files.items()))
    for name, got in files.items():
        differ = sorted(k for k in reference if k not in got or not _same(got[k], reference[k]))
        assert not differ and got.keys() == reference.keys(), f"{name} vs {first}: {differ}"
    params = json.loads(reference["@params"])
    if method == "kmeans":  # the sample is every row, whatever the budget, and says so
        assert (params["sample_rows"], params["sample_drawn"]) == (6000, "all rows")
        assert params["sample_rule"].startswith("default: max(256 k, 256 MiB")


def _same(a, b) -> bool:
    return bool(np.array_equal(a, b)) if isinstance(a, np.generic) else a == b


def test_a_budget_below_the_sample_is_refused_with_the_fix(tmp_path):
    data = tmp_path / "emb.npy"  # 24 000 x 16: all rows are the default sample, 2.0 MiB
    np.save(data, np.random.default_rng(1).standard_normal((24_000, 16)).astype(np.float32))
    env = {k: v for k, v in os.environ.items() if k != "PRUNEKIT_MEMORY"}
    score = [sys.executable, "-m", "prunekit", "score", str(data), "-m", "kmeans", "--k", "30",
             "--memory", "1M", "-q"]
    res = subprocess.run([*score, "-o", "x.h5"], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1
    assert "k-means holds all 24,000 rows in memory (16 dimensions as float32): 2.0 MiB, " \
           "more than the memory budget of 1.0 MiB. Raise --memory to at least 2.0 MiB, or " \
           "give a smaller --sample" in lines[0]
    assert not (tmp_path / "x.h5").exists()
    # The fix it names: a quarter of the rows, 6000 x (16 x 4 + 24) + 301 x 16 x 4
    # + 30 x 16 x 12 bytes, fit 1 MiB.
    res = subprocess.run([*score, "--sample", "6000", "-o", "y.h5"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    with h5py.File(tmp_path / "y.h5") as f:
        params = json.loads(f.attrs["params"])
    assert (params["sample"], params["sample_rows"], params["sample_of"]) == (6000, 6000, 24_000)
    assert params["sample_drawn"].startswith("uniform without replacement")


def test_demo_core_stages_same_bytes_on_one_and_two_threads(tmp_path):
    """The quick demo's scoring and selection stages on digits, on 1 and on 2 threads.

    The whole ``prunekit demo --quick`` takes minutes (VAE and flow training), too long to
    run twice here; its torch stages run on ``--threads`` (default 1) by design. These are
    the stages that used BLAS and OpenMP threads: k-means (k=10, the demo's), herding and
    k-center scores, the demo's balanced, inverted and drop-clusters selections.
    """
    from sklearn.datasets import load_digits

    emb = tmp_path / "digits.npy"
    np.save(emb, load_digits().data.astype(np.float64))
    steps = [  # run in t1/ and t2/ with relative paths, so the files name the same paths
        ["score", "../digits.npy", "-m", "kmeans", "--k", "10", "-o", "km.h5"],
        ["score", "../digits.npy", "-m", "herding", "-o", "herd.h5"],
        ["score", "../digits.npy", "-m", "kcenter", "-o", "kc.h5"],
        ["select", "km.h5", "--pr", "0.5", "--balance", "clusters", "-o", "far.h5"],
        ["select", "km.h5", "--pr", "0.5", "--balance", "clusters", "--invert", "-o", "near.h5"],
        ["select", "km.h5", "--pr", "0.5", "--balance", "clusters", "--drop-clusters", "0.5",
         "-o", "drop.h5"],
        ["select", "herd.h5", "--pr", "0.5", "-o", "herd-sel.h5"],
        ["select", "kc.h5", "--pr", "0.5", "-o", "kc-sel.h5"],
    ]
    outs = {}
    for threads in (1, 2):
        d = tmp_path / f"t{threads}"
        d.mkdir()
        for step in steps:
            prunekit(step, threads, cwd=d)
        outs[threads] = {p.name: content(p) for p in sorted(d.glob("*.h5"))}
    assert len(outs[1]) == len(steps)
    for name, ref in outs[1].items():
        got = outs[2][name]
        assert got.keys() == ref.keys(), name
        assert all(_same(got[k], ref[k]) for k in ref), name
    with h5py.File(tmp_path / "t1" / "far.h5") as f:
        assert f["indices"].size == round(0.5 * 1797)
