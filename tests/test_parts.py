"""Partitioned outputs: a folder of Parquet parts plus manifest.json (prunekit.io.dataset)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")  # the [parquet] extra
pq = pytest.importorskip("pyarrow.parquet")

import prunekit.io.dataset as ds  # noqa: E402
from prunekit.errors import PrunekitError  # noqa: E402
from prunekit.io.dataset import reader as reader_mod  # noqa: E402
from prunekit.io.dataset import writer as writer_mod  # noqa: E402
from prunekit.selection.scores import Scores, load_scores  # noqa: E402
from prunekit.selection.subset import Selection, load_selection, select  # noqa: E402

N = 20
PART = 7  # positions per part in these tests: parts 0..7, 7..14, 14..20


@pytest.fixture(autouse=True)
def small_parts(monkeypatch):
    monkeypatch.setattr(ds, "PART_ROWS", PART)


def make_ids(kind: str, n: int = N):
    if kind == "int":
        return np.arange(100, 100 + 3 * n, 3, dtype=np.int64)
    if kind == "str":
        return np.array([f"img/{i:03d}-é.png" for i in range(n)], dtype=object)
    return None


def make_scores(ids="int", **over) -> Scores:
    rng = np.random.default_rng(0)
    score = rng.random(N)
    score[[2, 15]] = np.nan  # rows dropped as non-finite
    score[9] = -np.inf
    kw = dict(
        score=score,
        method="kmeans",
        n_total=N,
        cluster=rng.integers(0, 3, N),
        centroids=rng.random((3, 5)).astype(np.float32),
        centroid_distance=rng.random(N).astype(np.float32),
        ids=make_ids(ids),
        labels=rng.integers(0, 4, N),
        order=np.array([11, 3, 19, 0]),
        source="emb.h5",
        source_fingerprint="f" * 32,
        params={"k": 3, "seed": 0, "inertia": 1.5, "x": None},
    )
    kw.update(over)
    return Scores(**kw)


def make_selection(ids="int", counts=True, seed=7) -> Selection:
    idx = np.array([1, 4, 5, 6, 15, 19])  # nothing in part 1 (7..14)
    return Selection(
        indices=idx,
        n_total=N,
        pr=0.7,
        method="kmeans",
        seed=seed,
        ids=None if ids is None else make_ids(ids)[idx],
        counts=np.array([1, 2, 1, 3, 1, 1]) if counts else None,
        source_fingerprint="f" * 32,
        params={"balance": "clusters", "scores": "s.h5"},
    )


def same_array(a, b) -> bool:
    """Equal values and dtype; floats bit for bit (NaN included)."""
    if a is None or b is None:
        return a is None and b is None
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return a.tobytes() == b.tobytes() if a.dtype.kind != "O" else a.tolist() == b.tolist()


def manifest(path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def write_manifest(path, m) -> None:
    (path / "manifest.json").write_text(json.dumps(m))


def one_line_error(exc_info, *names: str) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    for name in names:
        assert name in msg, (name, msg)
    return msg


# -- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("ids", ["int", "str", None])
def test_scores_round_trip_equals_the_h5_path(tmp_path, ids):
    sc = make_scores(ids)
    sc.save(tmp_path / "s.h5")
    sc.save(tmp_path / "s")
    a, b = load_scores(tmp_path / "s.h5"), load_scores(tmp_path / "s")
    for f in ("score", "cluster", "centroids", "centroid_distance", "order", "ids", "labels"):
        assert same_array(getattr(a, f), getattr(b, f)), f
    for f in ("method", "n_total", "source", "source_fingerprint", "params"):
        assert getattr(a, f) == getattr(b, f), f
    assert b.params == {"k": 3, "seed": 0, "inertia": 1.5, "x": None}
    m = manifest(tmp_path / "s")
    assert [(p["start"], p["stop"], p["rows"]) for p in m["parts"]] == [
        (0, 7, 7),
        (7, 14, 7),
        (14, 20, 6),
    ]
    expect = {
        "position": "int64",
        "score": "float64",
        "cluster": "int64",
        "centroid_distance": "float32",
        "label": "int64",
    }
    if ids:
        expect["id"] = "int64" if ids == "int" else "string"
    assert m["columns"] == expect
    assert sorted(os.listdir(tmp_path / "s")) == [
        "centroids.npy",
        "manifest.json",
        "order-00000.parquet",
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]


@pytest.mark.parametrize(
    "ids,counts,seed", [("int", True, 7), ("str", False, None), (None, True, 0)]
)
def test_selection_round_trip_equals_the_h5_path(tmp_path, ids, counts, seed):
    sel = make_selection(ids, counts, seed)
    sel.save(tmp_path / "sel.h5")
    sel.save(str(tmp_path / "sel") + "/")
    a, b = load_selection(tmp_path / "sel.h5"), load_selection(tmp_path / "sel")
    for f in ("indices", "ids", "counts"):
        assert same_array(getattr(a, f), getattr(b, f)), f
    for f in ("n_total", "pr", "method", "seed", "source_fingerprint", "params", "n_kept"):
        assert getattr(a, f) == getattr(b, f), f
    m = manifest(tmp_path / "sel")
    # the parts cover the same position ranges as the scores' parts; part 1 keeps nothing
    assert [(p["start"], p["stop"], p["rows"]) for p in m["parts"]] == [
        (0, 7, 4),
        (7, 14, 0),
        (14, 20, 2),
    ]
    assert (m["kind"], m["n_total"], m["n_rows"], m["n_kept"], m["pr"], m["seed"]) == (
        "selection",
        N,
        6,
        6,
        0.7,
        seed,
    )


def test_manifest_records_provenance_sizes_hashes_and_run_id(tmp_path):
    out = make_scores().save(tmp_path / "s", command=["prunekit", "score", "emb.h5"])
    m = manifest(out)
    assert (m["format"], m["version"], m["kind"], m["method"], m["n_total"], m["n_rows"]) == (
        "prunekit-parts",
        1,
        "scores",
        "kmeans",
        N,
        N,
    )
    assert m["command"] == ["prunekit", "score", "emb.h5"] and m["prunekit_version"]
    assert m["source_fingerprint"] == "f" * 32 and m["created"].endswith("+00:00")
    for entry in [*m["parts"], m["arrays"]["centroids"], *m["tables"]["order"]["parts"]]:
        data = (out / entry["file"]).read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["blake2b"] == hashlib.blake2b(data, digest_size=16).hexdigest()
    for i, p in enumerate(m["parts"]):
        meta = json.loads(pq.ParquetFile(out / p["file"]).schema_arrow.metadata[b"prunekit"])
        assert meta == {
            "format": "prunekit-parts",
            "version": 1,
            "kind": "scores",
            "run_id": m["run_id"],
            "part": i,
            "start": p["start"],
            "stop": p["stop"],
        }
    assert m["arrays"]["centroids"]["shape"] == [3, 5] and m["tables"]["order"]["rows"] == 4
    assert np.array_equal(
        np.load(out / "centroids.npy", allow_pickle=False), make_scores().centroids
    )


def test_same_content_gives_the_same_bytes_and_other_content_another_run_id(tmp_path):
    make_scores().save(tmp_path / "a")
    make_scores().save(tmp_path / "b")
    make_scores(params={"k": 4}).save(tmp_path / "c")
    for name in (
        "part-00000.parquet",
        "part-00002.parquet",
        "order-00000.parquet",
        "centroids.npy",
    ):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    ma, mb, mc = (manifest(tmp_path / x) for x in "abc")
    assert ma["run_id"] == mb["run_id"] != mc["run_id"]
    assert {k: v for k, v in ma.items() if k != "created"} == {
        k: v for k, v in mb.items() if k != "created"
    }


def test_save_writes_a_folder_only_for_folder_like_paths(tmp_path):
    (tmp_path / "existing").mkdir()
    assert ds.wants_dataset(tmp_path / "existing") and ds.wants_dataset("out/")
    assert ds.wants_dataset("scores") and not ds.wants_dataset("scores.h5")
    assert not ds.wants_dataset("x.hdf5") and not ds.wants_dataset("sel.bin")
    make_selection().save(tmp_path / "existing")  # an empty folder becomes the dataset
    assert load_selection(tmp_path / "existing").n_kept == 6
    make_selection().save(tmp_path / "sel.bin")
    assert (tmp_path / "sel.bin").is_file()


def test_empty_selection_and_zero_row_scores(tmp_path):
    sel = Selection(
        indices=np.array([], dtype=np.int64), n_total=0, pr=0.5, ids=np.array([], dtype=object)
    )
    sel.save(tmp_path / "e")
    back = load_selection(tmp_path / "e")
    assert back.n_kept == 0 and back.ids.dtype == object and back.ids.size == 0
    assert manifest(tmp_path / "e")["parts"][0]["rows"] == 0


# -- the worker / driver API ----------------------------------------------------------------


def worker_task(spec, item):
    """What a score worker does: compute its rows, write its part, report the record."""
    index, (a, b) = item
    sc = make_scores()
    return ds.write_part(
        spec, index, {"position": np.arange(a, b), "score": sc.score[a:b], "id": sc.ids[a:b]}, a, b
    )


def test_workers_write_parts_and_the_driver_finalises(tmp_path):
    from prunekit.runtime.engine import LocalEngine

    bounds = ds.part_bounds(N)
    with ds.PartWriter(tmp_path / "out", kind="scores", run_id="ab" * 16) as w:
        spec = pickle.loads(pickle.dumps(w.spec))  # what a Ray task receives
        infos = list(LocalEngine(workers=3).map(worker_task, list(enumerate(bounds)), spec))
        assert not (tmp_path / "out").exists()  # nothing under the final name before finalize
        (w.staging / ".prunekit-tmp.999999999.0123").write_bytes(b"a retried task's leftover")
        out = w.finalize(reversed(infos), n_total=N, attrs={"method": "m"}, params={})
    r = ds.PartsReader(out, kind="scores")
    cols = r.read_columns()
    assert np.array_equal(cols["position"], np.arange(N))
    assert same_array(cols["score"], make_scores().score) and same_array(
        cols["id"], make_scores().ids
    )
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left
    assert sorted(os.listdir(out)) == [
        "manifest.json",
        *(f"part-0000{i}.parquet" for i in range(3)),
    ]


def test_a_part_streamed_in_batches_equals_one_written_at_once(tmp_path):
    sc = make_scores()
    with ds.PartWriter(tmp_path / "a", kind="scores", run_id="cd" * 16) as w:
        with ds.PartFile(w.spec, 0, 0, N) as pf:
            for a, b in ((0, 5), (5, 5), (5, 20)):
                pf.write({"position": np.arange(a, b), "score": sc.score[a:b]})
            info = pf.close()
        w.finalize([info], n_total=N, attrs={}, params={})
    r = ds.PartsReader(tmp_path / "a")
    assert same_array(r.read_columns()["score"], sc.score)
    assert pq.ParquetFile(r.files()[0]).metadata.num_row_groups == 3


def test_writer_refuses_parts_that_do_not_fit(tmp_path):
    with ds.PartWriter(tmp_path / "a", kind="scores", run_id="cd" * 16) as w:
        with pytest.raises(PrunekitError, match="strictly ascending"):
            w.write_part(0, {"position": np.array([0, 2, 1]), "score": np.zeros(3)}, 0, 3)
        with pytest.raises(PrunekitError, match="every position of 0..3, got 2 rows"):
            w.write_part(0, {"position": np.array([0, 2]), "score": np.zeros(2)}, 0, 3)
        with pytest.raises(PrunekitError, match="holds columns"):
            w.write_part(0, {"position": np.arange(3), "count": np.ones(3)}, 0, 3)
        p0 = w.write_part(0, {"position": np.arange(3), "score": np.zeros(3)}, 0, 3)
        p2 = w.write_part(2, {"position": np.arange(5, 6), "score": np.zeros(1)}, 5, 6)
        with pytest.raises(PrunekitError, match=r"parts \[0, 2\] were written"):
            w.finalize([p0, p2], n_total=6, attrs={}, params={})
        with pytest.raises(PrunekitError, match="cover 0..3, not 0..6"):
            w.finalize([p0], n_total=6, attrs={}, params={})
        assert sorted(os.listdir(w.staging)) == [
            ".prunekit-staging",
            "part-00000.parquet",
            "part-00002.parquet",
        ]  # failed parts left nothing
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_nothing_and_keeps_the_earlier_dataset(tmp_path, monkeypatch):
    out = tmp_path / "new" / "s"
    monkeypatch.setattr(
        writer_mod, "stamp", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk"))
    )
    with pytest.raises(RuntimeError, match="disk"):
        make_scores().save(out)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor the parent it created
    monkeypatch.undo()
    make_scores().save(tmp_path / "s")
    before = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()}
    monkeypatch.setattr(
        writer_mod, "stamp", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk"))
    )
    with pytest.raises(RuntimeError):
        make_scores(params={"k": 9}).save(tmp_path / "s")
    assert {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["s"]
    monkeypatch.undo()
    make_scores(params={"k": 9}).save(tmp_path / "s")  # a complete write replaces it whole
    assert load_scores(tmp_path / "s").params == {"k": 9}
    assert [p.name for p in tmp_path.iterdir()] == ["s"]


def test_outputs_never_replace_inputs_files_links_or_other_folders(tmp_path):
    src = tmp_path / "emb"
    src.mkdir()
    np.save(src / "x_0.npy", np.zeros((N, 2), np.float32))
    with pytest.raises(PrunekitError, match="lies inside"):
        make_scores(source=str(src)).save(src / "scores")  # would be read as a shard next time
    s = make_scores().save(tmp_path / "scores")
    sel = make_selection()
    sel.params["scores"] = str(s)
    with pytest.raises(PrunekitError, match="overlaps the command's input"):
        sel.save(s)  # a selection over the scores it was made from
    (tmp_path / "file").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    os.symlink(s, tmp_path / "link")
    for target, msg in (
        ("file", "is a file"),
        ("other", "holds other files"),
        ("link", "symbolic link"),
    ):
        with pytest.raises(PrunekitError, match=msg):
            make_scores().save(tmp_path / target)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb", "file", "link", "other", "scores"]


def test_stale_staging_folders_of_dead_processes_are_removed(tmp_path):
    dead = tmp_path / ".prunekit-tmp.999999999.aaaa"
    dead.mkdir()
    (dead / ".prunekit-staging").write_text(
        json.dumps({"host": writer_mod.socket.gethostname(), "pid": 999999999})
    )
    other_host = tmp_path / ".prunekit-tmp.999999999.bbbb"
    other_host.mkdir()
    (other_host / ".prunekit-staging").write_text(
        json.dumps({"host": "elsewhere", "pid": 999999999})
    )
    unmarked = tmp_path / ".prunekit-tmp.999999999.cccc"
    unmarked.mkdir()
    make_selection().save(tmp_path / "sel")
    assert sorted(p.name for p in tmp_path.iterdir()) == [other_host.name, unmarked.name, "sel"]


# -- the reader: bad cases --------------------------------------------------------------------


@pytest.fixture
def scores_dir(tmp_path):
    return make_scores().save(tmp_path / "s")


def test_missing_part(scores_dir):
    (scores_dir / "part-00001.parquet").unlink()
    with pytest.raises(PrunekitError) as e:
        load_scores(scores_dir)
    one_line_error(e, "part-00001.parquet is missing", "rerun the command that wrote")


def test_missing_manifest_and_not_a_folder(scores_dir, tmp_path):
    (scores_dir / "manifest.json").unlink()
    with pytest.raises(PrunekitError) as e:
        load_scores(scores_dir)
    one_line_error(e, str(scores_dir), "manifest.json is missing")
    with pytest.raises(PrunekitError, match="is not a folder"):
        ds.PartsReader(tmp_path / "nothing")


def test_corrupt_part_same_size_is_caught_by_the_hash(scores_dir, monkeypatch):
    f = scores_dir / "part-00001.parquet"
    data = bytearray(f.read_bytes())
    chunk = pq.ParquetFile(f).metadata.row_group(0).column(2)  # 'score'
    data[chunk.data_page_offset + chunk.total_compressed_size - 1] ^= 0xFF  # in its values
    f.write_bytes(bytes(data))
    with pytest.raises(PrunekitError) as e:
        load_scores(scores_dir)
    one_line_error(e, "part-00001.parquet is corrupt", "BLAKE2b")
    # unhashed, the Parquet page checksum still refuses the damaged page
    with pytest.raises(PrunekitError) as e:
        list(ds.PartsReader(scores_dir).iter_batches(verify=False))
    one_line_error(e, "part-00001.parquet is corrupt: cannot decode", "rerun the command")
    # parts above HASH_ALWAYS_BYTES are hashed only when asked
    monkeypatch.setattr(reader_mod, "HASH_ALWAYS_BYTES", 100)
    with pytest.raises(PrunekitError, match="corrupt: cannot decode"):
        list(ds.PartsReader(scores_dir).iter_batches())
    with pytest.raises(PrunekitError, match="corrupt: its BLAKE2b"):
        list(ds.PartsReader(scores_dir).iter_batches(verify=True))


def test_truncated_part(scores_dir):
    f = scores_dir / "part-00002.parquet"
    f.write_bytes(f.read_bytes()[:-9])
    with pytest.raises(PrunekitError) as e:
        load_scores(scores_dir)
    one_line_error(e, "part-00002.parquet is corrupt")


def test_part_of_another_run(tmp_path, scores_dir):
    other = make_scores(params={"k": 4}).save(tmp_path / "other")
    shutil.copy(other / "part-00001.parquet", scores_dir / "part-00001.parquet")
    with pytest.raises(PrunekitError) as e:
        load_scores(scores_dir)
    one_line_error(e, "part-00001.parquet belongs to another run", manifest(other)["run_id"])


def test_stray_part_not_in_the_manifest(tmp_path, scores_dir):
    other = make_scores().save(tmp_path / "other")
    shutil.copy(other / "part-00002.parquet", scores_dir / "part-00003.parquet")
    with pytest.raises(PrunekitError) as e:
        load_scores(scores_dir)
    one_line_error(e, "part-00003.parquet is not listed in manifest.json", "remove it")


def test_manifest_that_disagrees_with_its_parts(tmp_path):
    sel = make_selection().save(tmp_path / "sel")
    m = manifest(sel)
    m["parts"][0]["rows"] -= 1
    m["n_rows"] -= 1
    m["n_kept"] -= 1
    write_manifest(sel, m)
    with pytest.raises(PrunekitError) as e:
        load_selection(sel)
    one_line_error(
        e, "part-00000.parquet disagrees with manifest.json", "holds 4 rows", "manifest.json says 3"
    )
    m = manifest(make_scores().save(tmp_path / "s"))
    del m["columns"]["label"]
    write_manifest(tmp_path / "s", m)
    with pytest.raises(
        PrunekitError, match="part-00000.parquet disagrees with manifest.json: its columns"
    ):
        load_scores(tmp_path / "s")


@pytest.mark.parametrize(
    "edit,expect",
    [
        (lambda m: m["parts"][1].update(start=8), "parts[1] covers positions 8..14"),
        (lambda m: m.update(n_total=21), "n_total=21"),
        (
            lambda m: m["parts"][0].update(file="../../etc/passwd"),
            "must name file part-00000.parquet",
        ),
        (
            lambda m: m["arrays"]["centroids"].update(file="/etc/passwd"),
            "must name file centroids.npy",
        ),
        (lambda m: m.update(version=2), "upgrade prunekit"),
        (lambda m: m.update(format="x"), "not a prunekit-parts manifest"),
        (lambda m: m.update(kind="nope"), "'kind' must be one of"),
        (lambda m: m["parts"][2].update(blake2b="zz"), "'blake2b' must be 32 hex digits"),
        (lambda m: m["columns"].update(score="string"), "'columns' must map"),
        (lambda m: m.update(params="[1]"), "'params' must be a JSON object"),
    ],
)
def test_damaged_manifests_are_refused_before_any_part_is_read(scores_dir, edit, expect):
    m = manifest(scores_dir)
    edit(m)
    write_manifest(scores_dir, m)
    with pytest.raises(PrunekitError) as e:
        load_scores(scores_dir)
    one_line_error(e, "manifest.json", expect)


def test_manifest_that_is_not_json_and_a_corrupt_side_array(scores_dir):
    np.save(scores_dir / "centroids.npy", np.zeros((3, 5), np.float32))
    with pytest.raises(PrunekitError, match="centroids.npy is corrupt: its BLAKE2b"):
        load_scores(scores_dir)
    (scores_dir / "manifest.json").write_text("{not json")
    with pytest.raises(PrunekitError) as e:
        load_scores(scores_dir)
    one_line_error(e, "manifest.json is not valid JSON")


def test_kind_mismatch_and_missing_pyarrow(tmp_path, scores_dir, monkeypatch):
    sel = make_selection().save(tmp_path / "sel")
    with pytest.raises(PrunekitError, match="holds a partitioned selection, not scores"):
        load_scores(sel)
    with pytest.raises(PrunekitError, match="holds a partitioned scores, not selection"):
        load_selection(scores_dir)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(PrunekitError) as e:
        load_scores(scores_dir)
    one_line_error(e, 'pip install "prunekit[parquet]"')
    with pytest.raises(PrunekitError, match=r'pip install "prunekit\[parquet\]"'):
        make_scores().save(tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_select_from_a_scores_folder_equals_select_from_the_h5(tmp_path, scores_dir):
    make_scores().save(tmp_path / "s.h5")
    a = select(load_scores(scores_dir), 0.5, balance="clusters", seed=3, fill="random")
    b = select(load_scores(tmp_path / "s.h5"), 0.5, balance="clusters", seed=3, fill="random")
    assert np.array_equal(a.indices, b.indices) and np.array_equal(a.ids, b.ids)
    a.save(tmp_path / "sel")
    assert np.array_equal(load_selection(tmp_path / "sel").indices, b.indices)


# -- streaming ------------------------------------------------------------------------------


def test_streaming_reads_one_part_at_a_time_in_bounded_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_mod, "ROW_GROUP_ROWS", 4096)
    monkeypatch.setattr(reader_mod, "ROW_GROUP_ROWS", 4096)
    monkeypatch.setattr(ds, "PART_ROWS", 100_000)
    n = 400_000
    rng = np.random.default_rng(1)
    sc = Scores(
        score=rng.random(n),
        method="m",
        n_total=n,
        cluster=rng.integers(0, 9, n),
        ids=np.arange(n, dtype=np.int64) * 7,
    )
    out = sc.save(tmp_path / "big")  # 4 parts of 100,000 rows, 32 bytes a row: 12.8 MB
    r = ds.PartsReader(out)
    opened = []
    real_open = ds.PartsReader._open_part
    monkeypatch.setattr(
        ds.PartsReader, "_open_part", lambda self, i, *a: opened.append(i) or real_open(self, i, *a)
    )
    base = pa.total_allocated_bytes()
    peak, sizes, last = 0, [], None
    it = r.iter_batches(batch_rows=1000, verify=True)
    first = next(it)
    assert opened == [0] and first["position"].size == 1000
    for batch in it:
        sizes.append(batch["position"].size)
        peak = max(peak, pa.total_allocated_bytes() - base)
        last = batch["score"][-1]  # a streaming consumer keeps only what it needs
    assert opened == [0, 1, 2, 3]
    # per part: 24 row groups of 4096 rows (5 batches each) and one of 1696 (2 batches)
    assert len(sizes) + 1 == 4 * (24 * 5 + 2) and max(sizes) == 1000 and sum(sizes) + 1000 == n
    assert peak < 1_000_000, peak  # a row group (4096 x 32 B) or so, never a 3.2 MB part
    assert last == sc.score[-1]
    groups = [pq.ParquetFile(f).metadata.num_row_groups for f in r.files()]
    assert groups == [25, 25, 25, 25]  # ceil(100,000 / 4096)


# -- reading the parts with other tools (docs/formats.md) -------------------------------------


def docs_section() -> str:
    """docs/formats.md's "Partitioned outputs" section."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "formats.md").read_text()
    return text.split("## Partitioned outputs", 1)[1].split("\n## ", 1)[0]


def docs_blocks() -> dict[str, str]:
    """The Python examples of docs/formats.md's "Partitioned outputs", by their first comment."""
    blocks = re.findall(r"```python\n(.*?)```", docs_section(), re.S)
    return {b.splitlines()[0].lstrip("# ").strip(): b for b in blocks}


def test_docs_examples_join_the_parts_with_user_metadata_by_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_scores("str").save("scores")
    make_selection("str").save("selection")
    pq.write_table(
        pa.table(
            {
                "id": [f"img/{i:03d}-é.png" for i in range(N - 1, -1, -1)],
                "caption": [f"caption {i}" for i in range(N - 1, -1, -1)],
            }
        ),
        "metadata.parquet",
    )
    blocks = docs_blocks()
    assert sorted(blocks) == ["pandas", "pyarrow"]
    ns: dict = {}
    exec(compile(blocks["pyarrow"], "formats.md", "exec"), ns)  # noqa: S102 - our own docs
    assert ns["joined"].column("caption").to_pylist() == [
        f"caption {i}" for i in (1, 4, 5, 6, 15, 19)
    ]
    assert ns["joined"].column("count").to_pylist() == [1, 2, 1, 3, 1, 1]
    pytest.importorskip("pandas")
    ns = {}
    exec(compile(blocks["pandas"], "formats.md", "exec"), ns)  # noqa: S102 - our own docs
    order = np.argsort(-np.nan_to_num(make_scores().score, nan=-np.inf), kind="stable")[:3]
    assert ns["top"]["caption"].tolist() == [f"caption {i}" for i in order]
    duckdb = pytest.importorskip("duckdb")
    sql = re.search(r"```sql\n-- DuckDB\n(.*?)```", docs_section(), re.S).group(1)
    rows = duckdb.connect().execute(sql).fetchall()
    score = make_scores().score  # NaN at the unscored rows 2 and 15, -inf at row 9
    scored = np.flatnonzero(~np.isnan(score))
    assert [r[2] for r in rows] == [f"caption {i}" for i in scored[np.argsort(-score[scored])]]
    assert len(rows) == N - 2 and rows[-1][1] == -np.inf


def test_a_range_of_a_part_reads_only_the_row_groups_that_meet_it(tmp_path, monkeypatch):
    """iter_part_range skips row groups by the position statistics: a range read returns
    every row of the range (as a full read masked to it does) and decodes only the groups
    that meet it, so reading a part range by range costs the part once."""
    monkeypatch.setattr(writer_mod, "ROW_GROUP_ROWS", 10)
    monkeypatch.setattr(ds, "PART_ROWS", 100)
    n = 250
    score = np.random.default_rng(4).random(n)
    score[[5, 37, 38, 120]] = np.nan  # a part holds every position of its range
    out = Scores(score=score, method="m", n_total=n, cluster=np.arange(n) % 7).save(tmp_path / "s")
    r = ds.PartsReader(out)
    decoded = []
    real = pq.ParquetFile.iter_batches
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", lambda self, *a, **kw: (
        decoded.append(tuple(kw["row_groups"])) or real(self, *a, **kw)))
    full = r.read_columns(["cluster"])
    for start, stop in ((0, 100), (33, 57), (40, 41), (95, 100), (130, 131), (101, 199)):
        part = start // 100
        decoded.clear()
        got = [b for b in r.iter_part_range(part, start, stop, ["cluster"])]
        pos = np.concatenate([b["position"] for b in got])
        inside = (pos >= start) & (pos < stop)
        want = (full["position"] >= start) & (full["position"] < stop)
        assert np.array_equal(pos[inside], full["position"][want])
        assert np.array_equal(np.concatenate([b["cluster"] for b in got])[inside],
                              full["cluster"][want])
        # row group g of the part holds its positions 10 g .. 10 g + 9
        first = part * 100
        meets = [(g,) for g in range(10) if first + 10 * g < stop and first + 10 * g + 10 > start]
        assert decoded == meets
    decoded.clear()
    assert sum(b["position"].size for b in r.iter_part(1, ["cluster"])) == 100
    assert len(decoded) == 10  # the whole part: every group
