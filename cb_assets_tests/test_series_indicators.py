"""Indicators: causality (leakage), determinism across hours, warm-up, definitions, and real BTC trades."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cb_assets.series.indicators import FEATURE_NAMES, FEATURES, WARMUP_S, compute_indicators
from cb_assets.series.resample import grid_index, last_observed, to_grid
from cb_assets.series.schema import SERIES_COLUMNS

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
T0 = pd.Timestamp("2024-03-01 00:00", tz="UTC")


def stand_in_filter(observed: np.ndarray, alpha: float = 0.3) -> np.ndarray:
    """A causal exponential smoother of the carried-forward observations (the Kalman filter's stand-in)."""
    carried = pd.Series(last_observed(observed))
    return carried.ewm(alpha=alpha, adjust=False).mean().to_numpy()


def synthetic_inputs(
    n: int, seed: int, start: pd.Timestamp = T0, first_tick: int = 0, tick_prob: float = 0.3
) -> tuple[pd.DataFrame, pd.Series]:
    """A random-walk market with sparse ticks; every filtered column is causal in the observations."""
    rng = np.random.default_rng(seed)
    idx = pd.date_range(start, periods=n, freq="s")
    true = 50.0 * np.exp(np.cumsum(rng.normal(0.0, 2e-4, n)))
    ticked = rng.random(n) < tick_prob
    ticked[:first_tick] = False
    ticked[first_tick] = True
    obs = np.where(ticked, true, np.nan)
    price = stand_in_filter(obs)
    known = np.isfinite(price)
    volume = np.where(known, 1e4 * np.exp(np.cumsum(rng.normal(0.0, 1e-3, n))), np.nan)
    filtered = pd.DataFrame(
        {
            "price": price,
            "volume_24_h": volume,
            "low_24_h": pd.Series(price).cummin().to_numpy() * 0.99,
            "high_24_h": pd.Series(price).cummax().to_numpy() * 1.01,
            "low_52_w": np.where(known, 20.0, np.nan),
            "high_52_w": np.where(known, 90.0, np.nan),
            "price_percent_chg_24_h": np.where(known, np.cumsum(rng.normal(0, 0.01, n)), np.nan),
        },
        index=idx,
    )
    return filtered, pd.Series(obs, index=idx, name="price")


def as_array(frame: pd.DataFrame) -> np.ndarray:
    return frame.loc[:, list(FEATURE_NAMES)].to_numpy()


def test_output_columns_follow_the_registry() -> None:
    filtered, observed = synthetic_inputs(2400, seed=1)
    out = compute_indicators(filtered, observed)
    assert len(FEATURES) >= 30
    assert tuple(out.columns) == (*FEATURE_NAMES, "warm")
    assert all(out[c].dtype == np.float64 for c in FEATURE_NAMES) and out["warm"].dtype == bool
    assert out.index.equals(filtered.index)
    assert all(len(desc) > 10 for desc in FEATURES.values())


@pytest.mark.parametrize("what", ["filtered", "observed", "both"])
def test_no_feature_at_t_depends_on_anything_after_t(what: str) -> None:
    filtered, observed = synthetic_inputs(7200, seed=2)
    base = compute_indicators(filtered, observed)
    rng = np.random.default_rng(3)
    for t in rng.integers(100, 7100, size=4):
        f2, o2 = filtered.copy(), observed.copy()
        if what in ("filtered", "both"):
            f2.iloc[t + 1 :] *= rng.uniform(0.5, 2.0, size=(len(f2) - t - 1, len(SERIES_COLUMNS)))
            f2.iloc[t + 1 :: 97] = np.nan
        if what in ("observed", "both"):
            # Ticks appear where there were none and vanish where there were some.
            o2.iloc[t + 1 :] = np.where(np.isnan(o2.iloc[t + 1 :]), 42.0, np.nan)
        out = compute_indicators(f2, o2)
        np.testing.assert_array_equal(as_array(out.iloc[: t + 1]), as_array(base.iloc[: t + 1]))
        np.testing.assert_array_equal(out["warm"].iloc[: t + 1], base["warm"].iloc[: t + 1])
        assert not np.array_equal(as_array(out.iloc[t + 1 :]), as_array(base.iloc[t + 1 :]), equal_nan=True)


def hour_features(filtered: pd.DataFrame, observed: pd.Series, hour: int) -> pd.DataFrame:
    """What the hourly asset does: hours (hour - 1, hour) in, the second hour kept."""
    rows = slice((hour - 1) * 3600, (hour + 1) * 3600)
    return compute_indicators(filtered.iloc[rows], observed.iloc[rows]).iloc[3600:]


def test_an_hour_depends_only_on_its_two_input_hours_not_on_computation_order() -> None:
    filtered, observed = synthetic_inputs(5 * 3600, seed=4)
    first = hour_features(filtered, observed, 3)
    for h in (4, 1, 2, 3, 4):
        hour_features(filtered, observed, h)
    again = hour_features(filtered, observed, 3)
    pd.testing.assert_frame_equal(first, again, check_exact=True)
    # Changing anything before hour 2 (outside its inputs) leaves hour 3 untouched.
    f2, o2 = filtered.copy(), observed.copy()
    f2.iloc[: 2 * 3600] *= 1.5
    o2.iloc[: 2 * 3600] = np.nan
    pd.testing.assert_frame_equal(first, hour_features(f2, o2, 3), check_exact=True)
    assert first["warm"].all() and np.isfinite(as_array(first)).all()


def test_cold_start_is_not_warm_and_never_back_filled() -> None:
    first_tick = 500
    filtered, observed = synthetic_inputs(3600, seed=5, first_tick=first_tick)
    out = compute_indicators(filtered, observed)
    warm = out["warm"].to_numpy()
    # Warm exactly from the row with WARMUP_S seconds of real filtered values before it.
    assert not warm[: first_tick + WARMUP_S].any() and warm[first_tick + WARMUP_S :].all()
    assert np.isfinite(as_array(out[out["warm"]])).all()
    # Before the first tick nothing about the price is known: no value may have been back-filled.
    before = out.iloc[:first_tick]
    price_features = [c for c in FEATURE_NAMES if not c.startswith(("tod_", "tick_rate_", "staleness"))]
    assert before[price_features].isna().all().all()
    assert out["ret_1s"].iloc[first_tick + 1 :].notna().all() and np.isnan(out["ret_1s"].iloc[first_tick])
    assert out["sma_900s"].first_valid_index() == out.index[first_tick + 899]


def test_no_history_at_all_is_never_warm() -> None:
    filtered, observed = synthetic_inputs(1800, seed=6)
    out = compute_indicators(filtered, observed)
    assert not out["warm"].any()
    assert out["ret_900s"].iloc[:900].isna().all()


def test_a_gap_in_the_filtered_values_restarts_the_warm_up() -> None:
    filtered, observed = synthetic_inputs(7200, seed=7)
    filtered.iloc[3000:3010] = np.nan
    out = compute_indicators(filtered, observed)
    warm = out["warm"].to_numpy()
    assert warm[2999] and not warm[3000 : 3010 + WARMUP_S].any() and warm[3010 + WARMUP_S :].all()
    # The EMAs restart after the gap: at the first row after it every EMA equals the price.
    assert out["ema_600s"].iloc[3010] == 0.0


def ema_reference(x: np.ndarray, alpha: float) -> np.ndarray:
    out, s = np.empty_like(x), np.nan
    for i, v in enumerate(x):
        s = np.nan if not np.isfinite(v) else (v if np.isnan(s) else s + alpha * (v - s))
        out[i] = s
    return out


def test_features_match_their_documented_definitions() -> None:
    filtered, observed = synthetic_inputs(7200, seed=8)
    out = compute_indicators(filtered, observed)
    p = filtered["price"].to_numpy()
    r1 = np.diff(np.log(p), prepend=np.nan)
    ema600 = ema_reference(p, 2 / 601)
    macd = (ema_reference(p, 2 / 121) - ema_reference(p, 2 / 261)) / p
    gains = ema_reference(np.maximum(r1, 0), 1 / 300)
    losses = ema_reference(np.maximum(-r1, 0), 1 / 300)
    obs = observed.to_numpy()
    tol = {"rtol": 1e-9, "atol": 1e-12}
    for t in np.random.default_rng(9).integers(1900, 7200, size=20):
        row = out.iloc[t]
        np.testing.assert_allclose(row["ret_300s"], np.log(p[t] / p[t - 300]), **tol)
        np.testing.assert_allclose(row["sma_60s"], np.log(p[t - 59 : t + 1].mean() / p[t]), **tol)
        np.testing.assert_allclose(row["ema_600s"], np.log(ema600[t] / p[t]), **tol)
        np.testing.assert_allclose(row["macd_signal"], ema_reference(macd, 2 / 91)[t], **tol)
        np.testing.assert_allclose(row["rsi_300s"], 100 * gains[t] / (gains[t] + losses[t]), **tol)
        np.testing.assert_allclose(row["vol_900s"], np.sqrt(np.mean(r1[t - 899 : t + 1] ** 2)), **tol)
        win = p[t - 299 : t + 1]
        np.testing.assert_allclose(row["range_300s"], np.log(win.max() / win.min()), **tol)
        lw = np.log(win)
        sd = lw.std()
        np.testing.assert_allclose(row["bb_width_300s"], 4 * sd, rtol=1e-6)
        expected_b = np.clip((np.log(p[t]) - lw.mean() + 2 * sd) / (4 * sd), -2, 3)
        np.testing.assert_allclose(row["bb_pctb_300s"], expected_b, rtol=1e-5, atol=1e-6)
        last = np.flatnonzero(np.isfinite(obs[: t + 1]))[-1]
        np.testing.assert_allclose(row["staleness"], np.log1p(t - last), **tol)
        np.testing.assert_allclose(row["tick_rate_60s"], np.isfinite(obs[t - 59 : t + 1]).mean(), **tol)
        sec = (t % 86400) * 2 * np.pi / 86400  # T0 is midnight UTC
        np.testing.assert_allclose([row["tod_sin"], row["tod_cos"]], [np.sin(sec), np.cos(sec)], atol=1e-12)


def test_flat_market_stays_finite_and_neutral() -> None:
    filtered, observed = synthetic_inputs(3600, seed=10)
    filtered["price"] = 0.0001  # the cheapest products trade at this scale
    filtered[["low_24_h", "high_24_h"]] = 0.0001
    out = compute_indicators(filtered, observed)
    warm = out[out["warm"]]
    assert len(warm) == 3600 - WARMUP_S and np.isfinite(as_array(warm)).all()
    assert (warm["rsi_60s"] == 50.0).all() and np.allclose(warm["bb_pctb_300s"], 0.5)
    assert (warm["vol_60s"] == 0.0).all() and (warm["ret_900s"] == 0.0).all()


def test_bad_index_is_refused() -> None:
    filtered, observed = synthetic_inputs(100, seed=11)
    with pytest.raises(ValueError, match="tz-aware"):
        compute_indicators(filtered.tz_localize(None), observed)
    with pytest.raises(ValueError, match="consecutive"):
        compute_indicators(filtered.drop(filtered.index[50]), observed)
    with pytest.raises(ValueError, match="lacks"):
        compute_indicators(filtered.drop(columns="low_52_w"), observed)


def test_real_btc_trades_hour() -> None:
    path = DATA / "questdb_sample-datasets" / "btc_trades.csv.gz"
    if not path.exists():
        pytest.skip(f"real market data not available at {path} (only present beside the project checkout)")
    trades = pd.read_csv(path)
    times = pd.to_datetime(trades["timestamp"], utc=True).dt.as_unit("ns").astype("int64").to_numpy()
    start = pd.Timestamp("2023-09-05 16:00", tz="UTC")
    grid, observed = to_grid(times, trades["price"].to_numpy(), start.value, 3600)
    # README: ~27 % of the seconds have no trade.
    assert 0.65 < observed.mean() < 0.80
    price = stand_in_filter(grid[:, 0])
    first = int(np.flatnonzero(observed)[0])
    assert first == 2  # the first trade is at 16:00:01.28, so it lands in the second labelled 16:00:02
    known = np.isfinite(price)
    volume = np.where(known, 1e4 + np.nancumsum(np.where(observed, 1.0, 0.0)), np.nan)
    filtered = pd.DataFrame(
        {
            "price": price,
            "volume_24_h": volume,
            "low_24_h": price * 0.98,
            "high_24_h": price * 1.02,
            "low_52_w": np.where(known, 15_000.0, np.nan),
            "high_52_w": np.where(known, 31_000.0, np.nan),
            "price_percent_chg_24_h": np.where(known, -0.5, np.nan),
        },
        index=grid_index(start.value, 3600),
    )
    out = compute_indicators(filtered, pd.Series(grid[:, 0], index=filtered.index))
    warm = out["warm"].to_numpy()
    assert not warm[: first + WARMUP_S].any() and warm[first + WARMUP_S :].all()
    w = out[out["warm"]]
    assert np.isfinite(as_array(w)).all()
    for col in ("rsi_60s", "rsi_300s"):
        assert w[col].between(0, 100).all() and w[col].std() > 1
    assert (w["vol_60s"] > 0).all() and (w["range_900s"] > 0).all()
    # BTC moves a few basis points per minute: realised 1 s volatility far below 1 %.
    assert 1e-7 < w["vol_300s"].median() < 1e-3
    assert w["staleness"].max() <= np.log1p(10)  # README: the longest gap between trades is 8 s
    assert (w["low_24_h_rel"] < 0).all() and (w["high_52_w_rel"] > 0).all()
