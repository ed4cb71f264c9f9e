"""select, inspect and export from partitioned folders, streamed: exactly the in-memory results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

pa = pytest.importorskip("pyarrow")  # the [parquet] extra

import prunekit.io.dataset as ds  # noqa: E402
from prunekit.cli import main  # noqa: E402
from prunekit.errors import PrunekitError  # noqa: E402
from prunekit.io.dataset import PartsReader  # noqa: E402
from prunekit.runtime.context import runtime  # noqa: E402
from prunekit.runtime.engine import LocalEngine  # noqa: E402
from prunekit.selection import streamed as st  # noqa: E402
from prunekit.selection.export import export_folder, export_payload  # noqa: E402
from prunekit.selection.inspection import inspect  # noqa: E402
from prunekit.selection.scores import Scores, load_scores  # noqa: E402
from prunekit.selection.subset import Selection, load_selection, select  # noqa: E402

PART = 23  # positions per part: a few hundred rows make a dozen parts


@pytest.fixture(autouse=True)
def small_parts(monkeypatch):
    monkeypatch.setattr(ds, "PART_ROWS", PART)


def narrow(monkeypatch, cells: int = 64, collect: int = 1) -> None:
    """Tiny histograms and (almost) no early collection: the search takes many passes."""
    monkeypatch.setattr(st, "HIST_CELLS", cells)
    monkeypatch.setattr(st, "FIRST_CELLS", cells)
    monkeypatch.setattr(st, "COLLECT_ROWS", collect)


def make_scores(seed: int, n: int = 240, k: int = 9, ids: str | None = "int",
                negative: bool = False, order: np.ndarray | None = None, score=None) -> Scores:
    """Scores with many ties, NaN (unscored) rows, -0.0 and +-inf, k clusters, labels."""
    rng = np.random.default_rng(seed)
    if score is None:
        score = rng.integers(-3, 4, n).astype(float)
        score[rng.random(n) < 0.05] = -0.0
        score[rng.random(n) < 0.04] = np.inf
        score[rng.random(n) < 0.04] = -np.inf
        score[rng.random(n) < 0.1] = np.nan
    cluster = rng.integers(0, k, n) * (3 if negative else 1) - (4 if negative else 0)
    made = None
    if ids == "int":
        made = rng.permutation(10 * n)[:n].astype(np.int64)
    elif ids == "str":
        made = np.array([f"img/{i:04d}-é.png" for i in rng.permutation(n)], dtype=object)
    return Scores(score=score, method="kmeans", n_total=n, cluster=cluster, ids=made,
                  labels=rng.integers(0, 4, n), order=order, source="emb.h5",
                  source_fingerprint="ab" * 16, params={"k": k})


def same(a: Selection, b: Selection) -> None:
    assert a.indices.tolist() == b.indices.tolist()
    assert (a.ids is None) == (b.ids is None)
    if a.ids is not None:
        assert a.ids.tolist() == b.ids.tolist()
    assert (a.counts is None) == (b.counts is None)
    if a.counts is not None:
        assert a.counts.tolist() == b.counts.tolist()
    assert (a.n_total, a.pr, a.method, a.seed, a.source_fingerprint, a.params) == \
        (b.n_total, b.pr, b.method, b.seed, b.source_fingerprint, b.params)


RULES = [
    dict(balance="none"),
    dict(balance="none", invert=True),
    dict(balance="clusters"),
    dict(balance="clusters", invert=True),
    dict(balance="proportional"),
    dict(balance="labels", invert=True),
    dict(balance="none", drop_clusters=[0, 5]),
    dict(balance="clusters", drop_clusters=0.3, seed=11),
]


@pytest.mark.parametrize("ids", ["int", "str", None])
@pytest.mark.parametrize("negative", [False, True])
def test_streamed_selection_equals_select_in_memory(tmp_path, ids, negative):
    for seed in range(2):
        sc = make_scores(seed, ids=ids, negative=negative)
        sc.save(tmp_path / f"s{seed}/")
        for rule in RULES:
            for pr in (0.0, 0.3, 0.9, 0.999):
                rule = {**rule, "drop_clusters": rule.get("drop_clusters")}
                if negative and rule["drop_clusters"] == [0, 5]:
                    rule["drop_clusters"] = [-4, 11]
                with runtime(engine=LocalEngine(1)):
                    got = st.select_streamed(tmp_path / f"s{seed}", pr, progress=False, **rule)
                same(got, select(sc, pr, **rule))


@pytest.mark.parametrize("cells, collect", [(64, 1), (4096, 3), (1 << 22, 1 << 20)])
def test_every_search_width_finds_the_same_cut(tmp_path, monkeypatch, cells, collect):
    # 64 cells over 9 clusters: 2-bit digits, one row at a time collected: dozens of passes
    narrow(monkeypatch, cells, collect)
    sc = make_scores(1, n=300, ids="str")
    sc.save(tmp_path / "s/")
    for rule in (dict(balance="none"), dict(balance="clusters", invert=True),
                 dict(balance="proportional"), dict(balance="clusters", oversample=True)):
        for pr in (0.0,) if rule.get("oversample") else (0.2, 0.85):
            same(st.select_streamed(tmp_path / "s", pr, progress=False, **rule),
                 select(sc, pr, **rule))


def test_oversampling_counts_equal_select_in_memory(tmp_path):
    for seed in range(4):
        sc = make_scores(seed, n=200, k=6)
        sc.save(tmp_path / f"s{seed}/")
        for rule in (dict(balance="clusters"), dict(balance="labels", invert=True),
                     dict(balance="none"), dict(balance="clusters", drop_clusters=[1, 2])):
            got = st.select_streamed(tmp_path / f"s{seed}", 0.0, oversample=True,
                                     progress=False, **rule)
            same(got, select(sc, 0.0, oversample=True, **rule))
            assert got.counts.min() >= 1


def test_a_folder_output_holds_the_selection_in_the_scores_part_ranges(tmp_path, monkeypatch):
    sc = make_scores(3, n=200, ids="str")
    sc.save(tmp_path / "scores/")  # parts every 23 positions
    monkeypatch.setattr(ds, "PART_ROWS", 64)  # an in-memory save would now cut every 64
    res = st.select_folder(tmp_path / "scores", tmp_path / "sel/", 0.6, balance="clusters",
                           params={"scores": "somewhere"}, progress=False)
    want = select(sc, 0.6, balance="clusters")
    want.params["scores"] = "somewhere"
    back = load_selection(tmp_path / "sel")
    same(back, want)
    assert (res.n_kept, res.n_total, res.draws, res.note, res.params) == \
        (want.n_kept, 200, None, None, want.params)
    m = json.loads((tmp_path / "sel" / "manifest.json").read_text())
    ranges = [(p["start"], p["stop"]) for p in m["parts"]]
    assert ranges == [(a, min(a + PART, 200)) for a in range(0, 200, PART)]
    assert [p["rows"] for p in m["parts"]] == [
        int(((want.indices >= a) & (want.indices < b)).sum()) for a, b in ranges]
    assert (m["n_kept"], m["pr"], m["seed"], m["method"]) == (want.n_kept, 0.6, 0, "kmeans")
    # HDF5 from a folder: the same selection, gathered after a memory check
    st.select_folder(tmp_path / "scores", tmp_path / "sel.h5", 0.6, balance="clusters",
                     params={"scores": "somewhere"}, progress=False)
    same(load_selection(tmp_path / "sel.h5"), want)


def test_every_engine_and_worker_count_writes_the_same_bytes(tmp_path):
    sc = make_scores(5, n=300, ids="int")
    sc.save(tmp_path / "scores/")
    outs = []
    for workers in (1, 3):
        with runtime(engine=LocalEngine(workers)):
            out = tmp_path / f"sel{workers}"
            st.select_folder(tmp_path / "scores", f"{out}/", 0.7, balance="clusters",
                             progress=False, command=["x"])
        outs.append({p.name: p.read_bytes() for p in sorted(out.glob("part-*.parquet"))})
    assert outs[0] == outs[1] and len(outs[0]) == 14


# -- greedy scores ------------------------------------------------------------------------------


def greedy_scores(n: int = 120, picks: int = 50, seed: int = 0) -> Scores:
    """Greedy scores as herding writes them: n - rank for picked rows, -inf for the others."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)[:picks]
    score = np.full(n, -np.inf)
    score[order] = n - np.arange(picks, dtype=float)
    nan = rng.permutation(np.setdiff1d(np.arange(n), order))[:5]
    score[nan] = np.nan
    return make_scores(seed, n=n, k=4, order=order, score=score)


def test_greedy_scores_streamed_refused_or_filled_as_select_does(tmp_path):
    sc = greedy_scores()
    sc.save(tmp_path / "g/")
    for rule in (dict(balance="none"), dict(balance="none", invert=True),
                 dict(balance="clusters")):
        same(st.select_streamed(tmp_path / "g", 0.7, progress=False, **rule),
             select(sc, 0.7, **rule))
        with pytest.raises(PrunekitError) as want:
            select(sc, 0.2, **rule)
        with pytest.raises(PrunekitError) as got:
            st.select_streamed(tmp_path / "g", 0.2, progress=False, **rule)
        assert str(got.value) == str(want.value) and "never picked" in str(got.value)
    # oversampling puts the unpicked rows last, without refusing
    same(st.select_streamed(tmp_path / "g", 0.0, oversample=True, balance="clusters",
                            progress=False), select(sc, 0.0, oversample=True, balance="clusters"))
    # a random fill is one permutation of all unpicked rows: done in memory, said so
    res = st.select_folder(tmp_path / "g", tmp_path / "f/", 0.2, fill="random", seed=4,
                           progress=False)
    assert "in memory" in res.note and "fill 'random'" in res.note
    same(load_selection(tmp_path / "f"), select(sc, 0.2, fill="random", seed=4))
    # when the kept set stays among the picks, a random fill changes nothing: streamed
    res = st.select_folder(tmp_path / "g", tmp_path / "f2/", 0.7, fill="random", progress=False)
    assert res.note is None
    same(load_selection(tmp_path / "f2"), select(sc, 0.7, fill="random"))


def test_a_pick_order_that_is_not_the_scored_rows_is_selected_in_memory(tmp_path):
    sc = make_scores(2, n=100, order=np.array([7, 3, 50, 11]))  # random scores, 4 picks
    sc.save(tmp_path / "o/")
    res = st.select_folder(tmp_path / "o", tmp_path / "sel/", 0.97, progress=False)
    assert "pick order" in res.note
    same(load_selection(tmp_path / "sel"), select(sc, 0.97))


# -- the first histogram, the fallback and the manifest's counts ------------------------------


def spread_scores(seed: int, n: int = 400, k: int = 6, signs: bool = False) -> Scores:
    """Distinct continuous scores on scales that differ per cluster (keys far apart); with
    ``signs`` every other cluster's scores are negative."""
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, k, n)
    score = (1.0 + rng.random(n)) * 4.0 ** cluster * np.where(signs & (cluster % 2 == 1), -1, 1)
    score[rng.random(n) < 0.05] = np.nan
    return Scores(score=score, method="kmeans", n_total=n, cluster=cluster, source="emb.h5",
                  source_fingerprint="cd" * 16, params={"k": k})


def _key_bits(sc: Scores, row: int, invert: bool = False) -> int:
    s = np.array([sc.score[row]])
    return int(st._Rule(None, None, invert, False, None, None).key(s)[0])


def test_a_window_that_misses_some_or_all_cuts_finds_the_same_cut(tmp_path, monkeypatch):
    sc = spread_scores(0, signs=True)
    sc.save(tmp_path / "s/")
    rows = np.flatnonzero(~np.isnan(sc.score))
    inside = []  # per start of a search: its cuts inside the window, all its cuts
    real = st._Search.window

    def spy(self, first, win, at):
        real(self, first, win, at)
        inside.append((int((self.depth[at] > 0).sum()), at.size))

    monkeypatch.setattr(st._Search, "window", spy)
    for shift, bits in ((63, 1), (59, 5), (50, 2), (48, 4), (30, 8), (0, 6)):
        for row, back in ((rows[0], 0), (rows[7], 1 << (bits - 1)), (rows[50], 1 << bits)):
            run = (_key_bits(sc, row) >> shift) - back  # the row's bin first, mid or past
            start = min(max(run, 0), (1 << (64 - shift)) - (1 << bits))
            win = st._Window(shift, start, bits)
            monkeypatch.setattr(st, "_window", lambda *a, w=win: w)
            for rule in (dict(balance="clusters"), dict(balance="none", invert=True)):
                for pr in (0.1, 0.6):
                    same(st.select_streamed(tmp_path / "s", pr, progress=False, **rule),
                         select(sc, pr, **rule))
    assert {(i == 0, i == n) for i, n in inside} == {(True, False), (False, True), (False, False)}


def _passes(monkeypatch) -> list[tuple[str, int]]:
    """Each pass's name and the sum over its tasks of the largest array each returned (in
    a pass that only gathers: the rows gathered)."""
    seen: list[tuple[str, int]] = []
    real_map = LocalEngine._map

    def spy(self, fn, items, shared, **kw):
        results = list(real_map(self, fn, items, shared, **kw))
        seen.append((kw.get("desc"), sum(_largest(r) for r in results)))
        yield from results

    monkeypatch.setattr(LocalEngine, "_map", spy)
    return seen


def test_an_overflowing_cut_bin_falls_back_to_a_radix_pass(tmp_path, monkeypatch):
    sc = spread_scores(1, n=600, k=3)
    sc.save(tmp_path / "s/")
    for collect, want in ((1 << 20, ["select: count", "select: pass 2"]),
                          (2, ["select: count", "select: pass 2", "select: pass 3"])):
        monkeypatch.setattr(st, "FIRST_CELLS", 3 * (4 + 2))  # a 2-bit window: wide bins
        monkeypatch.setattr(st, "COLLECT_ROWS", collect)
        seen = _passes(monkeypatch)
        got = st.select_streamed(tmp_path / "s", 0.5, balance="clusters", progress=False)
        monkeypatch.undo()
        same(got, select(sc, 0.5, balance="clusters"))
        assert [d for d, _ in seen][:len(want)] == want and (collect > 2) == (len(seen) == 3)


def test_the_manifest_counts_start_the_search_inside_the_cut_bin(tmp_path, monkeypatch):
    sc = spread_scores(2, n=2000, k=4)
    sc.save(tmp_path / "with/")
    shutil.copytree(tmp_path / "with", tmp_path / "without")
    _edit_manifest(tmp_path / "without", lambda m: m.pop("cluster_counts"))
    want = select(sc, 0.5, balance="clusters")
    gathered = {}
    for name in ("with", "without"):
        seen = _passes(monkeypatch)
        same(st.select_streamed(tmp_path / name, 0.5, balance="clusters", progress=False), want)
        monkeypatch.undo()
        assert [d for d, _ in seen] == ["select: count", "select: pass 2", "select: gather"]
        gathered[name] = seen[1][1]
    # without the counts pass 2 gathers whole clusters; with them, the rows of the cut bins
    assert gathered["without"] == int((~np.isnan(sc.score)).sum())
    assert 4 <= gathered["with"] <= gathered["without"] // 20


def test_ids_the_counts_do_not_announce_met_inside_a_part(tmp_path, monkeypatch):
    import prunekit.io.dataset.writer as writer

    sc = spread_scores(3, n=230, k=4)
    sc.cluster[np.arange(230) % 23 >= 20] = -1  # the last rows of every part: no cluster
    monkeypatch.setattr(writer, "ROW_GROUP_ROWS", 5)  # a few batches per part
    sc.save(tmp_path / "s/")
    monkeypatch.undo()
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["cluster_counts"] == \
        np.bincount(sc.cluster[sc.cluster >= 0]).tolist()
    for rule in (dict(balance="clusters"), dict(balance="proportional", invert=True),
                 dict(balance="clusters", drop_clusters=[-1, 2])):
        same(st.select_streamed(tmp_path / "s", 0.4, progress=False, **rule),
             select(sc, 0.4, **rule))


@pytest.mark.parametrize("edit, before_reading", [
    (lambda c: [c[0] + 1000, *c[1:]], True),  # more rows than the parts hold
    (lambda c: c[:-1], False),  # an id the counts do not announce
    (lambda c: [c[0] - 3, c[1] + 3, *c[2:]], False),  # the right total, the wrong clusters
    (lambda c: [*c[:-1], "7"], True),  # not a count
])
def test_counts_that_disagree_with_the_parts_are_a_clean_error(tmp_path, monkeypatch, edit,
                                                               before_reading):
    sc = spread_scores(4, n=200, k=5)
    sc.save(tmp_path / "s/")
    _edit_manifest(tmp_path / "s", lambda m: m.update(cluster_counts=edit(m["cluster_counts"])))
    seen = _passes(monkeypatch)
    with pytest.raises(PrunekitError, match=r"manifest.json: 'cluster_counts' disagrees with "
                                            r"the rows of the parts"):
        st.select_folder(tmp_path / "s", tmp_path / "sel/", 0.5, balance="clusters",
                         progress=False)
    assert (seen == []) == before_reading and not (tmp_path / "sel").exists()
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    r = _run("select", "s/", "--pr", "0.5", "--balance", "clusters", "-o", "sel/")
    assert r.exit_code == 2 and r.stderr.startswith("Error: ") and "Traceback" not in r.stderr
    assert len(r.stderr.splitlines()) == 1 and not (tmp_path / "sel").exists()


# -- bounded memory ------------------------------------------------------------------------------


def _largest(obj) -> int:
    """The largest numpy array inside a task's result or shared state."""
    if isinstance(obj, np.ndarray):
        return obj.size
    if isinstance(obj, (tuple, list)):
        return max((_largest(v) for v in obj), default=0)
    if isinstance(obj, dict):
        return max((_largest(v) for v in obj.values()), default=0)
    if hasattr(obj, "__dataclass_fields__"):
        return max((_largest(getattr(obj, f)) for f in obj.__dataclass_fields__), default=0)
    return 0


def test_the_driver_holds_per_group_state_never_rows(tmp_path, monkeypatch):
    n, k = 5000, 5
    sc = make_scores(8, n=n, k=k, ids="str")
    monkeypatch.setattr(ds, "PART_ROWS", 1000)
    sc.save(tmp_path / "scores/")
    narrow(monkeypatch, cells=64, collect=16)
    seen = []
    real_map = LocalEngine._map

    def spy(self, fn, items, shared, **kw):
        seen.append((kw.get("desc"), _largest(shared), 0))
        for res in real_map(self, fn, items, shared, **kw):
            seen.append((kw.get("desc"), 0, _largest(res)))
            yield res

    def refuse(*a, **kw):
        raise AssertionError("a whole column was read")

    monkeypatch.setattr(LocalEngine, "_map", spy)
    monkeypatch.setattr(PartsReader, "read_columns", refuse)
    monkeypatch.setattr("prunekit.selection.partitioned.load_scores_parts", refuse)
    with runtime(engine=LocalEngine(2)):
        st.select_folder(tmp_path / "scores", tmp_path / "sel/", 0.5, balance="clusters",
                         progress=False)
    passes = {d for d, _, _ in seen}
    assert {"select: count", "select: pass 2", "select: write"} <= passes
    # histograms of k x 2^bits <= 64 counts, at most 16 collected rows: O(k), not O(n)
    assert max(s for _, s, _ in seen) <= k and max(r for _, _, r in seen) <= 64
    monkeypatch.undo()
    same(load_selection(tmp_path / "sel"), select(sc, 0.5, balance="clusters"))


# -- bad inputs --------------------------------------------------------------------------------


@pytest.fixture
def scores_dir(tmp_path):
    make_scores(0, n=100).save(tmp_path / "scores/")
    return tmp_path / "scores"


def _edit_manifest(folder: Path, edit) -> None:
    f = folder / "manifest.json"
    m = json.loads(f.read_text())
    edit(m)
    f.write_text(json.dumps(m))


def test_bad_folders_are_a_clean_error_and_write_nothing(tmp_path, scores_dir):
    out = tmp_path / "sel"
    broken = tmp_path / "broken"
    shutil.copytree(scores_dir, broken)
    (broken / "part-00002.parquet").unlink()
    with pytest.raises(PrunekitError, match=r"part-00002.parquet is missing"):
        st.select_folder(broken, f"{out}/", 0.5, progress=False)
    shutil.rmtree(broken)
    shutil.copytree(scores_dir, broken)
    _edit_manifest(broken, lambda m: m["parts"][1].update(rows=m["parts"][1]["rows"] - 1))
    with pytest.raises(PrunekitError, match=r"parts\[1\] covers positions 23..46 with 22 rows"):
        st.select_folder(broken, f"{out}/", 0.5, balance="clusters", progress=False)
    shutil.rmtree(broken)
    shutil.copytree(scores_dir, broken)
    _edit_manifest(broken, lambda m: m.update(cluster_counts=[1] * 9))
    with pytest.raises(PrunekitError, match="'cluster_counts' disagrees with the rows"):
        st.select_folder(broken, f"{out}/", 0.5, balance="clusters", progress=False)
    with pytest.raises(PrunekitError, match="pr = 1.5 is outside"):
        st.select_folder(scores_dir, f"{out}/", 1.5, progress=False)
    make_scores(0, n=50).save(tmp_path / "nocluster/")
    _drop_column(tmp_path / "nocluster", "cluster")
    with pytest.raises(PrunekitError, match="have no 'cluster' dataset"):
        st.select_folder(tmp_path / "nocluster", f"{out}/", 0.5, balance="clusters",
                         progress=False)
    Selection(indices=[1, 2], n_total=9, pr=0.5).save(tmp_path / "asel/")
    with pytest.raises(PrunekitError, match="holds a partitioned selection, not scores"):
        st.select_folder(tmp_path / "asel", f"{out}/", 0.5, progress=False)
    with pytest.raises(PrunekitError, match="inner lies inside .*scores, which this command reads"):
        st.select_folder(scores_dir, f"{scores_dir}/inner/", 0.5, progress=False)
    assert not out.exists() and not (scores_dir / "inner").exists()


def _drop_column(folder: Path, name: str) -> None:
    """Scores without ``name`` (as a method that does not cluster writes them)."""
    sc = load_scores(folder)
    setattr(sc, name, None)
    shutil.rmtree(folder)
    sc.save(f"{folder}/")


# -- export ------------------------------------------------------------------------------------


@pytest.mark.parametrize("ids", ["int", "str", None])
@pytest.mark.parametrize("oversample", [False, True])
def test_export_of_a_folder_gives_the_bytes_of_the_loaded_selection(tmp_path, ids, oversample):
    sc = make_scores(4, n=150, ids=ids)
    sel = select(sc, 0.0 if oversample else 0.6, balance="clusters", oversample=oversample)
    sel.save(tmp_path / "sel/")
    back = load_selection(tmp_path / "sel")
    for fmt in ("npy", "json", "txt"):
        for use_ids in (False, True):
            if use_ids and ids is None and fmt != "json":
                with pytest.raises(PrunekitError, match="has no ids"):
                    export_folder(tmp_path / "sel", tmp_path / f"x.{fmt}", use_ids=use_ids)
                continue
            out = export_folder(tmp_path / "sel", tmp_path / f"x.{fmt}", use_ids=use_ids)
            assert out.read_bytes() == export_payload(back, fmt, use_ids)
    if ids is None:
        return
    assert np.load(tmp_path / "x.npy").tolist() == back.ids.repeat(
        1 if back.counts is None else back.counts).tolist()


def test_export_of_an_empty_folder_and_ids_a_line_cannot_hold(tmp_path):
    empty = Selection(indices=np.zeros(0, dtype=np.int64), n_total=30, pr=0.5,
                      ids=np.zeros(0, dtype=object))
    empty.save(tmp_path / "e/")
    for fmt in ("npy", "json", "txt"):
        got = export_folder(tmp_path / "e", tmp_path / f"e.{fmt}", use_ids=fmt != "json")
        assert got.read_bytes() == export_payload(load_selection(tmp_path / "e"), fmt,
                                                  fmt != "json")
    bad = Selection(indices=[1, 5], n_total=9, pr=0.5, ids=np.array(["a", "b\nc"], dtype=object))
    bad.save(tmp_path / "b/")
    with pytest.raises(PrunekitError, match=r"id number 1 \('b\\nc'\) contains a line break"):
        export_folder(tmp_path / "b", tmp_path / "b.txt", use_ids=True)
    assert not (tmp_path / "b.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".prunekit")] == []


# -- inspect -----------------------------------------------------------------------------------


@pytest.fixture
def emb_file(tmp_path):
    rng = np.random.default_rng(1)
    n = 400
    x = rng.normal(size=(n, 6)).astype(np.float32)
    x[[3, 77]] = np.nan
    path = tmp_path / "emb.h5"
    with h5py.File(path, "w") as f:
        f["embeddings"] = x
        f["ids"] = np.array([f"img{i}.png" for i in range(n)], dtype=h5py.string_dtype())
        f["labels"] = rng.integers(0, 3, n)
    return path


def test_inspect_of_folders_equals_inspect_of_the_loaded_objects(tmp_path, emb_file, monkeypatch):
    import prunekit as pk

    emb = pk.load_embeddings(emb_file, drop_nonfinite=True)
    sc = pk.score(emb, "kmeans", k=5, seed=0)
    sc.save(tmp_path / "scores/")
    sc.save(tmp_path / "scores.h5")
    for kw in (dict(pr=0.6, balance="clusters"), dict(pr=0.0, balance="clusters", oversample=True)):
        sel = select(sc, **kw)
        sel.save(tmp_path / "sel/")
        sel.save(tmp_path / "sel.h5")
        for opts in (dict(scores=True, embeddings=True), dict(scores=True),
                     dict(embeddings=True, mmd_sample=150)):
            args = dict(drop_nonfinite=True, random_draws=3, mmd_sample=opts.get("mmd_sample"))
            want = inspect(tmp_path / "sel.h5",
                           scores=tmp_path / "scores.h5" if "scores" in opts else None,
                           embeddings=emb_file if "embeddings" in opts else None, **args)
            with monkeypatch.context() as mp:  # streamed: neither side is loaded whole
                mp.setattr("prunekit.selection.inspection.load_selection", _refuse)
                mp.setattr("prunekit.selection.inspection.load_scores", _refuse)
                got = inspect(tmp_path / "sel",
                              scores=tmp_path / "scores" if "scores" in opts else None,
                              embeddings=emb_file if "embeddings" in opts else None, **args)
            assert got.to_dict() == {**want.to_dict(), "selection": str(tmp_path / "sel")}
            assert ("mmd" in got) == ("embeddings" in opts)


def _refuse(*a, **kw):
    raise AssertionError("loaded whole")


def test_inspect_matches_rows_by_id_in_memory_when_the_ids_name_other_rows(tmp_path):
    sc = make_scores(6, n=60, ids="int")
    sc.save(tmp_path / "scores/")
    # the same ids, kept at other positions: only matching by id gives the right rows
    rows = np.array([2, 9, 30])
    shifted = Selection(indices=rows + 1, n_total=60, pr=0.95, ids=sc.ids[rows])
    shifted.save(tmp_path / "sel/")
    got = inspect(tmp_path / "sel", scores=tmp_path / "scores").to_dict()
    assert got["clusters"] == inspect(shifted, scores=sc).to_dict()["clusters"]
    Selection(indices=[1], n_total=61, pr=0.5, ids=np.array([5])).save(tmp_path / "other/")
    with pytest.raises(PrunekitError, match=r"was made for 61 rows but .*scores has 60, and its ids"):
        inspect(tmp_path / "other", scores=tmp_path / "scores")


# -- CLI ---------------------------------------------------------------------------------------


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_select_export_inspect_from_folders(tmp_path, monkeypatch):
    sc = make_scores(9, n=180, ids="str")
    sc.save(tmp_path / "scores/")
    sc.save(tmp_path / "scores.h5")
    monkeypatch.chdir(tmp_path)
    r = _run("select", "scores/", "--pr", "0.5", "--balance", "clusters", "-o", "sel/",
             "--workers", 2)
    assert r.exit_code == 0, r.output + r.stderr
    want = select(sc, 0.5, balance="clusters")
    assert r.output == f"sel/: kept {want.n_kept} of {want.params['n_eligible']} scored rows " \
                       "(pr 0.5, balance clusters)\n"
    want.params["scores"] = "scores/"
    same(load_selection("sel"), want)
    r = _run("select", "scores/", "--pr", "0.5", "--balance", "clusters", "-o", "sel.h5")
    assert r.exit_code == 0, r.output + r.stderr
    same(load_selection("sel.h5"), want)
    for fmt in ("npy", "json", "txt"):
        r = _run("export", "sel/", "--format", fmt, "--ids")
        assert r.exit_code == 0 and r.output == f"sel.{fmt}: {want.n_kept} rows ({fmt})\n"
        assert Path(f"sel.{fmt}").read_bytes() == export_payload(load_selection("sel"), fmt, True)
    r = _run("export", "sel/", "--format", "txt", "-o", "-")
    assert r.output == "".join(f"{i}\n" for i in want.indices.tolist())
    r = _run("inspect", "sel/", "--scores", "scores/", "--json")
    assert r.exit_code == 0, r.output + r.stderr
    got = json.loads(r.output)
    assert got["clusters"] == inspect(want, scores=sc).to_dict()["clusters"]
    assert got["selection"] == "sel/" and got["n_kept"] == want.n_kept


def test_cli_select_errors_exit_2_and_notes_the_in_memory_path(tmp_path, monkeypatch):
    greedy_scores().save(tmp_path / "g/")
    monkeypatch.chdir(tmp_path)
    r = _run("select", "g/", "--pr", "0.5", "-o", "g/inside/")
    assert r.exit_code == 2 and r.stderr.startswith("Error: --output g/inside lies inside g/")
    assert "Traceback" not in r.stderr and not Path("g/inside").exists()
    r = _run("select", "g/", "--pr", "0.2", "-o", "sel/")
    assert r.exit_code == 2 and "never picked" in r.stderr and len(r.stderr.splitlines()) == 1
    assert not Path("sel").exists()
    r = _run("select", "g/", "--pr", "0.2", "--fill", "random", "-o", "sel/")
    assert r.exit_code == 0 and r.stderr.startswith("note: g/: selected in memory: fill 'random'")


# -- the plug-in reads a selection folder --------------------------------------------------------


def test_the_plugin_loaders_and_trainer_read_a_selection_folder(tmp_path):
    torch = pytest.importorskip("torch")
    from prunekit_lfm import data as D
    from prunekit_lfm.latents import LatentStore, save_latents

    names = np.array([f"img{i:02d}.png" for i in range(12)], dtype=object)
    Selection(indices=[1, 4, 7], n_total=12, pr=0.75, ids=names[[1, 4, 7]],
              counts=[1, 2, 1]).save(tmp_path / "sel/")
    data = torch.utils.data.TensorDataset(torch.arange(12) * 10)
    sub = D.torch_subset(data, tmp_path / "sel", ids=names)
    assert [int(sub[i][0]) for i in range(len(sub))] == [10, 40, 40, 70]
    drawn = list(D.torch_sampler(tmp_path / "sel", seed=0))
    assert len(drawn) == 4 and set(drawn) <= {1, 4, 7}
    assert drawn == list(D.torch_sampler(load_selection(tmp_path / "sel"), seed=0))
    assert D.selected_rows(tmp_path / "sel", 12, names[::-1]).tolist() == [10, 7, 7, 4]
    latents = tmp_path / "latents.h5"
    z = np.random.default_rng(0).standard_normal((12, 4, 4, 4)).astype(np.float32)
    save_latents(latents, LatentStore(z, names))
    r = _run("lfm", "train", latents, "--selection", f"{tmp_path}/sel/", "-o", tmp_path / "run",
             "--steps", 1, "--batch-size", 4, "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output + r.stderr
    assert "on 4 latents" in r.output
