"""Bounded memory: commands stream a file larger than their address space could hold.

Each command runs in a subprocess under ``RLIMIT_AS``. numpy, faiss, h5py and the BLAS
threads reserve address space at import, so the limit is that of an import-only process
plus the memory budget plus a margin for chunk buffers; a control process under the same
limit shows the matrix could not be materialised there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc")

N, D = 400_000, 256  # 200 MB of float16 on disk, 400 MB as float32
BUDGET = 64 << 20
MARGIN = 160 << 20  # chunk reads (32 MB), their float32 parts, the O(N) arrays, allocator slack
IMPORTS = "import faiss, h5py, numpy, prunekit.cli.info, prunekit.cli.score, prunekit.methods"
ENV = {"PRUNEKIT_MEMORY": str(BUDGET), "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1",
       "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _env() -> dict[str, str]:
    return {**os.environ, **ENV}


def _run(code: str, limit: int | None = None, cwd=None) -> subprocess.CompletedProcess:
    pre = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n" if limit else ""
    return subprocess.run([sys.executable, "-c", pre + textwrap.dedent(code)], env=_env(), cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def _baseline() -> int:
    """Peak address space (VmPeak) of a process that only imports what the commands import."""
    res = _run(IMPORTS + """
for line in open('/proc/self/status'):
    if line.startswith('VmPeak:'):
        print(int(line.split()[1]) * 1024)
""")
    assert res.returncode == 0, res.stderr
    return int(res.stdout.strip())


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """The same float16 rows as one HDF5 file and as a directory of three .npy shards."""
    d = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(0)
    shard_rows = [150_000, 150_000, N - 300_000]
    with h5py.File(d / "emb.h5", "w") as f:
        ds = f.create_dataset("embeddings", (N, D), dtype=np.float16, chunks=(4096, D))
        start = 0
        for i, rows in enumerate(shard_rows):
            part = rng.standard_normal((rows, D), dtype=np.float32).astype(np.float16)
            ds[start : start + rows] = part
            (d / "shards").mkdir(exist_ok=True)
            np.save(d / "shards" / f"emb_{i}.npy", part)
            start += rows
    return d


def test_commands_stream_a_file_larger_than_their_memory(big):
    limit = _baseline() + BUDGET + MARGIN
    assert N * D * 4 > limit - _baseline()  # the float32 matrix cannot fit beside the imports
    control = _run(IMPORTS + f"\nimport numpy as np; x = np.ones(({N}, {D}), np.float32)", limit)
    assert control.returncode != 0 and "MemoryError" in control.stderr

    for emb in (big / "emb.h5", big / "shards"):
        out = big / f"scores-{emb.stem}.h5"
        info = _run(f"""
from prunekit.cli import main
main(["info", "{emb}", "--json"])
""", limit)
        assert info.returncode == 0, info.stderr
        d = json.loads(info.stdout)
        assert d["shape"] == [N, D] and d["n_nonfinite"] == 0
        assert 14.0 < d["norms"]["median"] < 18.0  # |N(0, I_256)| is about 16

        score = _run(f"""
from prunekit.cli import main
main(["score", "{emb}", "--method", "random", "--seed", "3", "-o", "{out}", "--quiet"])
""", limit)
        assert score.returncode == 0, score.stderr
        with h5py.File(out, "r") as f:
            s = f["score"][()]
        np.testing.assert_array_equal(s, np.random.default_rng(3).random(N))

    # Asking for the whole matrix under this budget is refused with the number, not a crash.
    refused = _run(f"""
import prunekit as pk
pk.load_embeddings("{big / 'emb.h5'}").array()
""", limit)
    assert refused.returncode != 0
    assert "needs 390.6 MiB but the memory budget is 64.0 MiB" in refused.stderr
