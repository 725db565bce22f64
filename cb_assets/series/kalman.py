"""Local-level Kalman model per column: filter, RTS smoother, EM fit and carrying state between hours.

Each of the K columns of an observation array y (T, K) float64 is an independent model

    x_t = x_{t-1} + w_t,  w_t ~ N(0, q)        y_t = x_t + v_t,  v_t ~ N(0, r)

with NaN (or any non-finite value) meaning "not observed at t", per column. A per-column model keeps the
values that are present in a row; pykalman's multivariate filter would drop the whole row.

Conventions (identical to pykalman with 1-d state, transition/observation matrices [[1]]):
- `LocalLevelParams.x0` / `p0` are the prior mean/variance of x_0 *before* y_0 is applied; x_0 is not
  reached by a transition.
- Row t of the filter output is the estimate of x_t from y_0..y_t only (causal); row t of the smoother
  output uses all rows.
- On a grid with missing rows the filter simply carries the last mean forward while its variance grows by
  q per row, and the smoother interpolates linearly between observed rows: the plain recursion below
  produces that (up to rounding), so gaps need no special casing.

The recursions are compiled with numba (`kalman_kernels.py`); this module validates inputs and shapes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from cb_assets.series import kalman_kernels as _k

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class LocalLevelParams:
    """Per-column parameters, each a read-only float64 array of shape (K,).

    q: state (random-walk) variance per row; r: observation noise variance (must be > 0);
    x0, p0: prior mean and variance of the first row's state before its observation.
    Scalars broadcast against the longest array given; use `LocalLevelParams.full` for K copies.
    """

    q: np.ndarray
    r: np.ndarray
    x0: np.ndarray
    p0: np.ndarray

    def __post_init__(self) -> None:
        arrays = [np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (self.q, self.r, self.x0, self.p0)]
        if any(a.ndim != 1 for a in arrays):
            raise ValueError("LocalLevelParams fields must be scalars or 1-d arrays (one value per column)")
        arrays = np.broadcast_arrays(*arrays)
        for name, a in zip(("q", "r", "x0", "p0"), arrays, strict=True):
            a = a.copy()  # own the memory: callers mutating their array must not change a frozen object
            if not np.all(np.isfinite(a)):
                raise ValueError(f"LocalLevelParams.{name} must be finite, got {a}")
            a.setflags(write=False)
            object.__setattr__(self, name, a)
        # r = 0 would make an exactly observed state with zero innovation variance possible (0/0).
        if np.any(self.q < 0) or np.any(self.r <= 0) or np.any(self.p0 < 0):
            raise ValueError(f"need q >= 0, r > 0, p0 >= 0; got q={self.q}, r={self.r}, p0={self.p0}")

    @classmethod
    def full(cls, n_columns: int, q: float, r: float, x0: float, p0: float) -> LocalLevelParams:
        return cls(*(np.full(n_columns, v, dtype=np.float64) for v in (q, r, x0, p0)))

    @property
    def n_columns(self) -> int:
        return int(self.q.shape[0])

    def select(self, columns: slice | list[int] | np.ndarray) -> LocalLevelParams:
        """The parameters of a subset of columns (e.g. one product's fields)."""
        return LocalLevelParams(self.q[columns], self.r[columns], self.x0[columns], self.p0[columns])


@dataclass(frozen=True, eq=False)
class FilterResult:
    """Causal filter output: mean/var (T, K) of x_t given y_0..y_t, and the log-likelihood per column.

    Iterating yields (mean, var), so `mean, var = kalman_filter(y, params)` also works, as the
    contract in docs/contracts.md writes it.
    """

    mean: np.ndarray
    var: np.ndarray
    loglik: np.ndarray

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.mean, self.var))


class FilterState(NamedTuple):
    """Filtered mean/var (K,) of the state at the last row of a block: what an hour hands to the next."""

    mean: np.ndarray
    var: np.ndarray


def _observations(y: np.ndarray, params: LocalLevelParams) -> np.ndarray:
    arr = np.ascontiguousarray(y, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"observations must be 2-d (T, K), got shape {arr.shape}")
    if arr.shape[1] != params.n_columns:
        raise ValueError(f"observations have {arr.shape[1]} columns but params have {params.n_columns}")
    return arr


def _run(y: np.ndarray, params: LocalLevelParams, smooth: bool) -> FilterResult:
    obs = _observations(y, params)
    n, k = obs.shape
    mean = np.empty((n, k))
    var = np.empty((n, k))
    loglik = np.zeros(k)
    if n:
        _k.run_columns(obs, params.q, params.r, params.x0, params.p0, smooth, mean, var, loglik)
    return FilterResult(mean, var, loglik)


def kalman_filter(y: np.ndarray, params: LocalLevelParams) -> FilterResult:
    """Causal filter: row t uses y_0..y_t only, so it may feed features at time t without leakage.

    A column with no observations stays at x0 with variance p0 + t q (and log-likelihood 0).
    """
    return _run(y, params, smooth=False)


def kalman_smooth(y: np.ndarray, params: LocalLevelParams) -> tuple[np.ndarray, np.ndarray]:
    """RTS smoother: mean/var (T, K) of x_t given all rows. Looks into the future: never a feature."""
    res = _run(y, params, smooth=True)
    return res.mean, res.var


def last_state(result: FilterResult) -> FilterState:
    """The filtered state at the last row (copies), to start the next contiguous block from."""
    if result.mean.shape[0] == 0:
        raise ValueError("an empty filter result has no last state; carry the previous one instead")
    return FilterState(result.mean[-1].copy(), result.var[-1].copy())


# The name docs/contracts.md uses for the same thing.
filter_state = last_state


def resume_params(params: LocalLevelParams, state: FilterState, steps: int = 1) -> LocalLevelParams:
    """Parameters whose prior continues a filter from `state` (the filtered state at some row t).

    The next block's first row is `steps` rows after t (1 for contiguous hours on the 1 s grid). Since
    x0/p0 are the prior before that row's observation, the prior is one or more transitions on:
    x0 = mean, p0 = var + steps * q. With steps=1, filtering the next block from these parameters gives
    bit-for-bit the rows a single filter run over both blocks gives.
    """
    if steps < 1:
        raise ValueError("steps must be >= 1: the next block starts after the carried row")
    mean = np.asarray(state.mean, dtype=np.float64)
    var = np.asarray(state.var, dtype=np.float64)
    if mean.shape != params.q.shape or var.shape != params.q.shape:
        raise ValueError("state and params must have the same number of columns")
    p0 = var + params.q if steps == 1 else var + steps * params.q
    return LocalLevelParams(params.q, params.r, mean, p0)


# ---------------------------------------------------------------------------------------------- EM

_EM_VARS = ("q", "r", "x0", "p0")
# Variances below (1e-10 x the column's magnitude)^2 are far below any real noise (one cent on 60,000 is
# 1.7e-7 relative) yet far above float64 resolution (2.2e-16 relative): the floor only binds when a
# column is numerically constant, where EM would otherwise shrink q and r towards 0 forever.
_FLOOR_REL = 1e-10
_FLOOR_ABS = 1e-300


@dataclass(frozen=True, eq=False)
class EMResult:
    """Outcome of `fit_em`, per column (arrays of shape (K,)).

    n_iter: M-steps applied; loglik: log-likelihood of the returned params; converged: the tolerance was
    met (False whenever tol <= 0, except in columns without observations: nothing to fit).
    loglik_trace (max(n_iter) + 1, K): log-likelihood before each M-step and of the final params, NaN
    after a column stopped; EM never lets it decrease.
    """

    params: LocalLevelParams
    n_iter: np.ndarray
    loglik: np.ndarray
    converged: np.ndarray
    loglik_trace: np.ndarray


def variance_floor(y: np.ndarray) -> np.ndarray:
    """The default lower bound (K,) on q and r in `fit_em`: (1e-10 x max |observed value|)^2."""
    obs = np.asarray(y, dtype=np.float64)
    if obs.ndim != 2:
        raise ValueError(f"observations must be 2-d (T, K), got shape {obs.shape}")
    scale = np.max(np.where(np.isfinite(obs), np.abs(obs), 0.0), axis=0, initial=0.0)
    return np.maximum((_FLOOR_REL * scale) ** 2, _FLOOR_ABS)


def init_params(y: np.ndarray) -> LocalLevelParams:
    """Starting parameters for EM from the data alone, independent of the data's units.

    Per column, with d the differences between consecutive observed values and g their row gaps:
    under the model E[d^2] = g q + 2 r, so with ms = mean(d^2) the start splits that spread half into
    the state and half into noise: q0 = ms / (2 mean(g)), r0 = ms / 4. Being moments of the data it
    scales with prices near 60,000, volumes and percentages alike (fixed defaults such as pykalman's
    q = r = 1 hardly smooth a price at all). x0 is the first observed value and p0 = r0 + (i0 + 1) q0
    its uncertainty as an estimate of x_0 when it was observed at row i0.
    Constant columns (ms at or below the floor, or a single observation) start at q0 = r0 =
    `variance_floor`, where EM stops at once: trust the data (the gain depends on q/r only, so a later
    jump is still followed within a few ticks). Columns without observations get x0 = 0, q = r = p0 = 1;
    their filter output is only that prior and must not be read as data.
    """
    obs = np.asarray(y, dtype=np.float64)
    if obs.ndim != 2:
        raise ValueError(f"observations must be 2-d (T, K), got shape {obs.shape}")
    k_cols = obs.shape[1]
    floor = variance_floor(obs)
    q = np.ones(k_cols)
    r = np.ones(k_cols)
    x0 = np.zeros(k_cols)
    p0 = np.ones(k_cols)
    for k in range(k_cols):
        idx = np.flatnonzero(np.isfinite(obs[:, k]))
        if idx.size == 0:
            continue
        vals = obs[idx, k]
        x0[k] = vals[0]
        ms = float(np.mean(np.diff(vals) ** 2)) if idx.size >= 2 else 0.0
        if ms > floor[k]:
            q[k] = ms / (2.0 * float(np.mean(np.diff(idx))))
            r[k] = ms / 4.0
        else:
            q[k] = r[k] = floor[k]
        p0[k] = r[k] + (idx[0] + 1) * q[k]
    return LocalLevelParams(q, r, x0, p0)


def fit_em(
    y: np.ndarray,
    init: LocalLevelParams | None = None,
    tol: float = 1e-6,
    max_iter: int = 500,
    em_vars: tuple[str, ...] | list[str] = ("q", "r"),
    var_floor: np.ndarray | float | None = None,
) -> EMResult:
    """Maximum-likelihood parameters per column by EM, run to a tolerance (each column on its own).

    A column stops when the relative change of its log-likelihood in one step is <= tol, measured as
    |dll| <= tol * max(|ll|, n_obs) (the n_obs guard: a log-likelihood's size depends on the units, it
    can sit near 0), or after max_iter M-steps. tol <= 0 runs exactly max_iter M-steps on every
    column with observations, which is what pykalman's `em(X, n_iter=max_iter, em_vars=...)` does:
    em_vars "q", "r", "x0", "p0" map to transition_covariance, observation_covariance,
    initial_state_mean, initial_state_covariance, and the updates are pykalman's, per column.
    Differences from pykalman, all outside its usual operating range: q and r are kept >= var_floor
    (default `variance_floor(y)`; it only binds on constant data), r is left unchanged in a column
    without observations (pykalman sets it to 0) and q when T = 1 (pykalman also sets it to 0).
    `init` defaults to `init_params(y)`.
    """
    obs = np.asarray(y, dtype=np.float64)
    params = init if init is not None else init_params(obs)
    obs = _observations(obs, params)
    unknown = set(em_vars) - set(_EM_VARS)
    if unknown:
        raise ValueError(f"em_vars must be among {_EM_VARS}, got unknown {sorted(unknown)}")
    if max_iter < 0:
        raise ValueError("max_iter must be >= 0")
    k_cols = params.n_columns
    floor = (
        variance_floor(obs) if var_floor is None else np.broadcast_to(np.asarray(var_floor, float), (k_cols,))
    )
    floor = np.ascontiguousarray(floor, dtype=np.float64)
    if np.any(floor <= 0):
        raise ValueError("var_floor must be > 0 (r = 0 is not a valid model)")

    q, r, x0, p0 = (np.array(a, dtype=np.float64) for a in (params.q, params.r, params.x0, params.p0))
    trace = np.full((max_iter + 1, k_cols), np.nan)
    n_iter = np.zeros(k_cols, dtype=np.int64)
    converged = np.ones(k_cols, dtype=np.bool_)
    loglik = np.zeros(k_cols)
    if obs.shape[0] == 0:
        trace[0] = 0.0
    else:
        fit = {v: v in em_vars for v in _EM_VARS}
        _k.em_columns(
            obs, q, r, x0, p0, fit["q"], fit["r"], fit["x0"], fit["p0"],
            float(tol), int(max_iter), floor, trace, n_iter, converged, loglik,
        )  # fmt: skip
    if tol > 0 and not converged.all():
        logger.warning(
            "EM stopped at max_iter=%d before tol=%g in %d of %d columns",
            max_iter, tol, int((~converged).sum()), k_cols,
        )  # fmt: skip
    logger.debug("EM iterations per column: %s", n_iter.tolist())
    result_params = LocalLevelParams(q, r, x0, p0)
    return EMResult(result_params, n_iter, loglik, converged, trace[: int(n_iter.max(initial=0)) + 1])
