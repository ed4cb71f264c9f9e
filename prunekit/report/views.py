"""The page's views that read embedding rows: the 2-D map, duplicate groups, comparisons.

Only a seeded sample (the map), a few candidate rows and one streamed pass of chunks (the
duplicate groups) are read; nothing holds N x D.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.embeddings import Embeddings
from prunekit.io.h5io import open_h5
from prunekit.report.data import RowArrays, chunk_mask
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


def project(emb: Embeddings, kept: np.ndarray, *, method: str, sample: int, seed: int) -> MapData:
    """PCA (or t-SNE) of at most ``sample`` usable rows drawn with ``seed``."""
    if method not in MAPS or method == "none":
        raise PrunekitError(f"unknown map '{method}'; choose pca or tsne.")
    if method == "tsne" and sample > TSNE_MAX:
        raise PrunekitError(f"--map tsne on {sample} rows would take long; use --map-sample "
                            f"{TSNE_MAX} or less, or --map pca.")
    size = min(int(sample), emb.n)
    pick = np.sort(role_rng(seed, "report map").choice(emb.rows, size=size, replace=False))
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
    at = np.minimum(np.searchsorted(kept, pick), max(kept.size - 1, 0))
    is_kept = kept[at] == pick if kept.size else np.zeros(size, dtype=bool)
    return MapData(method, pick, np.asarray(xy, dtype=np.float64), is_kept, emb.n)


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


def nearest_kept(emb: Embeddings, rows: RowArrays, kept: np.ndarray,
                 candidates: list[tuple[int, float]]) -> list[DupLink]:
    """For each removed candidate row, its most similar kept row of the same cluster.

    One pass over the chunks of ``emb`` that hold kept rows of the candidates' clusters;
    per chunk only those rows are read. Ties go to the lower row.
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
    for ref in emb.reader.chunks(chunk_rows_for(emb.dim)):
        a, b = ref.global_start, ref.global_stop
        cl = rows.get("cluster", a, b)
        m = chunk_mask(kept, a, b) & np.isin(cl, wanted)
        if not m.any():
            continue
        at = np.flatnonzero(m)
        x = _unit(emb.reader.read_rows(at + a))
        sim = q @ x.T
        sim[clusters[:, None] != cl[at][None, :]] = -np.inf
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
    """'selection' or 'scores', from the datasets an HDF5 file holds."""
    with open_h5(path, "compare") as f:
        if "indices" in f:
            return "selection"
        if "score" in f:
            return "scores"
    raise PrunekitError(f"--compare {path} is neither a selection (dataset 'indices') nor a "
                        "scores file (dataset 'score'); give files written by prunekit.")


def compare_selection(item: Any, main: Selection, seed: int) -> tuple[str, Selection, str]:
    """(name, selection, how it was made) for a selection or a scores file to compare.

    ``item``: a path, a :class:`Selection` or :class:`Scores`, or a (name, one of those) pair.
    """
    if isinstance(item, tuple) and len(item) == 2:
        label, (_, sel, how) = str(item[0]), compare_selection(item[1], main, seed)
        return label, sel, how
    name = str(item) if isinstance(item, (str, os.PathLike)) else getattr(item, "method", "item")
    kind = "selection" if isinstance(item, Selection) else "scores" if isinstance(item, Scores) \
        else file_kind(item)
    if kind == "selection":
        sel = item if isinstance(item, Selection) else load_selection(item)
        return name, sel, "selection file"
    sc = item if isinstance(item, Scores) else load_scores(item)
    balance = main.params.get("balance", "none")
    if (balance in ("clusters", "proportional") and sc.cluster is None) or \
            (balance == "labels" and sc.labels is None):
        balance = "none"
    sel = select(sc, main.pr, balance=balance, seed=seed)
    return name, sel, f"selected here at pr {main.pr:g}, balance {balance}"
