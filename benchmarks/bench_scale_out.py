"""Scale out: the k-means -> select -> export pipeline on 10^8..10^9 rows, driver memory.

One shard of R rows (d = 64, float16 Gaussian blobs, ``.npy``) is generated once and
hard-linked S times into a folder, so S x R rows cost R rows of disk (the page cache
holds one copy; the data is read S times). Every command runs in its own process, as a
user's would, with its peak RSS taken inside (``VmHWM``; with Ray, the largest of its
workers too). Printed: one row per command with seconds, peak RSS, bytes per row, and
the plan's prediction (``prunekit plan``, made first) next to the measured time.

With ``--baseline REV`` the same pipeline also runs on an earlier commit (checked out
with ``git worktree`` and put first on PYTHONPATH), in the same run, into single files as
that version writes them; the ratios new / baseline are printed.

    python benchmarks/bench_scale_out.py --rows 1e6 --shards 4 --k 100          # minutes
    python benchmarks/bench_scale_out.py --rows 1e7 --shards 10 --k 1000 --baseline 895ab4c
    python benchmarks/bench_scale_out.py --rows 1e7 --shards 100 --k 100         # 10^9 rows
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import WRAP, peak_rss_kib

D = 64
BLOCK = 1 << 20
CENTRES = 256
ROOT = Path(__file__).resolve().parents[1]


def write_shard(path: Path, rows: int, seed: int = 0) -> None:
    """``rows`` float16 rows around CENTRES Gaussian centres, written block by block."""
    centres = np.random.default_rng(seed).standard_normal((CENTRES, D)).astype(np.float32)
    mm = np.lib.format.open_memmap(path, "w+", np.float16, (rows, D))
    for i, a in enumerate(range(0, rows, BLOCK)):
        m = min(BLOCK, rows - a)
        r = np.random.default_rng([seed, i])
        mm[a:a + m] = centres[r.integers(0, CENTRES, m)] + 0.5 * r.standard_normal((m, D), np.float32)
    mm.flush()
    del mm


def make_data(scratch: Path, rows: int, shards: int) -> Path:
    folder = scratch / "shards"
    folder.mkdir()
    first = folder / "part_00000.npy"
    write_shard(first, rows)
    for s in range(1, shards):
        os.link(first, folder / f"part_{s:05d}.npy")
    return folder


def run(args: list[str], cwd: Path, pythonpath: str | None = None) -> dict:
    """Wall seconds, driver and child peak RSS (MiB) and stdout of one command."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", WRAP, *args], cwd=cwd, env=env,
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        tail = "\n".join(res.stderr.splitlines()[-5:])
        raise RuntimeError(f"prunekit {' '.join(args)} failed ({res.returncode}):\n{tail}")
    rss = peak_rss_kib(res.stderr)
    return {"seconds": wall, "driver_mib": rss[0] / 1024, "children_mib": rss[1] / 1024,
            "stdout": res.stdout}


def pipeline(data: Path, k: int, work: Path, folders: bool) -> list[tuple[str, list[str]]]:
    """The commands of one pipeline; folders: the partitioned outputs (else single files)."""
    km, sel = ("km/", "sel/") if folders else ("km.h5", "sel.h5")
    return [
        ("score -m kmeans", ["score", str(data), "-m", "kmeans", "--k", str(k), "-q", "-o", km]),
        ("select", ["select", km, "--pr", "0.5", "--balance", "clusters", "-o", sel]),
        ("export", ["export", sel, "--format", "npy", "-o", "kept.npy"]),
    ]


def baseline_tree(rev: str, scratch: Path) -> Path:
    tree = scratch / "baseline"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev],
                   check=True, capture_output=True)
    return tree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=float, default=1e6, help="rows per shard")
    ap.add_argument("--shards", type=int, default=4, help="hard links of the one shard")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--baseline", help="an earlier commit to run the same pipeline on")
    ap.add_argument("--scratch", default=tempfile.gettempdir())
    ap.add_argument("--json-out", help="also write the rows as JSON here")
    a = ap.parse_args()
    rows_per, n = int(a.rows), int(a.rows) * a.shards
    scratch = Path(tempfile.mkdtemp(prefix="pk-scale-out-", dir=a.scratch))
    baseline = None
    try:
        t0 = time.perf_counter()
        data = make_data(scratch, rows_per, a.shards)
        print(f"# {n:,} rows x {D} float16 in {a.shards} hard-linked shards, written in "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
        table = []
        work = scratch / "new"
        work.mkdir()
        planned = run(["plan", str(data), "-m", "kmeans", "--k", str(a.k), "-o", "km/",
                       "--json"], work)
        plan = json.loads(planned["stdout"])
        table.append({"version": "new", "command": "plan (incl. load pass)", **planned})
        for name, args in pipeline(data, a.k, work, folders=True):
            table.append({"version": "new", "command": name, **run(args, work)})
            print(f"# new {name}: {table[-1]['seconds']:.0f} s", file=sys.stderr)
        if a.baseline:
            baseline = baseline_tree(a.baseline, scratch)
            old = scratch / "old"
            old.mkdir()
            for name, args in pipeline(data, a.k, old, folders=False):
                table.append({"version": a.baseline, "command": name,
                              **run(args, old, pythonpath=str(baseline))})
                print(f"# {a.baseline} {name}: {table[-1]['seconds']:.0f} s", file=sys.stderr)
        report(table, n, plan, a.baseline)
        if a.json_out:
            Path(a.json_out).write_text(json.dumps(
                {"n": n, "k": a.k, "plan_seconds": plan.get("seconds_local"),
                 "rows": [{k: v for k, v in r.items() if k != "stdout"} for r in table]}, indent=1))
    finally:
        if baseline is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)],
                           check=False, capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)


def report(table: list[dict], n: int, plan: dict, baseline: str | None) -> None:
    print(f"\n{'version':<10} {'command':<24} {'seconds':>8} {'driver RSS':>11} "
          f"{'B/row':>6} {'workers RSS':>12}")
    for r in table:
        print(f"{r['version']:<10} {r['command']:<24} {r['seconds']:>8.1f} "
              f"{r['driver_mib']:>8.0f} MiB {r['driver_mib'] * 2**20 / n:>6.1f} "
              f"{r['children_mib']:>8.0f} MiB")
    new = [r for r in table if r["version"] == "new" and not r["command"].startswith("plan")]
    total = sum(r["seconds"] for r in new)
    predicted = plan.get("seconds_local")
    if predicted:
        print(f"\nplan predicted {predicted:.0f} s for score -m kmeans; measured "
              f"{new[0]['seconds']:.0f} s ({new[0]['seconds'] / predicted:.2f}x)")
    if baseline:
        old = [r for r in table if r["version"] == baseline]
        old_total = sum(r["seconds"] for r in old)
        print(f"pipeline: new {total:.0f} s, {baseline} {old_total:.0f} s "
              f"(new / old = {total / old_total:.2f}); peak driver RSS new "
              f"{max(r['driver_mib'] for r in new):.0f} MiB, old "
              f"{max(r['driver_mib'] for r in old):.0f} MiB")


if __name__ == "__main__":
    main()
