"""``herding``: kernel herding (Chen, Welling & Smola 2010), greedy MMD minimisation.

With the RBF kernel k(x, y) = exp(-||x - y||^2 / (2 sigma^2)) and mu(x) = mean_j k(x, x_j),
after T picks S_T the next pick is

    argmax over unpicked x of  (T + 1) mu(x) - sum_{s in S_T} k(x, s),

ties to the lowest index. With the exact kernel this is the greedy minimiser of
MMD^2(S_T + {x}, all items). With random Fourier features z (k(x, y) ~ z(x).z(y)) the
objective is z(x).((T + 1) mu_z - sum_{s in S_T} z(s)) with mu_z = mean_j z(x_j): one
matrix-vector product over the (n, D) float32 feature matrix per pick.

``within``: herd inside each cluster of an earlier k-means scores file (mu is the
cluster's own mean embedding); the per-cluster orders are merged round by round
(:func:`prunekit.methods.greedy.interleave`). The clusters run as tasks on the current
engine, reading their rows from a copy grouped by cluster on disk, so memory is bounded by
the largest cluster (:func:`prunekit.methods.greedy.per_cluster_orders`); a scores file is
read column-wise by the tasks, and a folder output is written by them too.
Output: ``order`` (the picks) and score = N - position (first pick N, unpicked -inf),
N = number of scored rows.
"""

from __future__ import annotations

import os
import time

import numpy as np

from prunekit.compute.kernels import MEDIAN_SAMPLE, RandomFourierFeatures, median_sigma, rbf
from prunekit.errors import PrunekitError
from prunekit.io.embeddings import Embeddings
from prunekit.methods import MethodResult, Summary, register
from prunekit.methods.greedy import (
    MAX_KEEP,
    WITHIN,
    check_in_memory,
    greedy_result,
    per_cluster_orders,
    resolve_max_keep,
    row_dots,
    within_column,
    within_param,
)
from prunekit.params import Param, ParamError
from prunekit.runtime.costs import Cost, CostModel, Step, greedy_cost, pick_cost
from prunekit.runtime.probe import time_greedy
from prunekit.runtime.progress import counter
from prunekit.selection.scores import Scores

KERNELS = ("rff", "exact")
EXACT_MAX_ROWS = 20000
EXACT_CHUNK = 1024


def _auto_sigma(sigma: float | str) -> bool:
    return isinstance(sigma, str) and sigma.strip().lower() == "auto"


def herding_probe(dim: int, n: int, p: dict) -> dict[str, float]:
    """The herding pick loop over ``rff_dim`` features (``herding_pick_s``,
    ``herding_pick_per_value``) and, for ``sigma="auto"``, the median heuristic on its
    sample (``sigma_s``, seconds)."""
    a, b = time_greedy(herd_rff, int(p["rff_dim"]))
    out = {"herding_pick_s": a, "herding_pick_per_value": b}
    if _auto_sigma(p["sigma"]):
        x = np.random.default_rng(0).standard_normal((max(min(n, MEDIAN_SAMPLE), 2), dim),
                                                     dtype=np.float32)
        t0 = time.perf_counter()
        median_sigma(x)
        out["sigma_s"] = time.perf_counter() - t0
    return out


def herding_cost(m: CostModel, p: dict) -> Cost:
    """``--sigma auto``'s sample, then the picks over all rows or per cluster.

    A pick over s candidates of D features costs ``pick_s + per_value x s x D`` (probed,
    else ``2 s D`` flops at the GEMV rate), and a task first computes its rows' features,
    ``2 s d D`` flops on its thread. Memory: the rows as float32 and their features (per
    cluster: as read too).
    """
    width = int(p["rff_dim"])
    pick_s, per_value = pick_cost(m, "herding", 2.0)

    def seconds(s: np.ndarray, picks: np.ndarray) -> np.ndarray:
        return picks * (pick_s + per_value * s * width) + 2.0 * s * m.d * width / m.rates.gemm_flops_1

    cost = greedy_cost(m, "herding", p, seconds, m.d * 4 + width * 4,
                       m.d * (4 + m.item) + width * 4)
    if _auto_sigma(p["sigma"]):
        rows = min(m.n, MEDIAN_SAMPLE)
        frac = 1.0 - np.exp(-rows / max(m.n, 1) * m.chunk)  # share of each chunk the gather spans
        t = float(frac * m.read() + (m.kernel("sigma_s") or 0.0))
        cost.steps.insert(0, Step("sigma (median heuristic)", float(frac), t, t,
                                  int(rows * rows * 8 + m.chunk_bytes()),
                                  f"pairwise distances of {rows:,} rows"))
    return cost


def herding_detail(p: dict) -> str:
    return f" ({p['n_picked']} picked in order, sigma {p['sigma']:.4g})"


@register("herding", params=(
    Param("kernel", "choice", "rff",
          "RBF kernel via random Fourier features, or exact (small sets only).", choices=KERNELS),
    Param("rff_dim", "int", 512, "Number of random Fourier features.", low=1, high=65536),
    Param("sigma", "float", "auto", "RBF bandwidth: a positive number, or 'auto' (median heuristic).",
          low=0, open_low=True, special=("auto",)),
    MAX_KEEP, WITHIN,
), cost=herding_cost, probe=herding_probe, summary=Summary(detail=herding_detail))
def herding_scores(
    emb: Embeddings,
    *,
    seed: int = 0,
    progress: bool = True,
    kernel: str = "rff",
    rff_dim: int = 512,
    sigma: float | str = "auto",
    max_keep: int | None = None,
    within: str | os.PathLike | Scores | None = None,
    parts=None,
) -> MethodResult:
    """Kernel-herding order of the rows (or of each cluster's rows with ``within``).

    ``max_keep`` stops after that many picks (per cluster with ``within``); the rest
    score -inf. ``sigma="auto"`` is the median heuristic on <= 4096 rows drawn with
    ``seed``, which also seeds the random Fourier features. With ``within`` and ``parts``
    (a folder output) the workers write the parts and the order; without ``within`` the
    one order over all rows is gathered here.
    """
    if kernel not in KERNELS:
        raise PrunekitError(f"unknown herding kernel '{kernel}'; choose one of: {', '.join(KERNELS)}.")
    if int(rff_dim) < 1:
        raise ParamError("{rff_dim} must be >= 1 (got {}).", rff_dim)
    n, d = emb.n, emb.dim
    clusters = None if within is None else within_column(emb, within)

    def check(largest: int) -> None:
        if kernel == "exact" and largest > EXACT_MAX_ROWS:
            raise PrunekitError(
                f"the exact herding kernel needs O(N^2) work and is limited to {EXACT_MAX_ROWS} "
                f"rows per herd; this one has {largest}. Use --kernel rff (random Fourier "
                "features)."
            )

    if clusters is None:
        check(n)
    sig = _resolve_sigma(emb, sigma, seed)
    rff = RandomFourierFeatures(d, sig, int(rff_dim), seed) if kernel == "rff" else None
    if clusters is None:
        check_in_memory(n * _row_bytes(emb, kernel, int(rff_dim)), "herding", n)
        x = emb.array()
        bar = counter(resolve_max_keep(max_keep, n), desc="herding", progress=progress)
        order = _herd(x, kernel, sig, rff, resolve_max_keep(max_keep, n), bar.update)
        bar.close()
        picks = None
    else:
        picks = per_cluster_orders(
            emb, clusters, _herd_batch, (kernel, sig, rff), max_keep=max_keep,
            row_bytes=_row_bytes(emb, kernel, int(rff_dim)), desc="herding", progress=progress,
            parts=parts, check=check)
        order = picks.order
    params = {"kernel": kernel, "sigma": sig, "max_keep": max_keep,
              "n_picked": int(order.size) if picks is None else picks.n_picked}
    if kernel == "rff":
        params["rff_dim"] = int(rff_dim)
    if within is not None:
        params["within"] = within_param(within)
    return greedy_result(order, n, picks, params)


def _herd(x: np.ndarray, kernel: str, sigma: float, rff, m: int, tick=None) -> np.ndarray:
    """The first ``m`` picks over float32 rows ``x`` (features computed here for rff)."""
    if kernel == "rff":
        return herd_rff(rff.transform(x), m, tick)
    return herd_exact(x, sigma, m, tick)


def _herd_batch(shared, item) -> np.ndarray:
    """Engine task: the concatenated herding orders of one batch of clusters."""
    grouped, ((kernel, sigma, rff), picks) = shared
    _, batch = item
    return np.concatenate([
        _herd(np.asarray(grouped.read(g), dtype=np.float32), kernel, sigma, rff, picks[g])
        for g in batch])


def _row_bytes(emb: Embeddings, kernel: str, rff_dim: int) -> int:
    """Memory per herded row: the row as read and as float32, plus features or kernel rows."""
    per = emb.dim * (emb.dtype.itemsize + 4) + 32
    if kernel == "rff":
        return per + 2 * rff_dim * 4  # the features and one transform block
    return per + emb.dim * 8 + EXACT_CHUNK * 8  # float64 rows and one block of kernel values


def herd_rff(z: np.ndarray, m: int, tick=None) -> np.ndarray:
    """First ``m`` herding picks over feature rows ``z`` (n, D) float32; local positions.

    Per pick: v = (T + 1) mu_z - sum of picked z (float64, cast to float32), scores = z v
    into a reused buffer (one streaming pass over ``z``), picked rows masked by adding
    -inf, argmax (first on ties).
    """
    n = z.shape[0]
    z = np.ascontiguousarray(z, dtype=np.float32)
    mu = z.mean(axis=0, dtype=np.float64)
    picked_sum = np.zeros(z.shape[1], dtype=np.float64)
    v = np.empty(z.shape[1], dtype=np.float32)
    buf = np.empty(n, dtype=np.float32)
    mask = np.zeros(n, dtype=np.float32)
    order = np.empty(m, dtype=np.int64)
    for t in range(m):
        np.subtract((t + 1) * mu, picked_sum, out=v, casting="same_kind")
        row_dots(z, v, buf)
        buf += mask
        p = int(np.argmax(buf))
        order[t] = p
        mask[p] = -np.inf
        picked_sum += z[p]
        if tick is not None:
            tick(1)
    return order


def herd_exact(x: np.ndarray, sigma: float, m: int, tick=None) -> np.ndarray:
    """First ``m`` herding picks with the exact RBF kernel (float64); local positions."""
    n = x.shape[0]
    x = np.asarray(x, dtype=np.float64)
    mu = np.empty(n)
    for a in range(0, n, EXACT_CHUNK):
        mu[a : a + EXACT_CHUNK] = rbf(x[a : a + EXACT_CHUNK], x, sigma).mean(axis=1)
    acc = np.zeros(n)
    picked = np.zeros(n, dtype=bool)
    order = np.empty(m, dtype=np.int64)
    for t in range(m):
        s = (t + 1) * mu - acc
        s[picked] = -np.inf
        p = int(np.argmax(s))
        order[t] = p
        picked[p] = True
        acc += rbf(x, x[p : p + 1], sigma)[:, 0]
        if tick is not None:
            tick(1)
    return order


def _resolve_sigma(emb: Embeddings, sigma: float | str, seed: int) -> float:
    """A given sigma, or the median heuristic on the rows :func:`median_sigma` would draw.

    The <= MEDIAN_SAMPLE rows are the ones ``median_sigma(emb.array(), seed=seed)`` samples,
    read on their own, so the result is the same without holding the matrix.
    """
    if isinstance(sigma, str) and sigma.strip().lower() == "auto":
        n = emb.n
        pick = np.arange(n) if n <= MEDIAN_SAMPLE else np.sort(
            np.random.default_rng(seed).choice(n, size=MEDIAN_SAMPLE, replace=False))
        rows = emb.reader.read_rows(emb.rows[pick]).astype(np.float32)
        return median_sigma(rows, seed=seed)
    try:
        value = float(sigma)
    except (TypeError, ValueError):
        raise ParamError("{sigma} must be 'auto' or a positive number (got '{}').", sigma) from None
    if not np.isfinite(value) or value <= 0:
        raise ParamError("{sigma} must be 'auto' or a positive number (got {}).", sigma)
    return value
