"""Scale-out: the driver holds no per-row arrays; ids are checked in bounded memory; k-means
writes its parts from the workers, equal to the HDF5 path's arrays on any engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("pyarrow")  # folders need the [parquet] extra

import prunekit as pk  # noqa: E402
import prunekit.io.dataset as ds  # noqa: E402
from prunekit.cli import main  # noqa: E402
from prunekit.io import scan, sides  # noqa: E402
from prunekit.io.embeddings import UsableRows  # noqa: E402
from prunekit.io.source import open_source  # noqa: E402
from prunekit.methods import score_to_folder  # noqa: E402
from prunekit.runtime import engine as engine_mod  # noqa: E402
from prunekit.runtime.engine import LocalEngine  # noqa: E402
from prunekit.selection.scores import load_scores  # noqa: E402

SIZES = (700, 500, 300)  # rows per shard
N = sum(SIZES)
NAN_ROW = 900  # in the second shard
SMALL = 64 << 10  # a budget under which ids are checked in buckets, not in one piece
FIELDS = ("score", "cluster", "centroids", "centroid_distance", "ids", "labels", "order")


def write_shards(d, ids=None, labels=True, seed=0):
    """Three HDF5 shards of clustered float16 rows (row NAN_ROW is NaN) with ids and labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, 8)) * 3
    x = (centres[rng.integers(0, 4, N)] + rng.standard_normal((N, 8))).astype(np.float16)
    x[NAN_ROW, 2] = np.nan
    ids = np.arange(N, dtype=np.int64) * 10 + 7 if ids is None else ids
    lab = rng.integers(0, 5, N)
    d.mkdir(parents=True, exist_ok=True)
    a = 0
    for i, n in enumerate(SIZES):
        with h5py.File(d / f"emb_{i}.h5", "w") as f:
            f["embeddings"] = x[a : a + n]
            f["ids"] = ids[a : a + n].astype("S") if ids.dtype == object else ids[a : a + n]
            if labels:
                f["labels"] = lab[a : a + n]
        a += n
    return x, ids, lab


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 128 rows and parts of at most 256 positions, so shards split into parts."""
    monkeypatch.setattr(engine_mod, "MIN_CHUNK_ROWS", 128)
    monkeypatch.setattr(engine_mod, "CHUNK_BYTES", 128 * 4 * 8)
    monkeypatch.setattr(ds, "PART_ROWS", 256)


# Parts of SIZES cut at 128-row chunks, at most 256 positions, never across a shard.
BOUNDS = [(0, 256), (256, 512), (512, 700), (700, 956), (956, 1200), (1200, 1456), (1456, 1500)]


def same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if a.dtype.kind == "O" or b.dtype.kind == "O":
        return a.tolist() == b.tolist()
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def manifest(path) -> dict:
    return json.loads((path / "manifest.json").read_text())


# -- lazy per-row state -----------------------------------------------------------------------


@pytest.mark.parametrize("dropped", [[], [0], [9], [0, 1, 2], [3, 4, 7], [0, 5, 9], [8, 9]])
def test_usable_rows_map_compact_indices_like_the_array(dropped):
    rows = np.setdiff1d(np.arange(10), dropped)
    u = UsableRows(10, np.array(dropped, dtype=np.int64))
    assert u.size == len(u) == rows.size and u.shape == (rows.size,)
    assert same(np.asarray(u), rows.astype(np.int64))
    assert same(u[np.arange(rows.size)[::-1]], rows[::-1].astype(np.int64))
    assert same(u[1:5], rows[1:5].astype(np.int64))
    assert u[-1] == rows[-1] and u[0] == rows[0] and isinstance(u[0], int)
    with pytest.raises(IndexError):
        u[np.array([rows.size])]


def test_loading_keeps_no_per_row_array_until_one_is_asked_for(tmp_path):
    x, ids, lab = write_shards(tmp_path / "d")
    with pk.runtime(memory=SMALL):
        emb = pk.load_embeddings(tmp_path / "d", drop_nonfinite=True)
    held = vars(emb)
    assert held["_rows"] is None and held["_norms"] is None
    assert not isinstance(held["_ids"], np.ndarray) and not isinstance(held["_labels"], np.ndarray)
    assert emb.nonfinite_rows.tolist() == [NAN_ROW] and emb.n == N - 1
    assert emb.has_ids and emb.has_labels and "usable=1499" in repr(emb)
    # Workers read the range they need, across a shard boundary too.
    assert same(emb.side_for("ids", 650, 760), ids[650:760])
    assert same(emb.side_for("labels", 650, 1400), lab[650:1400])
    assert emb.side_for("ids", 5, 5).size == 0
    assert same(emb.positions([0, 899, 900, 1498]), np.array([0, 899, 901, 1499]))
    assert vars(emb)["_rows"] is None  # positions() needed no array
    assert same(emb.rows, np.delete(np.arange(N), NAN_ROW))  # made on first use, then kept
    assert same(emb.ids, ids) and same(emb.labels, lab.astype(np.int64))
    # A small input keeps what the load read: no second read.
    small = pk.load_embeddings(tmp_path / "d", drop_nonfinite=True)
    assert isinstance(vars(small)["_ids"], np.ndarray) and same(small.ids, ids)


def test_reading_all_ids_is_refused_beyond_the_budget(tmp_path):
    write_shards(tmp_path / "d")
    with pk.runtime(memory=SMALL):
        emb = pk.load_embeddings(tmp_path / "d", drop_nonfinite=True)
    with pk.runtime(memory=8000), pytest.raises(pk.PrunekitError) as err:
        _ = emb.ids
    assert "holding the ids of the 1500 rows" in str(err.value)
    assert "needs 11.7 KiB but the memory budget is 7.8 KiB" in str(err.value)
    assert "-o scores/" in str(err.value)


@pytest.mark.parametrize("kind", ["int", "str"])
def test_duplicate_ids_across_shards_are_found_in_bounded_memory(tmp_path, monkeypatch, kind):
    ids = np.arange(N, dtype=np.int64) * 3
    ids[1200:1500] = ids[:300]  # the third shard repeats 300 ids of the first
    ids[750] = ids[720]  # and the second repeats one of its own
    if kind == "str":
        ids = np.array([f"img/{v}.png" for v in ids], dtype=object)
    write_shards(tmp_path / "d", ids=ids)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    calls = []
    real = sides._bucket_task
    monkeypatch.setattr(sides, "_bucket_task", lambda sh, b: calls.append(b) or real(sh, b))
    with pk.runtime(memory=SMALL), pytest.raises(pk.PrunekitError) as bounded:
        pk.load_embeddings(tmp_path / "d", drop_nonfinite=True)
    assert sorted(calls) == list(range(16))  # 1500 x 128 B over 16 KiB: 16 buckets
    assert os.listdir(scratch) == []  # the scratch folder is gone
    with pytest.raises(pk.PrunekitError) as whole:  # default budget: one np.unique
        pk.load_embeddings(tmp_path / "d", drop_nonfinite=True)
    assert str(bounded.value) == str(whole.value)
    if kind == "int":  # the 10 smallest repeated ids, whichever bucket they fell in
        shown = "0, 3, 6, 9, 12, 15, 18, 21, 24, 27"
    else:
        shown = "img/0.png, img/102.png, img/105.png, img/108.png, img/111.png, " \
                "img/114.png, img/117.png, img/12.png, img/120.png, img/123.png"
    assert f"['ids'] has duplicate ids (e.g. {shown}); ids must be unique." in str(bounded.value)


def test_a_single_repeated_id_and_mixed_kinds_are_caught_in_buckets(tmp_path):
    ids = np.arange(N, dtype=np.int64)
    ids[1499] = ids[3]
    write_shards(tmp_path / "a", ids=ids)
    with pk.runtime(memory=SMALL), pytest.raises(pk.PrunekitError, match=r"duplicate ids \(e.g. 3\)"):
        pk.load_embeddings(tmp_path / "a", drop_nonfinite=True)
    write_shards(tmp_path / "b")
    with h5py.File(tmp_path / "b" / "emb_1.h5", "r+") as f:
        del f["ids"]
        f["ids"] = np.array([f"r{i}" for i in range(SIZES[1])], dtype="S")
    with pk.runtime(memory=SMALL), pytest.raises(pk.PrunekitError, match="mix integer and string"):
        pk.load_embeddings(tmp_path / "b", drop_nonfinite=True)


def test_the_scan_returns_no_norms_and_the_range_check_streams(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, 8)).astype(np.float32)
    x[[5, 1200]] *= 1e16  # finite, with norms above MAX_NORM
    x[7] = [np.nan] + [1e20] * 7  # non-finite: never named as too large
    d = tmp_path / "d"
    d.mkdir()
    for i, (a, b) in enumerate([(0, 700), (700, 1200), (1200, N)]):
        np.save(d / f"emb_{i}.npy", x[a:b])
    fp, nonfinite, max_norm = scan.scan(open_source(d))
    assert nonfinite.tolist() == [7] and len(fp) == 32
    finite = np.delete(np.linalg.norm(x.astype(np.float64), axis=1), 7)
    assert max_norm == pytest.approx(finite.max(), rel=1e-6)
    with pytest.raises(pk.PrunekitError) as err:
        pk.load_embeddings(d, drop_nonfinite=True)
    assert "has 2 rows with a norm above 1e+15 (rows 5, 1200)" in str(err.value)


# -- k-means parts from the workers -----------------------------------------------------------


@pytest.mark.parametrize("full_passes", [0, 1])
def test_kmeans_parts_equal_the_h5_arrays_on_one_and_two_workers(tmp_path, small_chunks,
                                                                 full_passes):
    x, ids, lab = write_shards(tmp_path / "d")
    with pk.runtime(memory=SMALL):
        emb = pk.load_embeddings(tmp_path / "d", drop_nonfinite=True)
    kw = dict(k=4, sample=600, full_passes=full_passes, seed=3, progress=False)
    for w in (1, 2):
        with pk.runtime(engine=LocalEngine(w)):
            res = score_to_folder(emb, "kmeans", tmp_path / f"w{w}", **kw)
        assert res.n_scored == N - 1
    # Nothing per row was made on the driver: the workers read their rows, ids and labels.
    assert vars(emb)["_rows"] is None and not isinstance(vars(emb)["_ids"], np.ndarray)
    assert not isinstance(vars(emb)["_labels"], np.ndarray)
    ref = pk.score(emb, "kmeans", **kw)  # the single-file path gathers them
    ref.save(tmp_path / "ref.h5")
    ref = load_scores(tmp_path / "ref.h5")
    assert res.params["inertia"] == ref.params["inertia"]
    back = load_scores(tmp_path / "w1")
    for f in FIELDS:
        assert same(getattr(back, f), getattr(ref, f)), f
    assert back.params == ref.params and back.source == ref.source
    assert same(back.ids, ids) and back.cluster[NAN_ROW] == -1 and np.isnan(back.score[NAN_ROW])
    m1, m2 = manifest(tmp_path / "w1"), manifest(tmp_path / "w2")
    assert [(p["start"], p["stop"]) for p in m1["parts"]] == BOUNDS
    assert m1["cluster_counts"] == np.bincount(ref.cluster[ref.cluster >= 0], minlength=4).tolist()
    assert {k: v for k, v in m1.items() if k != "created"} == \
        {k: v for k, v in m2.items() if k != "created"}
    for p in m1["parts"]:  # the same bytes from one worker and from two
        assert (tmp_path / "w1" / p["file"]).read_bytes() == (tmp_path / "w2" / p["file"]).read_bytes()
    import pyarrow.parquet as pq  # written by the workers: one row group per 128-row chunk

    assert [pq.ParquetFile(tmp_path / "w1" / p["file"]).metadata.num_row_groups
            for p in m1["parts"]] == [2, 2, 2, 2, 2, 2, 1]


def test_other_methods_write_the_same_parts_as_in_memory(tmp_path, small_chunks):
    write_shards(tmp_path / "d", labels=False)
    emb = pk.load_embeddings(tmp_path / "d", drop_nonfinite=True)
    for method, kw in (("random", {}), ("herding", {"max_keep": 30})):
        ref = pk.score(emb, method, seed=5, progress=False, **kw)
        res = score_to_folder(emb, method, tmp_path / method, seed=5, progress=False, **kw)
        back = load_scores(res.path)
        for f in FIELDS:
            assert same(getattr(back, f), getattr(ref, f)), (method, f)
        m = manifest(tmp_path / method)
        assert [(p["start"], p["stop"]) for p in m["parts"]] == BOUNDS
        assert "cluster_counts" not in m and "label" not in m["columns"]


def test_cli_writes_a_folder_refuses_one_inside_the_input_and_resumes(tmp_path, small_chunks,
                                                                      monkeypatch):
    write_shards(tmp_path / "d")
    monkeypatch.chdir(tmp_path)
    run = CliRunner().invoke
    args = ["score", "d", "-m", "kmeans", "--k", "4", "--sample", "600", "--drop-nonfinite", "-q"]
    res = run(main, [*args, "-o", "out/"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("out/: kmeans scored 1499 of 1500 rows (k=4, inertia ")
    assert run(main, [*args, "-o", "ref.h5"]).exit_code == 0
    a, b = load_scores("ref.h5"), load_scores("out")
    for f in FIELDS:
        assert same(getattr(a, f), getattr(b, f)), f
    first = {p.name: p.read_bytes() for p in (tmp_path / "out").glob("part-*")}
    res = run(main, [*args, "-o", "out", "--resume"])  # no suffix: the same folder, replaced
    assert res.exit_code == 0, res.output
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").glob("part-*")} == first
    before = sorted(os.listdir(tmp_path / "d"))
    res = run(main, [*args, "-o", "d/scores/"])
    assert res.exit_code == 2 and res.output == \
        "Error: output d/scores lies inside d, which this command reads; choose a path outside it.\n"
    assert sorted(os.listdir(tmp_path / "d")) == before
    res = run(main, [*args, "-o", "ref.h5/"])  # a folder path naming a file
    assert res.exit_code == 2 and "ref.h5 is a file; a partitioned output is a folder" in res.output


def test_ray_workers_write_the_same_parts(tmp_path, small_chunks):
    pytest.importorskip("ray")
    from prunekit.runtime.engine import make_engine

    write_shards(tmp_path / "d")
    emb = pk.load_embeddings(tmp_path / "d", drop_nonfinite=True)
    kw = dict(k=4, sample=600, seed=3, progress=False)
    score_to_folder(emb, "kmeans", tmp_path / "local", **kw)
    with make_engine("ray", workers=2, quiet=True) as eng, pk.runtime(engine=eng):
        score_to_folder(emb, "kmeans", tmp_path / "ray", **kw)
    for p in manifest(tmp_path / "local")["parts"]:
        assert (tmp_path / "ray" / p["file"]).read_bytes() == \
            (tmp_path / "local" / p["file"]).read_bytes()


# -- the driver's memory ----------------------------------------------------------------------


def test_kmeans_to_a_folder_holds_no_per_row_array_on_the_driver(tmp_path):
    """``score -m kmeans`` over 2^21 x 16 float16 rows in 10 shards (ids and labels) into a
    folder, on one worker: the peak of traced memory (numpy arrays included) stays under
    4 bytes a row, where one int64 or float32 per row (positions, ids, norms) would exceed
    it. Chunks of 4 096 rows and parts of 65 536 keep one task small; the 4 MiB budget
    makes the id check bucketed. It runs in a fresh interpreter (tracemalloc counts every
    thread's allocations, a Ray client's of an earlier test too), after a first run on
    20 000 rows that imports what the command imports (module code is traced memory too)."""
    n, dim = 1 << 21, 16
    rng = np.random.default_rng(0)

    def shards(d, rows):
        d.mkdir()
        cuts = np.linspace(0, rows, 11).astype(int)
        for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
            with h5py.File(d / f"emb_{i}.h5", "w") as f:
                f["embeddings"] = rng.standard_normal((b - a, dim), np.float32).astype(np.float16)
                f["ids"] = np.arange(a, b, dtype=np.int64) * 3 + 1
                f["labels"] = np.arange(a, b, dtype=np.int64) % 7
        return d

    shards(tmp_path / "warm", 20_000)
    d, out = shards(tmp_path / "d", n), tmp_path / "scores"
    code = f"""
import tracemalloc
from click.testing import CliRunner
import prunekit.io.dataset as ds
from prunekit.cli import main
from prunekit.runtime import engine
engine.CHUNK_BYTES = 4096 * 4 * {dim}
ds.PART_ROWS = 1 << 16
def score(d, out):
    return CliRunner().invoke(main, ["score", d, "-m", "kmeans", "--k", "8", "--sample", "8192",
        "--iters", "5", "--restarts", "1", "--memory", "4M", "--workers", "1", "-q", "-o", out])
assert score({str(tmp_path / "warm")!r}, {str(tmp_path / "warm-out")!r}).exit_code == 0
tracemalloc.start()
res = score({str(d)!r}, {str(out)!r})
print(res.exit_code, tracemalloc.get_traced_memory()[1], repr(res.output))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    code_, peak, output = proc.stdout.strip().split(" ", 2)
    assert code_ == "0", output
    assert int(peak) < n * 4, f"peak {int(peak) / 2**20:.1f} MiB"
    r = ds.PartsReader(out, kind="scores")
    assert r.n_rows == n and sum(r.manifest["cluster_counts"]) == n
    for batch in r.iter_batches(["id", "label", "cluster"]):
        pos = batch["position"]
        assert same(batch["id"], pos * 3 + 1) and same(batch["label"], pos % 7)
        assert batch["cluster"].min() >= 0 and batch["cluster"].max() < 8
