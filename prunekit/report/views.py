"""The page's views that read embedding rows: the 2-D map, duplicate groups, comparisons.

Only a seeded sample (the map), a few candidate rows and one streamed pass of windows (the
duplicate groups) are read; nothing holds N x D, and the kept rows may stay a selection
folder (:class:`~prunekit.report.data.KeptRows`) streamed beside each pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.embeddings import Embeddings
from prunekit.io.h5io import open_h5
from prunekit.report.data import KeptRows, RowArrays
from prunekit.runtime.engine import chunk_rows_for
from prunekit.seeds import role_rng
from prunekit.selection.scores import Scores, load_scores
from prunekit.selection.subset import Selection, load_selection, resolve_rows, select

MAPS = ("pca", "tsne", "none")
TSNE_MAX = 5000  # t-SNE is quadratic-ish: a few thousand rows at most


@dataclass
class MapData:
    """A 2-D projection of a seeded sample of rows, and which of them are kept."""

    method: str
    rows: np.ndarray  # sampled positions in the embeddings
    xy: np.ndarray  # (n, 2)
    kept: np.ndarray  # bool (n,)
    n_usable: int


def kept_in(emb: Embeddings, sel: Selection, name: str) -> np.ndarray:
    """Ascending distinct rows of ``emb`` that ``sel`` keeps."""
    return np.unique(resolve_rows(sel, emb.n_total, emb.ids, selection_name=name,
                                  target_name="the embeddings"))


def project(emb: Embeddings, kept: KeptRows, *, method: str, sample: int, seed: int) -> MapData:
    """PCA (or t-SNE) of at most ``sample`` usable rows drawn with ``seed``.

    The rows are drawn by compact index among the usable rows (no per-row array is made)
    and read in position order; ``kept`` says which of them the selection keeps.
    """
    if method not in MAPS or method == "none":
        raise PrunekitError(f"unknown map '{method}'; choose pca or tsne.")
    if method == "tsne" and sample > TSNE_MAX:
        raise PrunekitError(f"--map tsne on {sample} rows would take long; use --map-sample "
                            f"{TSNE_MAX} or less, or --map pca.")
    size = min(int(sample), emb.n)
    compact = role_rng(seed, "report map").choice(emb.n, size=size, replace=False)
    pick = np.sort(emb.positions(compact))
    x = np.asarray(emb.reader.read_rows(pick), dtype=np.float64)
    if method == "pca" or size < 5:
        xy = _pca(x)
    else:
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits

        rs = int(role_rng(seed, "report tsne").integers(2**31 - 1))
        # One thread: the same map on every machine (and no oversubscription stalls).
        with threadpool_limits(1):
            xy = TSNE(n_components=2, init="pca", random_state=rs,
                      perplexity=float(min(30.0, (size - 1) / 3))).fit_transform(x)
    return MapData(method, pick, np.asarray(xy, dtype=np.float64), kept.contains(pick), emb.n)


def _pca(x: np.ndarray) -> np.ndarray:
    """The first two principal components (signs fixed: largest loading positive)."""
    c = x - x.mean(axis=0)
    if c.shape[0] < 2:
        return np.zeros((c.shape[0], 2))
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    vt = vt[:2]
    vt *= np.sign(vt[np.arange(vt.shape[0]), np.abs(vt).argmax(axis=1)])[:, None]
    xy = c @ vt.T
    return xy if xy.shape[1] == 2 else np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))


@dataclass
class DupLink:
    """A removed row and the kept row nearest to it (cosine) in its cluster."""

    row: int
    score: float
    cluster: int
    anchor: int | None
    cosine: float | None


def nearest_kept(emb: Embeddings, rows: RowArrays, kept: KeptRows,
                 candidates: list[tuple[int, float]]) -> list[DupLink]:
    """For each removed candidate row, its most similar kept row of the same cluster.

    One pass over the windows of the scores' clusters; of each, only the kept rows of the
    candidates' clusters are read from ``emb``, a bounded batch at a time. Ties go to the
    lower row.
    """
    if not candidates:
        return []
    pos = np.array([p for p, _ in candidates], dtype=np.int64)
    order = np.argsort(pos)
    clusters = rows.take("cluster", pos)
    q = _unit(emb.reader.read_rows(pos[order]))[np.argsort(order)]
    best = np.full(pos.size, -np.inf)
    anchor = np.full(pos.size, -1, dtype=np.int64)
    wanted = np.unique(clusters)
    step = chunk_rows_for(emb.dim)
    masks = kept.cursor()
    for a, b, got in rows.windows(["cluster"]):
        m = masks.mask(a, b) & np.isin(got["cluster"], wanted)
        hits = np.flatnonzero(m)
        for lo in range(0, hits.size, step):
            at = hits[lo : lo + step]
            x = _unit(emb.reader.read_rows(at + a))
            sim = q @ x.T
            sim[clusters[:, None] != got["cluster"][at][None, :]] = -np.inf
            j = sim.argmax(axis=1)
            top = sim[np.arange(pos.size), j]
            better = top > best  # strict: an equal later row never replaces an earlier one
            best[better], anchor[better] = top[better], at[j[better]] + a
    return [DupLink(int(p), float(s), int(c), None if an < 0 else int(an),
                    None if an < 0 else float(bs))
            for (p, s), c, an, bs in zip(candidates, clusters, anchor, best, strict=True)]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def group_links(links: list[DupLink], max_groups: int, per_group: int) -> list[dict[str, Any]]:
    """Removed rows grouped by their kept anchor, most duplicated groups first."""
    groups: dict[Any, list[DupLink]] = {}
    for link in links:
        groups.setdefault(link.anchor if link.anchor is not None else ("none", link.cluster),
                          []).append(link)
    ranked = sorted(groups.values(), key=lambda g: (min(x.score for x in g), g[0].row))
    return [{"anchor": g[0].anchor, "cluster": g[0].cluster,
             "removed": sorted(g, key=lambda x: (x.score, x.row))[:per_group], "n": len(g)}
            for g in ranked[:max_groups]]


def file_kind(path: str | os.PathLike) -> str:
    """'selection' or 'scores', from the datasets an HDF5 file holds (or a folder's kind)."""
    if os.path.isdir(path):
        from prunekit.io.dataset import PartsReader

        return PartsReader(path).kind
    with open_h5(path, "compare") as f:
        if "indices" in f:
            return "selection"
        if "score" in f:
            return "scores"
    raise PrunekitError(f"--compare {path} is neither a selection (dataset 'indices') nor a "
                        "scores file (dataset 'score'); give files written by prunekit.")


def compare_selection(item: Any, main: Any, seed: int,
                      workdir: str | os.PathLike | None = None) -> tuple[str, Any, str]:
    """(name, selection, how it was made) for a selection or a scores file to compare.

    ``item``: a path, a :class:`Selection` or :class:`Scores`, or a (name, one of those) pair.
    A selection folder is returned as its path (streamed by ``pk.inspect``); a scores folder
    is selected part by part into a folder under ``workdir``, returned as its path too.
    """
    if isinstance(item, tuple) and len(item) == 2:
        label, (_, sel, how) = str(item[0]), compare_selection(item[1], main, seed, workdir)
        return label, sel, how
    name = str(item) if isinstance(item, (str, os.PathLike)) else getattr(item, "method", "item")
    kind = "selection" if isinstance(item, Selection) else "scores" if isinstance(item, Scores) \
        else file_kind(item)
    folder = isinstance(item, (str, os.PathLike)) and os.path.isdir(item)
    if kind == "selection":
        if folder:
            return name, item, "selection folder"
        sel = item if isinstance(item, Selection) else load_selection(item)
        return name, sel, "selection file"
    if folder:
        return name, *_select_folder(item, main, seed, workdir)
    sc = item if isinstance(item, Scores) else load_scores(item)
    balance = _balance(main, sc.cluster is not None, sc.labels is not None)
    sel = select(sc, main.pr, balance=balance, seed=seed)
    return name, sel, f"selected here at pr {main.pr:g}, balance {balance}"


def _select_folder(path: str | os.PathLike, main: Any, seed: int,
                   workdir: str | os.PathLike | None) -> tuple[str, str]:
    """A scores folder selected at ``main``'s pr and balance, streamed into ``workdir``."""
    from prunekit.io.dataset import PartsReader
    from prunekit.selection.streamed import select_folder

    if workdir is None:
        raise PrunekitError(f"comparing the scores folder {path} needs a work folder.")
    cols = PartsReader(path, kind="scores").columns
    balance = _balance(main, "cluster" in cols, "label" in cols)
    out = os.path.join(os.fspath(workdir), f"compare-{len(os.listdir(workdir))}")
    select_folder(path, out + os.sep, main.pr, balance=balance, seed=seed, progress=False)
    return out, f"selected here at pr {main.pr:g}, balance {balance}"


def _balance(main: Any, has_cluster: bool, has_label: bool) -> str:
    """``main``'s balance where the scores have its groups, else ``none``."""
    balance = main.params.get("balance", "none")
    if (balance in ("clusters", "proportional") and not has_cluster) or \
            (balance == "labels" and not has_label):
        return "none"
    return balance
