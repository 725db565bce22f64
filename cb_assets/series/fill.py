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

`CausalFilter` is the filter as state: the hour's fill advances one over the two hours at once, the live
forecaster advances one second at a time from the same start, and the resume rule of the local-level model
(prior = last filtered state one transition on) makes the two agree bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class HourParams:
    """Per-field parameters (q, r) an hour is filtered with, and how they were obtained."""

    q: np.ndarray
    r: np.ndarray
    em_iterations: np.ndarray
    converged: np.ndarray
    causal: bool  # fitted on the previous hour (False: a cold start fitted on the hour itself)

    def fitted(self) -> list[FittedParams]:
        on = "previous_hour" if self.causal else "same_hour"
        return [
            FittedParams(c, float(self.q[j]), float(self.r[j]), int(self.em_iterations[j]),
                         bool(self.converged[j]), on)
            for j, c in enumerate(SERIES_COLUMNS)
        ]  # fmt: skip


def fit_hour_params(previous: np.ndarray, current: np.ndarray | None) -> HourParams:
    """EM to convergence on the previous hour's grid (3600, K), or on the hour itself on a cold start.

    `current` may be None where the hour has not happened yet (the live path): a cold start then gets the
    data-free starting parameters, and is not causal either way.
    """
    causal = int(np.isfinite(previous[:, 0]).sum()) >= MIN_FIT_TICKS
    fit_on = previous if causal or current is None else current
    k = previous.shape[1]
    if np.isfinite(fit_on).any():
        em = fit_em(fit_on, init_params(fit_on), tol=EM_TOL, max_iter=EM_MAX_ITER)
        return HourParams(np.asarray(em.params.q), np.asarray(em.params.r), em.n_iter, em.converged, causal)
    # No tick at all: nothing to estimate; the filter output stays NaN until a first tick.
    return HourParams(np.ones(k), np.ones(k), np.zeros(k, dtype=int), np.zeros(k, dtype=bool), causal)


@dataclass
class CausalFilter:
    """The causal filter of one product's fields, to be advanced over consecutive seconds.

    `mean`/`var` are the prior of the next second (before its observation). A field's estimate starts at its
    first observation: with the prior mean equal to that value the update returns exactly it, whatever the
    variance, and the large starting variance (1e6 r) makes the posterior variance there ~r, as a diffuse
    start would. Before it the field has no estimate (NaN): nothing is back-filled.
    """

    q: np.ndarray
    r: np.ndarray
    mean: np.ndarray = field(init=False)
    var: np.ndarray = field(init=False)
    started: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.q = np.asarray(self.q, dtype=np.float64)
        self.r = np.asarray(self.r, dtype=np.float64)
        self.mean = np.zeros_like(self.q)
        self.var = self.r * 1e6
        self.started = np.zeros(self.q.shape, dtype=bool)

    def prior(self, y: np.ndarray) -> tuple[LocalLevelParams, np.ndarray]:
        """The model parameters for a block `y` (n, K) from the current state, and the row of each field's
        first estimate in the block (0 for started fields, n for fields still without an observation)."""
        n = y.shape[0]
        first = np.where(self.started, 0, n)
        x0 = self.mean.copy()
        for j in np.flatnonzero(~self.started):
            idx = np.flatnonzero(np.isfinite(y[:, j]))
            if idx.size:
                first[j] = idx[0]
                x0[j] = y[idx[0], j]
        return LocalLevelParams(self.q, self.r, x0, self.var), first

    def advance(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Filtered means and variances (n, K) of the next n seconds (NaN before a field's first tick)."""
        y = np.asarray(y, dtype=np.float64)
        params, first = self.prior(y)
        res = kalman_filter(y, params)
        known = np.arange(y.shape[0])[:, None] >= first[None, :]
        if y.shape[0]:
            # The next second's prior: one random-walk transition on (kalman.resume_params' rule).
            self.mean = res.mean[-1].copy()
            self.var = res.var[-1] + self.q
            self.started = self.started | (first < y.shape[0])
        return np.where(known, res.mean, np.nan), np.where(known, res.var, np.nan)


def fill_product_hour(
    product_id: str, times_ns: np.ndarray, values: np.ndarray, hour_start_ns: int
) -> FilledHour:
    """Fill hour [hour_start, +1h) of one product from its ticks in [hour_start - 1h, hour_start + 1h).

    `values` is (n, len(SERIES_COLUMNS)) in SERIES_COLUMNS order; ticks outside the two hours are ignored.
    """
    start_ns = hour_start_ns - HOUR_S * SECOND_NS
    y, observed = to_grid(np.asarray(times_ns, dtype=np.int64), values, start_ns, 2 * HOUR_S)
    prev, cur = y[:HOUR_S], y[HOUR_S:]
    params = fit_hour_params(prev, cur)
    filt = CausalFilter(params.q, params.r)
    smoother_params, first = filt.prior(y)
    f_mean, f_var = filt.advance(y)
    smooth_mean, _ = kalman_smooth(y, smoother_params)
    known = np.arange(2 * HOUR_S)[:, None] >= first[None, :]
    f_mean, f_std = f_mean[HOUR_S:], np.sqrt(f_var[HOUR_S:])
    s_mean = np.where(known, smooth_mean, np.nan)[HOUR_S:]

    data: dict[str, np.ndarray] = {"observed": observed[HOUR_S:], "causal": np.full(HOUR_S, params.causal)}
    for j, c in enumerate(SERIES_COLUMNS):
        data[c] = cur[:, j]
        data[f"{c}_filtered"] = f_mean[:, j]
        data[f"{c}_filtered_std"] = f_std[:, j]
        data[f"{c}_smoothed"] = s_mean[:, j]
    frame = pd.DataFrame(data, index=grid_index(hour_start_ns, HOUR_S))
    frame.index.name = "time"
    return FilledHour(product_id, frame, params.fitted())
