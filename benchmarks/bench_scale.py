"""Scale: wall time and peak memory of every core command on 10^5 .. 10^7 rows.

For each size N the data (d = 256, float16, Gaussian blobs like embeddings) is generated
chunk by chunk into a scratch directory as one HDF5 file, as ``.npy`` shards and as
Parquet shards (with an id column), and removed at the end. Every command runs in its own
process, like a user's; its wall time is measured outside, its peak RSS inside
(``VmHWM`` of the process, ``ru_maxrss`` of its children). Printed:

* one row per (N, format, command, engine): seconds, peak RSS, the plan's prediction
  (``prunekit plan``, made just before) and the ratio predicted / measured;
* the growth exponent of each command's time in N (least squares on log-log);
* k-means against its floor: faiss on the sample plus one read of the data at the
  probed speed;
* with Ray engines (``--engines local,ray1,ray2``): the cost of starting Ray (the same
  command with ``-m random``), and whether each engine wrote the same arrays as local.

    python benchmarks/bench_scale.py --quick            # 10^5 rows, all formats, 5 iterations
    python benchmarks/bench_scale.py --sizes 1e5,1e6 --formats h5
    python benchmarks/bench_scale.py --sizes 1e7 --formats h5 --engines local,ray1,ray2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from _common import WRAP, peak_rss_kib

D = 256
BLOCK = 1 << 16  # rows generated at a time
CENTRES = 64
ENGINES = {"local": [], "ray1": ["--engine", "ray", "--workers", "1"],
           "ray2": ["--engine", "ray", "--workers", "2"]}


# ------------------------------------------------------------------------------- data


def block(i: int, n: int, seed: int = 0) -> np.ndarray:
    """Rows ``i * BLOCK ..`` (float16 Gaussian blobs): the same rows for every format."""
    centres = np.random.default_rng(seed).standard_normal((CENTRES, D)).astype(np.float32)
    m = min(BLOCK, n - i * BLOCK)
    r = np.random.default_rng([seed, i])
    x = centres[r.integers(0, CENTRES, m)] + 0.7 * r.standard_normal((m, D), dtype=np.float32)
    return x.astype(np.float16)


def rows(a: int, b: int, n: int):
    """Yield (start, block) covering rows ``a:b`` of the data set of ``n`` rows."""
    for i in range(a // BLOCK, (b - 1) // BLOCK + 1):
        x = block(i, n)
        lo, hi = max(a, i * BLOCK), min(b, i * BLOCK + x.shape[0])
        yield lo, x[lo - i * BLOCK : hi - i * BLOCK]


def shards(n: int) -> list[tuple[int, int]]:
    """Shard row ranges: 4 shards up to 4M rows, then shards of 1M rows."""
    per = min(1_000_000, max(1, -(-n // 4)))
    return [(a, min(a + per, n)) for a in range(0, n, per)]


def write_h5(path: Path, n: int) -> str:
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("embeddings", (n, D), dtype=np.float16, chunks=(4096, D))
        for start, x in rows(0, n, n):
            ds[start : start + x.shape[0]] = x
    return str(path)


def write_npy(d: Path, n: int) -> str:
    d.mkdir()
    for s, (a, b) in enumerate(shards(n)):
        mm = np.lib.format.open_memmap(d / f"emb_{s}.npy", "w+", np.float16, (b - a, D))
        for start, x in rows(a, b, n):
            mm[start - a : start - a + x.shape[0]] = x
        mm.flush()
        del mm
    return str(d / "emb_*.npy")


def write_parquet(d: Path, n: int) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    d.mkdir()
    schema = pa.schema([("embeddings", pa.list_(pa.float16(), D)), ("id", pa.int64())])
    for s, (a, b) in enumerate(shards(n)):
        with pq.ParquetWriter(d / f"part-{s:05d}.parquet", schema) as w:
            for start, x in rows(a, b, n):
                emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), D)
                w.write_table(pa.table({"embeddings": emb, "id": np.arange(start, start + x.shape[0])},
                                       schema=schema), row_group_size=BLOCK)
    return str(d / "part-*.parquet")


# --------------------------------------------------------------------------- running


MEMORY: str | None = None  # --memory, passed to every command as PRUNEKIT_MEMORY


def run(args: list[str], cwd: Path) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of one prunekit command in a fresh process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **({"PRUNEKIT_MEMORY": MEMORY} if MEMORY else {})}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", WRAP, *args], cwd=cwd, env=env,
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    rss = peak_rss_kib(res.stderr)
    if res.returncode != 0:
        tail = "\n".join(res.stderr.splitlines()[-5:])
        raise RuntimeError(f"prunekit {' '.join(args)} failed ({res.returncode}):\n{tail}")
    return wall, (max(rss) / 1024 if rss else float("nan")), res.stdout


def predicted(args: list[str], cwd: Path, engine: str = "local") -> tuple[float, dict]:
    """The plan's prediction (seconds) for ``engine`` and the plan itself."""
    workers = ENGINES[engine][-1] if engine != "local" else "8"
    _, _, out = run(["plan", *args, "--workers", workers, "--json"], cwd)
    p = json.loads(out)
    return p["seconds_local" if engine == "local" else "seconds_ray"], p


def has_engines(cwd: Path) -> bool:
    out = subprocess.run([sys.executable, "-m", "prunekit", "score", "--help"], cwd=cwd,
                         capture_output=True, text=True).stdout
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return "--engine" in out


def startup(cwd: Path) -> float:
    """Median wall time of a command that imports everything and does nothing."""
    return float(np.median([run(["score", "--help"], cwd)[0] for _ in range(3)]))


COMMANDS = ("info", "random", "kmeans", "select", "herding", "kcenter", "inspect")
OPTIONAL = ("stability",)  # run only when named in --commands


def bench_size(n: int, formats: list[str], engines: list[str], k: int, iters: int, keep: int,
               scratch: Path, rows: list[dict], commands: tuple[str, ...] = COMMANDS) -> None:
    writers = {"h5": lambda: write_h5(scratch / "emb.h5", n),
               "npy": lambda: write_npy(scratch / "npy", n),
               "parquet": lambda: write_parquet(scratch / "parquet", n)}
    for fmt in formats:
        t0 = time.perf_counter()
        emb = writers[fmt]()
        print(f"# N={n:.0e} {fmt}: written in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        work = scratch / f"work-{fmt}"
        work.mkdir()

        def record(cmd, engine, args, plan_args=None, fmt=fmt, work=work):
            if cmd in commands:
                _record(rows, n, fmt, work, cmd, engine, args, plan_args)

        record("info", "local", ["info", emb, "--json"])
        record("random", "local", ["score", emb, "-m", "random", "-o", "random.h5", "-q"],
               [emb, "-m", "random"])
        km_args = ["-m", "kmeans", "--k", str(k), "--iters", str(iters)]
        if "kmeans" in commands:
            record("kmeans", "local", ["score", emb, *km_args, "-o", "km-local.h5", "-q"],
                   [emb, *km_args])
        else:  # the commands below need its clusters
            run(["score", emb, *km_args, "-o", "km-local.h5", "-q"], work)
        sel_args = ["select", "km-local.h5", "--pr", "0.9", "--balance", "clusters", "-o", "sel.h5"]
        if "select" in commands:
            record("select", "local", sel_args)
        elif {"inspect", "stability"} & set(commands):  # they read the selection
            run(sel_args, work)
        for engine in engines:
            eng = ENGINES[engine]
            if engine != "local" and fmt != formats[0]:
                continue  # engines are compared on the first format only
            if engine != "local":  # what starting and stopping Ray costs a command
                _record(rows, n, fmt, work, "ray start", engine,
                        ["score", emb, "-m", "random", "-o", "r.h5", "-q", *eng], None)
                record("kmeans", engine, ["score", emb, *km_args, "-o", f"km-{engine}.h5", "-q", *eng],
                       [emb, *km_args])
            cap = ["--max-keep", str(keep)] if keep else []  # 0: the full order
            for method in ("herding", "kcenter"):
                record(method, engine,
                       ["score", emb, "-m", method, "--within", "km-local.h5", *cap,
                        "-o", f"{method}-{engine}.h5", "-q", *eng],
                       [emb, "-m", method, "--within", "km-local.h5", *cap])
        _same_across_engines(work, engines, rows)
        record("inspect", "local", ["inspect", "sel.h5", "--scores", "km-local.h5",
                                    "--embeddings", emb, "--json", "-q"])
        record("stability", "local", ["stability", emb, "--selection", "sel.h5",
                                      "-o", "stability.json", "-q"])
        shutil.rmtree(work)
        for p in (scratch / "emb.h5", scratch / "npy", scratch / "parquet"):
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()


def _same_across_engines(work: Path, engines: list[str], rows: list[dict]) -> None:
    """Mark each row of another engine with whether its arrays equal the local engine's."""
    for r in rows:
        if r["engine"] == "local" or "identical" in r:
            continue
        name = "km" if r["command"] == "kmeans" else r["command"]
        a, b = work / f"{name}-local.h5", work / f"{name}-{r['engine']}.h5"
        if a.exists() and b.exists():
            with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
                r["identical"] = all(np.array_equal(fa[d][()], fb[d][()]) for d in fa
                                     if isinstance(fa[d], h5py.Dataset))


def _record(rows: list[dict], n: int, fmt: str, work: Path, cmd: str, engine: str,
            args: list[str], plan_args: list[str] | None) -> None:
    """Plan (when ``plan_args``), run, and append one result row."""
    pred, plan = predicted(plan_args, work, engine) if plan_args else (float("nan"), None)
    wall, rss, _ = run(args, work)
    rows.append({"n": n, "format": fmt, "command": cmd, "engine": engine, "seconds": wall,
                 "rss_mib": rss, "predicted": pred,
                 "floor": _kmeans_floor(plan) if cmd == "kmeans" else float("nan")})
    print(f"# {fmt} {cmd} {engine}: {wall:.1f} s, {rss:.0f} MiB, plan {pred:.1f} s", file=sys.stderr)


def _kmeans_floor(plan: dict | None) -> float:
    """faiss on the sample + one read of the data at the probed speed (the issue's floor)."""
    if not plan:
        return float("nan")
    steps = {s["name"]: s for s in plan["steps"]}
    return steps["lloyd on sample"]["seconds_local"] + plan["bytes"] / plan["probe"]["read_bytes_per_s"]


def growth(rows: list[dict]) -> dict[tuple, float]:
    """Least-squares slope of log(seconds) on log(N) for every (format, command, engine)."""
    out = {}
    keys = {(r["format"], r["command"], r["engine"]) for r in rows}
    for key in sorted(keys):
        pts = [(r["n"], r["seconds"]) for r in rows if (r["format"], r["command"], r["engine"]) == key]
        if len({n for n, _ in pts}) >= 2:
            x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
            out[key] = float(np.polyfit(x, y, 1)[0])
    return out


def print_tables(rows: list[dict], start: float) -> None:
    print(f"process start (imports, no work): {start:.1f} s; 'plan / measured' compares the plan "
          "with the measured time less this start (and less the Ray start measured on the "
          "same engine: 'ray start' rows, a command that starts Ray and does no work)")
    ray_start = {(r["n"], r["format"], r["engine"]): r["seconds"] - start
                 for r in rows if r["command"] == "ray start"}
    print("| N | format | command | engine | seconds | peak RSS MiB | plan s | plan / measured | same arrays as local |")
    print("|---|---|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        work = r["seconds"] - start - ray_start.get((r["n"], r["format"], r["engine"]), 0.0)
        # Below a second of work the ratio says more about process start than the plan.
        ratio = r["predicted"] / work if r["predicted"] == r["predicted"] and work >= 1 else float("nan")
        print(f"| {r['n']:.0e} | {r['format']} | {r['command']} | {r['engine']} | {r['seconds']:.1f} "
              f"| {r['rss_mib']:.0f} | {_f(r['predicted'])} | {_f(ratio, 2)} | "
              f"{ {True: 'yes', False: 'NO'}.get(r.get('identical'), '') } |")
    g = growth(rows)
    if g:
        print("\n| format | command | engine | growth exponent (time ~ N^x) |")
        print("|---|---|---|---:|")
        for (fmt, cmd, eng), x in g.items():
            print(f"| {fmt} | {cmd} | {eng} | {x:.2f} |")
    km = [r for r in rows if r["command"] == "kmeans" and r["engine"] == "local"
          and r["floor"] == r["floor"]]
    if km:
        print("\n| N | format | k-means s | floor s (sample Lloyd + one read) | ratio |")
        print("|---|---|---:|---:|---:|")
        for r in km:
            print(f"| {r['n']:.0e} | {r['format']} | {r['seconds']:.1f} | "
                  f"{r['floor']:.1f} | {r['seconds'] / r['floor']:.2f} |")


def _f(v: float, digits: int = 1) -> str:
    return "-" if v != v else f"{v:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="10^5 rows, k-means with 5 Lloyd iterations: a few minutes on 2 cores")
    ap.add_argument("--sizes", default="1e5", help="comma-separated N, e.g. 1e5,1e6,1e7")
    ap.add_argument("--formats", default="h5,npy,parquet")
    ap.add_argument("--engines", default="local", help="local,ray1,ray2 (ray needs prunekit[ray])")
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--iters", type=int, default=None,
                    help="k-means Lloyd iterations (default 25, or 5 with --quick)")
    ap.add_argument("--memory", help="memory budget of every command, e.g. 1G (PRUNEKIT_MEMORY)")
    ap.add_argument("--max-keep", type=int, default=100,
                    help="greedy picks per cluster (0: the full order)")
    ap.add_argument("--commands", default=",".join(COMMANDS),
                    help="which commands, of " + ",".join(COMMANDS + OPTIONAL)
                    + " (select/herding/kcenter/inspect/stability need kmeans)")
    ap.add_argument("--scratch", default=tempfile.gettempdir())
    ap.add_argument("--json-out", help="also write the rows as JSON here")
    a = ap.parse_args()
    unknown = set(a.commands.split(",")) - set(COMMANDS + OPTIONAL)
    if unknown:
        ap.error(f"--commands: unknown {','.join(sorted(unknown))}")
    sizes = [100_000] if a.quick else [int(float(s)) for s in a.sizes.split(",")]
    formats = a.formats.split(",")
    engines = a.engines.split(",")
    global MEMORY
    MEMORY = a.memory
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still remove the scratch data
    scratch = Path(tempfile.mkdtemp(prefix="prunekit-bench-scale-", dir=a.scratch))
    try:
        start = startup(scratch)
        if any(e != "local" for e in engines) and not has_engines(scratch):
            print("# ray engine not available: local only", file=sys.stderr)
            engines = ["local"]
        need = max(sizes) * D * 2 * 2.5  # one format at a time, plus the grouped-rows file
        free = shutil.disk_usage(scratch).free
        if need > free:
            sys.exit(f"needs about {need / 2**30:.1f} GiB in {scratch}, {free / 2**30:.1f} GiB free")
        rows: list[dict] = []
        for n in sizes:
            iters = a.iters or (5 if a.quick else 25)
            bench_size(n, formats, engines, min(a.k, n), iters, a.max_keep, scratch, rows,
                       tuple(a.commands.split(",")))
        print_tables(rows, start)
        if a.json_out:
            Path(a.json_out).write_text(json.dumps(rows, indent=1))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
