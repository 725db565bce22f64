"""Speed of cb_assets.series.kalman against pykalman, with the agreement of the outputs in the same run.

Run: `python bench/kalman.py` (about 1-2 minutes, mostly pykalman). Target: >= 300x.

Data: random walks near 60,000 (q = 4, r = 9 per second), 8 columns, 80% of rows missing (whole rows,
as ticker rows are), T = 3600 and 86400. pykalman is timed the fastest way that gives the same model:
- filter+smoother: one 8-d model with diagonal matrices (rows are all-present or all-missing, so it equals
  8 independent 1-d models; it is ~6x faster in pykalman than 8 separate 1-d models);
- EM: 1-d models per column (an 8-d pykalman EM fits full 8x8 covariances, another model). Columns are
  independent, so pykalman is timed on fewer columns/iterations and scaled linearly; each row says what
  was measured. The 8-d full-covariance EM is also shown for 3600 rows, as a reference only.
Times are the best of the stated repeats, after a numba warm-up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pykalman import KalmanFilter

from cb_assets.series.kalman import LocalLevelParams, fit_em, init_params, kalman_filter, kalman_smooth
from cb_assets.series.schema import SERIES_COLUMNS

K = 8
EM_ITERS = 10
ROWS: list[str] = []


def make_data(n_rows: int, n_cols: int, seed: int, missing: float = 0.8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = 60_000.0 + np.cumsum(rng.normal(0.0, 2.0, (n_rows, n_cols)), axis=0)
    y = x + rng.normal(0.0, 3.0, (n_rows, n_cols))
    y[rng.random(n_rows) < missing] = np.nan
    return y


def best_of(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def pk_diag(p: LocalLevelParams) -> KalmanFilter:
    n = p.n_columns
    return KalmanFilter(
        transition_matrices=np.eye(n),
        observation_matrices=np.eye(n),
        transition_covariance=np.diag(p.q),
        observation_covariance=np.diag(p.r),
        initial_state_mean=p.x0,
        initial_state_covariance=np.diag(p.p0),
    )


def pk_1d(p: LocalLevelParams, k: int) -> KalmanFilter:
    return KalmanFilter(
        transition_matrices=[[1.0]],
        observation_matrices=[[1.0]],
        transition_covariance=[[p.q[k]]],
        observation_covariance=[[p.r[k]]],
        initial_state_mean=[p.x0[k]],
        initial_state_covariance=[[p.p0[k]]],
    )


def pk_em_columns(y: np.ndarray, p: LocalLevelParams, cols: list[int], n_iter: int) -> np.ndarray:
    """pykalman EM on the given columns; returns (len(cols), 2) fitted (q, r)."""
    out = []
    for k in cols:
        kf = pk_1d(p, k).em(
            np.ma.masked_invalid(y[:, k : k + 1]),
            n_iter=n_iter,
            em_vars=["transition_covariance", "observation_covariance"],
        )
        out.append((kf.transition_covariance[0, 0], kf.observation_covariance[0, 0]))
    return np.array(out)


def row(case: str, what: str, ours: float, theirs: float, how: str, diff: float) -> None:
    ROWS.append(
        f"{case:<9} {what:<18} {ours:>10.5f} {theirs:>12.3f} {theirs / ours:>9.0f}x {diff:>11.1e}  {how}"
    )


def bench_size(n_rows: int) -> None:
    y = make_data(n_rows, K, seed=n_rows)
    p = init_params(y)
    case = f"{n_rows}x{K}"
    big = n_rows > 10_000
    masked = np.ma.masked_invalid(y)

    # Filter + smoother (both calls on each side, as a caller needing both would make them).
    ours_t = best_of(lambda: (kalman_filter(y, p), kalman_smooth(y, p)), 5 if big else 50)
    kf = pk_diag(p)
    reps = 1 if big else 3
    t0 = time.perf_counter()
    for _ in range(reps):
        pk_fm, pk_fv = kf.filter(masked)
        pk_sm, pk_sv = kf.smooth(masked)
    pk_t = (time.perf_counter() - t0) / reps
    f = kalman_filter(y, p)
    sm, sv = kalman_smooth(y, p)
    diag = np.arange(K)
    diff = max(
        rel_diff(f.mean, pk_fm),
        rel_diff(f.var, pk_fv[:, diag, diag]),
        rel_diff(sm, pk_sm),
        rel_diff(sv, pk_sv[:, diag, diag]),
    )
    row(case, "filter+smoother", ours_t, pk_t, f"8-d diagonal pykalman, mean of {reps}", diff)

    # EM, the same number of iterations on both sides.
    ours_t = best_of(lambda: fit_em(y, p, tol=0.0, max_iter=EM_ITERS), 3 if big else 20)
    if big:
        cols, iters = [0], 1
    else:
        cols, iters = [0, 1], EM_ITERS
    t0 = time.perf_counter()
    pk_qr = pk_em_columns(y, p, cols, iters)
    measured = time.perf_counter() - t0
    pk_t = measured * (K / len(cols)) * (EM_ITERS / iters)
    ours_same = fit_em(y[:, cols], p.select(cols), tol=0.0, max_iter=iters).params
    diff = rel_diff(np.column_stack([ours_same.q, ours_same.r]), pk_qr)
    how = f"1-d pykalman: {len(cols)} col x {iters} it = {measured:.2f}s, x{K // len(cols)} cols" + (
        f" x{EM_ITERS // iters} it" if iters != EM_ITERS else ""
    )
    row(case, f"EM {EM_ITERS} iterations", ours_t, pk_t, how, diff)

    if not big:
        kf = pk_diag(p)
        t0 = time.perf_counter()
        kf.em(masked, n_iter=2, em_vars=["transition_covariance", "observation_covariance"])
        ref_t = (time.perf_counter() - t0) * EM_ITERS / 2
        ROWS.append(
            f"{'':<9} {'(reference)':<18} {ours_t:>10.5f} {ref_t:>12.3f} {ref_t / ours_t:>9.0f}x {'n/a':>11}  "
            "8-d pykalman EM, full 8x8 covariances (not the same model): 2 it measured, x5"
        )


def product_hour(seed: int) -> np.ndarray:
    """A ticker-like hour of the 7 SERIES_COLUMNS: a tick every ~5 s (80% of the 1 s rows missing)."""
    rng = np.random.default_rng(seed)
    n = 3600
    price = 60_000.0 + np.cumsum(rng.normal(0.0, 3.0, n)) + rng.normal(0.0, 1.0, n)
    volume = 12_000.0 + np.cumsum(np.abs(rng.normal(0.0, 0.5, n)) - 0.2)
    low24 = np.minimum.accumulate(np.minimum(price, 59_950.0))
    high24 = np.maximum.accumulate(np.maximum(price, 60_050.0))
    low52 = np.full(n, 15_500.0)
    high52 = np.full(n, 69_000.0)
    pct = (price / 59_000.0 - 1.0) * 100.0
    y = np.column_stack([price, volume, low24, high24, low52, high52, pct])
    y[rng.random(n) < 0.8] = np.nan
    return y


def real_btc_hour() -> np.ndarray | None:
    """The recorded BTC-USD trades hour as a ticker would see it: last price every 5 s, 1 s grid."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    path = path / "questdb_sample-datasets" / "btc_trades.csv.gz"
    if not path.exists():
        return None
    import pandas as pd

    df = pd.read_csv(path, usecols=["price", "timestamp"])
    ts = pd.to_datetime(df["timestamp"], utc=True)
    last = df.set_index(ts)["price"].resample("5s", label="right", closed="right").last().ffill()
    grid = np.full(3600, np.nan)
    secs = ((last.index - last.index[0].floor("h")).total_seconds()).astype(int)
    keep = secs < 3600
    grid[secs[keep]] = last.to_numpy()[keep]
    return grid[:, None]


def bench_convergence() -> None:
    print(
        f"\nEM to convergence (tol=1e-6, max_iter=500, default init) per product-hour, 3600 x {len(SERIES_COLUMNS)}:"
    )
    times, iters = [], []
    for seed in range(5):
        y = product_hour(seed)
        t0 = time.perf_counter()
        res = fit_em(y)
        times.append(time.perf_counter() - t0)
        iters.append(res.n_iter)
    it = np.array(iters)
    print(
        f"  synthetic ticker hours (5 seeds): median {np.median(times) * 1e3:.1f} ms, max {max(times) * 1e3:.1f} ms"
    )
    print(
        "  iterations per column (median over seeds): "
        + ", ".join(f"{c}={int(v)}" for c, v in zip(SERIES_COLUMNS, np.median(it, axis=0), strict=True))
    )
    real = real_btc_hour()
    if real is None:
        print("  real BTC-USD hour: skipped (../shared/data not beside this checkout)")
        return
    t0 = time.perf_counter()
    res = fit_em(real)
    took = time.perf_counter() - t0
    print(
        f"  real BTC-USD price hour (questdb btc_trades, 5 s ticks): {took * 1e3:.1f} ms for 1 column, "
        f"{int(res.n_iter[0])} iterations, converged={bool(res.converged[0])}, "
        f"q={res.params.q[0]:.3g} r={res.params.r[0]:.3g}"
    )


def main() -> None:
    logging.basicConfig(level=logging.ERROR)  # non-converged EM warnings are expected with tol=0 runs
    warm = make_data(50, 2, seed=1)
    fit_em(warm, max_iter=3)
    kalman_filter(warm, init_params(warm))
    kalman_smooth(warm, init_params(warm))
    for n_rows in (3600, 86_400):
        bench_size(n_rows)
    print(f"Local-level Kalman, {K} columns, 80% rows missing; times in seconds; target speed-up >= 300x")
    print(
        f"{'case':<9} {'what':<18} {'ours':>10} {'pykalman':>12} {'speed-up':>10} {'max rel diff':>11}  pykalman measured as"
    )
    for line in ROWS:
        print(line)
    bench_convergence()


if __name__ == "__main__":
    main()
