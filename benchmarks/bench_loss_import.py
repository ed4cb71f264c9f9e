"""Importing loss scores: the streamed JSON reader and ``score -m loss`` into a folder.

Two parts, on N rows (10^6 by default; ``--rows 1e7``), every case in its own process:

* **reader**: a JSON list of scores and a JSON object ``{id: score}`` read by
  ``prunekit.methods.loss.read_score_file`` (a stream, :mod:`prunekit.io.jsonstream`)
  against ``json.load`` + numpy conversion of the same file. Time of the read and peak RSS
  above the process's start (``VmHWM`` after the imports), taken inside the process.
* **command**: ``prunekit score EMB -m loss --from FILE`` written as a folder (``-o out/``)
  against a single file (``-o out.h5``), for a ``.npy`` (matched by position, sliced by the
  tasks), a JSON list (spooled to a scratch ``.npy``), a CSV with ids and a JSON object
  (both hash-joined by id), and ``-m random`` (no file) as the floor of each output. Wall
  time measured outside (it includes the interpreter's start), the driver's peak RSS
  (``VmHWM``) inside, printed with its excess over the floor.

The embeddings (N x 16 float16, int64 ids in shuffled order) and the score files (ids in
ascending order, so a join has to move every row) are generated once, into a temporary
folder removed at the end, or into ``--dir`` where they are kept and reused. Cases take
turns in each round; times and RSS are medians of ``--repeats`` rounds. Printed: two
markdown tables with the ratios new / baseline measured in the same run.

    python benchmarks/bench_loss_import.py                        # 10^6 rows, under 2 minutes
    python benchmarks/bench_loss_import.py --rows 1e7 --dir /tmp/pk-loss --repeats 1  # ~5 min
    python benchmarks/bench_loss_import.py --skip command                # the reader only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import h5py
import numpy as np
from _common import WRAP, mixture, peak_rss_kib

D = 16
BLOCK = 1 << 18  # rows generated and written at a time
ID_BASE = 10**9

# Run as ``python -c READ PATH HOW``: one read of a score file, timed inside; peak RSS
# above the VmHWM the process had once its imports were done.
READ = """
import json, sys, time
import numpy as np
from prunekit.methods.loss import read_score_file

def hwm_kib():
    return max(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))

def baseline(path):
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if isinstance(data, list):
        return np.asarray(data, dtype=np.float64), None
    ids = np.empty(len(data), dtype=object)
    ids[:] = list(data)
    return np.fromiter(data.values(), np.float64, len(data)), ids

path, how = sys.argv[1:]
start = hwm_kib()
t0 = time.perf_counter()
values, ids = read_score_file(path) if how == "stream" else baseline(path)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "rss_kib": hwm_kib() - start, "n": int(values.size),
                  "sum": float(values.sum()), "ids": None if ids is None else str(ids[-1])}))
"""


# ----------------------------------------------------------------------------- data


def _atomic(path: Path, write) -> Path:
    """``path`` written by ``write(tmp_path)`` unless it exists (a reused ``--dir``)."""
    if not path.exists():
        tmp = path.with_name(path.name + ".tmp")
        write(tmp)
        os.replace(tmp, path)
    return path


def _write_embeddings(path: Path, ids: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        emb = f.create_dataset("embeddings", (ids.size, D), np.float16)
        for i, a in enumerate(range(0, ids.size, BLOCK)):
            m = min(BLOCK, ids.size - a)
            emb[a : a + m] = mixture(m, D, 64, seed=i)
        f["ids"] = ids


def _write_text(path: Path, head: str, lines, sep: str, tail: str) -> None:
    """A text file ``head + sep.join(lines) + tail``, written a block of lines at a time."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(head)
        for i, block in enumerate(lines):
            fh.write((sep if i else "") + sep.join(block))
        fh.write(tail)


def _blocks(n: int, line):
    """The lines ``line(a, b)`` of rows [a, b), BLOCK rows at a time."""
    return (line(a, min(a + BLOCK, n)) for a in range(0, n, BLOCK))


def _save_npy(path: Path, values: np.ndarray) -> None:
    with open(path, "wb") as fh:  # np.save on a name would add ".npy" to the temporary one
        np.save(fh, values)


def make_data(folder: Path, n: int, seed: int = 0) -> dict[str, Path]:
    """Embeddings and the four score files of ``n`` rows (the same scores in each)."""
    rng = np.random.default_rng(seed)
    ids = ID_BASE + rng.permutation(n).astype(np.int64)  # embedding row -> id
    scores = rng.gamma(2.0, 0.5, n)  # score of embedding row i, loss-like
    by_id = np.empty(n)
    by_id[ids - ID_BASE] = scores  # score of id ID_BASE + j, for the files keyed by id

    def positional(a: int, b: int) -> list[str]:
        return [repr(v) for v in scores[a:b].tolist()]

    def keyed(fmt: str):
        return lambda a, b: [fmt.format(ID_BASE + a + j, repr(v))
                             for j, v in enumerate(by_id[a:b].tolist())]

    return {
        "emb": _atomic(folder / f"emb-{n}.h5", lambda p: _write_embeddings(p, ids)),
        "npy": _atomic(folder / f"scores-{n}.npy", lambda p: _save_npy(p, scores)),
        "json list": _atomic(folder / f"list-{n}.json", lambda p: _write_text(
            p, "[", _blocks(n, positional), ", ", "]\n")),
        "csv": _atomic(folder / f"keyed-{n}.csv", lambda p: _write_text(
            p, "id,score\n", _blocks(n, keyed("{},{}")), "\n", "\n")),
        "json object": _atomic(folder / f"keyed-{n}.json", lambda p: _write_text(
            p, "{", _blocks(n, keyed('"{}": {}')), ", ", "}\n")),
    }


# ----------------------------------------------------------------------------- runs


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


def read_once(path: Path, how: str) -> dict:
    """One read of ``path`` (``how``: stream or json.load) in a fresh process."""
    res = subprocess.run([sys.executable, "-c", READ, str(path), how], env=_env(),
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{how} read of {path} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.splitlines()[-1])


def score_once(emb: Path, scores: Path | None, output: str, scratch: Path) -> dict:
    """``prunekit score -m loss --from scores`` (``-m random`` when ``scores`` is None: the
    command's floor) in a fresh process and a fresh folder: wall seconds and the driver's
    peak RSS (KiB)."""
    work = Path(tempfile.mkdtemp(prefix="run-", dir=scratch))
    method = ["random"] if scores is None else ["loss", "--from", str(scores)]
    args = ["score", str(emb), "-m", *method, "-q", "-o", output]
    try:
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", WRAP, *args], cwd=work, env=_env(),
                             capture_output=True, text=True)
        seconds = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if res.returncode != 0:
        raise RuntimeError(f"prunekit {' '.join(args)} failed:\n{res.stderr[-2000:]}")
    return {"seconds": seconds, "rss_kib": peak_rss_kib(res.stderr)[0]}


def rounds(cases: dict, repeats: int) -> dict[str, dict]:
    """Every case ``name -> () -> {"seconds", "rss_kib", ...}`` run once a round, in turn;
    the median seconds and RSS of each, and its last result's other fields."""
    runs: dict[str, list[dict]] = {name: [] for name in cases}
    for r in range(repeats):
        for name, case in cases.items():
            runs[name].append(case())
            print(f"# round {r + 1}: {' '.join(name)}: {runs[name][-1]['seconds']:.2f} s",
                  file=sys.stderr)
    return {name: {**rs[-1], "seconds": statistics.median(x["seconds"] for x in rs),
                   "mib": statistics.median(x["rss_kib"] for x in rs) / 1024}
            for name, rs in runs.items()}


def check_same(a: dict, b: dict, what: str) -> None:
    """Both readers read the same scores (count, sum, last id)."""
    if a["n"] != b["n"] or a["ids"] != b["ids"] or not np.isclose(a["sum"], b["sum"]):
        raise RuntimeError(f"{what}: the readers disagree: {a} vs {b}")


# ----------------------------------------------------------------------------- tables


def ratio(new: float, old: float) -> str:
    return f"{new / old:.2f}" if old else "-"


def reader_table(files: dict, n: int, repeats: int) -> list[str]:
    cases = {(kind, how): partial(read_once, files[kind], how)
             for kind in ("json list", "json object") for how in ("json.load", "stream")}
    res = rounds(cases, repeats)
    out = [f"| file ({n:,} rows) | MB | json.load s | stream s | ratio | json.load MiB "
           "| stream MiB | ratio |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for kind in ("json list", "json object"):
        old, new = res[kind, "json.load"], res[kind, "stream"]
        check_same(old, new, kind)
        out.append(f"| {kind} | {files[kind].stat().st_size / 1e6:.0f} "
                   f"| {old['seconds']:.2f} | {new['seconds']:.2f} "
                   f"| {ratio(new['seconds'], old['seconds'])} | {old['mib']:.0f} "
                   f"| {new['mib']:.0f} | {ratio(new['mib'], old['mib'])} |")
    return out


NOISE_MIB = 8  # a peak RSS moves by a few MiB between runs: no ratio of smaller excesses
# --from file -> how it is matched; "-m random" reads no file: the floor of the command
COMMANDS = {"-m random": "(no file)", "npy": "position", "json list": "position (spooled)",
            "csv": "id (joined)", "json object": "id (joined)"}


def command_table(files: dict, n: int, repeats: int, scratch: Path) -> list[str]:
    """RSS is printed with its excess over ``-m random`` writing the same kind of output
    (the interpreter, the imports, the writer); the RSS ratio is of those excesses."""
    cases = {(kind, o): partial(score_once, files["emb"], files.get(kind), o, scratch)
             for kind in COMMANDS for o in ("out.h5", "out/")}
    res = rounds(cases, repeats)
    floor = {o: res["-m random", o]["mib"] for o in ("out.h5", "out/")}
    out = [f"| --from ({n:,} rows) | matched by | -o out.h5 s | -o out/ s | ratio "
           "| out.h5 MiB (+ over random) | out/ MiB (+ over random) | ratio of + |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    for kind, matched in COMMANDS.items():
        old, new = res[kind, "out.h5"], res[kind, "out/"]
        extra = {o: res[kind, o]["mib"] - floor[o] for o in floor}
        rss = ratio(extra["out/"], extra["out.h5"]) if extra["out.h5"] >= NOISE_MIB else "-"
        out.append(f"| {kind} | {matched} | {old['seconds']:.1f} | {new['seconds']:.1f} "
                   f"| {ratio(new['seconds'], old['seconds'])} "
                   f"| {old['mib']:.0f} ({extra['out.h5']:+.0f}) "
                   f"| {new['mib']:.0f} ({extra['out/']:+.0f}) | {rss} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=float, default=1e6)
    ap.add_argument("--repeats", type=int, default=3, help="rounds; medians are printed")
    ap.add_argument("--dir", help="keep the generated files here and reuse them")
    ap.add_argument("--skip", nargs="*", default=[], choices=["reader", "command"])
    a = ap.parse_args()
    n = int(a.rows)
    scratch = Path(tempfile.mkdtemp(prefix="pk-loss-import-"))
    data = Path(a.dir) if a.dir else scratch
    data.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        files = make_data(data, n)
        print(f"# data ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        tables = []
        if "reader" not in a.skip:
            tables.append(reader_table(files, n, a.repeats))
        if "command" not in a.skip:
            tables.append(command_table(files, n, a.repeats, scratch))
        print(f"\nmedians of {a.repeats}; ratio = new / baseline (stream / json.load, "
              "out/ / out.h5)\n")
        print("\n\n".join("\n".join(t) for t in tables))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
