"""The plan: each step's formula on hand-set rates, the verdict, and the command."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

import prunekit as pk
from prunekit.cli import main
from prunekit.compute.cluster import sample_bytes, sample_plan
from prunekit.errors import PrunekitError
from prunekit.io.source import open_source
from prunekit.methods import REGISTRY
from prunekit.params import validate
from prunekit.runtime.plan import plan
from prunekit.runtime.probe import Probe, probe

RATES = Probe(read_bytes_per_s=1e6, scan_bytes_per_s=2e6, gemm_flops_1=1e9, gemm_flops_all=2e9,
              gemv_flops_1=1e8, threads=2, bytes_read=0, seconds=0.0)
B = 1000 * 8 * 2  # 1000 rows x 8 float16 values
G = 1000 * (8 * 2 + 8)  # the rows grouped by cluster, and their positions


@pytest.fixture
def shards(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    x = np.random.default_rng(0).standard_normal((1000, 8)).astype(np.float16)
    np.save(d / "e_0.npy", x[:600])
    np.save(d / "e_1.npy", x[600:])
    return d


def test_kmeans_steps_follow_the_cost_model(shards):
    p = plan(shards, "kmeans", k=4, iters=10, restarts=1, rates=RATES, local_workers=2,
             ray_workers=4, budget=1 << 30)
    assert [s.name for s in p.steps] == ["load + check", "sample", "lloyd on sample", "assign"]
    load = p.step("load + check")
    assert load.passes == 1 and load.seconds_local == pytest.approx(B / 1e6 + B / (2e6 * 2))
    sample = p.step("sample")  # the sample is every row: one read
    assert sample.passes == 1 and sample.seconds_local == pytest.approx(B / 1e6)
    one, seeding, tries = kmeans_fit_flops(4)
    # no k-means rates in the probe: the fit's chunk tasks run on one thread each, so
    # seeding, Lloyd and the sample's final assignment all go at the one-thread GEMM rate;
    # the 1000 rows are one chunk (one task), the ten re-clusterings run 2 at a time
    lloyd = (10 * one + seeding + 5 * tries + one) / 1e9
    assert p.step("lloyd on sample").seconds_local == pytest.approx(lloyd)
    assign = p.step("assign")  # reading dominates: B / read here, B / (4 reads) on Ray
    assert assign.seconds_local == pytest.approx(B / 1e6)
    assert assign.seconds_ray == pytest.approx(B / 4e6)
    assert p.passes == 3 and p.seconds_local == pytest.approx(sum(s.seconds_local for s in p.steps))
    assert p.fits and p.n == 1000 and p.shards == 2


def test_kmeans_uses_the_probed_kmeans_rates_at_its_k(shards):
    rates = dataclasses.replace(RATES, kernels={"kmeans_k": 4, "lloyd_flops": 1e7,
                                                "seeding_flops": 2e7, "assign_flops_1": 4e7})
    p = plan(shards, "kmeans", k=4, iters=10, restarts=2, rates=rates, local_workers=2,
             ray_workers=4, budget=1 << 30)
    one, seeding, tries = kmeans_fit_flops(4)
    lloyd = 2 * (10 * one / 1e7 + (seeding + 5 * tries) / 2e7 + one / 4e7)
    assert p.step("lloyd on sample").seconds_local == pytest.approx(lloyd)
    ray = 2 * (10 * one / 1e7 + (seeding + 3 * tries) / 2e7 + one / 4e7)  # 4 tries at a time
    assert p.step("lloyd on sample").seconds_ray == pytest.approx(ray)
    assign = p.step("assign")  # now compute dominates: 2nkd over 2 tasks at 4e7 each
    assert assign.seconds_local == pytest.approx(max(B / 1e6, one / (2 * 4e7)))
    other_k = plan(shards, "kmeans", k=5, iters=10, restarts=2, rates=rates, local_workers=2,
                   budget=1 << 30)
    one5, seeding5, tries5 = kmeans_fit_flops(5)  # the probe ran at k=4: the GEMM rate again
    gemm = 2 * (10 * one5 + seeding5 + 5 * tries5 + one5) / 1e9
    assert other_k.step("lloyd on sample").seconds_local == pytest.approx(gemm)


def kmeans_fit_flops(k):
    """Flops of the k-means fit on the 1000 x 8 rows: one Lloyd iteration; k-means||'s
    distances to its 1 + 5 x 2k candidates; one weighted greedy k-means++ over them."""
    c = 1 + 10 * k
    return 2.0 * 1000 * k * 8, 2.0 * 1000 * 8 * c, c * 2.0 * k * 8 * (2 + math.log(k))


def test_kmeans_fit_spreads_over_its_chunks(shards, monkeypatch):
    from prunekit.compute import cluster

    # Chunks of 128 rows: the 1000 rows are 8 fit chunks, so Lloyd runs on 2 tasks here and
    # 4 on Ray (at most one task a chunk); faiss runs its Lloyd on one thread.
    monkeypatch.setattr(cluster, "FIT_CHUNK_BYTES", 128 * 4 * 8)
    monkeypatch.setattr(cluster, "FIT_MIN_CHUNK_ROWS", 128)
    one, seeding, tries = kmeans_fit_flops(4)
    for backend, here, there in (("auto", 2, 4), ("faiss", 1, 1)):
        p = plan(shards, "kmeans", k=4, iters=10, restarts=1, backend=backend, rates=RATES,
                 local_workers=2, ray_workers=4, budget=1 << 30)
        step = p.step("lloyd on sample")
        assert step.seconds_local == pytest.approx(
            (10 * one / here + seeding / 2 + 5 * tries + one / 2) / 1e9)
        assert step.seconds_ray == pytest.approx(
            (10 * one / there + seeding / 4 + 3 * tries + one / 4) / 1e9)
        assert "8 chunk(s)" in step.note


def test_cached_load_pass_is_free(shards):
    pk.load_embeddings(shards)  # writes the scan cache
    p = plan(shards, "random", rates=RATES, budget=1 << 30)
    load = p.step("load + check")
    assert (load.passes, load.seconds_local, load.peak_bytes) == (0, 0.0, 0)


def test_kmeans_sample_follows_the_data_not_the_budget(shards):
    # The sample is the one k-means will draw (cluster.sample_plan): all 1000 rows whatever
    # the budget. Its fit holds 1000 x (8 x 4 + 24) bytes, the 41 k-means|| candidates as
    # float32 and 4 x 8 centroids in float32 and float64.
    small = plan(shards, "kmeans", k=4, iters=10, restarts=1, rates=RATES, local_workers=2,
                 budget=1 << 15)
    large = plan(shards, "kmeans", k=4, iters=10, restarts=1, rates=RATES, local_workers=2,
                 budget=1 << 30)
    assert [vars(s) for s in small.steps] == [vars(s) for s in large.steps]
    fit = 1000 * 56 + 41 * 8 * 4 + 4 * 8 * 12
    assert sample_bytes(1000, 4, 8) == fit == small.step("lloyd on sample").peak_bytes
    assert large.fits and not small.fits  # 57 696 bytes > 32 KiB: k-means would refuse
    assert any("would refuse" in n and "--sample" in n for n in small.notes)
    # --sample 500 of 1000 rows: drawn, and its fit is within the 32 KiB
    p = plan(shards, "kmeans", k=4, iters=10, restarts=1, sample=500, rates=RATES,
             budget=1 << 15)
    assert sample_plan(1000, 4, 8, 500).rows == 500
    sample = p.step("sample")
    assert "500 of 1,000 rows" in sample.note
    assert sample.peak_bytes == 500 * 8 * 4 + 1000 * 8 * 6  # the sample, and one chunk read
    assert p.step("lloyd on sample").peak_bytes == 500 * 56 + 41 * 32 + 384 <= 1 << 15
    with pytest.raises(PrunekitError, match="--sample 3 holds fewer rows than --k 4"):
        plan(shards, "kmeans", k=4, sample=3, rates=RATES, budget=1 << 30)


def test_greedy_over_all_rows_beyond_the_budget_does_not_fit(shards):
    p = plan(shards, "kcenter", rates=RATES, budget=16 << 10)
    need = 1000 * 8 * 4 + 1000 * 8
    assert p.step("greedy picks").peak_bytes == need and not p.fits
    assert p.step("greedy picks").seconds_local == pytest.approx(1000 * 1000 * 3.0 * 8 / 1e8)
    assert any("--within" in n for n in p.notes)
    assert "does NOT fit" in p.table()


def test_greedy_within_clusters_uses_their_sizes(shards, tmp_path):
    emb = pk.load_embeddings(shards)
    cluster = np.r_[np.zeros(600, np.int64), np.ones(400, np.int64)]
    within = tmp_path / "km.h5"
    pk.Scores(score=np.zeros(1000), method="kmeans", n_total=1000, cluster=cluster,
              source_fingerprint=emb.fingerprint).save(within)
    p = plan(shards, "kcenter", within=str(within), max_keep=100, rates=RATES,
             local_workers=2, ray_workers=4, budget=1 << 30)
    picks = p.step("per-cluster picks")
    work = np.array([600 * 100 * 24.0, 400 * 100 * 24.0])  # s x picks x 3d flops
    assert picks.seconds_local == pytest.approx(max(work.sum() / 2, work.max()) / 1e8 + G / 1e6)
    assert picks.seconds_ray == pytest.approx(max(work.sum() / 4, work.max()) / 1e8 + G / 4e6)
    probed = dataclasses.replace(RATES, kernels={"kcenter_pick_s": 1e-3,
                                                 "kcenter_pick_per_value": 1e-8})
    p2 = plan(shards, "kcenter", within=str(within), max_keep=100, rates=probed,
              local_workers=2, ray_workers=4, budget=1 << 30)
    per_cluster = 100 * (1e-3 + 1e-8 * np.array([600, 400]) * 8)
    assert p2.step("per-cluster picks").seconds_local == pytest.approx(
        max(per_cluster.sum() / 2, per_cluster.max()) + G / 1e6)
    assert picks.peak_bytes == 2 * 600 * (8 * (4 + 2) + 8)  # two tasks, largest cluster each
    assert [s.name for s in p.steps][-3:] == ["group: scatter", "group: gather",
                                              "per-cluster picks"]


def test_probe_times_the_kernels_the_method_declares(shards):
    src = open_source(shards)
    spec = REGISTRY["semdedup"]
    r = probe(src, spec.probe, validate("semdedup", spec.params, {"k": 4}))
    assert 0 < r.bytes_read <= B and r.kernels["kmeans_k"] == 4
    assert sorted(r.kernels) == ["assign_flops_1", "kmeans_k", "lloyd_flops", "recluster_flops",
                                 "seeding_flops", "semdedup_flops_1"]
    assert min(r.read_bytes_per_s, r.scan_bytes_per_s, r.gemm_flops_1, r.gemm_flops_all,
               r.gemv_flops_1, *r.kernels.values()) > 0
    kc = probe(src, REGISTRY["kcenter"].probe, {})  # its own kernels only
    assert sorted(kc.kernels) == ["kcenter_pick_per_value", "kcenter_pick_s"]
    assert min(kc.kernels.values()) >= 0
    assert probe(src).kernels == {}  # no method: the shared rates only


def test_plan_command_prints_and_writes_nothing(shards, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["plan", str(shards), "-m", "kmeans", "--k", "4", "--json",
                                    "--workers", "3", "--memory", "1G"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["shape"] == [1000, 8] and d["ray_workers"] == 3 and d["budget"] == 1 << 30
    assert [s["name"] for s in d["steps"]][-1] == "assign" and d["fits"] is True
    assert sorted(p.name for p in shards.iterdir()) == ["e_0.npy", "e_1.npy"]  # not even a cache
    text = CliRunner().invoke(main, ["plan", str(shards), "-m", "kmeans", "--k", "4"]).output
    assert "ray (8 workers)" in text and "fits the memory budget" in text
    bad = CliRunner().invoke(main, ["plan", str(shards), "-m", "kmeans", "--max-keep", "3"])
    assert bad.exit_code == 2 and "--max-keep does not apply to method 'kmeans'" in bad.output


@pytest.fixture
def two_clusters(shards, tmp_path):
    """k-means scores of the shards with clusters of 600 and 400 rows."""
    emb = pk.load_embeddings(shards)  # caches the load pass
    cluster = np.r_[np.zeros(600, np.int64), np.ones(400, np.int64)]
    within = tmp_path / "km.h5"
    pk.Scores(score=np.zeros(1000), method="kmeans", n_total=1000, cluster=cluster,
              source_fingerprint=emb.fingerprint).save(within)
    return within


def test_semdedup_within_follows_its_cost_model(shards, two_clusters):
    rates = dataclasses.replace(RATES, kernels={"semdedup_flops_1": 1e7})
    p = plan(shards, "semdedup", within=str(two_clusters), rates=rates, local_workers=2,
             ray_workers=4, budget=1 << 30)
    assert [s.name for s in p.steps] == ["load + check", "group: scatter", "group: gather",
                                         "per-cluster dedup"]
    # Two chunks (the shards: 600 and 400 rows; a chunk holds up to 1000) and one bucket.
    # Scratch: pieces of 1000 x (16 + 16) bytes, grouped rows of 1000 x (16 + 8); the
    # scatter reads the rows and their cluster ids (8 bytes each) and writes the pieces,
    # the gather reads the pieces (and their ids first) and writes the grouped rows; no
    # write rate probed: the read rate. The driver holds 8 x (2 chunks x 1 bucket + 3 x 2).
    scatter, gather = p.step("group: scatter"), p.step("group: gather")
    assert scatter.seconds_local == pytest.approx((B + 8000 + 32000) / 1e6)
    assert scatter.seconds_ray == pytest.approx((B + 8000 + 32000) / 2e6)  # 2 chunks: 2 tasks
    assert gather.seconds_local == gather.seconds_ray == pytest.approx((32000 + 8000 + G) / 1e6)
    assert scatter.peak_bytes == 64 + 2 * 1000 * (3 * 16 + 48)  # two tasks of a chunk each
    assert gather.peak_bytes == 64 + 2 * 1000 * (16 + 16)  # one bucket: one task
    assert "31.2 KiB of pieces" in scatter.note and "54.7 KiB of scratch at the peak" in gather.note
    dedup = p.step("per-cluster dedup")  # s^2 d flops a cluster at the probed rate
    work = np.array([600 * 600 * 8, 400 * 400 * 8]) / 1e7  # 0.288 s and 0.128 s
    assert dedup.passes == 1
    assert dedup.seconds_local == pytest.approx(0.288 + G / 1e6)  # the largest cluster bounds
    assert dedup.seconds_ray == pytest.approx(max(work.sum() / 4, 0.288) + G / 4e6)
    # a task: 600 rows as read (2 bytes) and twice as float32, plus 1.25 x its 600 x 600
    # float32 similarities (the block and its mask); two tasks at once
    task = 600 * 8 * (2 + 8) + 1.25 * 4 * 600 * 600
    assert task == 1_848_000 and dedup.peak_bytes == 2 * task
    assert p.passes == 3 and p.per_row_bytes == 1000 * 8 * 6 + 1000 * 8
    # a budget that holds one task: one at a time, so the clusters' times add up
    one = plan(shards, "semdedup", within=str(two_clusters), rates=rates, local_workers=2,
               ray_workers=4, budget=3_000_000)
    assert one.step("per-cluster dedup").peak_bytes == task and one.fits
    assert one.step("per-cluster dedup").seconds_local == pytest.approx(work.sum() + G / 1e6)


def test_semdedup_clusters_with_kmeans_first(shards):
    pk.load_embeddings(shards)
    p = plan(shards, "semdedup", k=4, iters=10, rates=RATES, local_workers=2, ray_workers=4,
             budget=1 << 30)
    km = plan(shards, "kmeans", k=4, iters=10, rates=RATES, local_workers=2, ray_workers=4,
              budget=1 << 30)
    assert [s.name for s in p.steps] == ["load + check", "sample", "lloyd on sample", "assign",
                                         "group: scatter", "group: gather", "per-cluster dedup"]
    assert [vars(s) for s in p.steps[:4]] == [vars(s) for s in km.steps]
    # sizes unknown before k-means: 4 clusters of 250; no probed rate: the one-thread GEMM
    dedup = p.step("per-cluster dedup")
    each = 250 * 250 * 8 / 1e9
    assert dedup.seconds_local == pytest.approx(max(4 * each / 2, each) + G / 1e6)
    assert dedup.peak_bytes == 2 * (250 * 8 * 10 + 1.25 * 4 * 250 * 250)
    assert any("taken as equal (250 rows)" in n for n in p.notes)
    assert p.passes == 0 + 1 + 0 + 1 + 1 + 1 + 1


def test_plan_and_dry_run_cover_semdedup(shards, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["plan", str(shards), "-m", "semdedup", "--k", "4", "--json"])
    assert res.exit_code == 0, res.output
    names = [s["name"] for s in json.loads(res.output)["steps"]]
    assert names == ["load + check", "sample", "lloyd on sample", "assign", "group: scatter",
                     "group: gather", "per-cluster dedup"]
    res = CliRunner().invoke(main, ["score", str(shards), "-m", "semdedup", "--k", "4",
                                    "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "per-cluster dedup" in res.output and "no cost model" not in res.output
    assert not (tmp_path / "scores.h5").exists()


def test_plan_refuses_more_clusters_than_rows_before_a_long_probe(tmp_path):
    import h5py

    with h5py.File(tmp_path / "e.h5", "w") as f:
        f["embeddings"] = np.random.default_rng(0).standard_normal((300, 4)).astype(np.float32)
    for k in ("301", str(2**63 - 1)):
        res = CliRunner().invoke(main, ["plan", str(tmp_path / "e.h5"), "-m", "kmeans", "--k", k])
        assert res.exit_code == 2
        assert f"k-means needs 1 <= k <= number of rows (300); got k={k}" in res.output
    # The probe runs at a bounded k: its sample stays small whatever --k asks.
    from prunekit.methods.kmeans import PROBE_K_MAX, kmeans_probe

    assert kmeans_probe(4, 10**9, {"k": 10**6})["kmeans_k"] == PROBE_K_MAX


def test_folder_output_adds_its_parts_write(shards):
    # k-means writes a folder's parts from its assignment tasks, one task a part (the two
    # shards: two parts), at the probed Parquet rate; an HDF5 output has no such step.
    rates = dataclasses.replace(RATES, part_rows_per_s=1e4)
    h5 = plan(shards, "kmeans", k=4, rates=rates, local_workers=2, ray_workers=4,
              budget=1 << 30)
    folder = plan(shards, "kmeans", k=4, rates=rates, local_workers=2, ray_workers=4,
                  budget=1 << 30, output="km/")
    assert "write parts" not in [s.name for s in h5.steps]
    write = folder.step("write parts")
    assert [s.name for s in folder.steps][-2:] == ["assign", "write parts"]
    assert write.seconds_local == write.seconds_ray == pytest.approx(1000 / (1e4 * 2))
    assert "2 Parquet part(s) written by the tasks" in write.note
    # so does every method that writes parts from its workers
    rnd = plan(shards, "random", rates=rates, local_workers=2, budget=1 << 30, output="r/")
    assert REGISTRY["random"].writes_parts
    assert rnd.step("write parts").seconds_local == pytest.approx(1000 / (1e4 * 2))
    # without pyarrow the probe cannot time it: said, not guessed
    none = plan(shards, "random", rates=RATES, budget=1 << 30, output="r/")
    assert none.step("write parts").seconds_local == 0 and any("pyarrow" in n for n in none.notes)


def test_hard_linked_shards_are_read_from_the_cache_after_the_first(tmp_path):
    # Three shards, two of them hard links of one file: 1/3 of the bytes are read again
    # from the page cache. The chunk tasks' float32 copies add B / (prepare x tasks).
    d = tmp_path / "d"
    d.mkdir()
    x = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float16)
    np.save(d / "a.npy", x)
    np.save(d / "b.npy", x)
    (d / "c.npy").hardlink_to(d / "a.npy")
    b = 3 * 500 * 16
    rates = dataclasses.replace(RATES, cache_bytes_per_s=4e6)
    p = plan(d, "kmeans", k=4, rates=rates, local_workers=2, ray_workers=4, budget=1 << 30)
    read = (2 * b / 3) / 1e6 + (b / 3) / 4e6
    assert p.step("sample").seconds_local == pytest.approx(read)
    assert p.step("sample").seconds_ray == pytest.approx(read / 4)
    fast = dataclasses.replace(rates, prepare_bytes_per_s=1e4)  # the copies dominate
    q = plan(d, "kmeans", k=4, rates=fast, local_workers=2, ray_workers=4, budget=1 << 30)
    assign_flops = 2.0 * 1500 * 4 * 8
    assert q.step("assign").seconds_local == pytest.approx(assign_flops / 2e9 + b / 2e4)


def test_plan_total_grows_with_the_rows(tmp_path):
    # The same data in 1, 2 and 4 hard-linked shards: every step's time and the total grow
    # (or stay: the cached load pass) with the rows; on the grouping too.
    x = np.random.default_rng(0).standard_normal((1000, 8)).astype(np.float16)
    totals, scratch = [], []
    for shards in (1, 2, 4):
        d = tmp_path / f"d{shards}"
        d.mkdir()
        np.save(d / "s_0.npy", x)
        for i in range(1, shards):
            (d / f"s_{i}.npy").hardlink_to(d / "s_0.npy")
        rates = dataclasses.replace(RATES, cache_bytes_per_s=4e6, prepare_bytes_per_s=5e6,
                                    write_bytes_per_s=2e6, part_rows_per_s=1e5)
        p = plan(d, "semdedup", k=4, iters=5, rates=rates, local_workers=2, ray_workers=4,
                 budget=1 << 30, output="s/")
        totals.append((p.seconds_local, p.seconds_ray))
        scratch.append(p.step("group: scatter").seconds_local)
    assert totals[0][0] < totals[1][0] < totals[2][0]
    assert totals[0][1] < totals[1][1] < totals[2][1]
    assert scratch[0] < scratch[1] < scratch[2]


def test_grouping_buckets_follow_the_grouping_module(shards, monkeypatch):
    # With buckets of 300 rows the 1000 rows of 4 clusters are 4 buckets of one cluster
    # each (bucket_plan): four gather tasks, two at a time here, each 2 x 1000 x 32 bytes.
    from prunekit.compute import grouping

    monkeypatch.setattr(grouping, "BUCKET_ROWS", 300)
    assert grouping.bucket_plan(3, 1000) == (4, 1)
    p = plan(shards, "semdedup", k=4, rates=RATES, local_workers=2, ray_workers=4,
             budget=1 << 30)
    gather = p.step("group: gather")
    assert gather.peak_bytes == 8 * (2 * 4 + 3 * 4) + 2 * (2 * 1000 * 32)
    assert gather.seconds_ray == pytest.approx((32000 + 8000 + G) / 4e6)  # 4 buckets, 4 streams
    assert "4 task(s)" in gather.note


def test_within_cluster_sizes_come_streamed_or_from_the_manifest(tmp_path, monkeypatch):
    """A plan counts the --within clusters chunk by chunk (h5), from the manifest's counts
    (folder), never by loading the scores; the sizes equal a bincount of the column."""
    pytest.importorskip("pyarrow")
    import importlib

    costs = importlib.import_module("prunekit.runtime.costs")
    scores_mod = importlib.import_module("prunekit.selection.scores")

    cluster = np.random.default_rng(3).integers(-1, 6, 5000)
    cluster[cluster == 4] = -1  # an empty cluster id is no cluster
    sc = pk.Scores(score=np.zeros(5000), method="kmeans", n_total=5000, cluster=cluster)
    sc.save(tmp_path / "km.h5")
    sc.save(tmp_path / "km")
    monkeypatch.setattr(scores_mod, "load_scores", lambda *a, **k: pytest.fail("loaded"))
    want = np.bincount(cluster[cluster >= 0])
    want = want[want > 0]
    for path in (tmp_path / "km.h5", tmp_path / "km"):
        assert np.array_equal(costs.cluster_sizes(path), want)
    assert np.array_equal(costs.cluster_sizes(sc), want)


def test_a_folder_output_holds_no_per_row_arrays_where_the_tasks_write_the_parts(shards, tmp_path):
    """Per-row arrays (and the ids beside them) are counted only where the driver holds
    them: a single HDF5 output, or a method that gathers (one global greedy order)."""
    pytest.importorskip("pyarrow")
    np.save(tmp_path / "l.npy", np.zeros(1000))
    (tmp_path / "l.json").write_text(json.dumps([0.0] * 1000))
    (tmp_path / "o.json").write_text(json.dumps({str(i): 0.0 for i in range(1000)}))
    cases = [("kmeans", {"k": 4}, 8 * 4), ("random", {}, 8 * 2),
             ("loss", {"from_file": str(tmp_path / "l.npy")}, 8 * 2),
             ("loss", {"from_file": str(tmp_path / "o.json")}, 8 * 2),  # streamed, joined
             ("loss", {"from_file": str(tmp_path / "l.json")}, 8 * 2),  # streamed, spooled
             ("semdedup", {"k": 4}, 8 * 6)]
    kw = dict(rates=RATES, local_workers=2, ray_workers=4, budget=1 << 30)
    for method, params, per_row in cases:
        assert plan(shards, method, **params, **kw).per_row_bytes == 1000 * (per_row + 8), method
        assert plan(shards, method, output=str(tmp_path / "out/"), **params,
                    **kw).per_row_bytes == 0, method
    gathered = [("herding", {"max_keep": 10}, 8 * 2)]
    for method, params, per_row in gathered:
        assert plan(shards, method, output=str(tmp_path / "out/"), **params,
                    **kw).per_row_bytes == 1000 * (per_row + 8), method
