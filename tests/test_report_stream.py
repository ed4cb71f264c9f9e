"""``inspect --html`` on partitioned folders: streamed part by part, the numbers of the HDF5 page.

The same scores and selection are written as HDF5 files and as folders of many small parts
(windows of the passes straddle the parts); every number of the page must be equal, and the
folder path must never load a per-row array. A subprocess under an address-space limit
shows a report of millions of rows needs far less memory than those arrays.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
from PIL import Image

import prunekit as pk
from prunekit.io import dataset
from prunekit.io.dataset import PartsReader
from prunekit.report import build, data

K = 4


def _embeddings(n: int = 240) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = np.eye(8)[np.arange(n) % K] * 20.0 + rng.standard_normal((n, 8))
    return x, np.array([f"c{i % K}/img{i:04d}.png" for i in range(n)], dtype=object)


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """Scores and selections as HDF5 files and as folders of 50-position parts."""
    d = tmp_path_factory.mktemp("stream")
    x, ids = _embeddings()
    with h5py.File(d / "emb.h5", "w") as f:
        f["embeddings"] = x
        f.create_dataset("ids", data=[str(i) for i in ids], dtype=h5py.string_dtype("utf-8"))
        f["labels"] = np.arange(len(x)) % 3
    emb = pk.load_embeddings(d / "emb.h5")
    km = pk.score(emb, "kmeans", k=K, seed=0, progress=False)
    sd = pk.score(emb, "semdedup", k=K, seed=0, progress=False)
    objs = {"km": km, "sel": pk.select(km, 0.5, balance="clusters"), "top": pk.select(km, 0.7),
            "sd": sd, "sel_sd": pk.select(sd, 0.4)}
    mp = pytest.MonkeyPatch()
    mp.setattr(dataset, "PART_ROWS", 50)  # many parts: windows of the passes straddle them
    try:
        for name, obj in objs.items():
            obj.save(d / f"{name}.h5")
            obj.save(d / name)
    finally:
        mp.undo()
    assert len(PartsReader(d / "km").manifest["parts"]) == 5
    for i, name in enumerate(ids):
        (d / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (40 * (km.cluster[i] + 1), 0, 0)).save(d / "images" / name)
    return d


def _numbers(report) -> dict:
    """Everything the page shows as numbers, rows and ids (not the selection's name)."""
    summary = dict(report.summary)
    summary.pop("selection")
    return {
        "summary": json.loads(json.dumps(summary)),
        "rule": report.rule, "stats": report.stats,
        "strips": [(s["cluster"], s["before"], s["kept_count"],
                    [(t.row, t.id, t.kept, t.note, t.png) for t in s["kept"] + s["removed"]])
                   for s in report.strips],
        "groups": [(g["cluster"], g["n"], g["anchor"] and (g["anchor"].row, g["anchor"].id),
                    [(t.row, t.id, t.note) for t in g["removed"]]) for g in report.groups],
        "map": None if report.map is None else (report.map.rows.tolist(), report.map.xy.tolist(),
                                                report.map.kept.tolist()),
        "compare": [{k: v for k, v in r.items() if k not in ("name", "how")}
                    for r in report.compare],  # "how" says file or folder
    }


def _no_whole_loads(monkeypatch) -> None:
    """Fail on any read of a whole selection, scores folder or per-row side array."""
    def refuse(*a, **k):
        raise AssertionError("a per-row array was loaded whole")

    monkeypatch.setattr(importlib.import_module("prunekit.report.build"), "load_selection", refuse)
    monkeypatch.setattr(PartsReader, "read_columns", refuse)
    for side in ("ids", "labels"):
        monkeypatch.setattr(pk.Embeddings, side, property(refuse))


@pytest.mark.parametrize("chunk", [data.CHUNK_ROWS, 7])
@pytest.mark.parametrize("sel,scores", [("sel", "km"), ("top", "km"), ("sel_sd", "sd")])
def test_a_folder_page_has_the_numbers_of_the_hdf5_page(both, monkeypatch, sel, scores, chunk):
    monkeypatch.setattr(data, "CHUNK_ROWS", chunk)
    kw = dict(embeddings=both / "emb.h5", images=both / "images", per_strip=3, map_sample=100,
              seed=2, compare=[both / "top.h5", both / "sd.h5"])
    ref = _numbers(build(both / f"{sel}.h5", scores=both / f"{scores}.h5", **kw))
    kw["compare"] = [both / "top", both / "sd"]
    _no_whole_loads(monkeypatch)  # semdedup's duplicates entry too: pk.inspect streams it
    got = _numbers(build(both / sel, scores=both / scores, **kw))
    assert got == ref
    assert ref["strips"] and ref["map"] and len(ref["compare"]) == 3
    assert (scores == "sd") == bool(ref["groups"])
    assert ref["stats"].n_kept == pk.load_selection(both / f"{sel}.h5").n_kept


def test_a_folder_page_from_the_command_is_the_hdf5_page(both, tmp_path, monkeypatch):
    """Byte for byte, figures included, when both selections go by the same name."""
    import shutil

    from click.testing import CliRunner

    from prunekit.cli import main

    pages = []
    for suffix in (".h5", ""):
        where = tmp_path / f"run{suffix}"
        where.mkdir()
        (shutil.copy if suffix else shutil.copytree)(both / f"sel{suffix}", where / "sel")
        monkeypatch.chdir(where)
        res = CliRunner().invoke(main, ["inspect", "sel", "--scores", str(both / f"km{suffix}"),
                                        "--embeddings", str(both / "emb.h5"), "--images",
                                        str(both / "images"), "--html", "page", "-q"])
        assert res.exit_code == 0, res.output
        pages.append((where / "page" / "index.html").read_bytes())
    assert pages[0] == pages[1] and b"data:image/png" in pages[0]


def test_a_folder_is_read_by_windows_and_positions_as_the_file_is(both, monkeypatch):
    monkeypatch.setattr(data, "CHUNK_ROWS", 33)
    sc = pk.load_scores(both / "km.h5")
    rows = data.RowArrays(both / "km")
    got = list(rows.windows(["score", "cluster"]))
    assert [(a, b) for a, b, _ in got] == [(a, min(a + 33, 240)) for a in range(0, 240, 33)]
    np.testing.assert_array_equal(np.concatenate([w["score"] for *_, w in got]), sc.score)
    at = np.array([239, 0, 51, 50, 49, 0])
    np.testing.assert_array_equal(rows.take("cluster", at), sc.cluster[at])
    assert rows.take("ids", at).tolist() == sc.ids[at].tolist()
    kept = data.KeptRows(folder=both / "sel", n=120).cursor()
    ref = pk.load_selection(both / "sel.h5").indices
    masks = np.concatenate([kept.mask(a, b) for a, b, _ in got])
    assert np.flatnonzero(masks).tolist() == ref.tolist()


# --------------------------------------------------------------------------- bounded memory

N_BIG, D_BIG = 8_000_000, 4
MARGIN = 96 << 20  # a window of the passes, pyarrow buffers, thread stacks, figures, slack
BUDGET, MMD_MARGIN = 64 << 20, 160 << 20  # as tests/test_memory_bound.py: budget + margin


def _run(code: str, limit: int | None = None) -> subprocess.CompletedProcess:
    pre = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n" if limit else ""
    env = {**os.environ, "PRUNEKIT_MEMORY": str(BUDGET), "MALLOC_ARENA_MAX": "2",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1",
           # pyarrow's default pool reserves address space in large arenas; the system
           # allocator makes RLIMIT_AS measure what is used
           "ARROW_DEFAULT_MEMORY_POOL": "system"}
    return subprocess.run([sys.executable, "-c", pre + code], env=env, capture_output=True,
                          text=True, timeout=600)


IMPORTS = ("import faiss, h5py, numpy, pyarrow.parquet, matplotlib.figure, "
           "matplotlib.backends.backend_agg, PIL.Image, sklearn.decomposition, prunekit.cli, "
           "prunekit.report.build, prunekit.io.dataset\n")


def _page(args: list[str], limit: int) -> subprocess.CompletedProcess:
    return _run(IMPORTS + textwrap.dedent(f"""
        from prunekit.cli import main
        try:
            main({["inspect", *args, "-q"]!r})
        except SystemExit as e:
            assert not e.code, e.code
        """), limit)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc")
def test_a_folder_page_of_millions_of_rows_needs_far_less_than_its_arrays(tmp_path):
    """The page of an 8-million-row folder is made under an address-space limit of an
    import-only process plus about a third of what its per-row arrays take loaded; a control
    process loading the scores under that limit fails."""
    rng = np.random.default_rng(0)
    n = N_BIG
    sc = pk.Scores(score=rng.random(n), cluster=rng.integers(0, 100, n),
                   centroid_distance=rng.random(n), centroids=np.zeros((100, D_BIG)),
                   method="kmeans", n_total=n)
    sc.save(tmp_path / "s")
    pk.select(sc, 0.5, balance="clusters").save(tmp_path / "sel")
    emb = np.lib.format.open_memmap(tmp_path / "emb.npy", mode="w+", dtype=np.float32,
                                    shape=(n, D_BIG))
    emb[:] = rng.standard_normal((n, D_BIG), dtype=np.float32)
    emb.flush()
    del emb, sc
    arrays = n * (8 + 8 + 8 + 8) + n // 2 * 8  # loaded: position, score, cluster, distance; kept
    base = _run(IMPORTS + "print([int(l.split()[1]) * 1024 for l in open('/proc/self/status') "
                          "if l.startswith('VmPeak:')][0])")
    assert base.returncode == 0, base.stderr
    limit = int(base.stdout) + MARGIN
    assert arrays > 2.5 * MARGIN  # 275 MiB loaded, 96 MiB allowed
    control = _run(IMPORTS + f"import prunekit as pk; pk.load_scores({str(tmp_path / 's')!r})", limit)
    assert control.returncode != 0 and "MemoryError" in control.stderr
    sel, s = str(tmp_path / "sel"), str(tmp_path / "s")
    res = _page([sel, "--scores", s, "--html", str(tmp_path / "page")], limit)
    assert res.returncode == 0, res.stderr[-3000:]
    text = (tmp_path / "page" / "index.html").read_text(encoding="utf-8")
    assert text.count("data-before") == 100 and "Scores of kept and removed rows" in text
    # With the embeddings: the map's sample and pk.inspect's MMD (its own budget) on top.
    res = _page([sel, "--scores", s, "--embeddings", str(tmp_path / "emb.npy"), "--mmd-sample",
                 "20000", "--random-draws", "2", "--rff-dim", "64", "--html",
                 str(tmp_path / "page2")], int(base.stdout) + BUDGET + MMD_MARGIN)
    assert res.returncode == 0, res.stderr[-3000:]
    text = (tmp_path / "page2" / "index.html").read_text(encoding="utf-8")
    assert "Map of a random sample" in text and "3000 of 8000000" in text
