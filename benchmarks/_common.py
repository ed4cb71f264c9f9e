"""What the scale benchmarks share: a prunekit command run in its own process, its peak
memory taken inside."""

from __future__ import annotations

import json

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
