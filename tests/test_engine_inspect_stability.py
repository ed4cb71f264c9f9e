"""inspect's MMD and the stability runs on the engines: same numbers everywhere, bounded memory.

The Ray checks share one 2-CPU local cluster for the module (skipped without Ray).
"""

from __future__ import annotations

import json
import sys
import tracemalloc

import numpy as np
import pytest
from click.testing import CliRunner

import prunekit as pk
from prunekit.cli import main
from prunekit.compute import kernels
from prunekit.compute.distances import sq_distances
from prunekit.compute.kernels import median_pair_sq_distance, median_sigma
from prunekit.flow import ClosedFormField, integrate_together, nearest
from prunekit.flow.assign import SOURCE_BLOCK, compare_subsets
from prunekit.flow.study import stability
from prunekit.runtime import engine as engine_mod
from prunekit.runtime.engine import LocalEngine
from prunekit.seeds import role_rng
from prunekit.selection import quality
from prunekit.selection.quality import mmd_report


def old_median_sigma(x, seed=0, sample=4096):
    """The full-matrix formula the blocked one replaces."""
    n = x.shape[0]
    rows = np.arange(n) if n <= sample else np.sort(
        np.random.default_rng(seed).choice(n, size=sample, replace=False))
    d2 = sq_distances(x[rows])
    med = float(np.median(d2[np.triu_indices(len(rows), k=1)]))
    return float(np.sqrt(med / 2.0)) if med > 0 else 1.0


@pytest.mark.parametrize("n, d, sample", [(2, 3, 4096), (3, 1, 4096), (301, 5, 4096),
                                          (1000, 16, 257), (700, 7, 700)])
def test_median_sigma_blocked_equals_full_matrix(n, d, sample):
    x = np.random.default_rng(n).standard_normal((n, d)).astype(np.float32)
    assert median_sigma(x, seed=4, sample=sample) == old_median_sigma(x, seed=4, sample=sample)


def test_median_pair_distance_any_block_and_duplicates():
    x = np.repeat(np.random.default_rng(0).standard_normal((40, 3)), 3, axis=0)  # ties, zeros
    d2 = sq_distances(x)
    ref = float(np.median(d2[np.triu_indices(120, k=1)]))
    for block in (1, 16 * 120, 16 * 120 * 7, 1 << 30):  # one row per block .. all rows at once
        assert median_pair_sq_distance(x, block_bytes=block) == ref
    assert median_sigma(np.zeros((5, 2))) == 1.0  # all distances 0: the fallback


def test_median_sigma_memory_is_bounded():
    m, d = 4096, 64
    x = np.random.default_rng(1).standard_normal((3 * m, d)).astype(np.float32)
    tracemalloc.start()
    try:
        median_sigma(x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    pairs = 8 * m * (m - 1) // 2  # the 8.4 M pair distances: 64 MiB
    rows = 12 * m * d  # the sampled rows, float32 and float64
    assert peak <= pairs + rows + (4 << 20)  # + the block temporaries (2 MiB) and slack
    assert peak < 0.3 * 8 * m * m * 3  # the full matrix, its triangle index and copy: ~330 MB


# ------------------------------------------------------------------------------ the MMD


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 64 rows, so a few thousand rows make many chunk tasks."""
    monkeypatch.setattr(engine_mod, "MIN_CHUNK_ROWS", 64)
    monkeypatch.setattr(engine_mod, "CHUNK_BYTES", 64 * 4 * 8)


@pytest.fixture
def shards(tmp_path):
    """Two float16 .npy shards with a dropped (NaN) row, and a biased kept set."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1500, 8)).astype(np.float16)
    x[::2, 0] += 3
    x[77, 1] = np.nan
    d = tmp_path / "emb"
    d.mkdir()
    np.save(d / "part_0.npy", x[:900])
    np.save(d / "part_1.npy", x[900:])
    emb = pk.load_embeddings(d, drop_nonfinite=True)
    kept = np.flatnonzero(np.nan_to_num(x[:, 0].astype(np.float64)) > 1.5)[:400]
    return d, emb, np.concatenate([kept, kept[:50]])  # some rows kept twice (oversampling)


def reports(emb, kept, engines, **kw):
    out = []
    for eng in engines:
        with pk.runtime(engine=eng):
            out.append(mmd_report(emb, kept, random_draws=4, seed=5, n_features=64,
                                  progress=False, **kw))
    return out


def test_mmd_exact_mode_is_the_direct_formula(small_chunks, shards):
    _, emb, kept = shards
    (rep,) = reports(emb, kept, [LocalEngine(3)], sample=None)
    x = emb.reader.read_rows(emb.rows).astype(np.float32)
    rff = kernels.RandomFourierFeatures(8, rep["sigma"], 64,
                                           pk.seeds.role_seed(5, "fourier features"))
    zk = rff.transform(emb.reader.read_rows(np.sort(kept)).astype(np.float32))
    direct = np.linalg.norm(zk.mean(0, dtype=np.float64) - rff.transform(x).mean(0, dtype=np.float64))
    assert rep["kept"] == pytest.approx(direct, rel=1e-5)
    assert rep["n_kept"] == 400 and rep["n_sample"] == rep["n_full"] == 1499
    assert rep["kept_error"] is None and len(rep["random"]) == 4
    assert rep["kept"] > 5 * rep["random_mean"]  # the biased set is far from chance


def test_mmd_same_numbers_on_every_local_worker_count(small_chunks, shards):
    _, emb, kept = shards
    for sample in (None, 300):
        a, b, c = reports(emb, kept, [LocalEngine(1), LocalEngine(2), LocalEngine(5)], sample=sample)
        assert a == b == c


def test_mmd_sample_mode_reads_sparse_rows_like_whole_chunks(small_chunks, shards, monkeypatch):
    _, emb, kept = shards
    monkeypatch.setattr(quality, "SPARSE_READ", 1)  # a chunk needing < 64 rows: spans of them
    monkeypatch.setattr(quality, "SPARSE_SPAN", 2)
    (sparse,) = reports(emb, kept, [LocalEngine(2)], sample=100)
    monkeypatch.setattr(quality, "SPARSE_READ", 10**9)  # always the whole chunk
    (whole,) = reports(emb, kept, [LocalEngine(2)], sample=100)
    assert sparse == whole


def test_mmd_sample_mode_estimates_with_an_error_bar(small_chunks, shards):
    _, emb, kept = shards
    (exact,) = reports(emb, kept, [LocalEngine(2)], sample=None)
    (est,) = reports(emb, kept, [LocalEngine(2)], sample=350)
    assert est["n_sample"] == 350 and est["n_kept"] == 350 and est["n_full"] == 1499
    assert 0 < est["kept_error"] < 0.2 * est["kept"]
    assert abs(est["kept"] - exact["kept"]) < 4 * est["kept_error"]


def test_group_sums_and_jackknife_against_brute_force():
    rng = np.random.default_rng(4)
    z = rng.standard_normal((50, 3)).astype(np.float32)
    g = rng.integers(0, 4, 50)
    w = rng.integers(1, 3, 50).astype(np.float64)
    sums, n = quality._group_sums(z, g, w, 4)
    for i in range(4):
        np.testing.assert_allclose(sums[i], (z[g == i] * w[g == i, None]).sum(0), rtol=1e-6)
        assert n[i] == w[g == i].sum()
    full, fn = quality._group_sums(z, g, np.ones(50), 4)
    kz, kg = z[:20] + 1, g[:20]
    kept, kn = quality._group_sums(kz, kg, np.ones(20), 4)
    loo = []
    for i in range(4):  # leave group i out of both sides, by hand
        mk = kz[kg != i].astype(np.float64).mean(0) - z[g != i].astype(np.float64).mean(0)
        loo.append(np.linalg.norm(mk))
    loo = np.array(loo)
    se = np.sqrt(3 / 4 * ((loo - loo.mean()) ** 2).sum())
    assert quality._jackknife(full, fn, kept, kn) == pytest.approx(se, rel=1e-9)
    kept[1:], kn[1:] = 0, 0  # every kept row in group 0: no delete-a-group estimate
    assert quality._jackknife(full, fn, kept, kn) is None


def test_mmd_plan_draws_uniform_subsets_of_exact_size(small_chunks, shards):
    _, emb, kept = shards
    items, n_kept, n_sample, sampled = quality._plan_chunks(
        emb, np.sort(kept), engine_mod.chunk_rows_for(emb.dim), 6, 5, 300)
    assert (n_kept, n_sample, sampled) == (300, 300, True)
    draws = np.stack([w.draws for w in items])
    assert draws.sum(axis=0).tolist() == [300] * 6  # each random subset: exactly n_kept rows
    sample = np.concatenate([w.sample for w in items])
    assert sample.size == 300 and np.unique(sample).size == 300 and np.isin(sample, emb.rows).all()
    k = np.concatenate([w.kept for w in items])
    assert k.size == 300 and np.isin(k, kept).all() and np.unique(k).size == 300
    assert all(w.sample.size <= w.ref.n_rows and (w.draws <= w.ref.n_rows).all() for w in items)


# ------------------------------------------------------------------------------ stability


def block_reference(x1, subsets, x0, steps):
    """Per SOURCE_BLOCK of noise points: full run and every subset in one lockstep run."""
    fld = ClosedFormField(x1)
    full, ends, devs = [], [[] for _ in subsets], [[] for _ in subsets]
    for a in range(0, len(x0), SOURCE_BLOCK):
        fields = [fld.subset(s) for s in subsets]
        runs = integrate_together(fld, fields, x0[a : a + SOURCE_BLOCK], steps=steps, progress=False)
        full.append(nearest(fld, runs.reference_end))
        for i, (f, e, d) in enumerate(zip(fields, runs.ends, runs.deviations, strict=True)):
            ends[i].append(nearest(f, e))
            devs[i].append(d)
    return np.concatenate(full), [np.concatenate(e) for e in ends], [np.concatenate(d) for d in devs]


def test_compare_subsets_blocks_and_groups_do_not_change_numbers():
    rng = np.random.default_rng(2)
    x1 = rng.standard_normal((90, 4))
    subsets = [np.arange(0, 90, 2), np.arange(45), np.arange(10, 90, 3)]
    x0 = rng.standard_normal((150, 4))  # blocks of 64, 64, 22
    full, ends, devs = block_reference(x1, subsets, x0, steps=8)
    for workers in (1, 2, 7):  # 7 workers over 3 blocks: the subsets split into 3 groups
        comps = compare_subsets(ClosedFormField(x1), subsets, x0, steps=8,
                                engine=LocalEngine(workers), progress=False)
        for c, e, d in zip(comps, ends, devs, strict=True):
            assert np.array_equal(c.assignment_full, full) and np.array_equal(c.assignment_subset, e)
            assert np.array_equal(c.deviation, d)


def test_stability_sample_is_the_study_of_the_sampled_rows():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((400, 5)).astype(np.float32)
    doc = stability(x, prs=[0.5, 0.75], n_sources=30, steps=6, seed=9, sample=150)
    pick = np.sort(role_rng(9, "stability sample").choice(400, size=150, replace=False))
    full = stability(x, prs=[0.5, 0.75], n_sources=30, steps=6, seed=9, sample=None)
    assert doc["settings"]["n_train"] == 150 and doc["settings"]["sample"] == 150
    assert full["settings"]["sample"] is None and full["settings"]["n_train"] == 400
    # the same subsets, restricted to the sample, integrated on the sample by hand
    score = pk.score(pk.Embeddings.from_array(x), "random",
                     seed=pk.seeds.role_seed(9, "random subsets"), progress=False)
    order = np.argsort(-score.score, kind="stable")
    x0 = role_rng(9, "sources").standard_normal((30, 5))
    subsets = [np.searchsorted(pick, np.intersect1d(order[:k], pick)) for k in (200, 100)]
    comps = compare_subsets(ClosedFormField(x[pick]), subsets, x0, steps=6, progress=False)
    for row, c, k in zip(doc["rows"], comps, (200, 100), strict=True):
        assert row["n_kept_data"] == k and row["n_kept"] == c.n_kept < k
        assert row["n_retained"] == c.n_retained
        assert row["path_deviation_median"] == c.deviation_median


# ------------------------------------------------------------------------------ Ray


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_mmd_and_stability_same_bytes_as_local(ray_cluster, small_chunks, shards):
    from prunekit.runtime.engine import RayEngine

    _, emb, kept = shards
    engines = [LocalEngine(1), RayEngine(1), RayEngine(2)]
    for sample in (None, 300):
        a, b, c = reports(emb, kept, engines, sample=sample)
        assert a == b == c
    x = emb.reader.read_rows(emb.rows).astype(np.float32)[:300]
    docs = []
    for eng in engines:
        with pk.runtime(engine=eng):
            docs.append(stability(x, prs=[0.3, 0.6, 0.9], n_sources=40, steps=5, seed=1))
    assert docs[0]["rows"] == docs[1]["rows"] == docs[2]["rows"]  # 1 block: 2 groups on ray 2


def test_ray_cli_inspect_and_stability_same_output(ray_cluster, small_chunks, shards, tmp_path):
    d, emb, _ = shards
    run = CliRunner().invoke
    sc = tmp_path / "sc.h5"
    assert run(main, ["score", str(d), "-m", "kmeans", "--k", "4", "-o", str(sc), "-q",
                      "--drop-nonfinite"]).exit_code == 0
    assert run(main, ["select", str(sc), "--pr", "0.7", "-o", str(tmp_path / "sel.h5")]).exit_code == 0
    outs = []
    for engine in (["--engine", "local"], ["--engine", "ray", "--workers", "2"]):
        res = run(main, ["inspect", str(tmp_path / "sel.h5"), "--embeddings", str(d),
                         "--drop-nonfinite", "--mmd-sample", "500", "--json", "-q", *engine])
        assert res.exit_code == 0, res.output
        out = tmp_path / f"st-{engine[1]}.json"
        st = run(main, ["stability", str(d), "--drop-nonfinite", "--pr", "0.5", "--n-sources", "70",
                        "--steps", "4", "--sample", "200", "-o", str(out), "-q", *engine])
        assert st.exit_code == 0, st.output
        outs.append((json.loads(res.output), json.loads(out.read_text())["rows"]))
    assert outs[0] == outs[1]
    assert outs[0][0]["mmd"]["n_sample"] == 500 and outs[0][0]["mmd"]["kept_error"] > 0


# ------------------------------------------------------------------------------ bounded memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc")
def test_inspect_and_stability_stream_a_file_larger_than_their_memory(tmp_path):
    """inspect's MMD and a sampled stability run under an address-space limit the float32
    matrix could not fit in (the limit: an import-only process + the budget + a margin)."""
    import os
    import subprocess
    import textwrap

    n, d, budget, margin = 300_000, 256, 64 << 20, 160 << 20
    env = {**os.environ, "PRUNEKIT_MEMORY": str(budget), "MALLOC_ARENA_MAX": "2",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def run(code, limit=None):
        pre = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n" if limit else ""
        return subprocess.run([sys.executable, "-c", pre + textwrap.dedent(code)], env=env,
                              capture_output=True, text=True, timeout=300)

    imports = "import faiss, h5py, numpy, prunekit.cli, prunekit.selection.quality, prunekit.flow.study\n"
    base = run(imports + "print([int(l.split()[1]) * 1024 for l in open('/proc/self/status') "
                         "if l.startswith('VmPeak:')][0])")
    assert base.returncode == 0, base.stderr
    limit = int(base.stdout) + budget + margin
    assert n * d * 4 > limit - int(base.stdout)  # the float32 matrix cannot fit beside the imports
    control = run(imports + f"numpy.ones(({n}, {d}), numpy.float32)", limit)
    assert control.returncode != 0 and "MemoryError" in control.stderr
    emb = tmp_path / "emb.npy"
    x = np.lib.format.open_memmap(emb, mode="w+", dtype=np.float16, shape=(n, d))
    rng = np.random.default_rng(0)
    for a in range(0, n, 50_000):
        x[a : a + 50_000] = rng.standard_normal((50_000, d), dtype=np.float32)
    x.flush()
    del x
    keep = np.arange(0, n, 3)
    sel = pk.Selection(indices=keep, n_total=n, pr=1 - keep.size / n, method="every third")
    sel.save(tmp_path / "sel.h5")
    res = run(f"""
        from prunekit.cli import main
        main(["inspect", "{tmp_path / 'sel.h5'}", "--embeddings", "{emb}", "--mmd-sample", "20000",
              "--random-draws", "2", "--rff-dim", "64", "--json", "-q"])
        """, limit)
    assert res.returncode == 0, res.stderr
    mmd = json.loads(res.stdout)["mmd"]
    assert (mmd["n_sample"], mmd["n_kept"], mmd["n_full"]) == (20_000, 20_000, n)
    assert mmd["kept"] < mmd["random_mean"] + 4 * mmd["kept_error"]  # every third row: no bias
    res = run(f"""
        from prunekit.cli import main
        main(["stability", "{emb}", "--pr", "0.5", "--sample", "2000", "--n-sources", "8",
              "--steps", "2", "-o", "{tmp_path / 'st.json'}", "-q"])
        """, limit)
    assert res.returncode == 0, res.stderr
    st = json.loads((tmp_path / "st.json").read_text())
    assert st["settings"]["n_train"] == 2000 and st["rows"][0]["n_kept_data"] == n // 2


def test_stability_sample_missing_every_kept_row_is_a_clear_error(tmp_path):
    x = np.random.default_rng(5).standard_normal((400, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    pick = np.sort(role_rng(0, "stability sample").choice(400, size=10, replace=False))
    outside = int(np.setdiff1d(np.arange(400), pick)[0])
    pk.Selection(indices=np.array([outside]), n_total=400, pr=0.9975).save(tmp_path / "one.h5")
    out = tmp_path / "st.json"
    res = CliRunner().invoke(main, ["stability", str(tmp_path / "x.npy"), "--selection",
                                    str(tmp_path / "one.h5"), "--sample", "10", "-o", str(out)])
    assert res.exit_code == 2 and "keeps none of the 10 sampled rows" in res.output
    assert "raise --sample" in res.output and not out.exists()
