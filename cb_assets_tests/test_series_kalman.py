"""The local-level Kalman numerics against pykalman (1-d state per column), plus their own guarantees.

pykalman is slow (~0.2 ms per row and column), so its comparisons use a few hundred rows, or one column of
the real hour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pykalman import KalmanFilter

from cb_assets.series.kalman import (
    LocalLevelParams,
    fit_em,
    init_params,
    kalman_filter,
    kalman_smooth,
    last_state,
    resume_params,
    variance_floor,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PK_EM_VARS = {
    "q": "transition_covariance",
    "r": "observation_covariance",
    "x0": "initial_state_mean",
    "p0": "initial_state_covariance",
}


def random_walk(n: int, k: int, seed: int, q: float = 4.0, r: float = 9.0, missing: float = 0.8):
    """(truth, observations) near 60,000 on a 1 s grid; each column misses its own rows."""
    rng = np.random.default_rng(seed)
    x = 60_000.0 + np.cumsum(rng.normal(0.0, np.sqrt(q), (n, k)), axis=0)
    y = x + rng.normal(0.0, np.sqrt(r), (n, k))
    y[rng.random((n, k)) < missing] = np.nan
    return x, y


def pk_column(p: LocalLevelParams, k: int) -> KalmanFilter:
    return KalmanFilter(
        transition_matrices=[[1.0]],
        observation_matrices=[[1.0]],
        transition_covariance=[[p.q[k]]],
        observation_covariance=[[p.r[k]]],
        initial_state_mean=[p.x0[k]],
        initial_state_covariance=[[p.p0[k]]],
    )


def masked(col: np.ndarray) -> np.ma.MaskedArray:
    return np.ma.masked_invalid(col.reshape(-1, 1))


def assert_rel(actual: np.ndarray, expected: np.ndarray, rel: float) -> None:
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    worst = np.max(np.abs(actual - expected) / np.abs(expected))
    assert worst <= rel, f"max relative difference {worst:.3e} > {rel:.0e}"


@pytest.fixture(scope="module")
def btc_hour() -> np.ndarray:
    """The recorded BTC-USD trades as the last price per grid second (right-closed seconds), (3600, 1)."""
    path = SHARED_DATA / "questdb_sample-datasets" / "btc_trades.csv.gz"
    if not path.exists():
        pytest.skip(f"recorded market data not found at {path} (../shared/data is not beside this checkout)")
    df = pd.read_csv(path, usecols=["price", "timestamp"])
    prices = df.set_index(pd.to_datetime(df["timestamp"], utc=True))["price"]
    per_second = prices.resample("1s", closed="right", label="right").last()
    y = per_second.to_numpy(dtype=np.float64)[:3600].reshape(-1, 1)
    assert 0.6 < np.isfinite(y).mean() < 0.9  # the README: ~27% of seconds without a trade
    return y


def test_filter_and_smoother_match_pykalman_per_column() -> None:
    _, y = random_walk(500, 3, seed=1)
    p = LocalLevelParams(
        q=np.array([4.0, 0.3, 50.0]),
        r=np.array([9.0, 20.0, 0.5]),
        x0=np.array([60_010.0, 59_990.0, 60_000.0]),
        p0=np.array([100.0, 4.0, 1.0]),
    )
    f = kalman_filter(y, p)
    sm, sv = kalman_smooth(y, p)
    for k in range(3):
        kf = pk_column(p, k)
        pk_fm, pk_fv = kf.filter(masked(y[:, k]))
        pk_sm, pk_sv = kf.smooth(masked(y[:, k]))
        assert_rel(f.mean[:, k], pk_fm[:, 0], 1e-9)
        assert_rel(f.var[:, k], pk_fv[:, 0, 0], 1e-9)
        assert_rel(sm[:, k], pk_sm[:, 0], 1e-9)
        assert_rel(sv[:, k], pk_sv[:, 0, 0], 1e-9)
        assert_rel(f.loglik[k], kf.loglikelihood(masked(y[:, k])), 1e-9)


@pytest.mark.parametrize("em_vars", [("q", "r"), ("q", "r", "x0", "p0"), ("r", "p0")])
def test_em_matches_pykalman_after_the_same_iterations(em_vars: tuple[str, ...]) -> None:
    _, y = random_walk(400, 2, seed=2, q=2.0, r=6.0)
    init = LocalLevelParams(q=[1.0, 30.0], r=[1.0, 0.2], x0=[59_990.0, 60_020.0], p0=[50.0, 5.0])
    res = fit_em(y, init, tol=0.0, max_iter=6, em_vars=em_vars)
    assert res.n_iter.tolist() == [6, 6]
    assert not res.converged.any()  # tol = 0: exactly max_iter steps, never "converged"
    for k in range(2):
        kf = pk_column(init, k).em(masked(y[:, k]), n_iter=6, em_vars=[PK_EM_VARS[v] for v in em_vars])
        assert_rel(res.params.q[k], kf.transition_covariance[0, 0], 1e-6)
        assert_rel(res.params.r[k], kf.observation_covariance[0, 0], 1e-6)
        assert_rel(res.params.x0[k], kf.initial_state_mean[0], 1e-6)
        # pykalman forms p0 as E[x0^2] - 2 x0 mu + mu^2 on values ~3.6e9, losing ~1e-6 absolute to
        # rounding; the tolerance allows that much beyond the relative 1e-6.
        pk_p0 = kf.initial_state_covariance[0, 0]
        assert abs(res.params.p0[k] - pk_p0) <= 1e-6 * pk_p0 + 64 * np.finfo(float).eps * 60_000.0**2
        # The parameters not listed stay exactly as given.
        for v in set(PK_EM_VARS) - set(em_vars):
            assert getattr(res.params, v)[k] == getattr(init, v)[k]
        # loglik is that of the returned parameters (which match pykalman's to ~1e-6, so does it).
        assert_rel(res.loglik[k], kf.loglikelihood(masked(y[:, k])), 1e-6)
    np.testing.assert_array_equal(res.loglik, kalman_filter(y, res.params).loglik)


def test_em_converges_monotonically_and_recovers_known_variances() -> None:
    x, y = random_walk(20_000, 2, seed=3, q=4.0, r=9.0)
    res = fit_em(y)
    assert res.converged.all() and (res.n_iter < 500).all() and (res.n_iter > 5).all()
    trace = res.loglik_trace
    for k in range(2):
        lls = trace[: res.n_iter[k] + 1, k]
        assert np.isfinite(lls).all() and np.isnan(trace[res.n_iter[k] + 1 :, k]).all()
        assert np.all(np.diff(lls) >= -1e-9 * np.abs(lls[1:])), "EM decreased the log-likelihood"
        assert lls[-1] > lls[0]
    np.testing.assert_array_equal(res.loglik, [trace[n, k] for k, n in enumerate(res.n_iter)])
    np.testing.assert_allclose(res.params.q, 4.0, rtol=0.3)
    np.testing.assert_allclose(res.params.r, 9.0, rtol=0.3)
    # The fitted model smooths: closer to the hidden level than the raw observations are.
    sm, _ = kalman_smooth(y, res.params)
    seen = np.isfinite(y)
    assert np.sqrt(np.mean((sm - x)[seen] ** 2)) < 0.8 * np.sqrt(np.mean((y - x)[seen] ** 2))


def test_em_and_init_are_unit_free_prices_volumes_percentages() -> None:
    """Scaling a column by c (and shifting it) scales q, r, p0 by c^2: the same fit in any units."""
    _, y = random_walk(3000, 1, seed=4, q=1.0, r=2.0)
    base = y - 60_000.0
    cols = np.column_stack([base + 60_000.0, base * 3.0 + 12_000.0, base * 1e-4 + 1.5])
    res = fit_em(cols, tol=0.0, max_iter=40)
    scale = np.array([1.0, 3.0, 1e-4]) ** 2
    for name in ("q", "r", "p0"):
        values = getattr(res.params, name) / scale
        assert_rel(values, np.full(3, values[0]), 1e-7)
    first = np.flatnonzero(np.isfinite(cols[:, 0]))[0]
    np.testing.assert_array_equal(res.params.x0, cols[first])  # x0 starts at the first observed value
    # pykalman's defaults (q = r = 1, x0 = 0) on prices near 60,000 fit far worse than the data-based start.
    default = LocalLevelParams.full(1, q=1.0, r=1.0, x0=0.0, p0=1.0)
    assert (
        kalman_filter(cols[:, :1], init_params(cols[:, :1])).loglik[0]
        > kalman_filter(cols[:, :1], default).loglik[0]
    )


def test_columns_are_independent_and_keep_values_of_partial_rows() -> None:
    _, y = random_walk(800, 3, seed=5)
    p = init_params(y)
    f = kalman_filter(y, p)
    sm, _ = kalman_smooth(y, p)
    em = fit_em(y, p)
    for k in range(3):
        alone = p.select([k])
        f1 = kalman_filter(y[:, [k]], alone)
        np.testing.assert_array_equal(f1.mean[:, 0], f.mean[:, k])
        np.testing.assert_array_equal(f1.var[:, 0], f.var[:, k])
        np.testing.assert_array_equal(kalman_smooth(y[:, [k]], alone)[0][:, 0], sm[:, k])
        em1 = fit_em(y[:, [k]], alone)
        assert em1.params.q[0] == em.params.q[k] and em1.n_iter[0] == em.n_iter[k]
    # A row-dropping model (pykalman's multivariate handling) would lose these values; ours keeps them.
    partial = np.isfinite(y).any(axis=1) & ~np.isfinite(y).all(axis=1)
    dropped = np.where(np.isfinite(y).all(axis=1)[:, None], y, np.nan)
    assert partial.sum() > 100
    assert not np.allclose(kalman_filter(dropped, p).mean, f.mean)
    for k in range(3):
        used = np.flatnonzero(partial & np.isfinite(y[:, k]))
        used = used[used > 0]
        assert used.size > 20
        # An applied observation shrinks the variance below the one-step prediction.
        assert np.all(f.var[used, k] < f.var[used - 1, k] + p.q[k])


def test_carrying_state_across_hours_equals_one_run() -> None:
    _, y = random_walk(7200, 4, seed=6)
    y[3590:3600, 1] = np.nan  # hour 1 ends inside a gap in one column
    p = init_params(y[:3600])
    both = kalman_filter(y, p)
    hour1 = kalman_filter(y[:3600], p)
    state = last_state(hour1)
    hour2 = kalman_filter(y[3600:], resume_params(p, state))
    np.testing.assert_array_equal(hour1.mean, both.mean[:3600])
    np.testing.assert_array_equal(hour2.mean, both.mean[3600:])
    np.testing.assert_array_equal(hour2.var, both.var[3600:])
    np.testing.assert_allclose(hour1.loglik + hour2.loglik, both.loglik, rtol=1e-12)
    # A gap of g missing rows between blocks: resume g + 1 steps on.
    gap = 30
    joined = np.vstack([y[:3600], np.full((gap, 4), np.nan), y[3600:]])
    later = kalman_filter(y[3600:], resume_params(p, state, steps=gap + 1))
    np.testing.assert_allclose(later.mean, kalman_filter(joined, p).mean[3600 + gap :], rtol=1e-13)
    np.testing.assert_allclose(later.var, kalman_filter(joined, p).var[3600 + gap :], rtol=1e-12)


def test_grid_facts_filter_carries_forward_and_smoother_interpolates() -> None:
    _, y = random_walk(600, 2, seed=7)
    p = init_params(y)
    f = kalman_filter(y, p)
    sm, _ = kalman_smooth(y, p)
    for k in range(2):
        seen = np.flatnonzero(np.isfinite(y[:, k]))
        gaps = np.flatnonzero(~np.isfinite(y[1:, k])) + 1
        np.testing.assert_array_equal(f.mean[gaps, k], f.mean[gaps - 1, k])
        np.testing.assert_allclose(f.var[gaps, k], f.var[gaps - 1, k] + p.q[k], rtol=1e-14)
        inside = np.arange(seen[0], seen[-1] + 1)
        np.testing.assert_allclose(sm[inside, k], np.interp(inside, seen, sm[seen, k]), rtol=1e-13)
        np.testing.assert_allclose(sm[seen[-1] :, k], sm[seen[-1], k], rtol=1e-15)


def test_real_btc_hour_matches_pykalman_and_em_fits(btc_hour: np.ndarray) -> None:
    p = init_params(btc_hour)
    f = kalman_filter(btc_hour, p)
    sm, sv = kalman_smooth(btc_hour, p)
    kf = pk_column(p, 0)
    pk_fm, pk_fv = kf.filter(masked(btc_hour[:, 0]))
    pk_sm, pk_sv = kf.smooth(masked(btc_hour[:, 0]))
    assert_rel(f.mean[:, 0], pk_fm[:, 0], 1e-9)
    assert_rel(f.var[:, 0], pk_fv[:, 0, 0], 1e-9)
    assert_rel(sm[:, 0], pk_sm[:, 0], 1e-9)
    assert_rel(sv[:, 0], pk_sv[:, 0, 0], 1e-9)
    three = fit_em(btc_hour, p, tol=0.0, max_iter=3)
    pk = kf.em(masked(btc_hour[:, 0]), n_iter=3, em_vars=["transition_covariance", "observation_covariance"])
    assert_rel(three.params.q, pk.transition_covariance[0, 0], 1e-6)
    assert_rel(three.params.r, pk.observation_covariance[0, 0], 1e-6)
    res = fit_em(btc_hour, p)
    assert res.converged[0] and res.loglik[0] >= three.loglik[0]
    assert np.isfinite(res.params.q).all() and res.params.q[0] > 0 and res.params.r[0] > 0


def test_column_without_observations_stays_at_its_prior() -> None:
    _, y = random_walk(100, 2, seed=8)
    y[:, 1] = np.nan
    p = LocalLevelParams(q=[4.0, 2.0], r=[9.0, 3.0], x0=[60_000.0, 42.0], p0=[10.0, 5.0])
    f = kalman_filter(y, p)
    sm, sv = kalman_smooth(y, p)
    np.testing.assert_array_equal(f.mean[:, 1], 42.0)
    np.testing.assert_allclose(f.var[:, 1], 5.0 + 2.0 * np.arange(100), rtol=1e-14)
    assert f.loglik[1] == 0.0
    np.testing.assert_array_equal(sm[:, 1], 42.0)
    np.testing.assert_allclose(sv[:, 1], f.var[:, 1], rtol=1e-14)  # nothing later to learn from
    res = fit_em(y, p, em_vars=("q", "r", "x0", "p0"))
    assert res.n_iter[1] == 0 and res.converged[1]
    assert (res.params.q[1], res.params.r[1], res.params.x0[1], res.params.p0[1]) == (2.0, 3.0, 42.0, 5.0)
    assert res.n_iter[0] > 0


def test_single_observation_and_constant_data_stay_finite() -> None:
    y = np.full((300, 3), np.nan)
    y[120, 0] = 60_123.0  # one tick
    y[::5, 1] = 60_000.0  # constant price
    y[::5, 2] = 0.0  # constant zero (e.g. a percentage)
    res = fit_em(y)
    for a in (res.params.q, res.params.r, res.params.p0, res.loglik):
        assert np.isfinite(a).all()
    assert res.converged.all()
    assert (res.params.q >= variance_floor(y)).all() and (res.params.r >= variance_floor(y)).all()
    sm, sv = kalman_smooth(y, res.params)
    f = kalman_filter(y, res.params)
    assert np.isfinite(sm).all() and np.isfinite(sv).all() and np.isfinite(f.mean).all()
    np.testing.assert_allclose(sm[:, 1], 60_000.0, rtol=1e-12)
    np.testing.assert_allclose(sm[:, 2], 0.0, atol=1e-12)
    # After the single tick the filter holds its value (no later data moves it).
    np.testing.assert_array_equal(f.mean[120:, 0], f.mean[120, 0])
    assert abs(f.mean[120, 0] - 60_123.0) < 1e-6


def test_empty_and_single_row_inputs() -> None:
    p = LocalLevelParams.full(3, q=1.0, r=2.0, x0=5.0, p0=3.0)
    empty = np.empty((0, 3))
    f = kalman_filter(empty, p)
    assert f.mean.shape == (0, 3) and f.var.shape == (0, 3) and (f.loglik == 0).all()
    mean, var = kalman_smooth(empty, p)
    assert mean.shape == (0, 3) and var.shape == (0, 3)
    res = fit_em(empty, p)
    assert (res.n_iter == 0).all() and (res.params.q == p.q).all() and res.loglik_trace.shape == (1, 3)
    with pytest.raises(ValueError):
        last_state(f)
    one = np.array([[7.0, np.nan, 5.0]])
    mean, var = kalman_filter(one, p)  # the contract's two-value unpacking
    np.testing.assert_allclose(mean[0], [5.0 + 3.0 / 5.0 * 2.0, 5.0, 5.0])
    np.testing.assert_allclose(var[0], [3.0 * 2.0 / 5.0, 3.0, 3.0 * 2.0 / 5.0])
    res = fit_em(one, p, tol=0.0, max_iter=4)
    assert (res.params.q == p.q).all()  # no transition to learn q from
    assert np.isfinite(res.params.r).all()


def test_invalid_inputs_are_rejected() -> None:
    with pytest.raises(ValueError):
        LocalLevelParams(q=[1.0], r=[0.0], x0=[0.0], p0=[1.0])
    with pytest.raises(ValueError):
        LocalLevelParams(q=[-1.0], r=[1.0], x0=[0.0], p0=[1.0])
    with pytest.raises(ValueError):
        LocalLevelParams(q=[1.0], r=[1.0], x0=[np.nan], p0=[1.0])
    p = LocalLevelParams.full(2, q=1.0, r=1.0, x0=0.0, p0=1.0)
    with pytest.raises(ValueError):
        kalman_filter(np.zeros((10, 3)), p)
    with pytest.raises(ValueError):
        fit_em(np.zeros((10, 2)), p, em_vars=("q", "transition_matrices"))
    q = np.array([1.0, 2.0])
    frozen = LocalLevelParams(q, [1.0, 1.0], [0.0, 0.0], [1.0, 1.0])
    q[0] = 99.0
    assert frozen.q[0] == 1.0 and not frozen.q.flags.writeable
