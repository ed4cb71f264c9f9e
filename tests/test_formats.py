"""The format registry: sniffing by content, each format's write/describe/open/ids round
trip, unknown files, a format added from outside, and sources that read the same rows from
any working directory (shard paths stored absolute)."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from prunekit.errors import PrunekitError
from prunekit.io import formats
from prunekit.io.formats import (
    Description,
    Format,
    Shard,
    format_for,
    format_named,
    format_of_name,
    register_format,
    unregister_format,
)
from prunekit.io.source import open_source

pytest.importorskip("pyarrow")  # the [parquet] extra

ROWS = (np.arange(21, dtype=np.float32).reshape(7, 3) - 10) / 4
STR_IDS = np.array(["a", "b c", "d", "é", "f", "g", "h"], dtype=object)
INT_IDS = np.array([10, 11, 12, 13, 14, 15, 2**62], dtype=np.int64)
LABELS = np.array([0, 1, 1, 0, 2, 2, 1], dtype=np.int64)
UNKNOWN = ("embeddings file {} is neither HDF5 nor .npy/.npz/Parquet. "
           "Save the matrix with h5py (dataset 'embeddings') or numpy.save.")


def shard_of(path: Path, name: str, d: Description) -> Shard:
    return Shard(str(path), name, d.key, d.shape[0], 0, d.ids_from, d.id_key)


def test_the_built_in_formats_in_sniffing_order_and_their_suffixes():
    assert [f.name for f in formats.formats()] == ["parquet", "h5", "npy", "npz"]
    assert formats.suffixes() == {".parquet": "parquet", ".h5": "h5", ".hdf5": "h5",
                                  ".npy": "npy", ".npz": "npz"}
    assert format_named("hdf5") is format_named("h5") is format_named(".h5")
    assert format_of_name("x/part_1.HDF5").name == "h5" and format_of_name("a.csv") is None


def test_an_unknown_format_name_is_refused_with_the_known_ones():
    with pytest.raises(PrunekitError) as err:
        format_named("csv")
    assert str(err.value) == "unknown file format 'csv' (known: parquet, h5, npy, npz)."


@pytest.mark.parametrize("name", ["h5", "npz", "parquet"])
@pytest.mark.parametrize("ids", [STR_IDS, INT_IDS], ids=["str", "int"])
def test_write_describe_open_ids_labels_round_trip(tmp_path, name, ids):
    fmt = format_named(name)
    path = tmp_path / "rows.bin"  # recognised by content, whatever the name
    assert fmt.write(path, ROWS, ids=ids, labels=LABELS) == path
    assert format_for(path) is fmt
    assert [f.name for f in formats.formats() if f.sniff(path)] == [name]  # exactly one
    d = fmt.describe(path, "embeddings")
    id_key = {"h5": "ids", "npz": "ids", "parquet": "id"}[name]
    assert d == Description("embeddings", (7, 3), np.dtype(np.float32), id_key, None, "labels")
    shard = shard_of(path, name, d)
    reader = fmt.open(shard, 3, d.dtype)
    try:
        assert tuple(reader.shape) == (7, 3) and reader.dtype == np.float32
        np.testing.assert_array_equal(reader.read(2, 5), ROWS[2:5])
        np.testing.assert_array_equal(reader.read(0, 7), ROWS)
    finally:
        reader.close()
    got = fmt.ids(shard)
    assert got.dtype == ids.dtype and got.tolist() == ids.tolist()
    assert fmt.labels(shard).astype(np.int64).tolist() == LABELS.tolist()
    want_keys = {} if name == "parquet" else {"embeddings": [7, 3], "ids": [7], "labels": [7]}
    assert fmt.keys(path) == want_keys


@pytest.mark.parametrize("name", ["h5", "npy", "npz", "parquet"])
def test_writes_are_the_same_bytes_and_leave_no_temporary_file(tmp_path, name):
    fmt = format_named(name)
    fmt.write(tmp_path / "a", ROWS)
    fmt.write(tmp_path / "b", ROWS)
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]
    d = fmt.describe(tmp_path / "a", "embeddings")
    assert (d.shape, d.id_key, d.labels) == ((7, 3), None, None)
    assert fmt.labels(shard_of(tmp_path / "a", name, d)) is None


def test_npy_holds_rows_only_and_takes_ids_from_clip_retrieval_metadata(tmp_path):
    npy, parquet = format_named("npy"), format_named("parquet")
    with pytest.raises(PrunekitError, match=r"an \.npy file holds the rows only"):
        npy.write(tmp_path / "x.npy", ROWS, ids=STR_IDS)
    assert not (tmp_path / "x.npy").exists()
    emb = tmp_path / "img_emb" / "img_emb_0.npy"
    npy.write(emb, ROWS)
    assert npy.describe(emb, "embeddings") == Description("array", (7, 3), np.dtype(np.float32))
    meta = tmp_path / "metadata" / "metadata_0.parquet"
    parquet.write(meta, ROWS[:, :1], ids=STR_IDS)  # a metadata file: only its ids matter here
    d = npy.describe(emb, "embeddings")
    assert (d.id_key, d.ids_from) == ("id", str(meta))
    assert npy.ids(shard_of(emb, "npy", d)).tolist() == STR_IDS.tolist()
    assert npy.labels(shard_of(emb, "npy", d)) is None and npy.keys(emb) == {}


def test_a_file_no_format_recognises_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("notes.npy").write_text("not an array\n")  # the suffix says .npy, the content not
    with pytest.raises(PrunekitError) as err:
        format_for("notes.npy")
    assert str(err.value) == UNKNOWN.format("notes.npy")
    with pytest.raises(PrunekitError) as err:
        open_source("notes.npy")
    assert str(err.value) == UNKNOWN.format("notes.npy")


def test_sniffing_a_fifo_refuses_it_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.npy")
    code = ("from prunekit.io.formats import format_for, formats\n"
            "for sniff in [format_for] + [f.sniff for f in formats()]:\n"
            "    try:\n        sniff('pipe.npy')\n    except Exception as e:\n        print(e)")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert res.stdout == 5 * ("shard pipe.npy is a FIFO, not a regular file (reading it could "
                              "block or never end); give a regular file.\n"), res.stderr


class RowsText(Format):
    """A format from outside: ``#rows`` then one row of numbers per line (no ids)."""

    name, suffixes, label = "rows", (".rows",), "rows text"

    def sniff(self, path, head=None):
        return (head if head is not None else Path(path).read_bytes()[:8]).startswith(b"#rows\n")

    def describe(self, path, key, id_key=None, *, allow_external=False):
        x = self._load(path)
        return Description("rows", x.shape, x.dtype)

    def open(self, shard, dim, dtype):
        x = self._load(shard.path)

        class Reader:
            shape, dtype = x.shape, x.dtype

            def read(self, a, b):
                return x[a:b]

            def close(self):
                pass

        return Reader()

    @staticmethod
    def _load(path):
        return np.array([[float(v) for v in line.split()]
                         for line in Path(path).read_text().splitlines()[1:]])


def test_a_registered_format_is_listed_sniffed_and_read_by_sources(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    for i, (a, b) in enumerate([(0, 3), (3, 7)]):
        (d / f"part_{i}.rows").write_text(
            "#rows\n" + "".join(" ".join(map(repr, r.tolist())) + "\n" for r in ROWS[a:b]))
    with pytest.raises(PrunekitError, match="holds no embedding shards"):
        open_source(d)  # no format claims .rows yet
    register_format(RowsText)
    try:
        with pytest.raises(ValueError, match="registered already"):
            register_format(RowsText())
        clash = type("Clash", (RowsText,), {"name": "clash", "suffixes": (".ROWS",)})
        with pytest.raises(ValueError, match="suffix '.ROWS' belongs to format 'rows'"):
            register_format(clash)
        src = open_source(d)
        assert [(s.kind, s.key, s.n_rows, s.start) for s in src.shards] == [
            ("rows", "rows", 3, 0), ("rows", "rows", 4, 3)]
        np.testing.assert_array_equal(src.read_range(1, 6), ROWS[1:6].astype(np.float64))
        assert src.ids() is None and src.labels() is None
    finally:
        unregister_format("rows")
    assert format_of_name("x.rows") is None


def write_inputs(root: Path) -> dict[str, tuple[str, np.ndarray | None]]:
    """Inputs under relative names: (path as given, ids)."""
    npy, h5, pq = (format_named(n) for n in ("npy", "h5", "parquet"))
    npy.write(root / "d" / "img_emb_0.npy", ROWS[:4])
    npy.write(root / "d" / "img_emb_1.npy", ROWS[4:])
    pq.write(root / "d" / "metadata_0.parquet", ROWS[:4, :1], ids=STR_IDS[:4])
    pq.write(root / "d" / "metadata_1.parquet", ROWS[4:, :1], ids=STR_IDS[4:])
    h5.write(root / "h" / "a.h5", ROWS[:2], ids=INT_IDS[:2], labels=LABELS[:2])
    h5.write(root / "h" / "b.h5", ROWS[2:], ids=INT_IDS[2:], labels=LABELS[2:])
    pq.write(root / "p.parquet", ROWS, ids=STR_IDS)
    format_named("npz").write(root / "z.npz", ROWS, labels=LABELS)
    return {"clip": ("d", STR_IDS), "h5": ("h/*.h5", INT_IDS), "parquet": ("p.parquet", STR_IDS),
            "npz": ("z.npz", None)}


@pytest.mark.parametrize("case", ["clip", "h5", "parquet", "npz"])
def test_a_source_of_relative_paths_reads_the_same_rows_after_chdir(tmp_path, monkeypatch, case):
    """A Ray worker unpickles the source in its own folder: shard paths are absolute."""
    (tmp_path / "data").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "data")
    given, ids = write_inputs(Path("."))[case]
    src = open_source(given)
    blob = pickle.dumps(src)
    monkeypatch.chdir(tmp_path / "elsewhere")
    back = pickle.loads(blob)
    np.testing.assert_array_equal(back.read_range(0, 7), ROWS)
    np.testing.assert_array_equal(back.read_rows(np.array([0, 3, 4, 6])), ROWS[[0, 3, 4, 6]])
    got = back.ids()
    assert (got is None and ids is None) or got.tolist() == ids.tolist()
    labels = back.labels()
    want = LABELS.tolist() if case in ("h5", "npz") else None
    assert (labels if labels is None else labels.tolist()) == want
    assert back.files() == src.files()
    assert back.name == given  # the name the user gave, for messages
    assert all(os.path.isabs(s.path) and s.path.startswith(str(tmp_path / "data"))
               for s in back.shards)
    assert all(s.ids_from is None or os.path.isabs(s.ids_from) for s in back.shards)


def test_errors_at_open_name_the_shard_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    format_named("h5").write(Path("e.h5"), ROWS)
    with pytest.raises(PrunekitError, match=re.escape(
            "embeddings file e.h5 has no dataset 'x' (datasets: embeddings). Pass --key NAME")):
        open_source("e.h5", key="x")
