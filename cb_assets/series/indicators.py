"""Causal, scale-free indicator features from the Kalman-filtered 1-second series of one product.

Every feature at second ``t`` uses only inputs at seconds ``<= t`` (the leakage tests perturb everything
after ``t`` and demand bit-identical features up to ``t``). Prices go from 0.0001 to 60,000 across
products, so features are ratios, log ratios or log returns: one model can then share weights across
products.

Determinism across hours: the caller passes two hours (the previous one as warm-up history, then the hour
itself) and keeps the second. Rolling windows are finite and fit inside the history; exponential averages
have infinite memory, so they start afresh at the first row of the input (and restart after any gap in the
filtered values). The features of hour H are then a function of the two input hours alone, whatever was
computed before.

Warm-up (``WARMUP_S`` = 1800 s): a row is ``warm`` when it and the ``WARMUP_S`` seconds before it all hold
real filtered values (finite; prices, lows and highs > 0; volume >= 0) and every feature is finite. The
longest finite lookback is 901 rows (900 s returns and volatilities); the slowest exponential average
(EMA span 600 s; Wilder RSI over 300 s, whose alpha 1/300 equals an EMA span of 599 s) has then run for
three spans, so the weight left on its arbitrary start is ``(1 - 2/601) ** 1800 ~ e**-6 ~ 0.25 %``.
Nothing is ever back-filled: rows without enough history are NaN and not warm.

See ``FEATURES`` for the definition of every output column.
"""

from __future__ import annotations

import numba
import numpy as np
import pandas as pd
from pandas.api.typing import Rolling

from cb_assets.series.schema import SECOND_NS, SERIES_COLUMNS

WARMUP_S: int = 1800

RETURN_LAGS_S: tuple[int, ...] = (1, 5, 10, 30, 60, 300, 900)
SMA_PERIODS_S: tuple[int, ...] = (10, 30, 60, 300, 900)
EMA_SPANS_S: tuple[int, ...] = (10, 30, 60, 300, 600)
RSI_PERIODS_S: tuple[int, ...] = (60, 300)
# The classic 12/26/9 bars scaled to seconds by 10: on a 1 s grid 12/26 s would only measure noise.
MACD_FAST_S, MACD_SLOW_S, MACD_SIGNAL_S = 120, 260, 90
BOLLINGER_S: int = 300
BOLLINGER_K: float = 2.0
# A window whose log price barely moves has a near-zero band; the floor (well below one price tick of any
# product) and the clip keep %b finite and bounded instead of exploding to +-1e9 on flat stretches.
BOLLINGER_SD_FLOOR: float = 1e-9
BOLLINGER_PCTB_CLIP: tuple[float, float] = (-2.0, 3.0)
VOL_WINDOWS_S: tuple[int, ...] = (60, 300, 900)
RANGE_WINDOWS_S: tuple[int, ...] = (60, 300, 900)
VOLUME_CHANGE_LAGS_S: tuple[int, ...] = (60, 900)
TICK_RATE_WINDOWS_S: tuple[int, ...] = (60, 300)
# Staleness is capped at the warm-up so it is known exactly on every warm row even when the last tick
# happened before the input began (then all we know is that it is at least that old).
STALENESS_CAP_S: int = WARMUP_S

_DAY_S = 86_400


def _registry() -> dict[str, str]:
    f: dict[str, str] = {}
    for k in RETURN_LAGS_S:
        f[f"ret_{k}s"] = f"log(p_t / p_(t-{k}s)), p = filtered price"
    for w in SMA_PERIODS_S:
        f[f"sma_{w}s"] = f"log(SMA_{w}s(p) / p_t), simple mean of the last {w} filtered prices (incl. t)"
    for s in EMA_SPANS_S:
        f[f"ema_{s}s"] = f"log(EMA_{s}s(p) / p_t), alpha = 2/({s}+1), started at the first input row"
    for n in RSI_PERIODS_S:
        f[f"rsi_{n}s"] = (
            f"Wilder RSI over {n} s of 1 s log returns, 100*G/(G+L) with G, L the EMAs (alpha 1/{n}) of "
            "gains and losses; 50 when both are 0 (no movement); in [0, 100]"
        )
    f["macd"] = f"(EMA_{MACD_FAST_S}s(p) - EMA_{MACD_SLOW_S}s(p)) / p_t"
    f["macd_signal"] = f"EMA_{MACD_SIGNAL_S}s of macd"
    f["macd_hist"] = "macd - macd_signal"
    f[f"bb_pctb_{BOLLINGER_S}s"] = (
        f"Bollinger %b on log price over {BOLLINGER_S} s, k = {BOLLINGER_K:g}: "
        "(log p - (mid - k sd)) / (2 k sd), sd floored at 1e-9 and the result clipped to [-2, 3]"
    )
    f[f"bb_width_{BOLLINGER_S}s"] = f"2 k sd of log price over {BOLLINGER_S} s (relative band width)"
    for w in VOL_WINDOWS_S:
        f[f"vol_{w}s"] = f"sqrt(mean of squared 1 s log returns over the last {w} s) (realised volatility)"
    for w in RANGE_WINDOWS_S:
        f[f"range_{w}s"] = f"log(max p / min p) over the last {w} s (ATR-like range)"
    for col in ("low_24_h", "high_24_h", "low_52_w", "high_52_w"):
        f[f"{col}_rel"] = f"log({col} / p_t), both filtered"
    f["log_volume_24_h"] = "log(1 + volume_24_h), filtered"
    for k in VOLUME_CHANGE_LAGS_S:
        f[f"dlog_volume_{k}s"] = f"log_volume_24_h_t - log_volume_24_h_(t-{k}s)"
    f["pct_chg_24_h"] = "price_percent_chg_24_h / 100, filtered"
    f["tod_sin"] = "sin(2 pi * UTC second of day / 86400)"
    f["tod_cos"] = "cos(2 pi * UTC second of day / 86400)"
    f["staleness"] = f"log(1 + seconds since the last observed tick, capped at {STALENESS_CAP_S})"
    for w in TICK_RATE_WINDOWS_S:
        f[f"tick_rate_{w}s"] = f"fraction of the last {w} seconds that received a tick"
    return f


FEATURES: dict[str, str] = _registry()
"""Feature name -> definition, in output column order (Dagster shows these as column descriptions)."""

FEATURE_NAMES: tuple[str, ...] = tuple(FEATURES)
WARM_DESCRIPTION = (
    f"True where this second and the {WARMUP_S} s before it hold real filtered values and every feature "
    "is finite"
)


@numba.njit(cache=True)
def _ema_columns(x: np.ndarray, alphas: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """EMA of each column with its own alpha; starts at the first finite value, restarts after a NaN.

    Restarting (instead of skipping the gap) keeps the definition simple and the warm rule honest: a warm
    row has at least WARMUP_S uninterrupted steps behind every average.
    """
    n, m = x.shape
    out = np.empty((n, m))
    for j in range(m):
        a = alphas[j]
        s = np.nan
        for i in range(n):
            v = x[i, j]
            if not np.isfinite(v):
                s = np.nan
            elif np.isnan(s):
                s = v
            else:
                s += a * (v - s)
            out[i, j] = s
    return out


def _lag_diff(x: np.ndarray, k: int) -> np.ndarray:
    out = np.full_like(x, np.nan)
    if k < x.shape[0]:
        out[k:] = x[k:] - x[:-k]
    return out


def _rolling(x: np.ndarray, window: int) -> Rolling:
    # min_periods = window: a partial window is not the feature it claims to be, so it stays NaN.
    return pd.Series(x, copy=False).rolling(window, min_periods=window)


def _check_index(index: pd.Index) -> np.ndarray:
    if not isinstance(index, pd.DatetimeIndex) or index.tz is None:
        raise ValueError("filtered must be indexed by a tz-aware DatetimeIndex of UTC seconds")
    ns = index.as_unit("ns").asi8
    if ns.size > 1 and not np.all(np.diff(ns) == SECOND_NS):
        raise ValueError("filtered must cover consecutive seconds (freq 1 s, no gaps, no duplicates)")
    if ns.size and ns[0] % SECOND_NS:
        raise ValueError("filtered index must fall on whole seconds")
    return ns


def _real_rows(x: np.ndarray) -> np.ndarray:
    """Rows where every filtered series holds a value the features can use (logs need positive prices)."""
    cols = {c: x[:, i] for i, c in enumerate(SERIES_COLUMNS)}
    ok = np.isfinite(x).all(axis=1)
    for c in ("price", "low_24_h", "high_24_h", "low_52_w", "high_52_w"):
        ok &= cols[c] > 0
    ok &= cols["volume_24_h"] >= 0
    return ok


def _run_length(ok: np.ndarray) -> np.ndarray:
    """Number of consecutive True values ending at each position (0 where False)."""
    pos = np.arange(ok.shape[0])
    last_bad = np.maximum.accumulate(np.where(ok, -1, pos)) if ok.size else pos
    return pos - last_bad


def compute_indicators(filtered: pd.DataFrame, observed_price: pd.Series) -> pd.DataFrame:
    """Causal indicator features of one product on its 1-second grid.

    Args:
        filtered: causal Kalman-filter means, index consecutive tz-aware UTC seconds, columns
            ``SERIES_COLUMNS`` (extra columns are ignored). Normally the previous hour then the hour.
        observed_price: the observed (un-filtered) price, NaN in seconds without a tick; aligned to
            ``filtered.index`` (missing seconds count as no tick, extra ones are ignored).

    Returns:
        A frame on ``filtered.index`` with the float64 columns of ``FEATURES`` (in that order) and the
        bool column ``warm``. Features are NaN where their lookback is incomplete; never back-filled.
    """
    ns = _check_index(filtered.index)
    missing = [c for c in SERIES_COLUMNS if c not in filtered.columns]
    if missing:
        raise ValueError(f"filtered lacks series columns {missing}")
    n = ns.shape[0]
    x = filtered.loc[:, list(SERIES_COLUMNS)].to_numpy(dtype=np.float64, copy=True)
    real = _real_rows(x)
    # Unusable values become NaN up front so that no log or ratio below ever sees them.
    x[~real] = np.nan
    p = x[:, 0]
    obs = observed_price.reindex(filtered.index).to_numpy(dtype=np.float64)
    observed = np.isfinite(obs)

    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        logp = np.log(p)
        r1 = _lag_diff(logp, 1)
        for k in RETURN_LAGS_S:
            out[f"ret_{k}s"] = r1 if k == 1 else _lag_diff(logp, k)
        for w in SMA_PERIODS_S:
            out[f"sma_{w}s"] = np.log(_rolling(p, w).mean().to_numpy() / p)

        # One compiled pass for every price EMA (ratio features and both MACD legs).
        spans = (*EMA_SPANS_S, MACD_FAST_S, MACD_SLOW_S)
        alphas = np.array([2.0 / (s + 1.0) for s in spans])
        emas = _ema_columns(np.repeat(p[:, None], len(spans), axis=1), alphas)
        for j, s in enumerate(EMA_SPANS_S):
            out[f"ema_{s}s"] = np.log(emas[:, j] / p)

        gains, losses = np.maximum(r1, 0.0), np.maximum(-r1, 0.0)  # NaN stays NaN (restarts the EMA)
        nr = len(RSI_PERIODS_S)
        wilder = _ema_columns(
            np.concatenate([np.repeat(gains[:, None], nr, 1), np.repeat(losses[:, None], nr, 1)], axis=1),
            np.array([1.0 / q for q in RSI_PERIODS_S] * 2),
        )
        for j, q in enumerate(RSI_PERIODS_S):
            g, loss = wilder[:, j], wilder[:, nr + j]
            total = g + loss
            out[f"rsi_{q}s"] = np.where(total > 0, 100.0 * g / np.where(total > 0, total, 1.0), 50.0)
            out[f"rsi_{q}s"][~np.isfinite(total)] = np.nan

        macd = (emas[:, -2] - emas[:, -1]) / p
        signal = _ema_columns(macd[:, None], np.array([2.0 / (MACD_SIGNAL_S + 1.0)]))[:, 0]
        out["macd"], out["macd_signal"], out["macd_hist"] = macd, signal, macd - signal

        roll_b = _rolling(logp, BOLLINGER_S)
        mid = roll_b.mean().to_numpy()
        sd = np.maximum(roll_b.std(ddof=0).to_numpy(), BOLLINGER_SD_FLOOR)
        half = BOLLINGER_K * sd
        out[f"bb_pctb_{BOLLINGER_S}s"] = np.clip((logp - (mid - half)) / (2 * half), *BOLLINGER_PCTB_CLIP)
        out[f"bb_width_{BOLLINGER_S}s"] = 2 * half

        r1_sq = r1 * r1
        for w in VOL_WINDOWS_S:
            # Rolling sums add and remove values; clip the last-ulp negatives before the square root.
            out[f"vol_{w}s"] = np.sqrt(np.maximum(_rolling(r1_sq, w).mean().to_numpy(), 0.0))
        for w in RANGE_WINDOWS_S:
            roll = _rolling(p, w)
            out[f"range_{w}s"] = np.log(roll.max().to_numpy() / roll.min().to_numpy())

        for i, col in enumerate(SERIES_COLUMNS):
            if col in ("low_24_h", "high_24_h", "low_52_w", "high_52_w"):
                out[f"{col}_rel"] = np.log(x[:, i] / p)
        log_vol = np.log1p(x[:, SERIES_COLUMNS.index("volume_24_h")])
        out["log_volume_24_h"] = log_vol
        for k in VOLUME_CHANGE_LAGS_S:
            out[f"dlog_volume_{k}s"] = _lag_diff(log_vol, k)
        out["pct_chg_24_h"] = x[:, SERIES_COLUMNS.index("price_percent_chg_24_h")] / 100.0

    angle = 2.0 * np.pi * ((ns // SECOND_NS) % _DAY_S) / _DAY_S
    out["tod_sin"], out["tod_cos"] = np.sin(angle), np.cos(angle)

    pos = np.arange(n)
    last_tick = np.maximum.accumulate(np.where(observed, pos, -1)) if n else pos
    # Without a tick in the input the age is unknown but at least pos + 1 s: exact once that reaches the cap.
    age = np.where(last_tick >= 0, pos - last_tick, np.where(pos + 1 >= STALENESS_CAP_S, STALENESS_CAP_S, -1))
    out["staleness"] = np.where(age >= 0, np.log1p(np.clip(age, 0, STALENESS_CAP_S)), np.nan)
    for w in TICK_RATE_WINDOWS_S:
        out[f"tick_rate_{w}s"] = _rolling(observed.astype(np.float64), w).mean().to_numpy()

    if tuple(out) != FEATURE_NAMES:
        raise AssertionError("feature computation and FEATURES registry disagree")  # a coding error
    frame = pd.DataFrame(out, index=filtered.index, dtype=np.float64)
    features = frame.to_numpy()
    # The finiteness check is a guard against inputs the run rule does not foresee, never the main rule.
    frame["warm"] = (_run_length(real) > WARMUP_S) & np.isfinite(features).all(axis=1)
    return frame
