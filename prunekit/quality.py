"""Method-free quality of a selection: group balance, coverage, and MMD to the full set.

The MMD is estimated with random Fourier features of an RBF kernel (as
:func:`prunekit.kernels.rff_mmd`): MMD(S, X) ~ || mean_{s in S} z(s) - mean_{x in X} z(x) ||,
with sigma from the median heuristic. The same number for uniformly random subsets of
the same size tells whether a criterion represents the data better or worse than chance.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .embeddings import CHUNK_ROWS, Embeddings
from .errors import PrunekitError
from .kernels import RandomFourierFeatures, median_sigma
from .memory import check_fits
from .progress import track
from .seeds import role_rng, role_seed

SIGMA_SAMPLE = 4096


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


def _gather(emb: Embeddings, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (sorted source positions) of ``emb``, read chunk by chunk."""
    out = np.empty((rows.size, emb.dim), dtype=np.float64)
    for start, block in emb.iter_chunks():
        a, b = np.searchsorted(rows, [start, start + block.shape[0]])
        out[a:b] = block[rows[a:b] - start]
    return out


def uniform_row_subsets(pool: np.ndarray, size: int, draws: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``draws`` uniform subsets of ``size`` rows of ``pool`` without replacement (sorted)."""
    return [np.sort(rng.choice(pool, size=size, replace=False)) for _ in range(draws)]


def mmd_report(
    emb: Embeddings,
    kept_rows: np.ndarray,
    *,
    random_draws: int = 5,
    seed: int = 0,
    n_features: int = 512,
    sigma: float | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """RFF-MMD between the kept rows and all usable rows of ``emb``, and for random subsets.

    ``kept_rows`` are source positions (repeats weight a row, as oversampling does). The
    random subsets have as many distinct rows as the selection and are drawn from the
    usable rows; sigma (median heuristic on <= 4096 rows) and the Fourier features are
    shared by every estimate. Each of the three draws has its own stream derived from
    ``seed`` (:mod:`prunekit.seeds`). One pass over the file for the features (and, when
    ``sigma`` is None, one that gathers the sigma sample).
    """
    kept_rows = np.sort(np.asarray(kept_rows, dtype=np.int64))
    if random_draws < 0 or n_features < 1:
        raise PrunekitError(f"need random_draws >= 0 and n_features >= 1, got {random_draws}, {n_features}.")
    # Feature map, one chunk's features (and its cos temporaries), the random subsets.
    check_fits(4 * n_features * (emb.dim + 3 * min(CHUNK_ROWS, emb.n_total))
               + 8 * (random_draws + 1) * kept_rows.size, f"the MMD with {n_features} random features")
    usable = np.zeros(emb.n_total, dtype=bool)
    usable[emb.rows] = True
    if not usable[kept_rows].all():
        bad = np.unique(kept_rows[~usable[kept_rows]])[:10]
        raise PrunekitError(
            f"the selection keeps rows that are NaN/inf in {emb.source} (rows {', '.join(map(str, bad))}); "
            "inspect with the embeddings the selection was made from."
        )
    distinct = np.unique(kept_rows)
    if sigma is None:
        sample = uniform_row_subsets(emb.rows, min(SIGMA_SAMPLE, emb.n), 1, role_rng(seed, "sigma sample"))[0]
        sigma = median_sigma(_gather(emb, sample), seed=role_seed(seed, "sigma sample"))
    rff = RandomFourierFeatures(emb.dim, sigma, n_features, role_seed(seed, "fourier features"))
    subsets = [kept_rows] + uniform_row_subsets(emb.rows, distinct.size, random_draws, role_rng(seed, "random subsets"))
    sums = np.zeros((1 + len(subsets), n_features), dtype=np.float64)
    n_chunks = -(-emb.n_total // CHUNK_ROWS)
    for start, block in track(emb.iter_chunks(), total=n_chunks, desc="mmd", progress=progress):
        end = start + block.shape[0]
        ok = usable[start:end]
        z = rff.transform(np.where(ok[:, None], block, 0).astype(np.float32))
        sums[0] += z[ok].sum(axis=0, dtype=np.float64)
        for j, rows in enumerate(subsets, start=1):
            a, b = np.searchsorted(rows, [start, end])
            sums[j] += z[rows[a:b] - start].sum(axis=0, dtype=np.float64)
    sizes = np.array([emb.n] + [r.size for r in subsets], dtype=np.float64)
    means = sums / sizes[:, None]
    mmd = np.sqrt(np.maximum(((means[1:] - means[0]) ** 2).sum(axis=1), 0.0))
    rand = mmd[1:]
    return {
        "sigma": float(sigma),
        "n_features": int(n_features),
        "n_kept": int(distinct.size),
        "n_full": int(emb.n),
        "kept": float(mmd[0]),
        "random": rand.tolist(),
        "random_mean": float(rand.mean()) if rand.size else None,
        "random_std": float(rand.std()) if rand.size else None,
    }
