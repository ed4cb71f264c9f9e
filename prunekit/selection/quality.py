"""Method-free quality of a selection: group balance, coverage, and MMD to the full set.

The MMD is estimated with random Fourier features of an RBF kernel (as
:func:`prunekit.compute.kernels.rff_mmd`): MMD(S, X) ~ || mean_{s in S} z(s) - mean_{x in X} z(x) ||,
with sigma from the median heuristic. The same number for uniformly random subsets of
the same size tells whether a criterion represents the data better or worse than chance.

The estimate is one streamed pass of chunk tasks on the current engine
(:mod:`prunekit.runtime.engine`): each chunk returns its feature sums (full side, kept side, each
random subset) and the sums are added in chunk order. Every draw is keyed by (seed, role,
subset, chunk), so every engine and any number of workers give the same numbers. Above
``sample`` rows the full side (and a kept set larger than that) is a seeded uniform
sample, and the report carries a jackknife error bar of the kept estimate.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from prunekit.compute.kernels import RandomFourierFeatures, median_sigma
from prunekit.errors import PrunekitError
from prunekit.io.embeddings import Embeddings
from prunekit.io.source import ChunkRef
from prunekit.runtime.context import current_engine
from prunekit.runtime.engine import chunk_rows_for
from prunekit.runtime.memory import check_fits
from prunekit.seeds import role_rng, role_seed

SIGMA_SAMPLE = 4096
MMD_SAMPLE = 1_000_000  # rows the full side uses at most (a kept set too); None: all rows
JACKKNIFE_GROUPS = 10  # delete-a-group jackknife of a sampled estimate
SPARSE_READ = 64  # a chunk needing under 1/SPARSE_READ of its rows reads only spans around them
SPARSE_SPAN = 64  # rows per span read then


def group_counts(groups: np.ndarray, before_rows: np.ndarray, kept_rows: np.ndarray) -> dict[str, Any]:
    """Per group id: rows before selection, rows kept, and coverage.

    ``before_rows`` are the rows that could be selected; ``kept_rows`` the kept rows,
    repeated for oversampled selections (then ``draws`` counts repeats, ``kept`` counts
    distinct rows). Coverage = fraction of groups with at least one kept row.
    """
    groups = np.asarray(groups)
    distinct = np.unique(kept_rows)
    ids = np.unique(groups[before_rows])
    pos_before = np.searchsorted(ids, groups[before_rows])
    before = np.bincount(pos_before, minlength=ids.size)

    def count(rows: np.ndarray) -> np.ndarray:
        g = groups[rows]
        known = np.isin(g, ids)
        return np.bincount(np.searchsorted(ids, g[known]), minlength=ids.size)

    kept = count(distinct)
    out = {
        "ids": ids.tolist(),
        "before": before.tolist(),
        "kept": kept.tolist(),
        "coverage": float(np.mean(kept > 0)) if ids.size else 0.0,
    }
    if distinct.size != np.asarray(kept_rows).size:
        out["draws"] = count(np.asarray(kept_rows)).tolist()
    return out


@dataclass(frozen=True)
class _ChunkWork:
    """What one chunk task of the MMD needs besides the shared state (all global positions)."""

    ref: ChunkRef
    sample: np.ndarray | None  # the full side's rows here; None: every usable row
    kept: np.ndarray  # distinct kept rows here (ascending)
    weight: np.ndarray  # how often each is kept (oversampling repeats)
    draws: np.ndarray  # rows each random subset takes here, (random_draws,)
    span: tuple[int, int, int, int] | None = None  # kept rows in a KeptFile: lo, hi, take, chunk


@dataclass(frozen=True)
class KeptFile:
    """The distinct kept rows (ascending) and their weights in a flat scratch file, 16 bytes
    a row, so that the MMD's chunk tasks read their own rows and the driver holds none.

    ``cut[c]:cut[c + 1]`` are the file rows of chunk ``c`` of ``chunk_rows`` rows;
    ``dropped`` the embeddings' unusable rows (ascending) the rows were checked against,
    kept so that :func:`mmd_report` does not find them again.
    """

    path: str
    chunk_rows: int
    cut: np.ndarray
    draws: int
    dropped: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.cut[-1])

    def read(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """File rows ``lo..hi``: ``(rows, weights)``."""
        with open(self.path, "rb") as fh:
            data = os.pread(fh.fileno(), 16 * (hi - lo), 16 * lo)
        if len(data) != 16 * (hi - lo):
            raise OSError(f"kept rows file {self.path} is shorter than expected")
        pairs = np.frombuffer(data, dtype=np.int64).reshape(-1, 2)
        return pairs[:, 0].copy(), pairs[:, 1].copy()


def write_kept(emb: Embeddings, batches: Iterable[tuple[np.ndarray, np.ndarray]],
               path: str | os.PathLike) -> KeptFile:
    """Stream ``(rows ascending, weights)`` batches of a selection into a :class:`KeptFile`
    at ``path``, checking them as :func:`mmd_report` checks kept rows (in range, usable,
    not none): one batch in memory, and per chunk a count."""
    chunk_rows = chunk_rows_for(emb.dim)
    refs = emb.reader.chunks(chunk_rows)
    bounds = np.array([r.global_start for r in refs] + [emb.n_total], dtype=np.int64)
    per_chunk = np.zeros(len(refs), dtype=np.int64)
    dropped = emb.dropped_rows()  # sparse: the usable rows are never materialised
    draws, bad = 0, []
    with open(path, "wb") as fh:
        for rows, weight in batches:
            if rows.size and (rows[0] < 0 or rows[-1] >= emb.n_total):
                raise PrunekitError(
                    f"the selection keeps rows outside 0..{emb.n_total - 1} of {emb.name}.")
            usable = ~np.isin(rows, dropped)
            bad += rows[~usable][: 10 - len(bad)].tolist()
            per_chunk += np.bincount(np.searchsorted(bounds, rows, side="right") - 1,
                                     minlength=len(refs))[: len(refs)]
            draws += int(weight.sum())
            fh.write(np.stack([rows, weight], axis=1).astype(np.int64).tobytes())
    if bad:
        raise PrunekitError(
            f"the selection keeps rows that are NaN/inf in {emb.name} (rows {', '.join(map(str, bad))}); "
            "inspect with the embeddings the selection was made from."
        )
    if not per_chunk.sum():
        raise PrunekitError("the selection keeps no rows; there is nothing to compare.")
    return KeptFile(str(path), chunk_rows, np.concatenate(([0], np.cumsum(per_chunk))), draws,
                    dropped)


def mmd_report(
    emb: Embeddings,
    kept_rows: np.ndarray,
    *,
    random_draws: int = 5,
    seed: int = 0,
    n_features: int = 512,
    sigma: float | None = None,
    sample: int | None = MMD_SAMPLE,
    engine=None,
    progress: bool = True,
) -> dict[str, Any]:
    """RFF-MMD between the kept rows and all usable rows of ``emb``, and for random subsets.

    ``kept_rows`` are source positions (repeats weight a row, as oversampling does), or a
    :class:`KeptFile` of a selection streamed from its folder (the same numbers). The
    random subsets have as many distinct rows as the kept side and are drawn from the
    usable rows; sigma (median heuristic on <= 4096 rows) and the Fourier features are
    shared by every estimate. Each draw has its own stream derived from ``seed``
    (:mod:`prunekit.seeds`), keyed by chunk, so the result does not depend on ``engine``.

    With more than ``sample`` usable rows the full side is a seeded uniform sample of
    ``sample`` rows, and a kept set of more than ``sample`` distinct rows is sampled too
    (``n_sample``, ``n_kept`` say how many were used); ``kept_error`` is then the
    delete-a-group jackknife standard error of ``kept`` over JACKKNIFE_GROUPS random groups
    of rows. One pass over the data (only the chunks holding needed rows, short spans of
    them when few are needed); memory beyond the row indices is a few chunks.
    """
    streamed = isinstance(kept_rows, KeptFile)
    if not streamed:
        kept_rows = np.sort(np.asarray(kept_rows, dtype=np.int64))
    if random_draws < 0 or n_features < 1:
        raise PrunekitError(f"need random_draws >= 0 and n_features >= 1, got {random_draws}, {n_features}.")
    if sample is not None and sample < 1:
        raise PrunekitError(f"the MMD sample must be at least 1 row, got {sample}.")
    dropped = _dropped(emb, kept_rows)  # once per report: it may scan n_total rows
    if not streamed:
        _check_kept(emb, kept_rows, dropped)  # a KeptFile was checked as it was written
    chunk_rows = chunk_rows_for(emb.dim)
    task = _task_bytes(min(chunk_rows, emb.n_total), emb.dim, emb.dtype.itemsize, n_features)
    # The feature map (drawn in float64), one chunk task, the row indices of the kept side.
    check_fits(12.0 * n_features * emb.dim + task + (0 if streamed else 16.0 * kept_rows.size),
               f"the MMD with {n_features} random features")
    engine = engine or current_engine()
    src = emb.reader
    if sigma is None:
        # The draw rows[choice] without the rows: the same compact indices, then positions.
        compact = role_rng(seed, "sigma sample").choice(emb.n, size=min(SIGMA_SAMPLE, emb.n),
                                                        replace=False)
        pick = np.sort(emb.positions(compact))
        sigma = median_sigma(src.read_rows(pick), seed=role_seed(seed, "sigma sample"))
    rff = RandomFourierFeatures(emb.dim, sigma, n_features, role_seed(seed, "fourier features"))
    items, n_kept, n_sample, sampled = _plan_chunks(emb, kept_rows, chunk_rows, random_draws,
                                                    seed, sample, dropped=dropped)
    groups = JACKKNIFE_GROUPS if sampled else 1
    kept_file = replace(kept_rows, dropped=None) if streamed else None  # dropped: sent once
    shared = (src, rff, dropped if dropped.size else None, seed, groups, kept_file)
    full = np.zeros((groups, n_features))
    kept = np.zeros((groups, n_features))
    full_n = np.zeros(groups)
    kept_n = np.zeros(groups)
    rand = np.zeros((random_draws, n_features))
    with engine.map(_mmd_chunk, items, shared, desc="mmd", progress=progress,
                    task_bytes=task) as results:
        for f_sum, f_n, k_sum, k_n, r_sum in results:
            full += f_sum  # chunk order: the same additions on every engine
            full_n += f_n
            kept += k_sum
            kept_n += k_n
            rand += r_sum
    centre = full.sum(axis=0) / full_n.sum()
    mmd_kept = _norm(kept.sum(axis=0) / kept_n.sum() - centre)
    mmd_rand = np.array([_norm(r / n_kept - centre) for r in rand])
    return {
        "sigma": float(sigma),
        "n_features": int(n_features),
        "n_kept": int(n_kept),
        "n_full": int(emb.n),
        "n_sample": int(n_sample),
        "kept": mmd_kept,
        "kept_error": _jackknife(full, full_n, kept, kept_n) if sampled else None,
        "random": mmd_rand.tolist(),
        "random_mean": float(mmd_rand.mean()) if mmd_rand.size else None,
        "random_std": float(mmd_rand.std()) if mmd_rand.size else None,
    }


def _dropped(emb: Embeddings, kept_rows: np.ndarray | KeptFile) -> np.ndarray:
    """Ascending positions of the rows that are not usable (1 B a row to find): those a
    :class:`KeptFile` was checked against, else ``emb``'s."""
    if emb.n == emb.n_total:
        return np.zeros(0, dtype=np.int64)
    dropped = getattr(kept_rows, "dropped", None)
    if dropped is None:
        return emb.dropped_rows()
    if dropped.size != emb.n_total - emb.n:
        raise ValueError("the kept rows file was checked against other embeddings")
    return dropped


def _check_kept(emb: Embeddings, kept_rows: np.ndarray, dropped: np.ndarray) -> None:
    if kept_rows.size and (kept_rows[0] < 0 or kept_rows[-1] >= emb.n_total):
        raise PrunekitError(f"the selection keeps rows outside 0..{emb.n_total - 1} of {emb.name}.")
    unusable = np.isin(kept_rows, dropped)
    if unusable.any():
        bad = np.unique(kept_rows[unusable])[:10]
        raise PrunekitError(
            f"the selection keeps rows that are NaN/inf in {emb.name} (rows {', '.join(map(str, bad))}); "
            "inspect with the embeddings the selection was made from."
        )
    if kept_rows.size == 0:
        raise PrunekitError("the selection keeps no rows; there is nothing to compare.")


def _plan_chunks(emb: Embeddings, kept_rows: np.ndarray, chunk_rows: int, random_draws: int,
                 seed: int, sample: int | None, *, dropped: np.ndarray | None = None
                 ) -> tuple[list[_ChunkWork], int, int, bool]:
    """Per chunk: the sampled rows, the kept rows and how many rows each random subset takes
    (``dropped``: the unusable rows, found here when not given).

    How many rows of a sample (and of each random subset) fall into each chunk is one
    multivariate hypergeometric draw, which rows they are a draw keyed by the chunk: a
    uniform subset of exactly that size, drawn without ever holding all positions.
    """
    refs = emb.reader.chunks(chunk_rows)
    bounds = np.array([r.global_start for r in refs] + [emb.n_total], dtype=np.int64)
    if dropped is None:
        dropped = emb.dropped_rows()
    usable_cut = bounds - np.searchsorted(dropped, bounds)  # usable rows before each
    usable_per = np.diff(usable_cut)
    if isinstance(kept_rows, KeptFile):
        if kept_rows.chunk_rows != chunk_rows:
            raise ValueError("the kept rows file was cut into other chunks")
        distinct = weight = np.zeros(0, dtype=np.int64)  # the tasks read theirs
        kept_cut, n_distinct = kept_rows.cut, kept_rows.n
    else:
        distinct, weight = np.unique(kept_rows, return_counts=True)
        kept_cut, n_distinct = np.searchsorted(distinct, bounds), distinct.size
    kept_per = np.diff(kept_cut)
    n_sample = emb.n if sample is None else min(emb.n, int(sample))
    n_kept = n_distinct if sample is None else min(n_distinct, int(sample))
    sample_per = _spread(usable_per, n_sample, seed, "mmd sample")
    kept_take = _spread(kept_per, n_kept, seed, "mmd kept sample")
    draws = np.stack([_spread(usable_per, n_kept, seed, "random subsets", j)
                      for j in range(random_draws)]) if random_draws else None
    items = []
    for c, ref in enumerate(refs):
        rows = emb.positions(np.arange(usable_cut[c], usable_cut[c + 1]))  # one chunk's
        part = None
        if n_sample < emb.n:
            part = _pick(rows, int(sample_per[c]), seed, "mmd sample", c)
        lo, hi = int(kept_cut[c]), int(kept_cut[c + 1])
        span = None
        if isinstance(kept_rows, KeptFile):
            k = w = distinct
            span = (lo, hi, int(kept_take[c]), c) if kept_take[c] else None
        else:
            k, w = _kept_here(distinct[lo:hi], weight[lo:hi], int(kept_take[c]), seed, c)
        d = draws[:, c] if random_draws else np.zeros(0, dtype=np.int64)
        if (part is None and rows.size) or (part is not None and part.size) or k.size or d.any() \
                or span:
            items.append(_ChunkWork(ref, part, k, w, d, span))
    return items, n_kept, n_sample, n_sample < emb.n or n_kept < n_distinct


def _kept_here(k: np.ndarray, w: np.ndarray, take: int, seed: int,
               c: int) -> tuple[np.ndarray, np.ndarray]:
    """Chunk ``c``'s kept rows, or ``take`` of them when the kept side is sampled."""
    if take < k.size:
        keep = _pick(np.arange(k.size), take, seed, "mmd kept sample", c)
        k, w = k[keep], w[keep]
    return k, w


def _spread(per_chunk: np.ndarray, total: int, seed: int, role: str, *keys: int) -> np.ndarray:
    """How many of ``total`` uniformly drawn rows fall into each chunk (all when total = sum)."""
    if total >= per_chunk.sum():
        return per_chunk.copy()
    return role_rng(seed, role, *keys).multivariate_hypergeometric(per_chunk, total)


def _pick(rows: np.ndarray, size: int, seed: int, role: str, *keys: int) -> np.ndarray:
    """``size`` of ``rows`` uniformly without replacement, ascending (the stream of the keys)."""
    if size >= rows.size:
        return rows
    return np.sort(role_rng(seed, role, *keys).choice(rows, size=size, replace=False))


def _mmd_chunk(shared, work: _ChunkWork):
    """One chunk's feature sums: full side and kept side per jackknife group, random subsets."""
    src, rff, dropped, seed, groups, kept_file = shared
    ref = work.ref
    if work.span is not None:
        lo, hi, take, c = work.span
        kept, weight = _kept_here(*kept_file.read(lo, hi), take, seed, c)
        work = replace(work, kept=kept, weight=weight)
    a, b = ref.global_start, ref.global_stop
    usable = np.arange(a, b, dtype=np.int64)
    if dropped is not None:
        lo, hi = np.searchsorted(dropped, [a, b])
        usable = np.setdiff1d(usable, dropped[lo:hi], assume_unique=True)
    full = usable if work.sample is None else work.sample
    subsets = [_pick(usable, int(m), seed, "random subsets", j, ref.index)
               for j, m in enumerate(work.draws)]
    need = np.unique(np.concatenate([full, work.kept, *subsets]))
    z = rff.transform(_read(src, ref, need))
    g = role_rng(seed, "mmd groups", ref.index).integers(groups, size=ref.n_rows)
    z_full = z if full.size == need.size else z[np.searchsorted(need, full)]  # usually all rows
    f_sum, f_n = _group_sums(z_full, g[full - a], np.ones(full.size), groups)
    del z_full
    z_kept = z[np.searchsorted(need, work.kept)]
    k_sum, k_n = _group_sums(z_kept, g[work.kept - a], work.weight, groups)
    r_sum = np.zeros((len(subsets), rff.n_features))
    for j, rows in enumerate(subsets):
        r_sum[j] = z[np.searchsorted(need, rows)].sum(axis=0, dtype=np.float64)
    return f_sum, f_n, k_sum, k_n, r_sum


def _read(src, ref: ChunkRef, need: np.ndarray) -> np.ndarray:
    """The rows ``need`` of one chunk as float32: the whole chunk, or short spans when few."""
    if need.size * SPARSE_READ < ref.n_rows:
        x = src.read_rows(need, chunk_rows=SPARSE_SPAN)
    else:
        x = src.read(ref)
        if need.size != ref.n_rows:
            x = x[need - ref.global_start]
    return np.asarray(x, dtype=np.float32)


def _group_sums(z: np.ndarray, g: np.ndarray, w: np.ndarray,
                groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted feature sums and weights per group (float64, each group's rows in order)."""
    sums = np.zeros((groups, z.shape[1]))
    n = np.bincount(g, weights=w, minlength=groups).astype(np.float64)
    if z.shape[0] == 0:
        return sums, n
    weighted = not np.all(w == 1)
    if groups == 1:
        sums[0] = (z.astype(np.float64) * w[:, None]).sum(axis=0) if weighted else \
            z.sum(axis=0, dtype=np.float64)
        return sums, n
    order = np.argsort(g, kind="stable")
    present, starts = np.unique(g[order], return_index=True)
    zo = z[order].astype(np.float64) * w[order, None] if weighted else z[order]
    sums[present] = np.add.reduceat(zo, starts, axis=0, dtype=np.float64)
    return sums, n


def _jackknife(full: np.ndarray, full_n: np.ndarray, kept: np.ndarray,
               kept_n: np.ndarray) -> float | None:
    """Delete-a-group jackknife standard error of ||kept mean - full mean||."""
    g = full.shape[0]
    rest_f, rest_k = full_n.sum() - full_n, kept_n.sum() - kept_n
    if np.any(rest_f == 0) or np.any(rest_k == 0):
        return None  # some group holds every row of a side: no delete-a-group estimate
    loo = np.array([_norm((kept.sum(0) - kept[i]) / rest_k[i] - (full.sum(0) - full[i]) / rest_f[i])
                    for i in range(g)])
    return float(np.sqrt((g - 1) / g * np.sum((loo - loo.mean()) ** 2)))


def _norm(v: np.ndarray) -> float:
    return float(np.sqrt(max(float(v @ v), 0.0)))


def _task_bytes(chunk_rows: int, dim: int, itemsize: int, n_features: int) -> int:
    """Peak memory of one chunk task: the rows as read, as float32, their features."""
    return chunk_rows * (dim * (itemsize + 8) + 8 * n_features + 64)
