"""One product-hour of ticks -> the filled 1-second series: observed values, causal filter, smoother.

How an hour H is computed, and why:
- The grid spans the previous hour and H ([H-1h, H+1h)); the filter runs over both, so its state at H's first
  second is the state a filter running since H-1h would have: no seam between hours, without reading a stored
  state. Each hour is then a pure function of two raw hours, so hours can be (re)computed in any order, in
  parallel, and always give the same result.
- Parameters (q, r per field) are fitted by EM, to convergence, on the PREVIOUS hour only. Fitting them on H
  itself would let ticks after t move the filtered value at t (a leak the tests look for). When the previous
  hour has too few ticks (a cold start) they are fitted on H and the hour is marked `causal = False`; the
  indicators then mark it not warm, so no training window uses it.
- Seconds before the first tick of the two hours have no estimate (NaN): nothing is back-filled.
- The smoother (RTS, same parameters) uses the whole two hours: it is for display and analysis, never features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cb_assets.series.kalman import LocalLevelParams, fit_em, init_params, kalman_filter, kalman_smooth
from cb_assets.series.resample import grid_index, to_grid
from cb_assets.series.schema import HOUR_S, SECOND_NS, SERIES_COLUMNS

# Fewer price ticks than this in the previous hour (a minute of 5 s frames) is a cold start.
MIN_FIT_TICKS = 12
EM_TOL = 1e-6
# 24 h low/high columns move in steps and need ~600 iterations to reach the tolerance (bench/kalman.py).
EM_MAX_ITER = 1000

FILLED_COLUMNS: tuple[str, ...] = tuple(
    name for c in SERIES_COLUMNS for name in (c, f"{c}_filtered", f"{c}_filtered_std", f"{c}_smoothed")
)


@dataclass(frozen=True)
class FittedParams:
    field: str
    q: float
    r: float
    em_iterations: int
    converged: bool
    fitted_on: str  # "previous_hour" | "same_hour"


@dataclass(frozen=True)
class FilledHour:
    product_id: str
    frame: pd.DataFrame  # index: the hour's 3600 UTC seconds; columns: observed, causal, FILLED_COLUMNS
    params: list[FittedParams]

    @property
    def causal(self) -> bool:
        return bool(self.frame["causal"].iloc[0]) if len(self.frame) else False


def _filter_params(y: np.ndarray, q: np.ndarray, r: np.ndarray) -> tuple[LocalLevelParams, np.ndarray]:
    """Prior that makes the filter start at each column's first observation (index returned per column).

    With x0 equal to that first observation, the update at it returns exactly that value whatever p0 is;
    a large p0 makes the posterior variance there ~r, as for a diffuse start.
    """
    k = y.shape[1]
    first = np.full(k, y.shape[0], dtype=np.int64)
    x0 = np.zeros(k)
    for j in range(k):
        idx = np.flatnonzero(np.isfinite(y[:, j]))
        if idx.size:
            first[j] = idx[0]
            x0[j] = y[idx[0], j]
    return LocalLevelParams(q, r, x0, r * 1e6), first


def fill_product_hour(
    product_id: str, times_ns: np.ndarray, values: np.ndarray, hour_start_ns: int
) -> FilledHour:
    """Fill hour [hour_start, +1h) of one product from its ticks in [hour_start - 1h, hour_start + 1h).

    `values` is (n, len(SERIES_COLUMNS)) in SERIES_COLUMNS order; ticks outside the two hours are ignored.
    """
    start_ns = hour_start_ns - HOUR_S * SECOND_NS
    y, observed = to_grid(np.asarray(times_ns, dtype=np.int64), values, start_ns, 2 * HOUR_S)
    prev, cur = y[:HOUR_S], y[HOUR_S:]

    causal = int(np.isfinite(prev[:, 0]).sum()) >= MIN_FIT_TICKS
    fit_on = prev if causal else cur
    if np.isfinite(fit_on).any():
        em = fit_em(fit_on, init_params(fit_on), tol=EM_TOL, max_iter=EM_MAX_ITER)
        q, r = np.asarray(em.params.q), np.asarray(em.params.r)
        iters, conv = em.n_iter, em.converged
    else:  # no tick in either hour: nothing to estimate, the frame stays NaN
        q = r = np.ones(y.shape[1])
        iters, conv = np.zeros(y.shape[1], dtype=int), np.zeros(y.shape[1], dtype=bool)

    params, first = _filter_params(y, q, r)
    filt = kalman_filter(y, params)
    smooth_mean, _ = kalman_smooth(y, params)
    rows = np.arange(2 * HOUR_S)[:, None]
    known = rows >= first[None, :]  # no estimate before a column's first tick
    f_mean = np.where(known, filt.mean, np.nan)[HOUR_S:]
    f_std = np.where(known, np.sqrt(filt.var), np.nan)[HOUR_S:]
    s_mean = np.where(known, smooth_mean, np.nan)[HOUR_S:]

    data: dict[str, np.ndarray] = {"observed": observed[HOUR_S:], "causal": np.full(HOUR_S, causal)}
    for j, c in enumerate(SERIES_COLUMNS):
        data[c] = cur[:, j]
        data[f"{c}_filtered"] = f_mean[:, j]
        data[f"{c}_filtered_std"] = f_std[:, j]
        data[f"{c}_smoothed"] = s_mean[:, j]
    frame = pd.DataFrame(data, index=grid_index(hour_start_ns, HOUR_S))
    frame.index.name = "time"
    fitted_on = "previous_hour" if causal else "same_hour"
    fitted = [
        FittedParams(c, float(q[j]), float(r[j]), int(iters[j]), bool(conv[j]), fitted_on)
        for j, c in enumerate(SERIES_COLUMNS)
    ]
    return FilledHour(product_id, frame, fitted)
