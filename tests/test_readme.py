"""The README's Python quick start runs as written (on a small embeddings file)."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_quick_start_runs(tmp_path, monkeypatch):
    block = re.search(r"## Quick start: Python\s+```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README has no Python quick start"
    monkeypatch.chdir(tmp_path)
    with h5py.File("embeddings.h5", "w") as f:
        f["embeddings"] = np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32)
    namespace: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)  # noqa: S102 - our own file
    sel = namespace["sel"]
    assert sel.n_kept == 60 and Path("selection.h5").exists()  # pr 0.8 of 300 keeps 60
    assert 0 < namespace["dedup"].n_kept <= 300
