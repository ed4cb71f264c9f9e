"""Speed of the closed-form velocity field against the machine's own SGEMM.

One evaluation of v*(x, t) for M particles and N training points in d dimensions is two
GEMMs of M x N x d (logits, then the weighted sum): 4 M N d flops. The baseline is one
numpy float32 matmul of the first GEMM's shape (2 M N d flops), measured in the same run.
Times are medians of --repeats rounds after a warm-up round; in each round the cases take
turns, so a changing load on a shared machine affects them alike.

    python benchmarks/bench_flow.py                       # M=1024, N=20000, d=4096
    python benchmarks/bench_flow.py --n 5000 --d 1024     # smaller
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from prunekit.flow import ClosedFormField


def interleaved_medians(cases: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median seconds of each case; the cases take turns, so a shared machine's changing
    load hits the baseline and the field alike. The first round is a warm-up."""
    times: list[list[float]] = [[] for _ in cases]
    for round_ in range(repeats + 1):
        for fn, record in zip(cases, times, strict=True):
            start = time.perf_counter()
            fn()
            if round_:
                record.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", type=int, default=1024, help="particles")
    ap.add_argument("--n", type=int, default=20000, help="training points")
    ap.add_argument("--d", type=int, default=4096, help="dimension")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--blocks", type=int, nargs="*", default=[4096], help="extra block sizes to try")
    args = ap.parse_args()
    m, n, d = args.m, args.n, args.d

    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((n, d), dtype=np.float32)
    x = rng.standard_normal((m, d), dtype=np.float32)
    field = ClosedFormField(x1, dtype=np.float32)
    cases = [("numpy SGEMM (M x d) @ (d x N)", lambda: x @ x1.T, 2.0 * m * n * d)]
    for block, t in [(None, 0.5), (None, 0.99)] + [(b, 0.5) for b in args.blocks]:
        label = f"v*(x, t={t}) block={'auto' if block is None else block}"
        cases.append((label, lambda b=block, t=t: _velocity(field, x, t, b), 4.0 * m * n * d))
    secs = interleaved_medians([fn for _, fn, _ in cases], args.repeats)
    rows = [(label, s, flops / s / 1e9) for (label, _, flops), s in zip(cases, secs, strict=True)]
    sgemm = rows[0][2]

    print(f"closed-form velocity, float32: M={m} particles, N={n} points, d={d}; "
          f"median of {args.repeats}")
    print(f"{'what':<34} {'time (s)':>9} {'GFLOP/s':>9} {'% SGEMM':>8}")
    for label, seconds, gflops in rows:
        print(f"{label:<34} {seconds:>9.3f} {gflops:>9.1f} {100 * gflops / sgemm:>7.0f}%")


def _velocity(field: ClosedFormField, x: np.ndarray, t: float, block: int | None) -> np.ndarray:
    field.block = block
    return field.velocity(x, t)


if __name__ == "__main__":
    main()
