"""One run context: engine, budget, work directory, progress and load options in one object.

The same 300 rows are stored twice, in two orders, with their ids in a dataset ``myids``
and the vectors under ``vecs``. Everything that reads embeddings with ``--key vecs --id-key
myids`` must match rows by id: the reordered file gives the same answers as the original.
"""

from __future__ import annotations

import asyncio
import json
import threading
import warnings

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import prunekit as pk
from prunekit.cli import main
from prunekit.runtime import budget as budget_mod
from prunekit.runtime import engine as engine_mod
from prunekit.runtime import resume as resume_mod
from prunekit.runtime.budget import memory_budget
from prunekit.runtime.context import RunContext, current_engine, current_work_dir
from prunekit.runtime.engine import LocalEngine

N = 300
LOAD = ["--key", "vecs", "--id-key", "myids"]


@pytest.fixture
def data(tmp_path):
    """e.h5 and e_reordered.h5 (same rows, ids, labels; another order) and losses.csv."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((6, 8))[rng.integers(0, 6, N)] * 2
         + rng.standard_normal((N, 8))).astype(np.float32)
    ids = np.array([f"img{i:04d}" for i in range(N)])
    labels = np.arange(N) % 3
    perm = rng.permutation(N)
    for name, order in (("e.h5", np.arange(N)), ("e_reordered.h5", perm)):
        with h5py.File(tmp_path / name, "w") as f:
            f["vecs"] = x[order]
            f["myids"] = ids[order].astype("S")
            f["labels"] = labels[order]
    loss = rng.permutation(N).astype(np.float64) / N  # distinct: no ties in any order
    (tmp_path / "losses.csv").write_text(
        "id,score\n" + "".join(f"{i},{v!r}\n" for i, v in zip(ids, loss.tolist(), strict=True)))
    return tmp_path


def cli(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r


def ok(*args):
    r = cli(*args)
    assert r.exit_code == 0, r.output
    return r


def by_id(path, name):
    """``{id: value}`` of a dataset of a scores/selection file."""
    with h5py.File(path) as f:
        ids = [i.decode() for i in f["ids"][()]]
        return dict(zip(ids, f[name][()].tolist(), strict=True))


def selection(d, emb="e.h5", tag="o"):
    """Scores imported from losses.csv (matched by id), the top 20 % kept."""
    ok("score", d / emb, *LOAD, "-m", "loss", "--from", d / "losses.csv", "-o",
       d / f"s_{tag}.h5", "-q")
    ok("select", d / f"s_{tag}.h5", "--pr", "0.8", "-o", d / f"sel_{tag}.h5")
    return d / f"sel_{tag}.h5"


# ------------------------------------------------------------------ the CLI, reordered data


def test_score_and_select_match_by_id(data):
    sel_o, sel_r = selection(data, "e.h5", "o"), selection(data, "e_reordered.h5", "r")
    assert by_id(data / "s_o.h5", "score") == by_id(data / "s_r.h5", "score")
    with h5py.File(data / "e_reordered.h5") as f:
        ids = f["myids"][()]
    with h5py.File(data / "s_r.h5") as f:  # the scores carry the ids of --id-key, file order
        np.testing.assert_array_equal(f["ids"][()], ids)
    with h5py.File(sel_o) as a, h5py.File(sel_r) as b:
        assert sorted(a["ids"][()]) == sorted(b["ids"][()]) and len(a["ids"]) == 60
        assert not np.array_equal(np.sort(a["indices"][()]), np.sort(b["indices"][()]))


def test_inspect_matches_the_embeddings_by_id(data):
    sel = selection(data)
    args = ["inspect", sel, "--random-draws", "2", "--json"]
    orig = json.loads(ok(*args, "--embeddings", data / "e.h5", *LOAD).output)
    reord = json.loads(ok(*args, "--embeddings", data / "e_reordered.h5", *LOAD).output)
    assert reord["mmd"]["n_kept"] == orig["mmd"]["n_kept"] == 60
    assert reord["mmd"]["kept"] == pytest.approx(orig["mmd"]["kept"], rel=1e-6)
    assert reord["mmd"]["sigma"] == pytest.approx(orig["mmd"]["sigma"], rel=1e-6)
    assert reord["labels"] == orig["labels"]
    # Matched by position (no ids read), the reordered file scores other rows.
    by_pos = json.loads(ok(*args, "--embeddings", data / "e_reordered.h5", "--key",
                           "vecs").output)
    assert by_pos["mmd"]["kept"] != pytest.approx(orig["mmd"]["kept"], rel=0.05)


def test_stability_matches_selections_by_id(data):
    sel = selection(data)
    args = ["--selection", sel, *LOAD, "--n-sources", "24", "--steps", "8", "--dtype",
            "float64"]
    orig = json.loads(ok("stability", data / "e.h5", *args).output)["rows"][0]
    reord = json.loads(ok("stability", data / "e_reordered.h5", *args).output)["rows"][0]
    assert reord["n_kept"] == orig["n_kept"] == 60
    assert reord["unchanged_fraction"] == orig["unchanged_fraction"]
    for k in ("path_deviation_median", "path_deviation_p95"):
        assert reord[k] == pytest.approx(orig[k], rel=1e-9)


def test_select_labels_from_reads_key_and_ids(data):
    selection(data, "e.h5", "o"), selection(data, "e_reordered.h5", "r")
    kept = []
    for tag, emb in (("o", "e.h5"), ("r", "e_reordered.h5")):
        ok("select", data / f"s_{tag}.h5", "--pr", "0.5", "--balance", "labels",
           "--labels-from", data / emb, *LOAD, "-o", data / f"lab_{tag}.h5")
        with h5py.File(data / f"lab_{tag}.h5") as f:
            kept.append(sorted(f["ids"][()]))
    assert kept[0] == kept[1] and len(kept[0]) == 150
    r = cli("select", data / "s_o.h5", "--pr", "0.5", "--balance", "labels", "--labels-from",
            data / "e.h5", "-o", data / "x.h5")  # default --key: no 'embeddings' there
    assert r.exit_code == 2 and "embeddings" in r.output


def test_info_and_plan_read_the_id_key(data):
    docs = [json.loads(ok("info", data / e, *LOAD, "--json").output)
            for e in ("e.h5", "e_reordered.h5")]
    assert docs[0]["ids"] == docs[1]["ids"] == "str" and docs[0]["key"] == "vecs"
    assert docs[0]["norms"] == pytest.approx(docs[1]["norms"], rel=1e-6)
    assert json.loads(ok("info", data / "e.h5", "--key", "vecs", "--json").output)["ids"] is None
    for cmd in (["info", data / "e_reordered.h5"],
                ["plan", data / "e_reordered.h5", "-m", "kmeans", "--k", "4"],
                ["score", data / "e_reordered.h5", "-m", "kmeans", "--k", "4", "--dry-run",
                 "-o", data / "dry.h5"]):
        r = cli(*cmd, "--key", "vecs", "--id-key", "nope")
        assert r.exit_code == 2, r.output
        assert "has no dataset 'nope' for ids; check --id-key" in r.output
    assert not (data / "dry.h5").exists()


def test_export_writes_the_ids_of_the_id_key(data):
    sel_o, sel_r = selection(data, "e.h5", "o"), selection(data, "e_reordered.h5", "r")
    docs = [json.loads(ok("export", s, "--format", "json", "-o", "-").output)
            for s in (sel_o, sel_r)]
    assert sorted(docs[0]["ids"]) == sorted(docs[1]["ids"])
    assert all(i.startswith("img") for i in docs[0]["ids"])


# ------------------------------------------------------------------ the library, reordered data


def test_load_embeddings_and_describe_read_the_context(data):
    explicit = pk.load_embeddings(data / "e_reordered.h5", key="vecs", id_key="myids")
    with pk.runtime(key="vecs", id_key="myids"):
        implicit = pk.load_embeddings(data / "e_reordered.h5")
        described = pk.describe(data / "e_reordered.h5")
        # An explicit argument wins over the context.
        with pytest.raises(pk.PrunekitError, match="no dataset 'nope' for ids"):
            pk.load_embeddings(data / "e.h5", id_key="nope")
    np.testing.assert_array_equal(implicit.ids, explicit.ids)
    assert implicit.fingerprint == explicit.fingerprint and implicit.key == "vecs"
    assert described["ids"] == "str" and described["key"] == "vecs"
    assert described["norms"] == pytest.approx(
        pk.describe(data / "e.h5", key="vecs", id_key="myids")["norms"], rel=1e-6)
    with pytest.raises(pk.PrunekitError, match="embeddings"):
        pk.load_embeddings(data / "e.h5")  # outside the block: the default key again


def test_score_inspect_stability_as_library_calls(data):
    sel = pk.load_selection(selection(data))
    loss = str(data / "losses.csv")
    out = {}
    for name in ("e.h5", "e_reordered.h5"):
        with pk.runtime(key="vecs", id_key="myids"):
            emb = pk.load_embeddings(data / name)
            sc = pk.score(emb, "loss", from_file=loss)
            rep = pk.inspect(sel, embeddings=data / name, random_draws=1)
            st = pk.stability(data / name, selections=[sel], n_sources=16, steps=6,
                              dtype="float64")
        out[name] = (dict(zip(emb.ids.tolist(), sc.score.tolist(), strict=True)), rep, st)
        explicit = pk.inspect(sel, embeddings=data / name, key="vecs", id_key="myids",
                              random_draws=1)
        assert explicit["mmd"]["kept"] == rep["mmd"]["kept"]
    (s0, r0, t0), (s1, r1, t1) = out["e.h5"], out["e_reordered.h5"]
    assert s0 == s1
    assert r1["mmd"]["kept"] == pytest.approx(r0["mmd"]["kept"], rel=1e-6)
    assert t1["rows"][0]["unchanged_fraction"] == t0["rows"][0]["unchanged_fraction"]
    assert t1["rows"][0]["path_deviation_median"] == pytest.approx(
        t0["rows"][0]["path_deviation_median"], rel=1e-9)


# ------------------------------------------------------------------ the context itself


def test_runtime_nests_and_restores(tmp_path):
    base = pk.get_runtime()
    assert base == RunContext()
    eng = LocalEngine(1)
    with pk.runtime(memory="4K", id_key="a") as outer:
        assert outer.memory == 4096 and memory_budget() == 4096
        with pk.runtime(engine=eng, id_key="b", progress=False):
            ctx = pk.get_runtime()
            assert (ctx.memory, ctx.id_key, ctx.engine, ctx.progress) == (4096, "b", eng, False)
            assert current_engine() is eng
        assert pk.get_runtime() == outer
        with pytest.raises(RuntimeError), pk.runtime(memory="1M"):
            raise RuntimeError
        assert memory_budget() == 4096
    assert pk.get_runtime() is base
    with pk.runtime(work_dir=tmp_path / "w", key=None):  # a path becomes a WorkDir
        assert current_work_dir().path == tmp_path / "w" and pk.get_runtime().key == "embeddings"
    with pytest.raises(TypeError, match="unknown run-context field.*budget"):
        pk.runtime(budget=1)
    with pytest.raises(pk.PrunekitError, match="not a size"):
        pk.runtime(memory="lots")
    with pytest.raises(AttributeError):
        base.memory = 1  # frozen


def test_each_thread_and_task_has_its_own_context():
    seen = {}
    gate = threading.Barrier(2, timeout=10)

    def worker(mem):
        with pk.runtime(memory=mem):
            gate.wait()  # both blocks are open at the same time
            seen[mem] = memory_budget()

    threads = [threading.Thread(target=worker, args=(m,)) for m in (1024, 2048)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {1024: 1024, 2048: 2048}

    async def task(mem):
        with pk.runtime(memory=mem):
            await asyncio.sleep(0)  # the other task runs inside its own block here
            return memory_budget()

    async def both():
        return await asyncio.gather(task(4096), task(8192))

    assert asyncio.run(both()) == [4096, 8192]
    assert pk.get_runtime().memory is None


def test_local_engine_tasks_see_the_callers_context():
    def task(shared, item):
        return pk.get_runtime().id_key, memory_budget()

    with pk.runtime(id_key="x", memory="8K"):
        got = list(LocalEngine(3).map(task, range(6), progress=False))
    assert got == [("x", 8192)] * 6


def peak_concurrency(eng, n_items, expected, **kw):
    """The most calls that ran at once; each call waits until ``expected`` run together."""
    running, peak, lock = [0], [0], threading.Lock()
    full = threading.Event()

    def task(shared, item):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            if running[0] >= expected:
                full.set()
        full.wait(timeout=10)
        with lock:
            running[0] -= 1
        return item

    assert list(eng.map(task, range(n_items), progress=False, **kw)) == list(range(n_items))
    return peak[0]


def test_map_runs_as_many_tasks_as_the_budget_holds():
    eng = LocalEngine(8)
    with pk.runtime(memory=3000):
        assert engine_mod.tasks_fitting(1000) == 3
        assert peak_concurrency(eng, 12, 3, task_bytes=1000) == 3
        assert peak_concurrency(eng, 12, 2, task_bytes=1000, limit=2) == 2
        assert peak_concurrency(eng, 6, 1, task_bytes=10_000) == 1  # at least one
    assert engine_mod.tasks_fitting(1000, budget=10_000) == 10


def test_old_names_warn_and_delegate(tmp_path):
    eng = LocalEngine(1)
    with pytest.warns(DeprecationWarning, match=r"engine.use\(\) is deprecated"):
        cm = engine_mod.use(eng)
    with cm as got:
        assert got is eng and pk.get_runtime().engine is eng
        with pytest.warns(DeprecationWarning, match=r"engine.current\(\)"):
            assert engine_mod.current() is eng
    with pytest.warns(DeprecationWarning, match=r"budget.budget\(\)"):
        cm = budget_mod.budget("64K")
    with cm as b:
        assert b == 65536 and pk.get_runtime().memory == 65536
    assert pk.get_runtime().memory is None
    work = resume_mod.WorkDir(tmp_path / "w")
    with pytest.warns(DeprecationWarning, match=r"resume.use\(\)"):
        cm = resume_mod.use(work)
    with cm as got:
        assert got is work and current_work_dir() is work
        with pytest.warns(DeprecationWarning, match=r"resume.current\(\)"):
            assert resume_mod.current() is work
    assert not current_work_dir().enabled

    def in_fresh_context():
        with pytest.warns(DeprecationWarning, match=r"set_budget\(\)"):
            budget_mod.set_budget("2K")
        assert memory_budget() == 2048
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            budget_mod.set_budget(None)
        return pk.get_runtime().memory

    import contextvars

    assert contextvars.copy_context().run(in_fresh_context) is None
    assert pk.get_runtime().memory is None  # set_budget changed only that context


def test_the_cli_builds_one_context_from_its_options(data, monkeypatch):
    import prunekit.cli.info as info_cli
    import prunekit.cli.inspect as inspect_cli

    seen = []

    def spy(fn):
        def wrapper(*a, **kw):
            seen.append(pk.get_runtime())
            return fn(*a, **kw)
        return wrapper

    monkeypatch.setattr(info_cli, "describe", spy(info_cli.describe))
    ok("info", data / "e.h5", *LOAD, "--memory", "64M", "--allow-external")
    ctx = seen.pop()
    assert (ctx.key, ctx.id_key, ctx.memory, ctx.allow_external, ctx.progress) == (
        "vecs", "myids", 64 << 20, True, True)
    assert pk.get_runtime() == RunContext()  # left as it was

    monkeypatch.setattr(inspect_cli, "run_inspect", spy(inspect_cli.run_inspect))
    sel = selection(data)
    ok("inspect", sel, "--embeddings", data / "e.h5", *LOAD, "--quiet", "--workers", "2")
    ctx = seen.pop()
    assert ctx.progress is False and isinstance(ctx.engine, LocalEngine)
    assert ctx.engine.workers == 2 and ctx.memory is None and ctx.id_key == "myids"
    r = cli("info", data / "e.h5", "--key", "vecs", "--memory", "lots")
    assert r.exit_code == 2 and "--memory 'lots' is not a size" in r.output
