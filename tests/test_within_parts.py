"""herding --within, kcenter --within and semdedup write their scores folders from the
engine's tasks: the parts (and the greedy order table) equal the in-memory scores saved as
a folder, column by column, and the gathered path's part files byte for byte, on one worker
and on two, with --within an HDF5 file or a folder; the driver never loads the cluster
column nor gathers a per-row result."""

from __future__ import annotations

import json

import numpy as np
import pytest
from parts_checks import write_h5_shards

pytest.importorskip("pyarrow")  # folders need the [parquet] extra

import prunekit as pk  # noqa: E402
import prunekit.io.dataset as ds  # noqa: E402
from prunekit.compute import grouping  # noqa: E402
from prunekit.io.dataset import PartsReader, writer  # noqa: E402
from prunekit.methods import REGISTRY, Method, greedy, score_to_folder  # noqa: E402
from prunekit.methods import semdedup as semdedup_mod  # noqa: E402
from prunekit.runtime import engine as engine_mod  # noqa: E402
from prunekit.runtime.engine import LocalEngine  # noqa: E402

SIZES = (700, 500, 300)  # rows per shard
N = sum(SIZES)
NAN_ROWS = (0, 900, 1499)  # dropped at load: a shard's first row, inside, the very last
CASES = [
    ("herding", {"max_keep": 40}),
    ("herding", {}),
    ("kcenter", {"max_keep": 7, "metric": "cosine"}),
    ("semdedup", {"keep": "hard"}),
]


@pytest.fixture
def small(monkeypatch):
    """128-row chunks, parts of at most 256 positions, buckets of ~300 rows, batches of ~100
    rows and order-table parts of 50 rows: every pass has many tasks."""
    monkeypatch.setattr(engine_mod, "MIN_CHUNK_ROWS", 128)
    monkeypatch.setattr(engine_mod, "CHUNK_BYTES", 128 * 4 * 8)
    monkeypatch.setattr(ds, "PART_ROWS", 256)
    monkeypatch.setattr(grouping, "BUCKET_ROWS", 300)
    monkeypatch.setattr(grouping, "BATCH_ROWS", 100)
    monkeypatch.setattr(writer, "TABLE_PART_ROWS", 50)


@pytest.fixture
def emb(tmp_path, small):
    """Three HDF5 shards of 8-wide rows (NAN_ROWS non-finite), ids and labels."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, 8)).astype(np.float32)
    x[list(NAN_ROWS), 3] = np.nan
    ids, lab = np.arange(N, dtype=np.int64) * 10 + 7, rng.integers(0, 5, N)
    d = write_h5_shards(tmp_path / "d", x, ids, lab, SIZES)
    return pk.load_embeddings(d, drop_nonfinite=True)


@pytest.fixture
def km(tmp_path, emb):
    """k-means clusters (k = 9) of ``emb`` as an HDF5 file and as a folder."""
    sc = pk.score(emb, "kmeans", k=9, seed=3, progress=False)
    sc.save(tmp_path / "km.h5")
    score_to_folder(emb, "kmeans", tmp_path / "km", k=9, seed=3, progress=False)
    return sc


def manifest(path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def read_all(path) -> tuple[dict, dict | None]:
    r = PartsReader(path, kind="scores")
    return r.read_columns(), r.table("order")


def assert_same(a: dict | None, b: dict | None) -> None:
    assert (a is None) == (b is None)
    if a is None:
        return
    assert sorted(a) == sorted(b)
    for c in a:
        assert a[c].dtype == b[c].dtype, c
        assert a[c].tobytes() == b[c].tobytes(), c


def no_gathering(monkeypatch) -> None:
    """The driver may not load the --within scores, nor build per-row results."""
    def refuse(*a, **k):
        raise AssertionError("a per-row array was gathered on the driver")

    for mod, name in [(greedy, "within_clusters"), (greedy, "interleave"),
                      (greedy, "grouped_clusters"), (semdedup_mod, "load_scores"),
                      (semdedup_mod, "grouped_clusters"), (greedy, "order_scores")]:
        monkeypatch.setattr(mod, name, refuse)


def gathered(monkeypatch, emb, method, path, **params):
    """The folder as the driver writes it from the method's in-memory result."""
    with monkeypatch.context() as m:
        m.setattr(Method, "writes_parts", property(lambda self: False))
        return score_to_folder(emb, method, path, seed=5, progress=False, **params)


@pytest.mark.parametrize(("method", "params"), CASES)
@pytest.mark.parametrize("within_kind", ["km.h5", "km"])
def test_workers_write_the_in_memory_folder(tmp_path, emb, km, monkeypatch, method, params,
                                            within_kind):
    params = {**params, "within": str(tmp_path / within_kind)}
    ref = tmp_path / "ref"
    pk.score(emb, method, seed=5, progress=False, **params).save(ref)
    want = gathered(monkeypatch, emb, method, tmp_path / "gathered", **params)
    no_gathering(monkeypatch)
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        with pk.runtime(engine=LocalEngine(workers)):
            got = score_to_folder(emb, method, out, seed=5, progress=False, **params)
        cols, order = read_all(out)
        ref_cols, ref_order = read_all(ref)
        assert_same(cols, ref_cols)
        assert_same(order, ref_order)
        assert (order is None) == (method == "semdedup")
        assert np.isnan(cols["score"][list(NAN_ROWS)]).all()
        assert (cols["cluster"][list(NAN_ROWS)] == -1).all()
        assert got.params == want.params
        m, g = manifest(out), manifest(want.path)
        for key in ("parts", "tables", "columns", "cluster_counts", "params", "run_id"):
            assert m[key] == g[key], key
        assert m["cluster_counts"] == np.bincount(km.cluster[km.cluster >= 0]).tolist()
        assert [(p["start"], p["stop"]) for p in m["parts"]] == [
            (0, 256), (256, 512), (512, 700), (700, 956), (956, 1200), (1200, 1456), (1456, 1500)]
    if method != "semdedup":
        picks = [min(params.get("max_keep") or N, int(c)) for c in m["cluster_counts"]]
        assert len(order["position"]) == sum(picks) == got.params["n_picked"]
        assert len(m["tables"]["order"]["parts"]) == -(-sum(picks) // 50)


def test_semdedup_clustering_itself_writes_from_the_workers(tmp_path, emb, monkeypatch):
    ref = tmp_path / "ref"
    pk.score(emb, "semdedup", k=6, seed=5, progress=False).save(ref)
    want = gathered(monkeypatch, emb, "semdedup", tmp_path / "gathered", k=6)
    no_gathering(monkeypatch)
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        with pk.runtime(engine=LocalEngine(workers)):
            got = score_to_folder(emb, "semdedup", out, seed=5, progress=False, k=6)
        assert_same(read_all(out)[0], read_all(ref)[0])
        assert "centroid_distance" in read_all(out)[0]
        assert got.params == want.params
        m, g = manifest(out), manifest(want.path)
        for key in ("parts", "arrays", "columns", "cluster_counts", "params", "run_id"):
            assert m[key] == g[key], key


def test_merged_places_are_the_interleaved_order():
    """The place of each pick in the merged order, computed per batch, against interleave."""
    rng = np.random.default_rng(1)
    picks = rng.integers(1, 9, 23)
    orders = []
    at = 0
    for p in picks:
        orders.append(np.arange(at, at + p))
        at += p
    merged = greedy.interleave(orders)
    place = np.empty(at, dtype=np.int64)
    place[merged] = np.arange(at)
    for batch in ([0, 1, 2], [3], list(range(4, 23))):
        for g, where in zip(batch, greedy._merged_places(picks, batch), strict=True):
            assert where.tolist() == place[orders[g]].tolist()


def test_unclustered_row_in_a_within_file_is_a_clean_error(tmp_path, emb, km, monkeypatch):
    bad = pk.Scores(score=km.score, method="kmeans", n_total=km.n_total,
                    cluster=np.where(np.arange(N) == 5, -1, km.cluster),
                    source_fingerprint=km.source_fingerprint)
    bad.save(tmp_path / "bad.h5")
    no_gathering(monkeypatch)
    with pytest.raises(pk.PrunekitError, match=r"--within file .*bad.h5 \['cluster'\] leaves "
                                               r"rows 5 unclustered"):
        score_to_folder(emb, "herding", tmp_path / "out", progress=False,
                        within=str(tmp_path / "bad.h5"))
    assert not (tmp_path / "out").exists()


def test_registry_methods_take_parts():
    assert all(REGISTRY[m].writes_parts for m in ("herding", "kcenter", "semdedup"))


def test_interrupted_folder_run_resumes_to_the_same_parts(tmp_path, emb, km, monkeypatch):
    """A run that fails in its fourth batch: --resume redoes only the batches not recorded
    (their files are checked, not trusted) and writes the same parts and order table."""
    from click.testing import CliRunner

    from prunekit.cli import main
    from prunekit.methods import herding

    args = ["score", str(tmp_path / "d"), "-m", "herding", "--within", str(tmp_path / "km"),
            "--max-keep", "9", "--drop-nonfinite", "-q", "--workers", "1"]
    runner = CliRunner()
    r = runner.invoke(main, [*args, "-o", str(tmp_path / "ref/")])
    assert r.exit_code == 0, r.output
    calls, task = [], herding._herd_batch

    def failing(shared, item):
        calls.append(item[0])
        if item[0] == 3 and fail:
            raise KeyboardInterrupt  # a kill: nothing turns it into a clean error
        return task(shared, item)

    monkeypatch.setattr(herding, "_herd_batch", failing)
    out = str(tmp_path / "out/")
    fail = True
    assert runner.invoke(main, [*args, "-o", out]).exit_code == 130  # interrupted
    assert not (tmp_path / "out").exists() and (tmp_path / ".prunekit-work").exists()
    (left,) = (tmp_path / ".prunekit-work").glob("*/scratch/groups/out/scores-00000001")
    left.unlink()  # a batch's record without its file: done again
    calls.clear()
    fail = False
    r = runner.invoke(main, [*args, "-o", out, "--resume"])
    assert r.exit_code == 0, r.output
    assert calls[0] == 1 and 0 not in calls and 2 not in calls and calls[1] == 3
    m, g = manifest(tmp_path / "out"), manifest(tmp_path / "ref")
    assert m["parts"] == g["parts"] and m["tables"] == g["tables"]
    assert not (tmp_path / ".prunekit-work").exists()
