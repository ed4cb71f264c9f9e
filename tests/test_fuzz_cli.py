"""Every command against broken files and bad options: one clean error, nothing written.

Each case runs a command in a directory holding a corpus of good and broken files and
asserts: exit status 2, exactly one line on stderr starting with "Error:" and naming what
was wrong, no traceback, and no file created, changed or removed. Most cases run in
process (click's CliRunner); Ctrl-C runs in a subprocess. Add a case with every new
command or option.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import prunekit as pk
from prunekit.cli import main

N, D = 30, 4
BIG_SEED = str(2**63)


def _h5(path: Path, **datasets) -> None:
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            f[name] = value


def _copy_h5(src: Path, dst: Path, edit) -> None:
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "a") as f:
        edit(f)


def _replace(f: h5py.File, name: str, value) -> None:
    del f[name]
    f[name] = value


def _corrupt(src: Path, dst: Path, offset: int, length: int) -> None:
    data = bytearray(src.read_bytes())
    data[offset : offset + length] = bytes(0xA5 ^ b for b in data[offset : offset + length])
    dst.write_bytes(bytes(data))


def build_corpus(d: Path) -> None:
    """Good files (emb.h5, scores.h5, sel.h5, herd.h5) and broken ones."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D)).astype(np.float32)
    _h5(d / "emb.h5", embeddings=x, ids=np.arange(100, 100 + N), labels=np.arange(N) % 3)
    emb = pk.load_embeddings(d / "emb.h5")
    scores = pk.score(emb, "kmeans", k=3, seed=0, progress=False)
    scores.save(d / "scores.h5")
    pk.select(scores, 0.5).save(d / "sel.h5")
    pk.score(emb, "herding", max_keep=5, seed=0, progress=False).save(d / "herd.h5")
    (d / "notes.txt").write_text("keep me\n")
    (d / "adir").mkdir()
    os.mkfifo(d / "fifo")

    # embeddings that cannot be read
    (d / "garbage.h5").write_bytes(rng.bytes(4096))
    (d / "empty.h5").write_bytes(b"")
    (d / "trunc.h5").write_bytes((d / "emb.h5").read_bytes()[:1500])
    np.savez(d / "objects.npz", embeddings=np.array([{"a": 1}] * 3, dtype=object))
    np.savez(d / "good.npz", embeddings=x)
    np.savez(d / "mixed.npz", embeddings=x, meta=np.array([{"a": 1}], dtype=object))  # objects beside
    (d / "trunc.npz").write_bytes((d / "good.npz").read_bytes()[:300])
    with zipfile.ZipFile(d / "good.npz") as z:
        start = z.getinfo("embeddings.npy").header_offset + 30 + len("embeddings.npy") + 200
    _corrupt(d / "good.npz", d / "badcrc.npz", start, 8)
    np.savez_compressed(d / "bomb.npz", embeddings=np.zeros((4000, 256), np.float64))  # 8 MiB inside
    with h5py.File(d / "idsgroup.h5", "w") as f:
        f["embeddings"] = x
        f.create_group("ids")
    with h5py.File(d / "chunked.h5", "w") as f:
        f.create_dataset("embeddings", data=rng.standard_normal((2000, 16)), chunks=(100, 16), compression="gzip")
        offset = f["embeddings"].id.get_chunk_info(5).byte_offset
    _corrupt(d / "chunked.h5", d / "badchunk.h5", offset + 10, 64)
    _corrupt(d / "emb.h5", d / "badmeta.h5", 96, 200)
    huge = x.copy()
    huge[3] = 1e19
    _h5(d / "huge.h5", embeddings=huge)
    (d / "nonutf8.csv").write_bytes(b"id,score\n100,\xff\xfe\n")
    (d / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    np.save(d / "sources.npy", rng.standard_normal((5, D)))
    np.savez(d / "sources.npz", x0=rng.standard_normal((5, D)))
    np.save(d / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)

    # sharded inputs that do not form one row space
    for name, shards in {
        "mixedwidth": [x[:10], x[10:, :2]],
        "mixeddtype": [x[:10], x[10:].astype(np.float16)],
        "emptyshard": [x[:10], x[:0]],
        "gap": {"part_0.npy": x[:10], "part_2.npy": x[10:]},
    }.items():
        (d / name).mkdir()
        items = shards.items() if isinstance(shards, dict) else (
            (f"part_{i}.npy", a) for i, a in enumerate(shards))
        for fname, arr in items:
            np.save(d / name / fname, arr)
    (d / "model.pt").write_bytes(b"a TorchScript model stands here")
    (d / "pq").mkdir()
    (d / "pq" / "part_0.parquet").write_bytes(b"PAR1 not really parquet PAR1")

    # scores files with bad side datasets or attributes
    sc = d / "scores.h5"
    _copy_h5(sc, d / "sc_ntotal.h5", lambda f: f.attrs.__setitem__("n_total", "abc"))
    _copy_h5(sc, d / "sc_params.h5", lambda f: f.attrs.__setitem__("params", "{not json"))
    _copy_h5(sc, d / "sc_deep.h5", lambda f: f.attrs.__setitem__("params", "[" * 100_000 + "]" * 100_000))
    _copy_h5(sc, d / "sc_ids_short.h5", lambda f: _replace(f, "ids", np.arange(5)))
    _copy_h5(sc, d / "sc_ids_group.h5", lambda f: (f.__delitem__("ids"), f.create_group("ids")))
    _copy_h5(sc, d / "sc_score_2d.h5", lambda f: _replace(f, "score", np.zeros((N, 2))))
    _copy_h5(sc, d / "sc_score_text.h5", lambda f: _replace(f, "score", np.array([b"a"] * N)))
    _copy_h5(sc, d / "sc_cluster.h5", lambda f: _replace(f, "cluster", np.zeros(N) + 0.5))
    _copy_h5(d / "herd.h5", d / "sc_order.h5", lambda f: _replace(f, "order", np.array([0, N + 5])))

    # selection files with bad side datasets or attributes
    sel = d / "sel.h5"
    _copy_h5(sel, d / "sel_ids_len.h5", lambda f: _replace(f, "ids", np.arange(3)))
    _copy_h5(sel, d / "sel_ntotal.h5", lambda f: f.attrs.__setitem__("n_total", "abc"))
    _copy_h5(sel, d / "sel_params.h5", lambda f: f.attrs.__setitem__("params", "{not json"))
    _copy_h5(sel, d / "sel_params_list.h5", lambda f: f.attrs.__setitem__("params", "[1, 2]"))
    _copy_h5(sel, d / "sel_pr.h5", lambda f: f.attrs.__setitem__("pr", "half"))
    _copy_h5(sel, d / "sel_nkept.h5", lambda f: f.attrs.__setitem__("n_kept", 99))
    _copy_h5(sel, d / "sel_float.h5", lambda f: _replace(f, "indices", np.arange(15) + 0.5))
    _copy_h5(sel, d / "sel_group.h5", lambda f: (f.__delitem__("indices"), f.create_group("indices")))
    _copy_h5(sel, d / "sel_counts.h5", lambda f: f.__setitem__("counts", np.ones(4, np.int64)))
    _copy_h5(sel, d / "sel_oob.h5", lambda f: _replace(f, "indices", np.arange(15) + 20))
    build_refused(d, x)


def _npy_bytes(header: str, version: tuple[int, int] = (1, 0), data: bytes = b"") -> bytes:
    """An .npy file with a hand-written header (numpy cannot write the broken ones)."""
    text = header.encode("latin-1")
    size = 2 if version == (1, 0) else 4
    pad = -(10 + size - 2 + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    length = len(text).to_bytes(size, "little")
    return b"\x93NUMPY" + bytes(version) + length + text + data


def build_refused(d: Path, x: np.ndarray) -> None:
    """Inputs the core once crashed on or silently accepted (see docs/reliability.md,
    "Refused inputs"), and their accepted neighbours (v3.npy, s_*.h5)."""
    # a null dataspace, a header numpy cannot read, a dtype no kernel computes in
    with h5py.File(d / "nullshape.h5", "w") as f:
        f.create_dataset("embeddings", data=h5py.Empty("<f4"))
    _copy_h5(d / "scores.h5", d / "sc_null.h5",
             lambda f: (f.__delitem__("score"), f.create_dataset("score", data=h5py.Empty("<f8"))))
    good = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }"
    (d / "badver.npy").write_bytes(_npy_bytes(good, (9, 0), bytes(48)))
    (d / "negshape.npy").write_bytes(_npy_bytes(good.replace("(3, 4)", "(-3, 4)"), data=bytes(48)))
    (d / "shortdata.npy").write_bytes(_npy_bytes(good, data=bytes(40)))  # 48 bytes promised
    for name in ("badver", "negshape"):
        with zipfile.ZipFile(d / f"{name}.npz", "w") as z:
            z.writestr("embeddings.npy", (d / f"{name}.npy").read_bytes())
    with open(d / "v3.npy", "wb") as fh:  # format 3.0 (UTF-8 header) is read
        np.lib.format.write_array(fh, x, version=(3, 0))
    np.save(d / "f128.npy", x.astype(np.longdouble))
    _h5(d / "f128.h5", embeddings=x.astype(np.longdouble))
    _h5(d / "c128.h5", embeddings=x.astype(np.complex128))
    np.save(d / "struct.npy", np.zeros((N, D), dtype=[("a", "<f4")]))
    # ids: bytes that are not UTF-8, integers beyond int64, duplicates, line breaks
    bad_text = np.array([b"\xff\xfe%d" % i for i in range(N)])
    _h5(d / "badids.h5", embeddings=x, ids=bad_text)
    np.savez(d / "badids.npz", embeddings=x, ids=bad_text)
    _h5(d / "bigids.h5", embeddings=x, ids=np.arange(N, dtype=np.uint64) + np.uint64(2**63))
    _copy_h5(d / "scores.h5", d / "sc_badids.h5", lambda f: _replace(f, "ids", bad_text))
    dup = np.arange(100, 100 + N)
    dup[7] = dup[3]
    _copy_h5(d / "scores.h5", d / "sc_dupids.h5", lambda f: _replace(f, "ids", dup))
    _copy_h5(d / "sel.h5", d / "sel_dupids.h5", lambda f: _replace(f, "ids", np.r_[7, 7, 1:14]))
    for name, ids in (("sel_nl.h5", ["a", "b\nc", "d"]), ("sel_emptyid.h5", ["a", "", "d"]),
                      ("sel_text.h5", ["a", "b c", "d"])):
        kept = pk.Selection(indices=np.arange(3), n_total=N, pr=0.9, ids=np.array(ids, dtype=object))
        kept.save(d / name)
    # the same ids over other vectors: a selection of emb.h5 does not apply by position
    _h5(d / "emb_other.h5", embeddings=2 * x, ids=np.arange(100, 100 + N))
    # string ids name items in any embedding of them: accepted across embeddings
    keys = np.array([f"img{i}.png" for i in range(N)], dtype=object)
    with h5py.File(d / "s_emb.h5", "w") as f, h5py.File(d / "s_emb_other.h5", "w") as g:
        f["embeddings"], g["embeddings"] = x, 2 * x
        for h in (f, g):
            h.create_dataset("ids", data=keys.tolist(), dtype=h5py.string_dtype("utf-8"))
    s_emb = pk.load_embeddings(d / "s_emb.h5")
    pk.select(pk.score(s_emb, "random", seed=0), 0.5).save(d / "s_sel.h5")
    _build_parquet_ids(d, x)


def _build_parquet_ids(d: Path, x: np.ndarray) -> None:
    """Parquet shards whose id column is not integers or UTF-8 text (needs pyarrow)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return
    rows = pa.array(x.tolist(), pa.list_(pa.float32(), D))
    for name, ids in {
        "pq_floatids": pa.array(np.arange(N) + 0.5),
        "pq_structids": pa.array([{"a": i} for i in range(N)]),
        "pq_listids": pa.array([[i] for i in range(N)]),
        "pq_badtext": pa.array([b"\xff\xfe%d" % i for i in range(N)], pa.binary()),
        "pq_bigids": pa.array(np.arange(N, dtype=np.uint64) + np.uint64(2**63)),
        "pq_binids": pa.array([b"k%d" % i for i in range(N)], pa.binary()),  # UTF-8: accepted
    }.items():
        pq.write_table(pa.table({"embeddings": rows, "id": ids}), d / f"{name}.parquet")


def snapshot(d: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for p in sorted(d.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(d))] = (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        else:
            out[str(p.relative_to(d))] = (0, "dir" if p.is_dir() else "special")
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    build_corpus(d)
    return d


EMB_BAD = [
    ("garbage.h5", "neither HDF5"),
    ("empty.h5", "empty.h5"),
    ("trunc.h5", "trunc.h5"),
    ("objects.npz", "objects.npz"),
    ("trunc.npz", "trunc.npz"),
    ("badcrc.npz", "badcrc.npz"),
    ("idsgroup.h5", "ids"),
    ("badchunk.h5", "badchunk.h5"),
    ("badmeta.h5", "badmeta.h5"),
    ("huge.h5", "norm above"),
    ("pickled.npy", "pickled.npy"),
    ("adir", "adir"),
    ("missing.h5", "not found"),
]

SCORES_BAD = [
    ("sc_ntotal.h5", "'n_total' must be an integer"),
    ("sc_params.h5", "'params' is not valid JSON"),
    ("sc_deep.h5", "'params' is not valid JSON"),
    ("sc_ids_short.h5", "'ids' has shape (5,)"),
    ("sc_ids_group.h5", "'ids' is a group"),
    ("sc_score_2d.h5", "must be 1-D"),
    ("sc_score_text.h5", "1-D array of numbers"),
    ("sc_cluster.h5", "'cluster' must hold integers"),
    ("sc_order.h5", "'order' has positions outside"),
    ("emb.h5", "'score' is missing"),
    ("garbage.h5", "not an HDF5 file"),
]

SELECTION_BAD = [
    ("sel_ids_len.h5", "'ids' has 3 entries but 'indices' has 15"),
    ("sel_ntotal.h5", "'n_total' must be an integer"),
    ("sel_params.h5", "'params' is not valid JSON"),
    ("sel_params_list.h5", "must be a JSON object"),
    ("sel_pr.h5", "'pr' must be a number"),
    ("sel_nkept.h5", "n_kept=99"),
    ("sel_float.h5", "must be integers"),
    ("sel_group.h5", "'indices' is a group"),
    ("sel_counts.h5", "counts must be integers, one per index"),
    ("sel_oob.h5", "must lie in [0, 30)"),
    ("scores.h5", "'indices' is missing"),
]

INT64_OVER = str(2**63)  # one past the largest int64

# Inputs the core once crashed on (a traceback) or silently accepted.
REFUSED = [
    # 1. a dataset without a dataspace (h5py.Empty)
    ("info-null-shape", ["info", "nullshape.h5"],
     "nullshape.h5 ['embeddings'] is an empty HDF5 dataset"),
    ("select-null-score", ["select", "sc_null.h5", "--pr", "0.5", "-o", "out.h5"],
     "'score' is an empty HDF5 dataset"),
    # 2. .npy headers: an unknown version, a negative shape, data shorter than the header says
    ("info-npy-version", ["info", "badver.npy"], "format version 9.0 is not one numpy writes"),
    ("info-npz-version", ["info", "badver.npz"],
     "badver.npz ['embeddings'] as .npy: format version 9.0"),
    ("info-npy-negative", ["info", "negshape.npy"], "negative shape (-3, 4)"),
    ("info-npz-negative", ["info", "negshape.npz"], "negative shape (-3, 4)"),
    ("info-npy-short", ["info", "shortdata.npy"], "shortdata.npy is truncated"),
    # 3. dtypes no kernel computes in
    ("info-float128-npy", ["info", "f128.npy"],
     "unsupported dtype float128; embeddings must be float16, float32 or float64"),
    ("score-float128-h5", ["score", "f128.h5", "-m", "random", "-o", "out.h5"],
     "unsupported dtype float128"),
    ("info-complex-h5", ["info", "c128.h5"], "non-numeric dtype complex128"),
    ("info-structured-npy", ["info", "struct.npy"], "non-numeric dtype [('a', '<f4')]"),
    # 4. ids that are not UTF-8 or do not fit int64
    ("info-ids-not-utf8-h5", ["info", "badids.h5"],
     "badids.h5 ['ids']: id number 0 (b'\\xff\\xfe0') is not UTF-8"),
    ("info-ids-not-utf8-npz", ["info", "badids.npz"], "badids.npz ['ids']: id number 0"),
    ("select-ids-not-utf8", ["select", "sc_badids.h5", "--pr", "0.5", "-o", "out.h5"],
     "is not UTF-8 text"),
    ("info-ids-beyond-int64", ["info", "bigids.h5"], "id 9223372036854775837 does not fit in int64"),
    # 5. integers beyond int64 in options
    ("plan-k-int64", ["plan", "emb.h5", "-m", "kmeans", "--k", INT64_OVER],
     "--k must be a 64-bit integer, below 2**63"),
    ("score-max-keep-int64",
     ["score", "emb.h5", "-m", "herding", "--max-keep", INT64_OVER, "-o", "out.h5"],
     "--max-keep must be a 64-bit integer"),
    ("select-drop-int64", ["select", "scores.h5", "--pr", "0.5", "--drop-clusters", INT64_OVER],
     "--drop-clusters id 9223372036854775808 is not a 64-bit integer"),
    ("plan-workers-int64", ["plan", "emb.h5", "-m", "kmeans", "--workers", INT64_OVER],
     "not in the range 1<=x<=9223372036854775807"),
    *[(f"stability-{opt[2:]}-int64", ["stability", "emb.h5", "--pr", "0.5", opt, INT64_OVER],
       f"{opt} 9223372036854775808 is not a 64-bit integer")
      for opt in ("--n-sources", "--block", "--sample")],
    ("stability-components-int64",
     ["stability", "gmm", "--dims", "4", "--pr", "0.5", "--components", INT64_OVER],
     "--components 9223372036854775808 is not a 64-bit"),
    ("score-memory-inf", ["score", "emb.h5", "-m", "random", "--memory", "1e400", "-o", "out.h5"],
     "larger than any memory"),
    # 7. work that never ends (memory does not grow with the steps)
    ("stability-steps-huge", ["stability", "emb.h5", "--pr", "0.5", "--steps", "1000000000"],
     "--steps 1000000000 is above 100000"),
    # 8. subsets made from other embeddings, matched by position or integer id
    ("stability-selection-other-emb", ["stability", "emb_other.h5", "--selection", "sel.h5"],
     "sel.h5 was made from other embeddings than emb_other.h5"),
    ("stability-scores-other-emb",
     ["stability", "emb_other.h5", "--pr", "0.5", "--scores", "scores.h5"],
     "--scores scores.h5 was made from other embeddings"),
    # 9. duplicate ids in scores and selections
    ("select-duplicate-ids", ["select", "sc_dupids.h5", "--pr", "0.5", "-o", "out.h5"],
     "sc_dupids.h5: the scores' 'ids' have duplicates (e.g. 103)"),
    ("export-duplicate-ids", ["export", "sel_dupids.h5", "--format", "json", "-o", "out.json"],
     "'ids' has duplicates (e.g. 7)"),
    ("inspect-duplicate-ids", ["inspect", "sel_dupids.h5"], "'ids' has duplicates (e.g. 7)"),
    # 10. ids a one-per-line file cannot hold
    ("export-txt-newline-id", ["export", "sel_nl.h5", "--format", "txt", "--ids", "-o", "out.txt"],
     "sel_nl.h5: id number 1 ('b\\nc') contains a line break"),
    ("export-txt-newline-id-stdout", ["export", "sel_nl.h5", "--format", "txt", "--ids", "-o", "-"],
     "export --format json or npy instead"),
    ("export-txt-empty-id",
     ["export", "sel_emptyid.h5", "--format", "txt", "--ids", "-o", "out.txt"],
     "id number 1 ('') is empty"),
    # 11. a budget below what any command holds
    ("score-memory-1K", ["score", "emb.h5", "-m", "random", "--memory", "1K", "-o", "out.h5"],
     "--memory 1K (1024 bytes) is below the minimum of 1.0 MiB"),
    ("plan-memory-1K", ["plan", "emb.h5", "-m", "kmeans", "--memory", "1000"], "below the minimum"),
    # 12. one pr for select; lists of numbers for stability
    ("select-pr-list", ["select", "scores.h5", "--pr", "0.5,0.6"], "'0.5,0.6' is not a valid float"),
    ("stability-pr-list-bad", ["stability", "emb.h5", "--pr", "0.5,x"], "--pr takes numbers, got 'x'"),
]

# 13. Parquet id columns that are neither integers nor UTF-8 text (with pyarrow only)
PARQUET_REFUSED = [
    ("pq_floatids",
     "Parquet file pq_floatids.parquet: id column 'id' is double; ids must be integers or strings"),
    ("pq_structids", "id column 'id' is struct<a: int64>"),
    ("pq_listids", "id column 'id' is list<element: int64>"),
    ("pq_badtext", "pq_badtext.parquet ['id']: id number 0 (b'\\xff\\xfe0') is not UTF-8 text"),
    ("pq_bigids", "pq_bigids.parquet ['id']: id 9223372036854775837 does not fit in int64"),
]

# (id, argv, words the one-line message must contain)
CASES = [
    *REFUSED,
    *[(f"info-{f}", ["info", f], m) for f, m in EMB_BAD],
    *[(f"score-{f}", ["score", f, "-m", "random", "-q", "-o", "out.h5"], m) for f, m in EMB_BAD[:4]],
    *[(f"select-{f}", ["select", f, "--pr", "0.5", "-o", "out.h5"], m) for f, m in SCORES_BAD],
    *[(f"export-{f}", ["export", f, "--format", "json", "-o", "out.json"], m) for f, m in SELECTION_BAD],
    *[(f"inspect-{f}", ["inspect", f], m) for f, m in SELECTION_BAD[:5]],
    *[(f"inspect-scores-{f}", ["inspect", "sel.h5", "--scores", f], m) for f, m in SCORES_BAD[:5]],
    *[(f"inspect-emb-{f}", ["inspect", "sel.h5", "--embeddings", f], m) for f, m in EMB_BAD[:6]],
    *[(f"stability-{f}", ["stability", f, "--pr", "0.5", "-o", "out.json"], m) for f, m in EMB_BAD[:4]],
    # the one seed rule: 0 <= seed < 2**63
    *[(f"{cmd[0]}-seed-{s}", [*cmd, "--seed", s], "not in the range 0<=x<=9223372036854775807")
      for s in ("-1", BIG_SEED)
      for cmd in (["score", "emb.h5", "-m", "random", "-o", "out.h5"], ["select", "scores.h5", "--pr", "0.5"],
                  ["inspect", "sel.h5"], ["synth", "gmm", "--n", "5", "--dim", "2", "--components", "1", "-o", "g.h5"],
                  ["stability", "emb.h5", "--pr", "0.5"])],
    # outputs that would destroy an input or cannot be written
    ("select-over-input", ["select", "scores.h5", "--pr", "0.5", "-o", "scores.h5"], "would destroy the input"),
    ("select-over-labels", ["select", "scores.h5", "--pr", "0.5", "--balance", "labels", "--labels-from",
                            "emb.h5", "-o", "emb.h5"], "would destroy the input"),
    ("score-over-input", ["score", "emb.h5", "-m", "random", "-o", "emb.h5"], "would destroy the input"),
    ("export-over-input", ["export", "sel.h5", "--format", "npy", "-o", "sel.h5"], "would destroy the input"),
    ("stability-over-input", ["stability", "emb.h5", "--pr", "0.5", "--sources", "sources.npy", "-o",
                              "sources.npy"], "would destroy the input"),
    ("stability-plot-over-input", ["stability", "emb.h5", "--pr", "0.5", "--plot", "emb.h5"], "would destroy"),
    ("stability-plot-is-output", ["stability", "emb.h5", "--pr", "0.5", "-o", "o.json", "--plot", "./o.json"],
     "the same file"),
    ("select-devnull", ["select", "scores.h5", "--pr", "0.5", "-o", "/dev/null"], "special file"),
    ("select-fifo", ["select", "scores.h5", "--pr", "0.5", "-o", "fifo"], "special file"),
    ("synth-dir", ["synth", "gmm", "--n", "5", "--dim", "2", "--components", "1", "-o", "adir"], "directory"),
    ("select-parent-file", ["select", "scores.h5", "--pr", "0.5", "-o", "notes.txt/out.h5"], "not a directory"),
    ("select-long-name", ["select", "scores.h5", "--pr", "0.5", "-o", "n" * 300 + ".h5"], "longer than 255"),
    ("export-npy-stdout", ["export", "sel.h5", "--format", "npy", "-o", "-"], "standard output"),
    ("select-stdout", ["select", "scores.h5", "--pr", "0.5", "-o", "-"], "standard output"),
    ("synth-stdout", ["synth", "gmm", "--n", "5", "--dim", "2", "--components", "1", "-o", "-"], "standard output"),
    ("stability-plot-stdout", ["stability", "emb.h5", "--pr", "0.5", "--plot", "-"], "standard output"),
    # output checked before any work: a bad output with a bad input names the output
    ("select-output-first", ["select", "garbage.h5", "--pr", "0.5", "-o", "fifo"], "special file"),
    # sizes that cannot fit, refused with the number
    ("synth-1e13", ["synth", "gmm", "--n", "1e13", "--dim", "2", "--components", "1", "-o", "g.h5"],
     "'1e13' is not a valid integer"),
    ("synth-huge", ["synth", "gmm", "--n", str(10**13), "--dim", "2", "--components", "1", "-o", "g.h5"],
     "TiB of memory"),
    ("stability-sources-huge", ["stability", "emb.h5", "--pr", "0.5", "--n-sources", str(10**12)], "of memory"),
    ("stability-dims-huge", ["stability", "gmm", "--dims", str(10**9), "--pr", "0.5"], "of memory"),
    ("inspect-rff-huge", ["inspect", "sel.h5", "--embeddings", "emb.h5", "--rff-dim", str(10**9)], "--rff-dim"),
    # other bad inputs and options
    ("stability-sources-npz", ["stability", "emb.h5", "--pr", "0.5", "--sources", "sources.npz"], "not an .npy"),
    ("stability-sources-pickle", ["stability", "emb.h5", "--pr", "0.5", "--sources", "pickled.npy"],
     "pickled.npy"),
    ("stability-sources-missing", ["stability", "emb.h5", "--pr", "0.5", "--sources", "no.npy"], "not found"),
    ("stability-steps-0", ["stability", "emb.h5", "--pr", "0.5", "--steps", "0"], "--steps"),
    ("stability-pr-nan", ["stability", "emb.h5", "--pr", "nan"], "[0, 1)"),
    ("stability-dims-text", ["stability", "gmm", "--dims", "4,x", "--pr", "0.5"], "--dims"),
    ("score-sigma-tiny", ["score", "emb.h5", "-m", "herding", "--sigma", "1e-300", "-o", "out.h5"], "sigma=1e-300"),
    ("score-sigma-tiny-exact", ["score", "emb.h5", "-m", "herding", "--kernel", "exact", "--sigma", "1e-300",
                                "-o", "out.h5"], "sigma=1e-300"),
    ("score-loss-nonutf8", ["score", "emb.h5", "-m", "loss", "--from", "nonutf8.csv", "-o", "out.h5"],
     "nonutf8.csv"),
    ("score-loss-deep-json", ["score", "emb.h5", "-m", "loss", "--from", "deep.json", "-o", "out.h5"], "deep.json"),
    ("select-herding-fill", ["select", "herd.h5", "--pr", "0.5", "-o", "out.h5"], "picked 5 of 30 rows"),
    ("select-fill-bad", ["select", "herd.h5", "--pr", "0.5", "--fill", "lowest"], "--fill"),
    ("select-pr-1", ["select", "scores.h5", "--pr", "1"], "[0, 1)"),
    ("select-pr-nan", ["select", "scores.h5", "--pr", "nan"], "pr"),
    ("select-drop-bad", ["select", "scores.h5", "--pr", "0.5", "--drop-clusters", "a,b"], "--drop-clusters"),
    ("synth-dim-0", ["synth", "gmm", "--n", "5", "--dim", "0", "--components", "1", "-o", "g.h5"], "--dim"),
    ("synth-spread-nan", ["synth", "gmm", "--n", "5", "--dim", "2", "--components", "1", "--spread", "nan",
                          "-o", "g.h5"], "spread"),
    ("inspect-draws-0", ["inspect", "sel.h5", "--random-draws", "0"], "--random-draws"),
    # sharded inputs, the engine, the memory budget and the newer methods' options
    ("info-mixed-width", ["info", "mixedwidth"], "needs the same width and dtype"),
    ("info-mixed-dtype", ["info", "mixeddtype"], "needs the same width and dtype"),
    ("info-empty-shard", ["info", "emptyshard"], "part_1.npy ['array'] is empty"),
    ("info-shard-gap", ["info", "gap"], "part_1"),
    ("info-bad-parquet", ["info", "pq"], "part_0.parquet"),
    ("info-glob-none", ["info", "nothing_*.npy"], "no files match"),
    ("score-mixed-width", ["score", "mixedwidth", "-m", "random", "-o", "out.h5"], "same width"),
    ("score-into-shard-dir", ["score", "gap", "-m", "random", "-o", "gap/s.h5"], "lies inside"),
    ("score-memory-text", ["score", "emb.h5", "-m", "random", "--memory", "lots", "-o", "out.h5"], "--memory"),
    ("score-memory-0", ["score", "emb.h5", "-m", "random", "--memory", "0", "-o", "out.h5"], "--memory"),
    ("score-engine-bogus", ["score", "emb.h5", "-m", "random", "--engine", "spark", "-o", "out.h5"],
     "--engine"),
    ("score-workers-0", ["score", "emb.h5", "-m", "random", "--workers", "0", "-o", "out.h5"], "--workers"),
    ("score-kmeans-sample-0", ["score", "emb.h5", "-m", "kmeans", "--sample", "0", "-o", "out.h5"],
     "--sample"),
    ("score-kmeans-passes-neg", ["score", "emb.h5", "-m", "kmeans", "--full-passes", "-1", "-o", "out.h5"],
     "--full-passes"),
    ("score-kmeans-k-too-big", ["score", "emb.h5", "-m", "kmeans", "--k", "31", "-o", "out.h5"], "k=31"),
    ("score-semdedup-keep", ["score", "emb.h5", "-m", "semdedup", "--keep", "middle", "-o", "out.h5"],
     "--keep"),
    ("score-semdedup-within-bad", ["score", "emb.h5", "-m", "semdedup", "--within", "sel.h5", "-o", "out.h5"],
     "sel.h5"),
    ("select-eps-neg", ["select", "scores.h5", "--eps", "-0.1", "-o", "out.h5"], "--eps"),
    ("plan-garbage", ["plan", "garbage.h5", "-m", "kmeans"], "neither HDF5"),
    ("plan-method", ["plan", "emb.h5", "-m", "bogus"], "unknown method"),
    ("plan-param", ["plan", "emb.h5", "-m", "kmeans", "--k", "0"], "--k"),
    ("plan-workers-0", ["plan", "emb.h5", "-m", "kmeans", "--workers", "0"], "--workers"),
    ("unknown-option", ["select", "--bogus"], "No such option"),
    ("unknown-command", ["bogus"], "No such command"),
]

# The plug-in's option validation (prunekit lfm ...): the message must name the option.
LFM_CASES = [
    ("lfm-train-lr-nan", ["lfm", "train", "lat.h5", "-o", "run", "--lr", "nan"], "lr must be"),
    ("lfm-train-lr-inf", ["lfm", "train", "lat.h5", "-o", "run", "--lr", "inf"], "lr must be"),
    ("lfm-train-seed", ["lfm", "train", "lat.h5", "-o", "run", "--seed", "-1"], "--seed"),
    ("lfm-train-steps", ["lfm", "train", "lat.h5", "-o", "run", "--steps", "0"], "steps"),
    ("lfm-train-batch", ["lfm", "train", "lat.h5", "-o", "run", "--batch-size", "-3"], "--batch-size must be"),
    ("lfm-train-device", ["lfm", "train", "lat.h5", "-o", "run", "--device", "bogus"], "--device"),
    ("lfm-encode-size-neg", ["lfm", "encode", "imgs.h5", "-o", "lat.h5", "--size", "-4"], "--size"),
    ("lfm-encode-size-0", ["lfm", "encode", "imgs.h5", "-o", "lat.h5", "--size", "0"], "--size"),
    ("lfm-train-vae-image-size", ["lfm", "train-vae", "imgs.h5", "-o", "vae", "--image-size", "-2"],
     "--image-size"),
    ("lfm-sample-n-huge", ["lfm", "sample", "run", "--n", "1e12"], "--n"),
    ("lfm-sample-seed", ["lfm", "sample", "run", "--seed", "-1"], "--seed"),
    ("lfm-score-t-points", ["lfm", "score", "run", "lat.h5", "--t-points", "1000000000"], "--t-points"),
    ("lfm-compare-n", ["lfm", "compare", "a", "b", "--n", "1"], "--n"),
    ("lfm-c2f-sweep-t-switch", ["lfm", "c2f-sweep", "--coarse", "a", "--fine", "b", "--t-switch", "2"], "t_switch"),
    ("lfm-c2f-sweep-seed", ["lfm", "c2f-sweep", "--coarse", "a", "--fine", "b", "--seed", "-1"], "--seed"),
    ("lfm-metrics-k", ["lfm", "metrics", "s.h5", "--k", "0"], "--k"),
    ("lfm-embed-batch", ["lfm", "embed", "imgs", "-o", "e.h5", "--batch-size", "0"], "--batch-size"),
    ("lfm-embed-over-input", ["lfm", "embed", "emb.h5", "-o", "emb.h5"], "would destroy the input"),
    ("lfm-embed-over-model", ["lfm", "embed", "emb.h5", "-o", "model.pt", "--encoder", "torchscript:model.pt"],
     "would destroy the input"),
    ("lfm-metrics-over-features", ["lfm", "metrics", "emb.h5", "--real", "digits", "--features", "torchscript:model.pt",
                                   "-o", "model.pt"], "would destroy the input"),
    ("lfm-score-over-input", ["lfm", "score", "adir", "emb.h5", "-o", "emb.h5"], "would destroy the input"),
    ("lfm-sample-over-run", ["lfm", "sample", "adir", "-o", "adir/x.h5"], "lies inside"),
    ("demo-budget-inf", ["demo", "--budget", "inf"], "--budget"),
    ("demo-seed", ["demo", "--seed", "-1"], "--seed"),
]

ALLOWED_LINES = 1


def check_clean_failure(result, message: str) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, (result.exit_code, result.output)
    err = result.stderr.strip()
    assert "Traceback" not in result.output
    assert len(err.splitlines()) == ALLOWED_LINES and err.startswith("Error:"), err
    assert message in err, err


def _params(cases, known):
    """Cases as pytest params; a known failure is a strict xfail (it fails loudly once fixed)."""
    for name, argv, message in cases:
        marks = [pytest.mark.xfail(strict=True, reason=known[name])] if name in known else []
        yield pytest.param(argv, message, id=name, marks=marks)


@pytest.mark.parametrize("argv, message", list(_params(CASES, {})))
def test_bad_input_is_one_clean_error_and_writes_nothing(corpus, monkeypatch, argv, message):
    monkeypatch.chdir(corpus)
    monkeypatch.setenv("PRUNEKIT_AVAILABLE_MEMORY", str(2**30))
    before = snapshot(corpus)
    result = CliRunner().invoke(main, argv)
    check_clean_failure(result, message)
    assert snapshot(corpus) == before


@pytest.mark.parametrize("argv, message", list(_params(LFM_CASES, {})))
def test_lfm_option_validation(corpus, monkeypatch, argv, message):
    pytest.importorskip("torch")
    monkeypatch.chdir(corpus)
    before = snapshot(corpus)
    result = CliRunner().invoke(main, argv)
    check_clean_failure(result, message)
    assert snapshot(corpus) == before


def test_a_small_npz_that_expands_beyond_the_memory_budget_is_refused(corpus, monkeypatch):
    monkeypatch.chdir(corpus)
    monkeypatch.setenv("PRUNEKIT_AVAILABLE_MEMORY", str(2**20))
    assert (corpus / "bomb.npz").stat().st_size < 100_000
    result = CliRunner().invoke(main, ["info", "bomb.npz"])
    check_clean_failure(result, "of memory")


def test_the_good_corpus_files_work(corpus, monkeypatch, tmp_path):
    """The same files and options minus the defect succeed (so the cases test the defect)."""
    monkeypatch.chdir(corpus)
    runner = CliRunner()
    for argv in (["info", "emb.h5"], ["info", "good.npz"], ["info", "chunked.h5"], ["info", "mixed.npz"],
                 ["select", "scores.h5", "--pr", "0.5", "-o", str(tmp_path / "s.h5"), "--seed", str(2**63 - 1)],
                 ["select", "herd.h5", "--pr", "0.5", "--fill", "random", "-o", str(tmp_path / "h.h5")],
                 ["select", "herd.h5", "--pr", "0.9", "-o", str(tmp_path / "h2.h5")],
                 ["export", "sel.h5", "--format", "json", "-o", str(tmp_path / "s.json")],
                 ["inspect", "sel.h5", "--scores", "scores.h5", "--seed", "0"],
                 ["stability", "emb.h5", "--pr", "0.5", "--sources", "sources.npy", "--steps", "4",
                  "-o", str(tmp_path / "st.json")]):
        result = runner.invoke(main, argv)
        assert result.exit_code == 0, (argv, result.output)


def test_json_and_text_outputs_may_go_to_standard_output(corpus, monkeypatch):
    monkeypatch.chdir(corpus)
    before = snapshot(corpus)
    for out in ("-", "/dev/stdout"):
        result = CliRunner().invoke(main, ["export", "sel.h5", "--format", "json", "-o", out])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["n_kept"] == 15
    result = CliRunner().invoke(main, ["export", "sel.h5", "--format", "txt", "-o", "-"])
    assert result.exit_code == 0 and len(result.stdout.split()) == 15
    assert snapshot(corpus) == before


def test_ctrl_c_exits_130_with_one_line_and_leaves_no_file(tmp_path):
    """SIGINT while the output is written: status 130, "Interrupted.", no output, no temp."""
    code = textwrap.dedent("""
        import os, signal, sys
        import prunekit.selection.scores
        from prunekit.cli import main

        real_stamp = prunekit.selection.scores.stamp

        def stamp_then_interrupt(*args, **kwargs):
            real_stamp(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the final write

        prunekit.selection.scores.stamp = stamp_then_interrupt
        sys.argv = ["prunekit", *sys.argv[1:]]
        main()
    """)
    rng = np.random.default_rng(0)
    _h5(tmp_path / "emb.h5", embeddings=rng.standard_normal((20, 3)))
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = subprocess.run([sys.executable, "-c", code, "score", "emb.h5", "-m", "random", "-q", "-o", "out.h5"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip() == "Interrupted."
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_ctrl_c_during_work_exits_130(tmp_path):
    _h5(tmp_path / "emb.h5", embeddings=np.ones((4, 2)))
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from prunekit.cli import main\n"
         "import prunekit.cli.info as m\n"
         "def slow(*a, **k):\n    print('working', flush=True); time.sleep(60)\n"
         "m.describe = slow\nsys.argv = ['prunekit', 'info', 'emb.h5']\nmain()"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "working"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip() == "Interrupted."


def test_a_group_without_a_command_prints_its_help():
    for argv in ([], ["synth"]):
        result = CliRunner().invoke(main, argv)
        assert result.exit_code == 2 and "Usage:" in result.output and "Commands:" in result.output
        assert not result.output.startswith("Error")
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("prunekit, version ")


@pytest.mark.parametrize("name, message", PARQUET_REFUSED, ids=[n for n, _ in PARQUET_REFUSED])
def test_parquet_ids_that_are_not_integers_or_text_are_refused(corpus, monkeypatch, name, message):
    pytest.importorskip("pyarrow")
    monkeypatch.chdir(corpus)
    before = snapshot(corpus)
    for argv in (["info", f"{name}.parquet"],
                 ["score", f"{name}.parquet", "-m", "random", "-o", "out.h5"]):
        check_clean_failure(CliRunner().invoke(main, argv), message)
    assert snapshot(corpus) == before


def test_the_accepted_neighbours_of_refused_inputs_work(corpus, monkeypatch, tmp_path):
    """What lies next to each refusal still works: a 3.0 .npy header, string ids matched
    across embeddings, plain text ids in txt, the smallest --memory, pr lists in stability."""
    monkeypatch.chdir(corpus)
    runner = CliRunner()
    ok = lambda *argv: runner.invoke(main, list(argv))  # noqa: E731
    res = ok("info", "v3.npy")
    assert res.exit_code == 0 and "30 x 4 float32" in res.output, res.output
    np.testing.assert_array_equal(pk.load_embeddings("v3.npy").array(),
                                  np.load("good.npz")["embeddings"])
    out = tmp_path / "st.json"
    res = ok("stability", "s_emb_other.h5", "--selection", "s_sel.h5", "--steps", "2", "-q",
             "-o", str(out))
    assert res.exit_code == 0, res.output
    assert [r["n_kept"] for r in json.loads(out.read_text())["rows"]] == [15]
    res = ok("export", "sel_text.h5", "--format", "txt", "--ids", "-o", "-")
    assert res.exit_code == 0 and res.stdout == "a\nb c\nd\n", res.output
    res = ok("score", "emb.h5", "-m", "random", "--memory", "1M", "-o", str(tmp_path / "m.h5"))
    assert res.exit_code == 0, res.output
    res = ok("stability", "emb.h5", "--pr", "0.5,0.6", "--steps", "2", "-q", "-o", str(out))
    assert res.exit_code == 0
    assert [r["pr"] for r in json.loads(out.read_text())["rows"]] == [0.5, 0.6]
    res = ok("select", "scores.h5", "--pr", "0.5", "--drop-clusters", "1",
             "-o", str(tmp_path / "d.h5"))
    assert res.exit_code == 0, res.output
    if importlib.util.find_spec("pyarrow") is not None:
        assert pk.load_embeddings("pq_binids.parquet").ids.tolist() == [f"k{i}" for i in range(N)]


def test_ctrl_c_during_select_exits_130(tmp_path):
    """select's own work and write are interruptible like every command's."""
    rng = np.random.default_rng(0)
    _h5(tmp_path / "emb.h5", embeddings=rng.standard_normal((20, 3)))
    pk.score(pk.load_embeddings(tmp_path / "emb.h5"), "random", seed=0).save(tmp_path / "sc.h5")
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from prunekit.cli import main\n"
         "import prunekit.cli.select as m\n"
         "def slow(*a, **k):\n    print('working', flush=True); time.sleep(60)\n"
         "m.run_select = slow\n"
         "sys.argv = ['prunekit', 'select', 'sc.h5', '--pr', '0.5', '-o', 'o.h5']\n"
         "main()"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "working"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip() == "Interrupted."
    assert sorted(p.name for p in tmp_path.iterdir()) == before
