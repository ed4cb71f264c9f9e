"""random and loss write their scores folders from the engine's tasks: the parts equal the
in-memory scores saved as a folder, on one worker and on two, with no per-row array (nor a
whole score file) on the driver."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from parts_checks import assert_columns_equal, write_h5_shards

pytest.importorskip("pyarrow")  # folders need the [parquet] extra

import prunekit as pk  # noqa: E402
import prunekit.io.dataset as ds  # noqa: E402
import prunekit.methods as methods_mod  # noqa: E402
from prunekit.cli import main  # noqa: E402
from prunekit.io.dataset import PartsReader  # noqa: E402
from prunekit.methods import loss as loss_mod  # noqa: E402
from prunekit.methods import score_to_folder  # noqa: E402
from prunekit.methods.random import draws  # noqa: E402
from prunekit.runtime import engine as engine_mod  # noqa: E402
from prunekit.runtime.engine import LocalEngine  # noqa: E402
from prunekit.selection.scores import load_scores  # noqa: E402

SIZES = (700, 500, 300)  # rows per shard
N = sum(SIZES)
NAN_ROWS = (0, 900, 1499)  # dropped at load: a shard's first row, inside, the very last
SMALL = 64 << 10  # a budget under which the load keeps no ids or labels in memory
# Parts of SIZES cut at 128-row chunks, at most 256 positions, never across a shard.
BOUNDS = [(0, 256), (256, 512), (512, 700), (700, 956), (956, 1200), (1200, 1456), (1456, 1500)]


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 128 rows and parts of at most 256 positions, so shards split into parts."""
    monkeypatch.setattr(engine_mod, "MIN_CHUNK_ROWS", 128)
    monkeypatch.setattr(engine_mod, "CHUNK_BYTES", 128 * 4 * 8)
    monkeypatch.setattr(ds, "PART_ROWS", 256)


@pytest.fixture
def shards(tmp_path, small_chunks):
    """Three HDF5 shards of 8-wide float16 rows (NAN_ROWS non-finite), int ids and labels;
    loaded lazily (ids/labels not held) with those rows dropped."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, 8)).astype(np.float16)
    x[list(NAN_ROWS), 3] = np.nan
    ids, lab = np.arange(N, dtype=np.int64) * 10 + 7, rng.integers(0, 5, N)
    d = write_h5_shards(tmp_path / "d", x, ids, lab, SIZES)
    with pk.runtime(memory=SMALL):
        emb = pk.load_embeddings(d, drop_nonfinite=True)
    return emb, ids, lab


def columns(path) -> dict:
    return PartsReader(path, kind="scores").read_columns()


def manifest(path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def written_by_tasks(emb, method, tmp_path, monkeypatch, **kw) -> dict:
    """Score into folders w1 and w2 (LocalEngine(1), (2)) with the gathered path disabled;
    both folders' parts are the same bytes. Returns w1's columns."""
    def gathered(*a, **k):
        raise AssertionError("the scores were gathered on the driver")

    with monkeypatch.context() as m:
        m.setattr(methods_mod, "_to_scores", gathered)
        for w in (1, 2):
            with pk.runtime(engine=LocalEngine(w)):
                res = score_to_folder(emb, method, tmp_path / f"w{w}", progress=False, **kw)
            assert res.n_scored == N - len(NAN_ROWS)
    # Nothing per row was made on the driver: no usable-row positions, ids or labels.
    held = vars(emb)
    assert held["_rows"] is None
    assert not isinstance(held["_ids"], np.ndarray) and not isinstance(held["_labels"], np.ndarray)
    m1, m2 = manifest(tmp_path / "w1"), manifest(tmp_path / "w2")
    assert [(p["start"], p["stop"]) for p in m1["parts"]] == BOUNDS
    assert {k: v for k, v in m1.items() if k != "created"} == \
        {k: v for k, v in m2.items() if k != "created"}
    for p in m1["parts"]:
        one, two = (tmp_path / f"w{w}" / p["file"] for w in (1, 2))
        assert one.read_bytes() == two.read_bytes()
    return columns(tmp_path / "w1")


def saved_in_memory(emb, method, tmp_path, **kw):
    """The in-memory scores (``pk.score``) saved as a folder: their columns and the scores."""
    ref = pk.score(emb, method, progress=False, **kw)
    ref.save(tmp_path / "ref/")
    return columns(tmp_path / "ref"), ref


# -- random -----------------------------------------------------------------------------------


def test_draws_are_slices_of_the_one_stream():
    stream = np.random.default_rng(11).random(5000)
    for first, count in ((0, 0), (0, 7), (1, 1), (1234, 3000), (4999, 1)):
        assert draws(11, first, count).tobytes() == stream[first : first + count].tobytes()


@pytest.mark.parametrize("seed", [0, 5, 2**40 + 3])
def test_random_parts_equal_the_in_memory_scores(tmp_path, shards, monkeypatch, seed):
    emb, ids, lab = shards
    got = written_by_tasks(emb, "random", tmp_path, monkeypatch, seed=seed)
    want, ref = saved_in_memory(emb, "random", tmp_path, seed=seed)
    assert_columns_equal(got, want)
    # The usable rows, in order, hold default_rng(seed)'s stream; dropped rows are NaN.
    keep = np.setdiff1d(np.arange(N), NAN_ROWS)
    assert got["score"][keep].tobytes() == np.random.default_rng(seed).random(keep.size).tobytes()
    assert np.isnan(got["score"][list(NAN_ROWS)]).all()
    assert got["id"].tolist() == ids.tolist() and got["label"].tolist() == lab.tolist()
    back = load_scores(tmp_path / "w1")
    assert back.method == "random" and back.params == ref.params == {"seed": seed}
    assert back.source == ref.source and back.source_fingerprint == ref.source_fingerprint


def test_random_parts_without_dropped_rows_match_the_whole_stream(tmp_path, small_chunks,
                                                                   monkeypatch):
    x = np.random.default_rng(1).standard_normal((N, 8)).astype(np.float32)
    emb = pk.Embeddings.from_array(x)
    with pk.runtime(engine=LocalEngine(2)):
        score_to_folder(emb, "random", tmp_path / "out", seed=9, progress=False)
    got = columns(tmp_path / "out")
    assert got["score"].tobytes() == np.random.default_rng(9).random(N).tobytes()
    assert got["position"].tolist() == list(range(N)) and sorted(got) == ["position", "score"]


# -- loss -------------------------------------------------------------------------------------


def loss_values(dtype=np.float32) -> np.ndarray:
    """One score per row; the dropped rows' scores are NaN (ignored, as they are not scored)."""
    v = np.random.default_rng(4).standard_normal(N).astype(dtype)
    v[list(NAN_ROWS)] = np.nan
    return v


@pytest.mark.parametrize("fmt", ["npy", "npy-int", "h5"])
def test_loss_parts_read_by_the_tasks_equal_the_in_memory_scores(tmp_path, shards, monkeypatch,
                                                                 fmt):
    emb, ids, _ = shards
    if fmt == "npy-int":  # integers are converted to float64 as the whole-file read does
        v = np.arange(N, dtype=np.int16) * 7 - 3000
        path = tmp_path / "l.npy"
        np.save(path, v)
    elif fmt == "npy":
        v, path = loss_values(), tmp_path / "l.npy"
        np.save(path, v)
    else:
        v, path = loss_values(np.float64), tmp_path / "l.h5"
        with h5py.File(path, "w") as f:
            f["score"] = v
    with monkeypatch.context() as m:  # the driver reads no whole file
        m.setattr(loss_mod, "read_score_file",
                  lambda p: pytest.fail("the score file was read whole on the driver"))
        got = written_by_tasks(emb, "loss", tmp_path, monkeypatch, from_file=str(path))
    want, ref = saved_in_memory(emb, "loss", tmp_path, from_file=str(path))
    assert_columns_equal(got, want)
    keep = np.setdiff1d(np.arange(N), NAN_ROWS)
    assert got["score"][keep].tobytes() == v[keep].astype(np.float64).tobytes()
    assert got["id"].tolist() == ids.tolist()
    back = load_scores(tmp_path / "w1")
    assert back.params == ref.params == {"seed": 0, "from_file": str(path),
                                         "matched_by": "position"}


def never_parsed_whole(monkeypatch, path) -> None:
    """json.load and json.loads fail on ``path`` or its text (a JSON score file is streamed);
    other JSON (manifests) still reads."""
    text, load, loads = path.read_text(encoding="utf-8"), json.load, json.loads

    def guarded_load(fp, *a, **k):
        assert getattr(fp, "name", None) != str(path), "the JSON score file was parsed whole"
        return load(fp, *a, **k)

    def guarded_loads(s, *a, **k):
        assert (s.decode() if isinstance(s, bytes) else s) != text, "parsed whole"
        return loads(s, *a, **k)

    monkeypatch.setattr(json, "load", guarded_load)
    monkeypatch.setattr(json, "loads", guarded_loads)


def test_loss_files_joined_by_id_are_joined_by_the_tasks(tmp_path, shards, monkeypatch):
    emb, ids, _ = shards
    v = loss_values(np.float64)
    order = np.random.default_rng(2).permutation(N)
    keep = np.setdiff1d(np.arange(N), NAN_ROWS)
    (tmp_path / "l.csv").write_text("id,loss\n" + "".join(
        f"{ids[i]},{float(v[i])!r}\n" for i in order if i in set(keep.tolist())))
    with h5py.File(tmp_path / "l.h5", "w") as f:
        f["score"], f["ids"] = v[order], ids[order]
    (tmp_path / "l.json").write_text("{" + ",\n".join(  # streamed in 100-row batches
        f'"{ids[i]}": {json.dumps(float(v[i]))}' for i in order) + "}")
    monkeypatch.setattr(loss_mod, "FILE_ROWS", 100)
    never_parsed_whole(monkeypatch, tmp_path / "l.json")
    for name in ("l.csv", "l.h5", "l.json"):
        path, out = str(tmp_path / name), tmp_path / name.replace(".", "-")
        out.mkdir()
        with monkeypatch.context() as m:  # neither the file nor the ids are read whole
            m.setattr(loss_mod, "read_score_file",
                      lambda p: pytest.fail("the score file was read whole on the driver"))
            got = written_by_tasks(emb, "loss", out, monkeypatch, from_file=path)
        assert got["score"][keep].tobytes() == v[keep].tobytes()
        assert manifest(out / "w1")["params"]["matched_by"] == "id"
    for name in ("l.csv", "l.h5", "l.json"):  # the in-memory path reads the ids whole: last
        path, out = str(tmp_path / name), tmp_path / name.replace(".", "-")
        want, _ = saved_in_memory(emb, "loss", out, from_file=path)
        assert_columns_equal(columns(out / "w1"), want)


def without_ids(emb_dir, d):
    """The shards of ``emb_dir`` again, with their embeddings only (no ids, no labels)."""
    d.mkdir()
    for f in sorted(emb_dir.glob("emb_*.h5")):
        with h5py.File(f) as src, h5py.File(d / f.name, "w") as dst:
            dst["embeddings"] = src["embeddings"][()]
    with pk.runtime(memory=SMALL):
        return pk.load_embeddings(d, drop_nonfinite=True)


def test_loss_files_matched_by_position_are_streamed_to_a_file_the_tasks_slice(
        tmp_path, shards, monkeypatch):
    """A JSON list, and a CSV, JSON object or HDF5 with ids when the embeddings have none,
    are matched by position: streamed to a scratch .npy that the tasks slice. The parts are
    the in-memory scores', the file is never read whole, and no scratch is left."""
    emb, ids, _ = shards
    bare = without_ids(tmp_path / "d", tmp_path / "bare")
    v = loss_values(np.float64)
    (tmp_path / "list.json").write_text(json.dumps(v.tolist()))
    (tmp_path / "obj.json").write_text(json.dumps({f"k{i}": x for i, x in enumerate(v.tolist())}))
    (tmp_path / "l.csv").write_text("id,loss\n" + "".join(
        f"{ids[i]},{float(v[i])!r}\n" for i in range(N)))
    with h5py.File(tmp_path / "l.h5", "w") as f:
        f["score"], f["ids"] = v, ids
    monkeypatch.setattr(loss_mod, "FILE_ROWS", 100)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    keep = np.setdiff1d(np.arange(N), NAN_ROWS)
    cases = [(emb, "list.json"), (bare, "list.json"), (bare, "obj.json"), (bare, "l.csv"),
             (bare, "l.h5")]
    for e, name in cases:
        path, out = tmp_path / name, tmp_path / f"{name}-{e.has_ids}"
        out.mkdir()
        with monkeypatch.context() as m:
            if name.endswith(".json"):
                never_parsed_whole(m, path)
            m.setattr(loss_mod, "read_score_file",
                      lambda p: pytest.fail("the score file was read whole on the driver"))
            got = written_by_tasks(e, "loss", out, monkeypatch, from_file=str(path))
        assert got["score"][keep].tobytes() == v[keep].tobytes(), name
        assert manifest(out / "w1")["params"]["matched_by"] == "position"
        assert list(scratch.iterdir()) == []  # the spooled file went with its folder
    for e, name in cases:  # the in-memory path holds the usable rows: last
        out = tmp_path / f"{name}-{e.has_ids}"
        want, _ = saved_in_memory(e, "loss", out, from_file=str(tmp_path / name))
        assert_columns_equal(columns(out / "w1"), want)


@pytest.mark.parametrize("values, what", [
    (list(range(N - 1)), "count"), (list(range(N + 250)), "count"),
    ([1.0] * 700 + [float("inf")] + [1.0] * (N - 701), "nonfinite")])
def test_a_streamed_file_with_a_wrong_count_or_bad_score_is_the_in_memory_error(
        tmp_path, shards, values, what):
    emb, _, _ = shards
    path = tmp_path / "l.json"
    path.write_text(json.dumps(values))
    with pytest.raises(pk.PrunekitError) as mem:
        pk.score(emb, "loss", from_file=str(path), progress=False)
    for w in (1, 2):
        with pk.runtime(engine=LocalEngine(w)), pytest.raises(pk.PrunekitError) as parts:
            score_to_folder(emb, "loss", tmp_path / "out", from_file=str(path), progress=False)
        assert str(parts.value) == str(mem.value)
        assert not (tmp_path / "out").exists()
    want = (f"has {len(values)} scores but the embeddings" if what == "count"
            else "has 1 non-finite scores (NaN/inf) for embedding rows 700.")
    assert want in str(mem.value)


def test_loss_nonfinite_scores_in_parts_give_the_in_memory_error_and_write_nothing(
        tmp_path, shards):
    emb, _, _ = shards
    v = loss_values()
    bad = [3, 255, 256, 701, 1200, 1300, 1400]  # across parts and shards; dropped rows excluded
    v[bad[:3]], v[bad[3:]] = np.nan, np.inf
    np.save(tmp_path / "l.npy", v)
    with pytest.raises(pk.PrunekitError) as mem:
        pk.score(emb, "loss", from_file=str(tmp_path / "l.npy"), progress=False)
    for w in (1, 2):
        with pk.runtime(engine=LocalEngine(w)), pytest.raises(pk.PrunekitError) as parts:
            score_to_folder(emb, "loss", tmp_path / "out", from_file=str(tmp_path / "l.npy"),
                            progress=False)
        assert str(parts.value) == str(mem.value)
        assert not (tmp_path / "out").exists()
    assert str(mem.value) == (f"{tmp_path / 'l.npy'} has 7 non-finite scores (NaN/inf) for "
                              "embedding rows 3, 255, 256, 701, 1200, .... Fix them in the file.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "l.npy"]  # no staging left


@pytest.mark.parametrize("make, match", [
    (lambda p: np.save(p, np.ones(N - 1)), f"has {N - 1} scores but the embeddings"),
    (lambda p: np.save(p, np.ones((N, 2))), "1-D"),
    (lambda p: np.save(p, np.array(["a"] * N)), "1-D array of numbers"),
    (lambda p: np.save(p, np.array([None] * N, dtype=object)), "cannot read"),
    (lambda p: p.write_bytes(b"\x93NUMPY broken"), "cannot read"),
])
def test_files_that_cannot_stream_give_the_in_memory_errors(tmp_path, shards, make, match):
    emb, _, _ = shards
    path = tmp_path / "l.npy"
    make(path)
    with pytest.raises(pk.PrunekitError, match=match) as mem:
        pk.score(emb, "loss", from_file=str(path), progress=False)
    with pytest.raises(pk.PrunekitError) as parts:
        score_to_folder(emb, "loss", tmp_path / "out", from_file=str(path), progress=False)
    assert str(parts.value) == str(mem.value) and not (tmp_path / "out").exists()


def test_cli_loss_and_random_folders(tmp_path, shards, monkeypatch):
    np.save(tmp_path / "l.npy", loss_values())
    monkeypatch.chdir(tmp_path)
    run = CliRunner().invoke
    for args in (["-m", "random", "--seed", "3"], ["-m", "loss", "--from", "l.npy"]):
        out, ref = f"{args[1]}/", f"{args[1]}.h5"
        res = run(main, ["score", "d", *args, "--drop-nonfinite", "-q", "-o", out])
        assert res.exit_code == 0, res.output
        assert res.output.startswith(f"{out}: {args[1]} scored 1497 of 1500 rows")
        assert run(main, ["score", "d", *args, "--drop-nonfinite", "-q", "-o", ref]
                   ).exit_code == 0
        a, b = load_scores(ref), load_scores(out)
        for f in ("score", "ids", "labels"):
            assert getattr(a, f).tobytes() == getattr(b, f).tobytes(), f
    v = loss_values()
    v[5] = np.nan
    np.save(tmp_path / "bad.npy", v)
    res = run(main, ["score", "d", "-m", "loss", "--from", "bad.npy", "--drop-nonfinite", "-q",
                     "-o", "bad/"])
    assert res.exit_code == 2 and res.output.count("Error:") == 1 and "Traceback" not in res.output
    assert "bad.npy has 1 non-finite scores (NaN/inf) for embedding rows 5." in res.output
    assert not (tmp_path / "bad").exists()


def test_ray_tasks_write_the_same_parts(tmp_path, shards):
    pytest.importorskip("ray")
    from prunekit.runtime.engine import make_engine

    emb, ids, _ = shards
    np.save(tmp_path / "l.npy", loss_values())
    (tmp_path / "l.csv").write_text("".join(  # joined by id: in reverse order
        f"{ids[i]},{float(v)!r}\n" for i, v in reversed(list(enumerate(loss_values())))))
    runs = {"random": ("random", {"seed": 4}),
            "loss": ("loss", {"from_file": str(tmp_path / "l.npy")}),
            "loss-id": ("loss", {"from_file": str(tmp_path / "l.csv")})}
    for name, (method, kw) in runs.items():
        score_to_folder(emb, method, tmp_path / f"local-{name}", progress=False, **kw)
    with make_engine("ray", workers=2, quiet=True) as eng, pk.runtime(engine=eng):
        for name, (method, kw) in runs.items():
            score_to_folder(emb, method, tmp_path / f"ray-{name}", progress=False, **kw)
    assert manifest(tmp_path / "ray-loss-id")["params"]["matched_by"] == "id"
    for name in runs:
        for p in manifest(tmp_path / f"local-{name}")["parts"]:
            local, ray = (tmp_path / f"{e}-{name}" / p["file"] for e in ("local", "ray"))
            assert ray.read_bytes() == local.read_bytes()
