"""``prunekit inspect --html``: the page's numbers, its thumbnails, bad input, a real browser."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import struct
import subprocess
import tarfile
import zlib
from html.parser import HTMLParser
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import prunekit as pk
from prunekit.cli import main
from prunekit.errors import PrunekitError
from prunekit.io.provenance import jsonable
from prunekit.report import build, data, thumbs

COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48)]
K = 4


# --------------------------------------------------------------------------- fixtures


def _embeddings(n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Four well-separated blobs in 8-d, and file-name ids."""
    rng = np.random.default_rng(seed)
    centres = np.eye(8)[:K] * 20.0
    x = centres[np.arange(n) % K] + rng.standard_normal((n, 8))
    ids = np.array([f"c{i % K}/img{i:04d}.png" for i in range(n)], dtype=object)
    return x, ids


def _write_embeddings(path: Path, x: np.ndarray, ids: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        f["embeddings"] = x
        f.create_dataset("ids", data=[str(i) for i in ids], dtype=h5py.string_dtype("utf-8"))
        f["labels"] = np.arange(len(x)) % 3


def _plant_images(root: Path, ids: np.ndarray, cluster: np.ndarray) -> None:
    """One solid-colour image per row, the colour of its k-means cluster."""
    for i, name in enumerate(ids):
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20 + i % 7, 16), COLOURS[cluster[i]]).save(p)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    x, ids = _embeddings()
    _write_embeddings(d / "emb.h5", x, ids)
    emb = pk.load_embeddings(d / "emb.h5")
    sc = pk.score(emb, "kmeans", k=K, seed=0, progress=False)
    sc.save(d / "scores.h5")
    pk.select(sc, 0.5, balance="clusters").save(d / "sel.h5")
    pk.select(sc, 0.7).save(d / "sel_top.h5")
    sd = pk.score(emb, "semdedup", k=K, seed=0, progress=False)
    sd.save(d / "dedup.h5")
    pk.select(sd, 0.4).save(d / "sel_dedup.h5")
    _plant_images(d / "images", ids, sc.cluster)
    return d


class Page(HTMLParser):
    """Tags of interest with their attributes and the section they sit in."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.section = None
        self.tags: list[tuple[str, dict, str | None]] = []
        self.json = ""
        self._in_json = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.section = a.get("id")
        self._in_json = tag == "script" and a.get("type") == "application/json"
        self.tags.append((tag, a, self.section))

    def handle_data(self, text):
        if self._in_json:
            self.json += text

    def find(self, tag: str, section: str | None = None, **attrs) -> list[dict]:
        return [a for t, a, s in self.tags if t == tag and (section is None or s == section)
                and all(a.get(k) == v for k, v in attrs.items())]


def _page(out: Path) -> Page:
    return Page((out / "index.html").read_text(encoding="utf-8"))


def _pixels(src: str) -> np.ndarray:
    assert src.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))


def _run(*args: str):
    return CliRunner().invoke(main, ["inspect", *map(str, args)])


# --------------------------------------------------------------------------- numbers


def test_cluster_counts_equal_a_brute_force_count_and_the_mmd_is_pk_inspects(world, tmp_path):
    out = tmp_path / "page"
    res = _run(world / "sel.h5", "--scores", world / "scores.h5", "--embeddings",
               world / "emb.h5", "--html", out, "-q")
    assert res.exit_code == 0, res.output
    page = _page(out)
    sc, sel = pk.load_scores(world / "scores.h5"), pk.load_selection(world / "sel.h5")
    before = np.bincount(sc.cluster, minlength=K)
    kept = np.bincount(sc.cluster[sel.indices], minlength=K)
    rows = page.find("tr", "clusters")
    got = {int(r["data-id"]): (int(r["data-before"]), int(r["data-kept"])) for r in rows if "data-id" in r}
    assert got == {c: (int(before[c]), int(kept[c])) for c in range(K)}
    # sorted by size before selection, largest first
    assert [int(r["data-before"]) for r in rows if "data-id" in r] == sorted(before.tolist(), reverse=True)
    labels = {int(r["data-id"]): int(r["data-kept"]) for r in page.find("tr", "labels") if "data-id" in r}
    assert labels == dict(enumerate(np.bincount(np.arange(240)[sel.indices] % 3).tolist()))
    ref = pk.inspect(world / "sel.h5", scores=world / "scores.h5", embeddings=world / "emb.h5")
    (mmd,) = page.find("tr", "mmd", **{"data-name": str(world / "sel.h5")})
    assert float(mmd["data-kept"]) == ref["mmd"]["kept"]
    assert float(mmd["data-random-mean"]) == ref["mmd"]["random_mean"]
    assert json.loads(page.json) == json.loads(json.dumps(jsonable(ref)))
    # the balance rule, with the water level of these counts
    from prunekit.selection.quotas import water_level

    rule = page.find("p", id="rule")
    assert rule and f"L = {water_level(before, sel.n_kept)}" in (out / "index.html").read_text()
    assert "images" not in {a.get("id") for a in page.find("section")}  # no --images: no strips


def test_score_histograms_are_a_brute_force_histogram_and_the_cut_is_the_lowest_kept(world):
    sc, sel = pk.load_scores(world / "scores.h5"), pk.load_selection(world / "sel_top.h5")
    report = build(world / "sel_top.h5", scores=world / "scores.h5")
    st = report.stats
    keep = np.zeros(sc.n_total, dtype=bool)
    keep[sel.indices] = True
    edges = np.array(st.edges)
    assert edges[0] == sc.score.min() and edges[-1] == sc.score.max()
    assert st.kept_hist == np.histogram(sc.score[keep], bins=edges)[0].tolist()
    assert st.removed_hist == np.histogram(sc.score[~keep], bins=edges)[0].tolist()
    assert st.cut == sc.score[keep].min() and st.cut >= sc.score[~keep].max()
    assert "No quota" in report.rule
    balanced = build(world / "sel.h5", scores=world / "scores.h5").stats
    assert balanced.cut is None and "overlap" in balanced.cut_note


def test_streamed_passes_do_not_depend_on_the_chunk_size(world, monkeypatch):
    whole = build(world / "sel_dedup.h5", scores=world / "dedup.h5", embeddings=world / "emb.h5",
                  images=world / "images", map="none")
    monkeypatch.setattr(data, "CHUNK_ROWS", 7)
    small = build(world / "sel_dedup.h5", scores=world / "dedup.h5", embeddings=world / "emb.h5",
                  images=world / "images", map="none")
    assert small.stats == whole.stats
    assert [[t.row for t in s["kept"] + s["removed"]] for s in small.strips] == \
        [[t.row for t in s["kept"] + s["removed"]] for s in whole.strips]
    assert [(g["anchor"].row, [t.row for t in g["removed"]]) for g in small.groups] == \
        [(g["anchor"].row, [t.row for t in g["removed"]]) for g in whole.groups]


def test_semdedup_eps_curve_and_duplicate_groups_match_brute_force(world, tmp_path):
    sd, sel = pk.load_scores(world / "dedup.h5"), pk.load_selection(world / "sel_dedup.h5")
    out = tmp_path / "page"
    res = _run(world / "sel_dedup.h5", "--scores", world / "dedup.h5", "--embeddings",
               world / "emb.h5", "--images", world / "images", "--html", out, "-q")
    assert res.exit_code == 0, res.output
    page = _page(out)
    for r in page.find("tr", "dedup"):
        if "data-eps" in r:
            assert int(r["data-removed"]) == int((sd.score < float(r["data-eps"])).sum())
    report = build(world / "sel_dedup.h5", scores=world / "dedup.h5", embeddings=world / "emb.h5",
                   map="none")
    for e, n in zip(report.stats.eps_grid, report.stats.eps_removed, strict=True):
        assert n == int((sd.score < e).sum())
    x = np.asarray(h5py.File(world / "emb.h5")["embeddings"][()])
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    keep = np.zeros(sd.n_total, dtype=bool)
    keep[sel.indices] = True
    removed = np.flatnonzero(~keep)
    lowest = removed[np.lexsort((removed, sd.score[removed]))]
    shown = [t.row for g in report.groups for t in g["removed"]]
    assert shown and set(shown) <= set(lowest[: 6 * 8].tolist())
    for g in report.groups:
        for t in g["removed"]:
            mates = np.flatnonzero(keep & (sd.cluster == sd.cluster[t.row]))
            cos = u[mates] @ u[t.row]
            assert g["anchor"].row == mates[np.argmax(cos)]
            assert abs(float(t.note.split()[1]) - cos.max()) <= 1e-4
    # the page shows each group: the kept image first, then its removed rows
    groups = page.find("div", "duplicates")
    assert len([a for a in groups if a.get("class") == "group"]) == len(report.groups)


def test_map_is_a_seeded_sample_coloured_by_membership(world):
    sel = pk.load_selection(world / "sel.h5")
    a = build(world / "sel.h5", embeddings=world / "emb.h5", map_sample=100, seed=3)
    b = build(world / "sel.h5", embeddings=world / "emb.h5", map_sample=100, seed=3)
    assert a.map.rows.size == 100 and np.array_equal(a.map.xy, b.map.xy)
    assert a.map.kept.tolist() == np.isin(a.map.rows, sel.indices).tolist()
    t = build(world / "sel.h5", embeddings=world / "emb.h5", map="tsne", map_sample=60)
    assert t.map.method == "tsne" and t.map.xy.shape == (60, 2)
    with pytest.raises(PrunekitError, match="unknown map"):
        build(world / "sel.h5", embeddings=world / "emb.h5", map="umap")


def test_compare_shows_each_criterion_with_pk_inspects_mmd(world, tmp_path):
    out = tmp_path / "page"
    res = _run(world / "sel.h5", "--embeddings", world / "emb.h5", "--html", out, "-q",
               "--compare", world / "sel_top.h5", "--compare", world / "dedup.h5", "--map", "none")
    assert res.exit_code == 0, res.output
    rows = {r["data-name"]: r for r in _page(out).find("tr", "mmd") if "data-name" in r}
    assert list(rows) == [str(world / n) for n in ("sel.h5", "sel_top.h5", "dedup.h5")]
    top = pk.inspect(world / "sel_top.h5", embeddings=world / "emb.h5")
    assert float(rows[str(world / "sel_top.h5")]["data-kept"]) == top["mmd"]["kept"]
    # a scores file is selected at this selection's pr and balance
    sel = pk.select(pk.load_scores(world / "dedup.h5"), 0.5, balance="clusters")
    assert float(rows[str(world / "dedup.h5")]["data-kept"]) == \
        pk.inspect(sel, embeddings=world / "emb.h5")["mmd"]["kept"]
    assert "map" not in {a.get("id") for a in _page(out).find("section")}
    res = _run(world / "sel.h5", "--html", tmp_path / "p2", "--compare", world / "sel_top.h5")
    assert res.exit_code == 2 and "needs --embeddings" in res.output


# --------------------------------------------------------------------------- thumbnails


def test_thumbnails_show_the_images_of_their_rows(world, tmp_path):
    out = tmp_path / "page"
    res = _run(world / "sel.h5", "--scores", world / "scores.h5", "--images", world / "images",
               "--html", out, "--thumbs", "3", "-q")
    assert res.exit_code == 0, res.output
    assert "warning" not in res.output
    sc, sel = pk.load_scores(world / "scores.h5"), pk.load_selection(world / "sel.h5")
    keep = np.zeros(sc.n_total, dtype=bool)
    keep[sel.indices] = True
    page = _page(out)
    figs = page.find("figure", "images")
    imgs = [a for a in page.find("img", "images")]
    assert len(figs) == len(imgs) > 0
    for fig, img in zip(figs, imgs, strict=True):
        row = int(fig["data-row"])
        assert fig["data-id"] == sc.ids[row] and int(fig["data-cluster"]) == sc.cluster[row]
        assert (fig["data-side"] == "kept") == keep[row]
        px = _pixels(img["src"])
        assert (px == COLOURS[sc.cluster[row]]).all()
    # each strip: the 3 nearest rows to the centroid, then the 3 furthest (brute force)
    for c in range(K):
        for side, mask in (("kept", keep), ("removed", ~keep)):
            rows = np.flatnonzero(mask & (sc.cluster == c))
            d = sc.centroid_distance[rows]
            near = rows[np.lexsort((rows, d))][:3].tolist()
            far = rows[np.lexsort((rows, -d))][:3].tolist()[::-1]
            got = [int(f["data-row"]) for f in figs
                   if f["data-cluster"] == str(c) and f["data-side"] == side]
            assert got == near + [r for r in far if r not in near]


def test_scores_without_clusters_show_the_highest_and_lowest_scores(world):
    emb = pk.load_embeddings(world / "emb.h5")
    sc = pk.score(emb, "random", seed=1, progress=False)
    sel = pk.select(sc, 0.5)
    report = build(sel, scores=sc, images=world / "images", per_strip=2)
    (strip,) = report.strips
    order = np.lexsort((np.arange(sc.n_total), -sc.score))  # highest first, ties to the lower row
    keep = np.isin(order, sel.indices)
    for side, rows in (("kept", order[keep]), ("removed", order[~keep])):
        assert [t.row for t in strip[side]] == rows[:2].tolist() + rows[::-1][:2][::-1].tolist()
        assert strip[side][0].note == f"score {sc.score[rows[0]]:.4g}"


def test_thumbnails_from_webdataset_shards_read_only_the_wanted_members(world, tmp_path):
    sc = pk.load_scores(world / "scores.h5")
    keys = [i[:-4] for i in sc.ids]  # WebDataset keys: the file name without its extension
    with h5py.File(world / "emb.h5") as f:
        x = f["embeddings"][()]
    with h5py.File(tmp_path / "emb.h5", "w") as f:
        f["embeddings"] = x
        f.create_dataset("ids", data=keys, dtype=h5py.string_dtype("utf-8"))
    emb = pk.load_embeddings(tmp_path / "emb.h5")
    scores = pk.score(emb, "kmeans", k=K, seed=0, progress=False)
    sel = pk.select(scores, 0.5, balance="clusters")
    for half in (0, 1):
        with tarfile.open(tmp_path / f"shard-{half}.tar", "w") as tar:
            for i in range(half, sc.n_total, 2):
                if i == 1:
                    continue  # a key the shards lack
                buf = io.BytesIO()
                Image.new("RGB", (12, 12), COLOURS[scores.cluster[i]]).save(buf, format="PNG")
                info = tarfile.TarInfo(keys[i] + ".png")
                info.size = len(buf.getvalue())
                tar.addfile(info, io.BytesIO(buf.getvalue()))
    report = build(sel, scores=scores, images=tmp_path, per_strip=60)
    slots = report.thumbs()
    assert len(slots) == sc.n_total  # every row shown: nearest 60 and furthest 60 of each side
    for t in slots:
        if t.row == 1:
            assert t.png is None and t.gap == "key not in the tar shards"
        else:
            assert (_pixels(thumbs.data_uri(t.png)) == COLOURS[scores.cluster[t.row]]).all()


def _bomb_png() -> bytes:
    """A PNG whose header claims 60000 x 60000 pixels (the data is one pixel)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    b = bytearray(buf.getvalue())
    b[16:24] = struct.pack(">II", 60000, 60000)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    return bytes(b)


def test_bad_images_are_named_gaps_and_the_command_still_succeeds(tmp_path):
    x, ids = _embeddings(40)
    ids[0], ids[1], ids[2] = "../outside.png", "/etc/hostname", "gone.png"
    ids[3], ids[4], ids[5], ids[6] = "corrupt.png", "bomb.png", "link.png", "fifo.png"
    _write_embeddings(tmp_path / "emb.h5", x, ids)
    emb = pk.load_embeddings(tmp_path / "emb.h5")
    sc = pk.score(emb, "kmeans", k=2, seed=0, progress=False)
    sc.save(tmp_path / "scores.h5")
    pk.select(sc, 0.5, balance="clusters").save(tmp_path / "sel.h5")
    root = tmp_path / "images"
    _plant_images(root, ids[7:], sc.cluster[7:])
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "outside.png")  # must never be read
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "bomb.png").write_bytes(_bomb_png())
    os.symlink(tmp_path / "outside.png", root / "link.png")
    os.mkfifo(root / "fifo.png")  # reading it would block forever
    out = tmp_path / "page"
    res = _run(tmp_path / "sel.h5", "--scores", tmp_path / "scores.h5", "--images", root,
               "--html", out, "--thumbs", "30", "-q")
    assert res.exit_code == 0, res.output
    assert "warning: 7 images could not be shown" in res.output
    gaps = {g["data-id"]: g["data-reason"] for g in _page(out).find("figure")
            if "gap" in g["class"]}
    assert set(gaps) == set(ids[:7].tolist())
    assert "'..' refused" in gaps["../outside.png"]
    assert "absolute path refused" in gaps["/etc/hostname"]
    assert gaps["gone.png"] == "no such image file"
    assert gaps["corrupt.png"].startswith("cannot decode")
    assert "too large to decode safely" in gaps["bomb.png"]
    assert "outside the image root" in gaps["link.png"]
    assert gaps["fifo.png"] == "not a regular file"
    listed = {a["data-id"] for a in _page(out).find("li", "gaps")}
    assert listed == set(gaps)


def test_nothing_to_show_is_an_error_and_writes_nothing(world, tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "page"
    res = _run(world / "sel.h5", "--scores", world / "scores.h5", "--images", tmp_path / "empty",
               "--html", out)
    assert res.exit_code == 2 and "Error: none of the" in res.output
    assert "no such image file" in res.output and not out.exists()
    # integer ids (row positions) name no file either
    x, _ = _embeddings(40)
    emb = pk.Embeddings.from_array(x)
    sc = pk.score(emb, "kmeans", k=2, seed=0, progress=False)
    report = build(pk.select(sc, 0.5), scores=sc, images=world / "images")
    assert report.n_shown == 0 and all("row position" in r for _, r in report.gaps)


def test_output_folder_is_replaced_atomically_never_over_inputs(world, tmp_path):
    out = tmp_path / "page"
    args = [world / "sel.h5", "--scores", world / "scores.h5", "-q"]
    assert _run(*args, "--html", out).exit_code == 0
    first = (out / "index.html").read_text()
    assert _run(*args, "--html", out).exit_code == 0  # an earlier report is replaced
    assert (out / "index.html").read_text() == first
    assert sorted(p.name for p in out.iterdir()) == [".prunekit-report", "index.html"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".prunekit-tmp")]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    res = _run(*args, "--html", tmp_path / "mine")
    assert res.exit_code == 2 and "not empty" in res.output
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    shutil.copy(world / "sel.h5", out / "sel.h5")
    res = _run(out / "sel.h5", "--scores", world / "scores.h5", "--html", out)
    assert res.exit_code == 2 and "holds the input" in res.output
    res = _run(*args, "--html", world / "images" / "page", "--images", world / "images")
    assert res.exit_code == 2 and not (world / "images" / "page").exists()
    res = _run(*args, "--images", world / "images")
    assert res.exit_code == 2 and "give --html DIR too" in res.output
    os.symlink(out, tmp_path / "link")  # never written through: the target is someone's folder
    res = _run(*args, "--html", tmp_path / "link")
    assert res.exit_code == 2 and "symbolic link" in res.output


def test_library_report_object(world, tmp_path, monkeypatch):
    images = {i: np.full((4, 4, 3), 200, dtype=np.uint8) for i in pk.load_scores(world / "scores.h5").ids}
    report = pk.inspect_report(world / "sel.h5", scores=world / "scores.h5", images=images,
                               per_strip=2, clusters_shown=2, name="my selection")
    assert len(report.strips) == 2 and report.n_shown == len(report.thumbs()) == 2 * 2 * 4
    body = report._repr_html_()
    assert body.startswith("<div class='pkr'>") and "What my selection keeps" in body
    big = {i: np.zeros((40, 30), dtype=np.uint8) for i in images}
    small = build(world / "sel.h5", scores=world / "scores.h5", images=big, max_pixels=1000,
                  clusters_shown=1, per_strip=1)
    assert {r for _, r in small.gaps} == {"30 x 40 pixels: too large to show (limit 1000)"}
    buf = io.BytesIO()
    Image.new("RGB", (30, 40)).save(buf, format="PNG")
    encoded = build(world / "sel.h5", scores=world / "scores.h5", max_pixels=1000,
                    images={i: buf.getvalue() for i in images}, clusters_shown=1, per_strip=1)
    assert {r for _, r in encoded.gaps} == {"30 x 40 pixels: too large to decode safely (limit 1000)"}
    assert report.render_html(tmp_path / "r") == tmp_path / "r" / "index.html"
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    with pytest.raises(PrunekitError, match=r"prunekit\[plot\]"):
        build(world / "sel.h5")


# --------------------------------------------------------------------------- a real browser


def test_the_page_renders_in_a_headless_browser(world, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not on PATH: no browser to render the page")
    out = tmp_path / "page"
    res = _run(world / "sel.h5", "--scores", world / "scores.h5", "--embeddings", world / "emb.h5",
               "--images", world / "images", "--html", out, "-q")
    assert res.exit_code == 0, res.output
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1100,6000", f"--screenshot={shot}", (out / "index.html").as_uri()],
                   capture_output=True, timeout=120, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    px = np.asarray(Image.open(shot).convert("RGB"))
    assert px.shape[:2] == (6000, 1100)
    flat = px.reshape(-1, 3).astype(int)
    assert len(np.unique(flat // 8, axis=0)) > 100  # text, figures, thumbnails: not blank
    for colour in COLOURS:  # the planted images are on screen
        assert (np.abs(flat - colour).max(axis=1) <= 2).sum() > 100


# --------------------------------------------------------------------------- the demo's link


def test_the_demo_writes_and_links_the_page_of_its_kmeans_selection(tmp_path):
    from types import SimpleNamespace

    from sklearn.datasets import load_digits
    from test_lfm_report import _results

    from prunekit_lfm import report as demo_report
    from prunekit_lfm.demo import CRITERIA, QUICK, Pruned, Pruning, inspect_page, model_name

    d = load_digits()
    n = 300
    images = np.repeat(d.images[:n, None] / 8.0 - 1.0, 3, axis=1)  # [-1, 1], as the demo holds them
    ids = np.arange(n) * 3  # not positions: the page must look images up by id
    emb = pk.Embeddings.from_array(d.data[:n], ids=ids, labels=d.target[:n])
    scores = {m: pk.score(emb, m, seed=0, progress=False, **({"k": 5} if m == "kmeans" else {}))
              for m in ("kmeans", "random")}
    sels = {model_name(c, 0.5): Pruned(pk.select(scores[CRITERIA[c]["method"]], 0.5,
                                                 balance=CRITERIA[c]["balance"],
                                                 invert=CRITERIA[c]["invert"]), c, 0.5, tmp_path)
            for c in ("random", "kmeans-furthest")}
    run = SimpleNamespace(scale=QUICK, out=tmp_path, seed=0)
    digits = SimpleNamespace(train_ids=ids, train_images=images)
    assert inspect_page(run, digits, Pruning(emb, scores, sels)) == "inspect/index.html"
    page = _page(tmp_path / "report" / "inspect")
    assert [r["data-name"] for r in page.find("tr", "mmd") if "data-name" in r] == \
        ["kmeans-furthest@0.5", "random@0.5"]
    shown = [(f, i) for f, i in zip(page.find("figure", "images"), page.find("img", "images"),
                                     strict=True)]
    assert shown
    for fig, img in shown:
        row = int(fig["data-row"])
        assert int(fig["data-id"]) == ids[row]
        digit = np.round(d.images[row] / 16.0 * 255).astype(int)
        assert np.abs(_pixels(img["src"])[..., 0].astype(int) - digit).max() <= 1
    results = _results()
    results.inspect_page = "inspect/index.html"
    assert "<a href='inspect/index.html'>" in demo_report._html(results, [])
    assert "](inspect/index.html)" in demo_report._markdown(results, [])
