"""Every script in examples/ runs as is (with --quick) and prints the result it promises."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(name: str, out: Path) -> str:
    """``python examples/NAME --quick --out OUT`` in a fresh process; its stdout."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # one thread: no spinning
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), "--quick", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_every_example_is_tested_and_says_what_it_shows():
    names = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert names == ["coarse_to_fine.py", "dedup_then_balance.py", "hf_datasets.py",
                     "paper_recipe.py", "torch_training_loop.py"]
    for name in names:
        doc = (EXAMPLES / name).read_text().split('"""')[1]
        assert "What it shows:" in doc and "Run:  python examples/" + name in doc


def test_dedup_then_balance(tmp_path):
    out = run("dedup_then_balance.py", tmp_path)
    assert "2000 embeddings of dim 32 from 4 Parquet shards; 100 near-duplicates planted" in out
    assert "removes 100 rows: one row of 100 of the 100 planted pairs" in out
    kept = re.search(r"kept per cluster (\d+)\.\.(\d+); duplicates kept: 0", out)
    assert kept and int(kept.group(2)) - int(kept.group(1)) <= 10  # balanced quotas
    with h5py.File(tmp_path / "selection.h5") as f:
        assert f["indices"].shape == (950,)


def test_hf_datasets(tmp_path):
    out = run("hf_datasets.py", tmp_path)
    per_label = ", ".join(f"{d}: 18" for d in range(10))
    assert f"180 rows; labels {{{per_label}}}" in out


def test_torch_training_loop(tmp_path):
    out = run("torch_training_loop.py", tmp_path)
    rows = re.findall(r"^(.+?)\s+(\d+) draws/epoch  held-out accuracy (0\.\d+)$", out, re.M)
    assert [r[0].strip() for r in rows] == [
        "all rows", "balanced 20 % (Subset)", "balanced 20 % (sampler)", "random 20 %",
        "oversampled clusters (weights)"]
    assert [int(r[1]) for r in rows[:4]] == [1500, 300, 300, 300]
    assert int(rows[4][1]) > 1500  # every cluster brought to the largest one's size
    assert all(float(r[2]) > 0.6 for r in rows)  # a linear model on digits learns


@pytest.mark.slow
def test_coarse_to_fine(tmp_path):
    out = run("coarse_to_fine.py", tmp_path)
    m = re.search(r"coarse-to-fine \(t_switch 0.7\) (0\.\d+|1\.000), coarse alone (0\.\d+|1\.000)", out)
    assert m, out
    ratio = float(re.search(r"costs (\d\.\d\d) of the fine model's FLOPs", out).group(1))
    # 70 % of the steps on the coarse model: between 0.3 (coarse free) and 1 (as costly as fine).
    assert 0.3 < ratio < 1.0


@pytest.mark.slow
def test_paper_recipe(tmp_path):
    out = run("paper_recipe.py", tmp_path)
    assert "a tiny randomly initialised CLIP stand-in" in out
    assert "300 embeddings from clip" in out and "kept 150 of 300 scored rows" in out
    cos = json.loads((tmp_path / "compare.json").read_text())["measures"]["latent_cosine"]
    # The stability the paper exploits: same seed, same image, despite half the data gone.
    assert cos["pairs"]["mean"] > 0.9 > cos["baseline"]["mean"]
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "runs" / "pruned").is_dir()
