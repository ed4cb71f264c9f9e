"""The core never imports torch or diffusers: not on import, not in its core commands."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np, h5py
    import prunekit
    from click.testing import CliRunner
    from prunekit.cli import main

    os.chdir(sys.argv[1])
    with h5py.File("emb.h5", "w") as f:
        f["embeddings"] = np.random.default_rng(0).standard_normal((40, 4))
        f["labels"] = np.arange(40) % 4
    steps = [
        ["info", "emb.h5"],
        ["score", "emb.h5", "-m", "kmeans", "--k", "3", "-q"],
        ["score", "emb.h5", "-m", "herding", "--max-keep", "5", "-o", "h.h5", "-q"],
        ["select", "--pr", "0.5", "--balance", "clusters"],
        ["export", "selection.h5", "--format", "npy"],
        ["inspect", "selection.h5", "--scores", "scores.h5", "--embeddings", "emb.h5", "-q"],
        ["synth", "gmm", "--n", "60", "--dim", "8", "--components", "3", "-o", "gmm.h5"],
        ["stability", "gmm.h5", "--pr", "0.5", "--n-sources", "8", "--steps", "8", "-q",
         "-o", "stab.json"],
    ]
    codes = [CliRunner().invoke(main, s).exit_code for s in steps]
    loaded = sorted(m for m in ("torch", "diffusers") if m in sys.modules)
    print(json.dumps({"codes": codes, "loaded": loaded}))
    """
)


def test_core_never_imports_torch(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["codes"] == [0] * 8
    assert result["loaded"] == []
