"""``loss --from`` a file joined by id, written as a folder: the file is streamed into hash
buckets, the embeddings' ids are scattered by the tasks, one task per bucket joins them and
the part tasks write the parts. The folder equals the in-memory scores saved as a folder,
byte for byte, on one worker and on two, and every error is the in-memory one."""

from __future__ import annotations

import json
import os
import tempfile

import h5py
import numpy as np
import pytest
from parts_checks import assert_columns_equal
from resume_faults import InjectedFailure

pytest.importorskip("pyarrow")  # folders need the [parquet] extra

import prunekit as pk  # noqa: E402
import prunekit.io.dataset as ds  # noqa: E402
import prunekit.methods as methods_mod  # noqa: E402
from prunekit.compute import join as join_mod  # noqa: E402
from prunekit.io.dataset import PartsReader  # noqa: E402
from prunekit.methods import loss as loss_mod  # noqa: E402
from prunekit.methods import score_to_folder  # noqa: E402
from prunekit.runtime import engine as engine_mod  # noqa: E402
from prunekit.runtime.engine import LocalEngine  # noqa: E402

SIZES = (700, 500, 300)  # rows per shard
N = sum(SIZES)
NAN_ROWS = (0, 900, 1499)  # dropped at load
KEEP = np.setdiff1d(np.arange(N), NAN_ROWS)
SMALL = 64 << 10  # a budget under which the load keeps no ids in memory


@pytest.fixture(autouse=True)
def small_units(monkeypatch, tmp_path):
    """128-row chunks, parts of at most 256 positions, 32 join buckets, 100-line file chunks;
    temporary folders under tmp_path/tmp, to see that none is left."""
    monkeypatch.setattr(engine_mod, "MIN_CHUNK_ROWS", 128)
    monkeypatch.setattr(engine_mod, "CHUNK_BYTES", 128 * 4 * 8)
    monkeypatch.setattr(ds, "PART_ROWS", 256)
    monkeypatch.setattr(join_mod, "BUCKET_ROWS", 64)
    monkeypatch.setattr(loss_mod, "FILE_ROWS", 100)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))


def string_id(i: int) -> str:
    return f"img-{i:05d}" + ("é" if i % 7 == 0 else "")


def load(tmp_path, kind: str):
    """Three HDF5 shards of 8-wide rows (NAN_ROWS non-finite) with int or string ids,
    loaded lazily with those rows dropped; returns (emb, ids)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, 8)).astype(np.float32)
    x[list(NAN_ROWS), 3] = np.nan
    ids = (np.arange(N, dtype=np.int64) * 10 + 7 if kind == "int"
           else np.array([string_id(i) for i in range(N)], dtype=object))
    d = tmp_path / f"d-{kind}"
    d.mkdir(exist_ok=True)
    a = 0
    for i, n in enumerate(SIZES):
        with h5py.File(d / f"emb_{i}.h5", "w") as f:
            f["embeddings"] = x[a : a + n]
            f.create_dataset("ids", data=ids[a : a + n].tolist() if kind == "str"
                             else ids[a : a + n], dtype=h5py.string_dtype() if kind == "str"
                             else None)
        a += n
    with pk.runtime(memory=SMALL):
        emb = pk.load_embeddings(d, drop_nonfinite=True)
    return emb, ids


def scores() -> np.ndarray:
    return np.random.default_rng(4).standard_normal(N)


def write_csv(path, ids, values, rows, header=True, fmt=str) -> None:
    lines = ["id,loss\n"] if header else []
    lines += [f"{fmt(ids[i])},{float(values[i])!r}\n" for i in rows]
    path.write_text("".join(lines), encoding="utf-8")


def columns(path) -> dict:
    return PartsReader(path, kind="scores").read_columns()


def by_tasks(emb, path, tmp_path, monkeypatch) -> dict:
    """The folder written with LocalEngine(1) and (2), neither gathering scores nor reading
    the whole file or ids on the driver; both folders are the same bytes. w1's columns."""
    with monkeypatch.context() as m:
        m.setattr(methods_mod, "_to_scores", lambda *a, **k: pytest.fail("gathered"))
        m.setattr(loss_mod, "read_score_file", lambda p: pytest.fail("file read whole"))
        for w in (1, 2):
            with pk.runtime(engine=LocalEngine(w)):
                score_to_folder(emb, "loss", tmp_path / f"w{w}", from_file=str(path),
                                progress=False)
    assert not isinstance(vars(emb)["_ids"], np.ndarray) and vars(emb)["_rows"] is None
    man = [json.loads((tmp_path / f"w{w}" / "manifest.json").read_text()) for w in (1, 2)]
    assert [{k: v for k, v in m.items() if k != "created"} for m in man] == [
        {k: v for k, v in man[0].items() if k != "created"}] * 2
    assert man[0]["params"]["matched_by"] == "id"
    for p in man[0]["parts"]:
        assert (tmp_path / "w1" / p["file"]).read_bytes() == \
            (tmp_path / "w2" / p["file"]).read_bytes()
    assert list((tmp_path / "tmp").iterdir()) == []  # the join's scratch is gone
    return columns(tmp_path / "w1")


def in_memory(emb, path, tmp_path) -> dict:
    ref = pk.score(emb, "loss", from_file=str(path), progress=False)
    ref.save(tmp_path / "ref/")
    return columns(tmp_path / "ref")


@pytest.mark.parametrize("fmt", ["csv-str", "csv-int", "h5-int", "h5-str", "json-str",
                                 "json-int"])
def test_joined_folder_equals_the_in_memory_scores(tmp_path, monkeypatch, fmt):
    kind = "int" if fmt.endswith("int") else "str"
    emb, ids = load(tmp_path, kind)
    v = scores()
    order = np.random.default_rng(2).permutation(N)  # shuffled; the dropped rows' ids too
    rows = [i for i in order if i not in (0, 1499)]  # a dropped row may lack its score
    path = tmp_path / f"l.{fmt[:-4] if '-' in fmt else fmt}"
    if fmt.startswith("csv"):  # int ids with padding and zeros, parsed as the whole read does
        write_csv(path, ids, v, rows, fmt=(lambda i: f" 0{i}") if kind == "int" else str)
    elif fmt.startswith("h5"):
        with h5py.File(path, "w") as f:
            f["score"] = v[rows]
            f.create_dataset("ids", data=ids[rows].tolist(),
                             dtype=h5py.string_dtype() if kind == "str" else None)
    else:
        path.write_text(json.dumps({str(ids[i]): float(v[i]) for i in rows}), encoding="utf-8")
    got = by_tasks(emb, path, tmp_path, monkeypatch)  # JSON too: streamed in 100-row batches
    want = in_memory(emb, path, tmp_path)
    assert_columns_equal(got, want)
    assert got["score"][KEEP].tobytes() == v[KEEP].tobytes()  # hand-checked: row order
    assert np.isnan(got["score"][list(NAN_ROWS)]).all()
    assert got["id"].tolist() == ids.tolist()


def test_bucket_count_follows_the_rows_only(monkeypatch):
    monkeypatch.setattr(join_mod, "BUCKET_ROWS", 100)
    assert [join_mod.n_buckets(n) for n in (0, 1, 100, 101, 1000, 10**9)] == \
        [1, 1, 1, 2, 16, 1 << 16]


def mutate_int(ids, v, tmp_path):
    """Files with each id problem, more examples than an error names, across buckets."""
    order = list(np.random.default_rng(5).permutation(N))
    missing = [i for i in order if i not in NAN_ROWS][:8]
    dup = sorted(order[20:27])
    cases = {}
    rows = [i for i in order if i not in missing]
    write_csv(tmp_path / "missing.csv", ids, v, rows)
    extra_rows = [f"{9000 + 3 * k},1.5\n" for k in range(7)]
    body = [f"{ids[i]},{float(v[i])!r}\n" for i in order]
    for k, line in enumerate(extra_rows):
        body.insert(100 * k + 50, line)
    (tmp_path / "extra.csv").write_text("id,s\n" + "".join(body))
    both = [line for line in body if not line.startswith(tuple(f"{ids[i]}," for i in missing))]
    (tmp_path / "both.csv").write_text("".join(both))
    write_csv(tmp_path / "dup.csv", ids, v, order + dup[::-1] + missing[:2])
    write_csv(tmp_path / "notint.csv", ids, v, order)
    text = (tmp_path / "notint.csv").read_text().splitlines(keepends=True)
    text[300] = "abc,1.0\n"
    text[700] = "x7,2.0\n"
    (tmp_path / "notint.csv").write_text("".join(text))
    (tmp_path / "notint-then-bad.csv").write_text("".join(text[:900] + ["1,2,3\n"] + text[900:]))
    (tmp_path / "badline-then-utf8.csv").write_bytes(
        "".join(text[:200] + ["7,x\n"] + text[200:]).encode() + b"\xff,1\n")
    bad = v.copy()
    bad[[5, 260, 261, 702, 1300, 1400, 0]] = [np.nan, np.inf, np.nan, -np.inf, np.nan, np.nan,
                                              np.inf]
    write_csv(tmp_path / "nonfinite.csv", ids, bad, order)
    with h5py.File(tmp_path / "dup.h5", "w") as f:
        f["score"], f["ids"] = np.ones(N + 2), np.r_[ids, ids[3], ids[1000]]
    with h5py.File(tmp_path / "badutf8.h5", "w") as f:
        raw = [str(i).encode() for i in ids]
        raw[1200] = b"\xff\xfe"
        f.create_dataset("ids", data=raw, dtype=h5py.vlen_dtype(bytes))  # not UTF-8 text
        f["score"] = np.ones(N)
    for name in ("missing.csv", "extra.csv", "both.csv", "dup.csv", "notint.csv",
                 "notint-then-bad.csv", "badline-then-utf8.csv", "nonfinite.csv", "dup.h5",
                 "badutf8.h5"):
        cases[name] = tmp_path / name
    return cases


EXPECTED = {  # hand-checked parts of the in-memory messages
    "missing.csv": "8 embedding ids have no score (e.g. ",
    "extra.csv": "7 ids are not in the embeddings (e.g. 9000, 9003, 9006, 9009, 9012)",
    "both.csv": "; 7 ids are not in the embeddings",
    "dup.csv": "has duplicate ids (e.g. ",
    "notint.csv": "id 'abc' is not an integer",
    "notint-then-bad.csv": "has 3 fields",
    "badline-then-utf8.csv": "is not UTF-8 text",
    "nonfinite.csv": "has 6 non-finite scores (NaN/inf) for embedding rows 5, 260, 261, 702, "
                     "1300, ...",
    "dup.h5": "has duplicate ids (e.g. 10007, 37); each id needs one score.",
    "badutf8.h5": "is not UTF-8 text",
}


def test_every_id_error_is_the_in_memory_one(tmp_path):
    emb, ids = load(tmp_path, "int")
    cases = mutate_int(ids, scores(), tmp_path)
    got = {}
    for name, path in cases.items():
        for w in (1, 2):
            with pk.runtime(engine=LocalEngine(w)), pytest.raises(pk.PrunekitError) as err:
                score_to_folder(emb, "loss", tmp_path / "out", from_file=str(path),
                                progress=False)
            assert not (tmp_path / "out").exists()
            assert got.setdefault(name, str(err.value)) == str(err.value), name
    assert vars(emb)["_ids"] is not None and not isinstance(vars(emb)["_ids"], np.ndarray)
    assert list((tmp_path / "tmp").iterdir()) == []
    for name, path in cases.items():  # now the in-memory path (it reads the ids whole)
        with pytest.raises(pk.PrunekitError) as mem:
            pk.score(emb, "loss", from_file=str(path), progress=False)
        assert got[name] == str(mem.value), name
        assert EXPECTED[name] in got[name], (name, got[name])


def test_string_id_errors_are_the_in_memory_ones(tmp_path):
    emb, ids = load(tmp_path, "str")
    v = scores()
    order = list(np.random.default_rng(6).permutation(N))
    rows = [i for i in order if i % 97 != 3] + [order[5], order[9], order[1]] + [N, N + 1]
    names = list(ids) + [string_id(N), string_id(N + 1)]
    write_csv(tmp_path / "s.csv", names, np.r_[v, 1.0, 2.0], rows)
    errors = []
    for w in (1, 2):
        with pk.runtime(engine=LocalEngine(w)), pytest.raises(pk.PrunekitError) as err:
            score_to_folder(emb, "loss", tmp_path / "out", from_file=str(tmp_path / "s.csv"),
                            progress=False)
        errors.append(str(err.value))
    with pytest.raises(pk.PrunekitError) as mem:
        pk.score(emb, "loss", from_file=str(tmp_path / "s.csv"), progress=False)
    dup = sorted(string_id(order[i]) for i in (5, 9, 1))
    assert errors == [str(mem.value)] * 2
    assert f"has duplicate ids (e.g. {', '.join(dup)})" in errors[0]
    (tmp_path / "s.csv").write_text("id,x\n" + "".join(  # missing and extra, no duplicates
        f"{names[i]},{float(v[i % N])!r}\n" for i in rows[:-5] + [N, N + 1]))
    with pytest.raises(pk.PrunekitError) as parts:
        score_to_folder(emb, "loss", tmp_path / "out", from_file=str(tmp_path / "s.csv"),
                        progress=False)
    with pytest.raises(pk.PrunekitError) as mem:
        pk.score(emb, "loss", from_file=str(tmp_path / "s.csv"), progress=False)
    missing = sorted(i for i in range(N) if i % 97 == 3 and i not in NAN_ROWS)
    assert str(parts.value) == str(mem.value) == (
        f"{tmp_path / 's.csv'} does not match the ids of {emb.name}: {len(missing)} embedding "
        f"ids have no score (e.g. {', '.join(string_id(i) for i in missing[:5])}); 2 ids are "
        f"not in the embeddings (e.g. {string_id(N)}, {string_id(N + 1)}). Score exactly "
        "the embedded items.")


def test_the_join_scratch_lives_in_the_work_directory_and_is_removed(tmp_path, monkeypatch):
    emb, ids = load(tmp_path, "int")
    v = scores()
    write_csv(tmp_path / "l.csv", ids, v, range(N))
    seen = []
    real = join_mod.join_by_id

    def spy(emb, chunks, folder, **kw):
        seen.append(folder)
        return real(emb, chunks, folder, **kw)

    monkeypatch.setattr(loss_mod, "join_by_id", spy)
    with pk.runtime(work_dir=tmp_path / "work", key=None):
        score_to_folder(emb, "loss", tmp_path / "out", from_file=str(tmp_path / "l.csv"),
                        progress=False)
    assert len(seen) == 1 and seen[0].name == "loss-join"
    assert seen[0].is_relative_to(tmp_path / "work")
    assert not seen[0].exists()
    assert list((tmp_path / "tmp").iterdir()) == []
    assert columns(tmp_path / "out")["score"][KEEP].tobytes() == v[KEEP].tobytes()


# ------------------------------------------------------------------------------- --resume

FAIL = 11  # the bucket whose task an interrupted run dies in (of 32)
N_BUCKETS = 32  # n_buckets(1500) with 64 rows a bucket
TASKS = (join_mod._write_piece, join_mod._emb_task, join_mod._bucket_task)


def cli(*args):
    from click.testing import CliRunner

    from prunekit.cli import main

    return CliRunner().invoke(main, ["score", *map(str, args), "-q"])


def counted(monkeypatch, fail_at: int | None = None) -> dict:
    """Count the join's units (file pieces written, embeddings parts scattered, buckets
    joined); with ``fail_at``, the task of that bucket dies as a killed run would."""
    calls: dict = {"file": 0, "emb": [], "bucket": []}
    piece, emb_task, bucket_task = TASKS

    def write_piece(folder, tag, *a, **k):
        calls["file"] += tag.startswith("file-")
        return piece(folder, tag, *a, **k)

    def emb(shared, part):
        calls["emb"].append(part.index)
        return emb_task(shared, part)

    def bucket(shared, b):
        calls["bucket"].append(b)
        if b == fail_at:
            raise InjectedFailure(f"killed in bucket {b}")
        return bucket_task(shared, b)

    monkeypatch.setattr(join_mod, "_write_piece", write_piece)
    monkeypatch.setattr(join_mod, "_emb_task", emb)
    monkeypatch.setattr(join_mod, "_bucket_task", bucket)
    return calls


def same_folder(a, b) -> None:
    """The same parts, byte for byte, and the same manifest but for time and command."""
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    drop = ("created", "command")
    assert {k: v for k, v in ma.items() if k not in drop} == \
        {k: v for k, v in mb.items() if k not in drop}
    for p in ma["parts"]:
        assert (a / p["file"]).read_bytes() == (b / p["file"]).read_bytes()


def loss_file(tmp_path, ids, name="l.csv", seed=2):
    v = scores()
    rows = [i for i in np.random.default_rng(seed).permutation(N) if i not in (0, 1499)]
    write_csv(tmp_path / name, ids, v, rows)
    return tmp_path / name, v


@pytest.mark.parametrize("workers, kind", [(1, "str"), (2, "str"), (1, "int"), (2, "int")])
def test_an_interrupted_join_resumes_to_the_same_bytes(tmp_path, monkeypatch, workers, kind):
    emb, ids = load(tmp_path, kind)
    path, v = loss_file(tmp_path, ids)
    args = [tmp_path / f"d-{kind}", "-m", "loss", "--from", path, "--drop-nonfinite",
            "--workers", workers]
    assert cli(*args, "-o", f"{tmp_path / 'ref'}/").exit_code == 0
    out = tmp_path / "out"
    counted(monkeypatch, fail_at=FAIL)
    r = cli(*args, "-o", f"{out}/")
    assert isinstance(r.exception, InjectedFailure) and not out.exists()
    (work,) = (tmp_path / ".prunekit-work").glob("out.*")
    (key,) = (work / "loss-join").iterdir()  # the plan's records and scratch files
    assert sorted(p.name for p in key.glob("bucket-*")) == [
        f"bucket-{b:08d}.json" for b in range(FAIL)]
    assert (work / "scratch" / "loss-join" / key.name / f"joined-{FAIL - 1}").is_file()
    calls = counted(monkeypatch)
    r = cli(*args, "-o", f"{out}/", "--resume")
    assert r.exit_code == 0, r.output
    assert calls["file"] == 0 and calls["emb"] == []  # the file is not even read
    assert sorted(calls["bucket"]) == list(range(FAIL, N_BUCKETS))  # in any order on 2
    same_folder(out, tmp_path / "ref")
    assert columns(out)["score"][KEEP].tobytes() == v[KEEP].tobytes()
    assert not (tmp_path / ".prunekit-work").exists()  # removed once the output exists


def test_records_that_do_not_verify_or_lack_their_files_are_recomputed(tmp_path, monkeypatch,
                                                                        caplog):
    emb, ids = load(tmp_path, "int")
    path, _ = loss_file(tmp_path, ids)
    args = [tmp_path / "d-int", "-m", "loss", "--from", path, "--drop-nonfinite",
            "--workers", 1]
    assert cli(*args, "-o", f"{tmp_path / 'ref'}/").exit_code == 0
    out = tmp_path / "out"
    counted(monkeypatch, fail_at=FAIL)
    assert isinstance(cli(*args, "-o", f"{out}/").exception, InjectedFailure)
    (rec,) = (tmp_path / ".prunekit-work").glob("out.*/loss-join/*")
    scratch = rec.parent.parent / "scratch" / "loss-join" / rec.name
    for name in ("bucket-00000003.json", "file.npy"):  # payload edited, checksum kept
        data = bytearray((rec / name).read_bytes())
        data[-2] ^= 1
        (rec / name).write_bytes(bytes(data))
    (scratch / "emb-2.position.npy").unlink()  # a part's record without its file
    with (scratch / "joined-5").open("ab") as fh:  # a bucket's file of another size
        fh.write(b"x")
    calls = counted(monkeypatch)
    r = cli(*args, "-o", f"{out}/", "--resume")
    assert r.exit_code == 0, r.output
    assert calls == {"file": 15, "emb": [2], "bucket": [3, 5, *range(FAIL, N_BUCKETS)]}
    assert "2 resume record(s)" in caplog.text and "did not verify" in caplog.text
    same_folder(out, tmp_path / "ref")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_changed_file_is_never_joined_from_old_buckets(tmp_path, monkeypatch, workers):
    """In one work directory (a library run's, not keyed by the file), a file rewritten with
    the same size and its modification time put back is scattered and joined again."""
    emb, ids = load(tmp_path, "int")
    path, _ = loss_file(tmp_path, ids)
    work = tmp_path / "work"
    counted(monkeypatch, fail_at=FAIL)
    with pk.runtime(engine=LocalEngine(workers), work_dir=work), \
            pytest.raises(InjectedFailure):
        score_to_folder(emb, "loss", tmp_path / "out", from_file=str(path), progress=False)
    size, mtime = path.stat().st_size, path.stat().st_mtime_ns
    lines = path.read_text().splitlines(keepends=True)
    swapped = [lines[0]] + [a.split(",")[0] + "," + b.split(",")[1]  # values moved over ids
                            for a, b in zip(lines[1:], lines[2:] + lines[1:2], strict=True)]
    path.write_text("".join(swapped))
    os.utime(path, ns=(mtime, mtime))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (size, mtime)
    calls = counted(monkeypatch)
    with pk.runtime(engine=LocalEngine(workers), work_dir=work):
        score_to_folder(emb, "loss", tmp_path / "out", from_file=str(path), progress=False)
    assert calls["file"] == 15 and len(calls["emb"]) == len(set(calls["emb"])) == 7
    assert sorted(calls["bucket"]) == list(range(N_BUCKETS))
    assert_columns_equal(columns(tmp_path / "out"), in_memory(emb, path, tmp_path))
    assert list((work / "scratch").iterdir()) == [] and not (work / "loss-join").exists()


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("case", ["dup.csv", "both.csv"])
def test_a_resumed_run_gives_the_same_id_error_and_leaves_nothing(tmp_path, monkeypatch,
                                                                  workers, case):
    emb, ids = load(tmp_path, "int")
    (tmp_path / "cases").mkdir()
    path = mutate_int(ids, scores(), tmp_path / "cases")[case]
    args = [tmp_path / "d-int", "-m", "loss", "--from", path, "--drop-nonfinite",
            "--workers", workers, "-o", f"{tmp_path / 'out'}/"]
    before = sorted(p.name for p in tmp_path.iterdir())
    whole = cli(*args)
    assert whole.exit_code == 2 and "Traceback" not in whole.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    counted(monkeypatch, fail_at=FAIL)
    assert isinstance(cli(*args).exception, InjectedFailure)
    assert (tmp_path / ".prunekit-work").exists()
    calls = counted(monkeypatch)
    resumed = cli(*args, "--resume")
    assert resumed.exit_code == 2 and resumed.output == whole.output
    assert sorted(calls["bucket"]) == list(range(FAIL, N_BUCKETS))
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, nor kept
    with pytest.raises(pk.PrunekitError) as mem:
        pk.score(emb, "loss", from_file=str(path), progress=False)
    assert f"Error: {mem.value}" in " ".join(whole.output.split())
