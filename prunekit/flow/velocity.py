"""The closed-form (empirical optimal) flow-matching velocity field.

For a finite training set ``{x1_i}`` and the linear path ``x_t = (1 - t) x0 + t x1`` with
``x0 ~ N(0, I)`` (t = 0 noise, t = 1 data), the flow-matching objective is minimised by

    w_i(x, t) ∝ exp(-||x - t x1_i||^2 / (2 (1 - t)^2)),
    m(x, t)   = sum_i w_i x1_i                      (posterior mean of x1 given x_t = x),
    v*(x, t)  = (m(x, t) - x) / (1 - t).

The weights are a softmax over training points: attention with queries = particles,
keys = t x1_i, values = x1_i. We evaluate it in blocks of training points with a running
log-sum-exp, so memory is O(particles x block) and never N x particles x d, and the two
products per block (logits and weighted sum) are BLAS GEMMs.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np

from prunekit.errors import PrunekitError

# Elements of the (particles x block) logit buffer per evaluation: 2**24 float32 = 64 MiB.
# Large blocks keep the GEMMs efficient; the buffer bounds memory for any N.
DEFAULT_BUFFER = 1 << 24
MIN_BLOCK = 256
CENTRE_ROWS = 8192
DTYPES = {"float32": np.float32, "float64": np.float64}


def resolve_dtype(dtype: str | np.dtype | type) -> np.dtype:
    """``float32`` or ``float64`` (the compute precision), else a PrunekitError."""
    dt = np.dtype(DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise PrunekitError(f"dtype must be float32 or float64, got {dtype}.")
    return dt


class ClosedFormField:
    """v*(x, t) of a training set ``x1`` (N x d), optionally restricted to a subset.

    Time runs from noise (t = 0) to data (t = 1); the field is defined for 0 <= t < 1.

    The training points are stored once, centred on their mean ``mu``: the weights are
    unchanged when x1_i -> x1_i - mu and x -> x - t mu, and centring keeps the GEMM form of
    the logits (which subtracts large, nearly equal numbers) accurate in float32 when the
    data sit far from the origin. :meth:`subset` shares that storage, so sweeping many
    subsets costs one copy of the data.
    """

    def __init__(
        self,
        x1: np.ndarray,
        *,
        dtype: str | np.dtype | type = np.float32,
        block: int | None = None,
    ) -> None:
        x1 = np.asarray(x1)
        if x1.ndim != 2 or x1.shape[0] == 0 or x1.shape[1] == 0:
            raise PrunekitError(f"training set must be a non-empty 2-D array (N x d), got shape {x1.shape}.")
        if not np.isfinite(x1).all():
            raise PrunekitError("training set has NaN/inf values; drop or fix those rows first.")
        if block is not None and block < 1:
            raise PrunekitError(f"block must be a positive number of training points, got {block}.")
        self.dtype = resolve_dtype(dtype)
        mu = x1.mean(axis=0, dtype=np.float64)
        # Centre in float64, a chunk at a time, so a large float32 set is never doubled.
        self._x1 = np.empty(x1.shape, dtype=self.dtype)
        self._sq = np.empty(x1.shape[0], dtype=self.dtype)
        for start in range(0, x1.shape[0], CENTRE_ROWS):
            centred = x1[start : start + CENTRE_ROWS].astype(np.float64) - mu
            self._x1[start : start + CENTRE_ROWS] = centred
            self._sq[start : start + CENTRE_ROWS] = np.einsum("ij,ij->i", centred, centred)
        self._mu = mu.astype(self.dtype)
        self.indices: np.ndarray | None = None  # None: all training points
        self.block = block

    @property
    def dim(self) -> int:
        return int(self._x1.shape[1])

    @property
    def n(self) -> int:
        """Number of training points this field uses."""
        return int(self._x1.shape[0] if self.indices is None else self.indices.size)

    def points(self) -> np.ndarray:
        """Positions (into the full training set) of the points this field uses."""
        return np.arange(self._x1.shape[0]) if self.indices is None else self.indices

    def subset(self, indices: np.ndarray) -> ClosedFormField:
        """The field of the training points at ``indices`` (sharing this field's storage)."""
        idx = np.unique(np.asarray(indices, dtype=np.int64))
        if idx.size == 0:
            raise PrunekitError("a subset must keep at least one training point.")
        if idx[0] < 0 or idx[-1] >= self._x1.shape[0]:
            raise PrunekitError(
                f"subset indices must lie in [0, {self._x1.shape[0]}); got {idx[0]}..{idx[-1]}."
            )
        if self.indices is not None:
            idx = self.indices[idx]
        out = copy.copy(self)  # shallow: the stored points are shared
        out.indices = None if idx.size == self._x1.shape[0] else idx
        return out

    @property
    def mean(self) -> np.ndarray:
        """The centre ``mu`` that :meth:`iter_blocks` has subtracted from the points."""
        return self._mu

    def iter_blocks(self, n_particles: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(start, x1_block - mu, ||x1_block - mu||^2)`` over the field's points.

        ``start`` counts in the field's own order (0..n-1, see :meth:`points`). Blocks of
        the full set are views; a subset's rows are gathered into one reused buffer, so a
        block is valid only until the next one is produced. The block size keeps the
        (particles x block) logit buffer near ``DEFAULT_BUFFER`` elements.
        """
        n = self.n
        size = self.block or max(MIN_BLOCK, DEFAULT_BUFFER // max(n_particles, 1))
        size = min(size, n)
        gather = None if self.indices is None else np.empty((size, self.dim), dtype=self.dtype)
        for start in range(0, n, size):
            stop = min(start + size, n)
            if self.indices is None:
                yield start, self._x1[start:stop], self._sq[start:stop]
            else:
                rows = self.indices[start:stop]
                buf = gather[: stop - start]
                np.take(self._x1, rows, axis=0, out=buf)
                yield start, buf, self._sq[rows]

    def posterior_mean(self, x: np.ndarray, t: float) -> np.ndarray:
        """m(x, t) = sum_i w_i(x, t) x1_i for particles ``x`` (M x d) at time t in [0, 1).

        t = 0 is noise, t = 1 data. Returns an (M x d) array of the field's dtype.
        """
        t = _check_time(t)
        xc = np.asarray(x, dtype=self.dtype)
        if xc.ndim != 2 or xc.shape[1] != self.dim:
            raise PrunekitError(f"particles must be (M x {self.dim}), got shape {np.shape(x)}.")
        xc = xc - self.dtype.type(t) * self._mu  # centred coordinates (see the class docstring)
        m = _softmax_mean(xc, t, self.iter_blocks(xc.shape[0]), self.dtype)
        m += self._mu
        return m

    def velocity(self, x: np.ndarray, t: float) -> np.ndarray:
        """v*(x, t) = (m(x, t) - x) / (1 - t), for t in [0, 1) (t = 0 noise, t = 1 data)."""
        m = self.posterior_mean(x, t)
        m -= np.asarray(x, dtype=self.dtype)
        m /= self.dtype.type(1.0 - t)
        return m


def _check_time(t: float) -> float:
    t = float(t)
    if not 0.0 <= t < 1.0:
        raise PrunekitError(f"time t must lie in [0, 1) (t = 0 noise, t = 1 data), got {t}.")
    return t


def _softmax_mean(
    x: np.ndarray, t: float, blocks: Iterator[tuple[int, np.ndarray, np.ndarray]], dtype: np.dtype
) -> np.ndarray:
    """sum_i softmax_i(logits) x1_i with a running log-sum-exp over blocks of training points.

    logit_i = -||x - t x1_i||^2 / (2 (1 - t)^2) = scale * h_i + const(x) with
    h_i = x.x1_i - (t / 2) ||x1_i||^2 and scale = t / (1 - t)^2; ||x||^2 only shifts every
    logit of a particle equally, so it drops out of the softmax. The running maximum is
    kept in h units and the scale is applied after subtracting it: every exponent is then
    <= 0 however close t is to 1, so nothing overflows.
    """
    m_rows = x.shape[0]
    scale = dtype.type(t / (1.0 - t) ** 2)
    half_t = dtype.type(t / 2.0)
    acc = np.empty_like(x)
    den = np.zeros(m_rows, dtype=dtype)
    run_max = np.full(m_rows, -np.inf, dtype=dtype)
    logits = None
    prod = None
    first = True
    for _, xb, sq in blocks:
        b = xb.shape[0]
        if logits is None or logits.size < m_rows * b:
            logits = np.empty(m_rows * b, dtype=dtype)
        h = logits[: m_rows * b].reshape(m_rows, b)
        np.matmul(x, xb.T, out=h)
        h -= half_t * sq
        new_max = np.maximum(run_max, h.max(axis=1))
        h -= new_max[:, None]
        h *= scale
        np.exp(h, out=h)
        if first:
            np.matmul(h, xb, out=acc)
            first = False
        else:
            # Rescale what earlier blocks accumulated to the new maximum.
            alpha = np.exp((run_max - new_max) * scale)
            if not np.all(alpha == 1):
                acc *= alpha[:, None]
                den *= alpha
            if prod is None:
                prod = np.empty_like(acc)
            np.matmul(h, xb, out=prod)
            acc += prod
        den += h.sum(axis=1)
        run_max = new_max
    acc /= den[:, None]
    return acc


def velocity(
    x: np.ndarray,
    t: float,
    x1: np.ndarray,
    *,
    dtype: str | np.dtype | type = np.float32,
    block: int | None = None,
) -> np.ndarray:
    """v*(x, t) of the training set ``x1`` at particles ``x``; t = 0 noise, t = 1 data."""
    return ClosedFormField(x1, dtype=dtype, block=block).velocity(x, t)


def posterior_mean(
    x: np.ndarray,
    t: float,
    x1: np.ndarray,
    *,
    dtype: str | np.dtype | type = np.float32,
    block: int | None = None,
) -> np.ndarray:
    """m(x, t) = E[x1 | x_t = x] under the empirical distribution of ``x1``; t in [0, 1)."""
    return ClosedFormField(x1, dtype=dtype, block=block).posterior_mean(x, t)
