"""The plan of a whole run: score, then select and export, on hand-set rates."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from prunekit.cli import main
from prunekit.errors import PrunekitError
from prunekit.runtime import plan as plan_mod
from prunekit.runtime.pipeline_costs import makespan
from prunekit.runtime.plan import plan
from prunekit.runtime.probe import Probe, measure_pipeline

# The load pass, k-means and the parts' writes at the rates of tests/test_plan.py; select a
# task: count 10^4 rows/s, cut bins 2 x 10^4, write 5 x 10^3; 20 bytes a scores row on disk,
# hashed at 10^6 bytes/s; select() in memory 10^4 rows/s; export npy 10^5 kept rows/s.
RATES = Probe(read_bytes_per_s=1e6, scan_bytes_per_s=2e6, gemm_flops_1=1e9, gemm_flops_all=2e9,
              gemv_flops_1=1e8, threads=2, bytes_read=0, seconds=0.0, part_rows_per_s=1e4,
              select_count_rows_per_s=1e4, select_cut_rows_per_s=2e4,
              select_write_rows_per_s=5e3, select_memory_rows_per_s=1e4, hash_bytes_per_s=1e6,
              score_part_bytes_per_row=20.0, export_rows_per_s={"npy": 1e5})
KW = dict(rates=RATES, local_workers=2, ray_workers=4, budget=1 << 30)
AFTER = ["select: count", "select: cut bins", "select: write parts", "export"]


@pytest.fixture
def shards(tmp_path):
    """1000 x 8 float16 rows in shards of 600 and 400 rows: two scores parts."""
    d = tmp_path / "d"
    d.mkdir()
    x = np.random.default_rng(0).standard_normal((1000, 8)).astype(np.float16)
    np.save(d / "e_0.npy", x[:600])
    np.save(d / "e_1.npy", x[600:])
    return d


def linked(tmp_path, name: str, shards: int):
    """``shards`` hard links of one shard of 500 rows: parts of 500 rows each."""
    d = tmp_path / name
    d.mkdir()
    x = np.random.default_rng(1).standard_normal((500, 8)).astype(np.float16)
    np.save(d / "s_0.npy", x)
    for i in range(1, shards):
        (d / f"s_{i}.npy").hardlink_to(d / "s_0.npy")
    return d


def test_select_and_export_steps_by_hand(shards):
    p = plan(shards, "kmeans", k=4, output="km/", select=0.5, balance="clusters",
             export="npy", **KW)
    names = [s.name for s in p.steps]
    assert names[-5:] == ["write parts", *AFTER]
    assert [p.step(n).passes for n in AFTER] == [1, 1, 1, 1]
    # count: a part of 600 rows: 600 / 10^4 s, and its 12 000 bytes hashed (parts up to
    # 64 MiB are): 0.012 s; the 400-row part 0.04 + 0.008 s, on the other task. Ray: the
    # two parts on two of its four workers.
    count = p.step("select: count")
    assert count.seconds_local == count.seconds_ray == pytest.approx(0.06 + 0.012)
    # 1000 rows in 4 clusters: a histogram of 2^9 + 2 bins a cluster (4 x (2^b + 2) <= the
    # 4000 counters of 4 a row); a task holds a batch of 65 536 rows x 96 B and one, the
    # driver one a running task (its result) and their sum
    hist, batch = 8 * 4 * 514, 65536 * 96
    assert count.peak_bytes == 2 * (batch + hist) + 2 * hist + hist
    assert "4 x 512 bins" in count.note
    # cut bins: 250 rows a cluster, ceil(250 x 32 / 512) = 16 of them in its cut bin: 64
    # rows gathered (24 B each, three copies in the driver), one pass; 600 / (2 x 10^4) s
    cut = p.step("select: cut bins")
    assert cut.seconds_local == cut.seconds_ray == pytest.approx(0.03)
    assert cut.peak_bytes == 2 * (batch + 24 * 64 // 2) + 3 * 24 * 64
    assert "~64 rows" in cut.note
    write = p.step("select: write parts")  # three row groups of 2^17 rows x 96 B a task
    assert write.seconds_local == write.seconds_ray == pytest.approx(600 / 5e3)
    assert write.peak_bytes == 2 * 3 * 131072 * 96
    assert "500 kept rows" in write.note
    export = p.step("export")  # 500 kept rows in the driver; a batch of 65 536 x 24 B
    assert export.seconds_local == export.seconds_ray == pytest.approx(500 / 1e5)
    assert export.peak_bytes == 65536 * 24
    # the total's time covers the run, its passes the embeddings only (load, sample, assign)
    assert p.seconds_local == pytest.approx(sum(s.seconds_local for s in p.steps))
    assert p.passes == 3
    assert p.to_dict()["select"] == {"pr": 0.5, "balance": "clusters", "export": "npy"}


def test_cut_bins_take_a_second_pass_beyond_the_gathered_rows(shards, monkeypatch):
    from prunekit.selection import streamed

    one = plan(shards, "kmeans", k=4, output="km/", select=0.5, balance="clusters", **KW)
    monkeypatch.setattr(streamed, "COLLECT_ROWS", 32)  # 64 candidate rows do not fit
    two = plan(shards, "kmeans", k=4, output="km/", select=0.5, balance="clusters", **KW)
    assert (one.step("select: cut bins").passes, two.step("select: cut bins").passes) == (1, 2)
    assert two.step("select: cut bins").seconds_local == pytest.approx(0.06)
    # pr 0 keeps every row: no cut to find; no export unless asked
    keep = plan(shards, "kmeans", k=4, output="km/", select=0.0, **KW)
    assert keep.step("select: cut bins").passes == 0
    assert keep.step("select: cut bins").seconds_local == 0
    assert [s.name for s in keep.steps][-3:] == AFTER[:3]
    # balance none is one group: its histogram has 2^11 bins (2^11 + 2 <= 4 counters a row)
    assert "1 x 2,048 bins" in keep.step("select: count").note


def test_twice_the_rows_twice_the_time_and_more_workers_not_slower(tmp_path):
    rates = dataclasses.replace(RATES, hash_bytes_per_s=0.0)  # no hashing: rows alone
    small, large = (plan(linked(tmp_path, f"d{s}", s), "kmeans", k=4, output="km/",
                         select=0.5, balance="clusters", export="npy", **{**KW, "rates": rates})
                    for s in (2, 4))
    for name in AFTER:  # two parts of 500 rows on 2 tasks, then four
        assert large.step(name).seconds_local == pytest.approx(2 * small.step(name).seconds_local)
    for name in AFTER:
        times = [plan(linked(tmp_path, f"w{w}{name[-3:]}", 4), "kmeans", k=4, output="km/",
                      select=0.5, balance="clusters", export="npy",
                      **{**KW, "rates": rates, "ray_workers": w}).step(name).seconds_ray
                 for w in (1, 2, 3, 4, 8)]
        assert all(a >= b for a, b in zip(times, times[1:], strict=False)), (name, times)
        assert times[0] > times[-1] or name == "export"  # export: the driver alone


def test_makespan_takes_the_parts_in_order():
    assert makespan([3, 1, 1, 1], 2) == 3  # 3 | 1 + 1 + 1
    assert makespan([1, 1, 3], 2) == 4  # 1 + 3 | 1
    assert makespan([2, 2, 2], 8) == 2 and makespan([], 4) == 0


def test_an_hdf5_output_is_selected_in_memory(shards):
    p = plan(shards, "kmeans", k=4, select=0.8, export="npy", **KW)
    assert [s.name for s in p.steps][-2:] == ["select (in memory)", "export"]
    mem = p.step("select (in memory)")  # 24 B a row read, then 10^4 rows/s, in the driver
    assert mem.seconds_local == mem.seconds_ray == pytest.approx(1000 * 24 / 1e6 + 1000 / 1e4)
    assert mem.peak_bytes == 1000 * (24 + 96)
    export = p.step("export")  # 200 kept rows, the export built in memory
    assert export.seconds_local == pytest.approx(200 / 1e5) and export.peak_bytes == 72 * 200


def test_groups_come_from_k_or_within_and_bad_options_are_refused(shards):
    with pytest.raises(PrunekitError, match="--balance clusters needs clusters"):
        plan(shards, "random", select=0.5, balance="clusters", **KW)
    for pr in (1.0, -0.1, math.nan, 2):
        with pytest.raises(PrunekitError, match=r"--select .* is outside \[0, 1\)"):
            plan(shards, "kmeans", k=4, select=pr, **KW)
    with pytest.raises(PrunekitError, match="give --select PR too"):
        plan(shards, "kmeans", k=4, export="npy", **KW)
    with pytest.raises(PrunekitError, match="--balance 'labels' cannot be planned"):
        plan(shards, "kmeans", k=4, select=0.5, balance="labels", **KW)
    # a probe that did not time select: 0 s, and the plan says so
    bare = plan(shards, "random", output="r/", select=0.5, **{**KW, "rates": Probe(
        1e6, 2e6, 1e9, 2e9, 1e8, 2, 0, 0.0)})
    assert bare.step("select: count").seconds_local == 0
    assert any("not timed" in n for n in bare.notes)


def test_probe_times_select_and_export_on_the_real_code():
    pytest.importorskip("pyarrow")
    r = measure_pipeline(4, "txt", rows=1 << 14)
    assert sorted(r) == ["export_rows_per_s", "hash_bytes_per_s", "score_part_bytes_per_row",
                         "select_count_rows_per_s", "select_cut_rows_per_s",
                         "select_memory_rows_per_s", "select_write_rows_per_s"]
    assert min(v for k, v in r.items() if k != "export_rows_per_s") > 0
    assert list(r["export_rows_per_s"]) == ["txt"] and r["export_rows_per_s"]["txt"] > 0
    assert measure_pipeline(1, None, rows=1 << 12)["export_rows_per_s"] == {}


def test_plan_command_prints_the_run(shards, tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["plan", str(shards), "-m", "kmeans", "--k", "4", "-o",
                                    "km/", "--select", "0.5", "--balance", "clusters",
                                    "--export", "npy", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert [s["name"] for s in d["steps"]][-4:] == AFTER
    assert d["select"] == {"pr": 0.5, "balance": "clusters", "export": "npy"}
    assert d["probe"]["select_count_rows_per_s"] > 0 and d["probe"]["export_rows_per_s"]["npy"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # nothing written
    monkeypatch.setattr(plan_mod, "probe", lambda *a, **k: RATES)  # the table: no new probe
    text = CliRunner().invoke(main, ["plan", str(shards), "-m", "kmeans", "--k", "4", "-o",
                                     "km/", "--select", "0.5", "--export", "npy"]).output
    assert "then select --pr 0.5 --balance none, export --format npy" in text
    assert all(f"\n  {n} " in text for n in AFTER)
    assert "select and export" in text and "export npy 0.1" in text


@pytest.mark.parametrize("args, says", [
    (["--select", "1"], "--select 1.0 is outside [0, 1)"),
    (["--select", "-0.5"], "--select -0.5 is outside [0, 1)"),
    (["--export", "npy"], "give --select PR too"),
    (["--select", "0.5", "--balance", "clusters", "-m", "random"], "needs clusters"),
])
def test_plan_command_refuses_bad_select_options(shards, tmp_path, monkeypatch, args, says):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(plan_mod, "probe", lambda *a, **k: pytest.fail("probed"))
    method = [] if "-m" in args else ["-m", "kmeans", "--k", "4"]
    res = CliRunner().invoke(main, ["plan", str(shards), *method, *args])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and says in lines[0], res.output
