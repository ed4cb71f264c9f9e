"""Sharded inputs: directories and globs of .npy/.h5/.parquet read as one row space."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import prunekit as pk
from prunekit.cli import main
from prunekit.errors import PrunekitError
from prunekit.io import scan
from prunekit.io.source import ChunkRef, natural_key, open_source
from prunekit.runtime.budget import parse_size

pa = pytest.importorskip("pyarrow")  # the [parquet] extra
pq = pytest.importorskip("pyarrow.parquet")


def x(n=1000, d=8, seed=0, dtype=np.float16):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(dtype)


SPLITS = [(0, 300), (300, 700), (700, 1000)]


def npy_shards(d, data, name="emb_{}.npy", splits=SPLITS):
    d.mkdir(parents=True, exist_ok=True)
    for i, (a, b) in enumerate(splits):
        np.save(d / name.format(i), data[a:b])
    return d


def parquet_file(path, data, ids=None, key="embeddings", id_key="id", fixed=True, rows_per_group=128):
    flat = pa.array(data.reshape(-1))
    if fixed:
        col = pa.FixedSizeListArray.from_arrays(flat, data.shape[1])
    else:
        col = pa.ListArray.from_arrays(pa.array(np.arange(0, data.size + 1, data.shape[1], dtype=np.int32)), flat)
    cols = {key: col}
    if ids is not None:
        cols[id_key] = pa.array(ids)
    pq.write_table(pa.table(cols), path, row_group_size=rows_per_group)
    return path


def old_fingerprint(data):
    """The single-file fingerprint every earlier version computed."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{data.shape[0]}x{data.shape[1]}".encode())
    h.update(np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


def test_directory_of_npy_shards_is_one_row_space(tmp_path):
    data = x()
    src = open_source(npy_shards(tmp_path / "d", data))
    assert (src.n_total, src.dim, src.dtype) == (1000, 8, np.float16)
    assert [(s.n_rows, s.start) for s in src.shards] == [(300, 0), (400, 300), (300, 700)]
    assert np.array_equal(src.read_range(0, 1000), data)
    assert np.array_equal(src.read_range(250, 720), data[250:720])  # spans three shards


def test_chunks_come_from_shards_and_chunk_size_only(tmp_path):
    src = open_source(npy_shards(tmp_path / "d", x()))
    refs = src.chunks(chunk_rows=256)
    assert refs == [
        ChunkRef(0, 0, 0, 256, 0), ChunkRef(1, 0, 256, 300, 256),
        ChunkRef(2, 1, 0, 256, 300), ChunkRef(3, 1, 256, 400, 556),
        ChunkRef(4, 2, 0, 256, 700), ChunkRef(5, 2, 256, 300, 956),
    ]
    data = x()
    for r in refs:
        block = src.read(r)
        assert block.dtype == np.float16  # the file's dtype, not float32
        assert np.array_equal(block, data[r.global_start : r.global_stop])


def test_read_rows_gathers_across_shards_and_chunks(tmp_path):
    data = x()
    src = open_source(npy_shards(tmp_path / "d", data))
    pos = np.array([0, 1, 299, 300, 301, 555, 556, 699, 700, 999])
    assert np.array_equal(src.read_rows(pos, chunk_rows=128), data[pos])
    assert src.read_rows(np.array([], dtype=np.int64)).shape == (0, 8)
    with pytest.raises(IndexError):
        src.read_rows(np.array([5, 3]))


def test_source_pickles_without_open_handles(tmp_path):
    data = x()
    src = open_source(npy_shards(tmp_path / "d", data))
    src.read(src.chunks()[0])  # opens shard 0 here
    blob = pickle.dumps(src)
    assert len(blob) < 2000  # paths and metadata only
    back = pickle.loads(blob)
    assert np.array_equal(back.read_range(0, 1000), data)


def test_shards_are_read_in_natural_order(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    parts = {2: x(5, seed=2), 10: x(7, seed=10), 1: x(3, seed=1)}
    for i, part in parts.items():
        np.save(d / f"part_{i}.npy", part)
    src = open_source(tmp_path / "d" / "part_*.npy")  # a glob: no numbering check
    assert [s.name for s in src.shards] == ["part_1.npy", "part_2.npy", "part_10.npy"]
    assert np.array_equal(src.read_range(0, 15), np.concatenate([parts[1], parts[2], parts[10]]))
    assert sorted(["a10", "a9", "a100"], key=natural_key) == ["a9", "a10", "a100"]


def test_parquet_fixed_and_variable_lists_with_ids(tmp_path):
    data = x(500)
    ids = [f"img{i:04d}" for i in range(500)]
    fixed = pk.load_embeddings(parquet_file(tmp_path / "f.parquet", data, ids))
    var = pk.load_embeddings(parquet_file(tmp_path / "v.parquet", data, ids, fixed=False))
    for emb in (fixed, var):
        assert emb.dtype == np.float16 and emb.key == "embeddings"
        assert np.array_equal(emb.array(np.float16), data)
        assert emb.ids.tolist() == ids
        assert emb.fingerprint == old_fingerprint(data)  # same data as .npy/.h5: same fingerprint


def test_parquet_named_columns_and_int_ids(tmp_path):
    data = x(200)
    path = parquet_file(tmp_path / "c.parquet", data, np.arange(200) * 3, key="vec", id_key="uid")
    emb = pk.load_embeddings(path, key="vec", id_key="uid")
    assert emb.ids.dtype == np.int64 and emb.ids[:3].tolist() == [0, 3, 6]
    only_list = pk.load_embeddings(path, id_key="uid")  # the one list column is the default
    assert only_list.key == "vec"
    with pytest.raises(PrunekitError, match="no id column 'nope'.*--id-key"):
        pk.load_embeddings(path, key="vec", id_key="nope")
    pq.write_table(pa.table({"a": pa.array([1, 2])}), tmp_path / "bad.parquet")
    with pytest.raises(PrunekitError, match="no embedding column 'embeddings'.*columns: a.*--key"):
        pk.load_embeddings(tmp_path / "bad.parquet")


def test_parquet_rows_of_unequal_width_are_named(tmp_path):
    col = pa.array([[1.0, 2.0], [3.0], [4.0, 5.0]], type=pa.list_(pa.float32()))
    pq.write_table(pa.table({"embeddings": col}), tmp_path / "r.parquet")
    with pytest.raises(PrunekitError, match="r.parquet: an embedding has 1 values where 2"):
        pk.load_embeddings(tmp_path / "r.parquet")


def test_clip_retrieval_layout_takes_ids_from_metadata(tmp_path):
    data = x()
    root = tmp_path / "clip"
    npy_shards(root / "img_emb", data, name="img_emb_{}.npy")
    (root / "metadata").mkdir()
    for i, (a, b) in enumerate(SPLITS):
        pq.write_table(pa.table({"image_path": [f"im/{j}.jpg" for j in range(a, b)],
                                 "caption": ["c"] * (b - a)}), root / "metadata" / f"metadata_{i}.parquet")
    emb = pk.load_embeddings(root)
    assert emb.n_total == 1000 and emb.ids[[0, 299, 300, 999]].tolist() == [
        "im/0.jpg", "im/299.jpg", "im/300.jpg", "im/999.jpg"]
    (root / "metadata" / "metadata_1.parquet").unlink()
    with pytest.raises(PrunekitError, match="img_emb_1.npy has no metadata_N.parquet"):
        pk.load_embeddings(root)


def test_h5_shards_concatenate_ids_and_labels(tmp_path):
    data = x(10, 4, dtype=np.float32)
    for i, (a, b) in enumerate([(0, 4), (4, 10)]):
        with h5py.File(tmp_path / f"s{i}.h5", "w") as f:
            f["embeddings"] = data[a:b]
            f["ids"] = np.array([f"r{j}" for j in range(a, b)], dtype="S")
            f["labels"] = np.arange(a, b) % 3
    emb = pk.load_embeddings(tmp_path)
    assert emb.ids.tolist() == [f"r{j}" for j in range(10)]
    assert emb.labels.tolist() == [j % 3 for j in range(10)]
    assert np.array_equal(emb.array(), data)


@pytest.mark.parametrize("kind", ["str", "int"])
def test_a_range_of_ids_and_labels_reads_slices_of_hdf5_shards(tmp_path, monkeypatch, kind):
    """Workers read a part's ids and labels as slices of HDF5 datasets (never a shard's whole
    array); other formats cut them from the whole array: the same values either way."""
    from prunekit.io.formats.hdf5 import HDF5Format
    from prunekit.io.formats.npz import NpzFormat

    data = x(30, 4, dtype=np.float32)
    ids = np.array([f"r{j}" for j in range(30)], dtype="S") if kind == "str" else \
        np.arange(30, dtype=np.int64) * 7
    (tmp_path / "h").mkdir()
    (tmp_path / "z").mkdir()
    for i, (a, b) in enumerate([(0, 12), (12, 20), (20, 30)]):
        with h5py.File(tmp_path / "h" / f"s{i}.h5", "w") as f:
            f["embeddings"], f["ids"] = data[a:b], ids[a:b]
            f["labels"] = (np.arange(a, b) % 3).astype(np.int32)
        np.savez(tmp_path / "z" / f"s{i}.npz", embeddings=data[a:b], ids=ids[a:b],
                 labels=np.arange(a, b) % 3)
    want_ids = [v.decode() if kind == "str" else int(v) for v in ids]
    # Too small a budget to keep ids and labels after the load: they are checked in hash
    # buckets, some of them empty in a shard.
    with pk.runtime(memory=1 << 10):
        h, z = pk.load_embeddings(tmp_path / "h"), pk.load_embeddings(tmp_path / "z")

    def whole(*a, **k):
        raise AssertionError("an HDF5 shard's whole side array was read")

    monkeypatch.setattr(HDF5Format, "ids", whole)
    monkeypatch.setattr(HDF5Format, "labels", whole)
    sliced = []
    real = NpzFormat.ids
    monkeypatch.setattr(NpzFormat, "ids", lambda self, s: sliced.append(s.path) or real(self, s))
    for emb in (h, z):
        for a, b in ((0, 30), (3, 9), (10, 25), (12, 20), (29, 30), (5, 5)):
            got = emb.side_for("ids", a, b)
            assert got.tolist() == want_ids[a:b]
            assert got.dtype == (object if kind == "str" else np.int64)
            lab = emb.side_for("labels", a, b)
            assert lab.dtype == np.int64 and lab.tolist() == [j % 3 for j in range(a, b)]
    assert len(sliced) == 10  # npz: a whole read per shard a range meets (5:5: the first)


def test_fingerprints_single_file_unchanged_sharded_from_shards(tmp_path):
    data = x()
    np.save(tmp_path / "one.npy", data)
    assert pk.load_embeddings(tmp_path / "one.npy").fingerprint == old_fingerprint(data)
    emb = pk.load_embeddings(npy_shards(tmp_path / "d", data))
    h = hashlib.blake2b(digest_size=16)
    h.update(b"1000x8:3")
    for a, b in SPLITS:
        h.update(f"{b - a}:{old_fingerprint(data[a:b])};".encode())
    assert emb.fingerprint == h.hexdigest()
    pq_dir = tmp_path / "p"
    pq_dir.mkdir()
    for i, (a, b) in enumerate(SPLITS):
        parquet_file(pq_dir / f"part-{i}.parquet", data[a:b])
    assert pk.load_embeddings(pq_dir).fingerprint == emb.fingerprint  # same shards, any format
    changed = data.copy()
    changed[999, 0] += 1
    np.save(tmp_path / "d" / "emb_2.npy", changed[700:])
    assert pk.load_embeddings(tmp_path / "d").fingerprint != emb.fingerprint


def test_scan_is_cached_beside_shards_and_invalidated_by_changes(tmp_path, monkeypatch):
    data = x()
    d = npy_shards(tmp_path / "d", data)
    first = pk.load_embeddings(d)
    cache = json.loads((d / scan.CACHE_NAME).read_text())
    assert len(cache["entries"]) == 3
    calls = []
    real = scan.scan_shard
    monkeypatch.setattr(scan, "scan_shard", lambda src, i, **kw: calls.append(i) or real(src, i, **kw))
    again = pk.load_embeddings(d)
    assert calls == [] and again.fingerprint == first.fingerprint  # nothing re-read
    assert np.allclose(again.norms, np.linalg.norm(data.astype(np.float32), axis=1), rtol=1e-6)
    st = os.stat(d / "emb_1.npy")
    os.utime(d / "emb_1.npy", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    pk.load_embeddings(d)
    assert calls == [1]  # only the touched shard


def test_cache_goes_to_xdg_when_data_dir_is_not_writable(tmp_path, monkeypatch):
    d = npy_shards(tmp_path / "d", x())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    real = scan._write_atomic
    # A read-only data directory (chmod does not stop root, so refuse the write here).
    monkeypatch.setattr(scan, "_write_atomic", lambda p, t: p.parent != d.resolve() and real(p, t))
    first = pk.load_embeddings(d)
    assert not (d / scan.CACHE_NAME).exists()
    saved = list((tmp_path / "xdg" / "prunekit").glob("*.json"))
    assert len(saved) == 1 and len(json.loads(saved[0].read_text())["entries"]) == 3
    monkeypatch.setattr(scan, "scan_shard", lambda *a, **k: pytest.fail("re-read a cached shard"))
    assert pk.load_embeddings(d).fingerprint == first.fingerprint


@pytest.mark.parametrize("make, needle", [
    (lambda d: np.save(d / "emb_2.npy", x(5, d=9)), "emb_2.npy holds 9-dimensional float16 rows but"),
    (lambda d: np.save(d / "emb_2.npy", x(5, dtype=np.float32)), "emb_2.npy holds 8-dimensional float32"),
    (lambda d: np.save(d / "emb_2.npy", np.zeros((0, 8), np.float16)), "shard"),
    (lambda d: (d / "emb_1.npy").unlink(), "missing shard(s) emb_1.npy"),
])
def test_inconsistent_shards_are_named(tmp_path, make, needle):
    d = npy_shards(tmp_path / "d", x())
    make(d)
    with pytest.raises(PrunekitError, match=None) as err:
        pk.load_embeddings(d)
    assert needle in str(err.value)


def test_empty_shard_and_empty_inputs(tmp_path):
    d = npy_shards(tmp_path / "d", x())
    np.save(d / "emb_1.npy", np.zeros((0, 8), np.float16))
    with pytest.raises(PrunekitError, match="emb_1.npy"):
        pk.load_embeddings(d)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrunekitError, match="holds no embedding shards"):
        pk.load_embeddings(tmp_path / "empty")
    with pytest.raises(PrunekitError, match="no files match the pattern"):
        pk.load_embeddings(tmp_path / "nothing_*.npy")


def test_nonfinite_rows_are_global_positions(tmp_path):
    data = x()
    data[[5, 650, 998], 1] = np.nan
    d = npy_shards(tmp_path / "d", data)
    with pytest.raises(PrunekitError, match=r"3 rows with NaN/inf \(rows 5, 650, 998\)"):
        pk.load_embeddings(d)
    emb = pk.load_embeddings(d, drop_nonfinite=True)
    assert emb.n == 997 and np.array_equal(emb.array(np.float16), np.delete(data, [5, 650, 998], 0))


def test_missing_pyarrow_names_the_extra(tmp_path, monkeypatch):
    path = parquet_file(tmp_path / "f.parquet", x(10))
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(PrunekitError, match=r'pip install "prunekit\[parquet\]"'):
        pk.load_embeddings(path)


def test_array_refuses_beyond_the_memory_budget(tmp_path):
    emb = pk.load_embeddings(npy_shards(tmp_path / "d", x()))
    with pk.runtime(memory="32K"):  # 1000 x 8 float32 = 32000 bytes fits; float64 does not
        assert emb.array().shape == (1000, 8)
        with pytest.raises(PrunekitError, match=r"needs 62\.5 KiB but the memory budget is 32\.0 KiB.*--memory"):
            emb.array(np.float64)


def test_parse_size():
    assert parse_size("4G") == 4 << 30
    assert parse_size("512m") == 512 << 20
    assert parse_size("1.5GiB") == 3 << 29
    assert parse_size("2e3") == 2000
    for bad in ("lots", "-1G", "0"):
        with pytest.raises(PrunekitError, match="--memory"):
            parse_size(bad)


def test_cli_info_reports_each_shard_and_score_reads_a_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = x()
    data[650, 0] = np.inf
    npy_shards(tmp_path / "d", data)
    res = CliRunner().invoke(main, ["info", "d", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["shape"] == [1000, 8] and info["n_nonfinite"] == 1
    assert [(s["rows"], s["start"], s["n_nonfinite"]) for s in info["shards"]] == [
        (300, 0, 0), (400, 300, 1), (300, 700, 0)]
    want = np.linalg.norm(data[:300].astype(np.float32), axis=1).max()
    assert info["shards"][0]["norms"]["max"] == pytest.approx(float(want), rel=1e-6)
    res = CliRunner().invoke(main, ["info", "d"])
    assert "shards: 3" in res.output and "[1] emb_1.npy: 400 rows from 300, NaN/inf 1" in res.output
    res = CliRunner().invoke(main, ["score", "d", "-m", "random", "--drop-nonfinite", "-o", "s.h5"])
    assert res.exit_code == 0, res.output
    sc = pk.load_scores("s.h5")
    assert sc.n_total == 1000 and np.isnan(sc.score[650]) and np.isfinite(np.delete(sc.score, 650)).all()
    assert sc.source_fingerprint == pk.load_embeddings("d", drop_nonfinite=True).fingerprint
    res = CliRunner().invoke(main, ["score", "d", "-m", "random", "--memory", "lots"])
    assert res.exit_code == 2 and "--memory 'lots' is not a size" in res.output


def test_huge_rows_are_refused_also_from_the_cache(tmp_path):
    data = x(dtype=np.float32)
    data[650] *= 1e16
    d = npy_shards(tmp_path / "d", data)
    for _ in range(2):  # the second load takes the scan from the cache
        with pytest.raises(PrunekitError, match=r"1 rows with a norm above 1e\+15 \(rows 650\)"):
            pk.load_embeddings(d)
    assert (d / scan.CACHE_NAME).exists()


def test_parquet_row_groups_are_streamed_in_small_batches(tmp_path, monkeypatch):
    from prunekit.io import source

    data = x(3000)
    path = parquet_file(tmp_path / "one-group.parquet", data, rows_per_group=3000)
    monkeypatch.setattr(source._ParquetReader, "BATCH_ROWS", 64)
    monkeypatch.setattr(source._ParquetReader, "KEEP_BYTES", 400 * 8 * 2)  # 400 rows
    restarts = []
    real = source._ParquetReader._restart
    monkeypatch.setattr(source._ParquetReader, "_restart",
                        lambda self, g: restarts.append(g) or real(self, g))
    src = open_source(path)
    refs = src.chunks(chunk_rows=200)
    order = [1, 0, 2, 3, 5, 4] + list(range(6, len(refs)))  # parallel tasks: slightly out of order
    for i in order:
        assert np.array_equal(src.read(refs[i]), data[refs[i].global_start : refs[i].global_stop])
    assert restarts == [0]  # one pass over the row group: the early chunks were still kept
    assert np.array_equal(src.read(refs[0]), data[:200]) and restarts == [0, 0]  # long gone
    pos = np.array([5, 700, 701, 2999])
    assert np.array_equal(src.read_rows(pos, chunk_rows=200), data[pos])
    reader = src._reader(0)
    assert sum(b.shape[0] for _, b in reader.recent) < 400 + 64  # what one reader holds


def test_many_shards_read_from_many_threads(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from prunekit.io import source

    data = x(2000)
    d = npy_shards(tmp_path / "d", data, splits=[(a, a + 100) for a in range(0, 2000, 100)])
    src = open_source(d)
    refs = src.chunks(chunk_rows=30) * 3  # 20 shards > OPEN_HANDLES: readers get evicted
    assert len(src.shards) > source.OPEN_HANDLES
    with ThreadPoolExecutor(8) as pool:
        blocks = list(pool.map(src.read, refs))
    for r, b in zip(refs, blocks, strict=True):
        assert np.array_equal(b, data[r.global_start : r.global_stop])
    assert len(src._handles) <= source.OPEN_HANDLES


def test_outputs_are_never_written_into_a_sharded_input(tmp_path):
    """The next read of the folder would take the output for a shard."""
    from prunekit.cli import main

    shards = tmp_path / "shards"
    shards.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        np.save(shards / f"part_{i}.npy", rng.normal(size=(10, 3)).astype(np.float32))
    runner = CliRunner()
    for emb in (str(shards), str(shards / "part_*.npy")):
        res = runner.invoke(main, ["score", emb, "-m", "random", "-o", str(shards / "s.h5")])
        assert res.exit_code == 2 and "lies inside" in res.output, res.output
        assert sorted(p.name for p in shards.iterdir()) == ["part_0.npy", "part_1.npy"]
    res = runner.invoke(main, ["score", str(shards), "-m", "random", "-o", str(tmp_path / "s.h5")])
    assert res.exit_code == 0, res.output
