"""What the benchmarks share: a prunekit command run in its own process, its peak memory
taken inside; clustered test data."""

from __future__ import annotations

import json

import numpy as np

# Run as ``python -c WRAP ARGS...``. Peak RSS: VmHWM of this process (ru_maxrss would include
# the memory of the benchmark process it was forked from), and ru_maxrss of the processes it
# started (Ray workers).
WRAP = """
import json, resource, sys
from prunekit.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")]
    kids_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print("BENCH-RSS " + json.dumps([max(hwm), kids_kib]), file=sys.stderr)
"""


def peak_rss_kib(stderr: str) -> list[int] | None:
    """[this process, its children] peak RSS in KiB as WRAP printed it last; None when it
    printed nothing (the process was killed)."""
    rss = [json.loads(ln.split(" ", 1)[1]) for ln in stderr.splitlines()
           if ln.startswith("BENCH-RSS ")]
    return rss[-1] if rss else None


def mixture(n: int, d: int, centres: int, seed: int = 0) -> np.ndarray:
    """Clustered float32 data: Gaussian blobs around random centres (like embeddings)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32)
    x = c[rng.integers(0, centres, n)]
    x += 0.7 * rng.standard_normal((n, d), dtype=np.float32)
    return x
