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

Batch and live are one computation: `IndicatorState` carries everything the next second's features depend
on (ring buffers of the last 1024 seconds, running sums, the averages) and `advance` steps it over new
seconds with a compiled kernel (indicator_kernels.py). `compute_indicators` advances a fresh state over its
input; the live forecaster keeps a state per product and advances it one second at a time, with the same
numbers as a result.

See ``FEATURES`` for the definition of every output column.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cb_assets.series import indicator_kernels as _k
from cb_assets.series.schema import SECOND_NS, SERIES_COLUMNS
from cb_assets.series.tick_rules import levels_usable

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


def _check_index(index: pd.Index) -> np.ndarray:
    if not isinstance(index, pd.DatetimeIndex) or index.tz is None:
        raise ValueError("filtered must be indexed by a tz-aware DatetimeIndex of UTC seconds")
    ns = index.as_unit("ns").asi8
    if ns.size > 1 and not np.all(np.diff(ns) == SECOND_NS):
        raise ValueError("filtered must cover consecutive seconds (freq 1 s, no gaps, no duplicates)")
    if ns.size and ns[0] % SECOND_NS:
        raise ValueError("filtered index must fall on whole seconds")
    return ns


_RET_LAGS = np.array(RETURN_LAGS_S, dtype=np.int64)
_SMA = np.array(SMA_PERIODS_S, dtype=np.int64)
_EMA_ALPHAS = np.array([2.0 / (s + 1.0) for s in (*EMA_SPANS_S, MACD_FAST_S, MACD_SLOW_S)])
_RSI_ALPHAS = np.array([1.0 / n for n in RSI_PERIODS_S])
_VOL = np.array(VOL_WINDOWS_S, dtype=np.int64)
_RANGE = np.array(RANGE_WINDOWS_S, dtype=np.int64)
_VOLUME_LAGS = np.array(VOLUME_CHANGE_LAGS_S, dtype=np.int64)
_TICK = np.array(TICK_RATE_WINDOWS_S, dtype=np.int64)
if max(*RETURN_LAGS_S, *SMA_PERIODS_S, *VOL_WINDOWS_S, *RANGE_WINDOWS_S, BOLLINGER_S) >= _k.RING:
    raise AssertionError("a lookback does not fit the kernel's ring buffers")


@dataclass
class IndicatorState:
    """What the features of the next second depend on, for one product (see indicator_kernels.py).

    A new state knows nothing: its first rows are not warm, exactly as the first rows of a
    `compute_indicators` input. `advance` takes consecutive seconds only.
    """

    counters: np.ndarray = field(default_factory=lambda: np.array([0, -1, -1, -1, -1, 0], dtype=np.int64))
    rings: np.ndarray = field(default_factory=lambda: np.full((_k.N_RINGS, _k.RING), np.nan))
    deques: np.ndarray = field(
        default_factory=lambda: np.zeros((2 * len(RANGE_WINDOWS_S), _k.RING), dtype=np.int64)
    )
    deque_ends: np.ndarray = field(
        default_factory=lambda: np.zeros((2 * len(RANGE_WINDOWS_S), 2), dtype=np.int64)
    )
    sma_sums: np.ndarray = field(default_factory=lambda: np.zeros(len(SMA_PERIODS_S)))
    vol_sums: np.ndarray = field(default_factory=lambda: np.zeros(len(VOL_WINDOWS_S)))
    tick_sums: np.ndarray = field(default_factory=lambda: np.zeros(len(TICK_RATE_WINDOWS_S)))
    emas: np.ndarray = field(default_factory=lambda: np.full(len(_EMA_ALPHAS), np.nan))
    wilder: np.ndarray = field(default_factory=lambda: np.full(2 * len(RSI_PERIODS_S), np.nan))
    signal: np.ndarray = field(default_factory=lambda: np.full(1, np.nan))
    next_second: int | None = None  # epoch second the next row must have (None: any)

    def copy(self) -> IndicatorState:
        return IndicatorState(
            **{k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()}
        )

    def advance(
        self, filtered: np.ndarray, observed: np.ndarray, seconds: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Features (n, len(FEATURES)) and warm flags (n,) of the next n seconds.

        `filtered` (n, len(SERIES_COLUMNS)) holds the causal filter means of those seconds, `observed`
        (n,) whether a tick landed in each, `seconds` (n,) their epoch seconds (consecutive).
        """
        x = np.array(filtered, dtype=np.float64, copy=True).reshape(-1, len(SERIES_COLUMNS))
        secs = np.asarray(seconds, dtype=np.int64).reshape(-1)
        obs = np.asarray(observed, dtype=bool).reshape(-1)
        if not (x.shape[0] == secs.shape[0] == obs.shape[0]):
            raise ValueError("filtered, observed and seconds must have one row per second")
        if secs.size:
            if np.any(np.diff(secs) != 1) or (self.next_second is not None and secs[0] != self.next_second):
                raise ValueError("an indicator state advances over consecutive seconds only")
            self.next_second = int(secs[-1]) + 1
        # Unusable levels become NaN up front, so that no log or ratio ever sees them.
        x[~levels_usable(x)] = np.nan
        out = np.empty((x.shape[0], len(FEATURES)))
        warm = np.empty(x.shape[0], dtype=bool)
        _k.advance(
            x, obs, secs, _RET_LAGS, _SMA, _EMA_ALPHAS, len(EMA_SPANS_S), _RSI_ALPHAS,
            2.0 / (MACD_SIGNAL_S + 1.0), BOLLINGER_S, BOLLINGER_K, BOLLINGER_SD_FLOOR, *BOLLINGER_PCTB_CLIP,
            _VOL, _RANGE, _VOLUME_LAGS, _TICK, STALENESS_CAP_S, WARMUP_S,
            self.counters, self.rings, self.deques, self.deque_ends, self.sma_sums, self.vol_sums,
            self.tick_sums, self.emas, self.wilder, self.signal, out, warm,
        )  # fmt: skip
        return out, warm


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
    x = filtered.loc[:, list(SERIES_COLUMNS)].to_numpy(dtype=np.float64)
    observed = np.isfinite(observed_price.reindex(filtered.index).to_numpy(dtype=np.float64))
    features, warm = IndicatorState().advance(x, observed, ns // SECOND_NS)
    frame = pd.DataFrame(features, index=filtered.index, columns=list(FEATURE_NAMES))
    frame["warm"] = warm
    return frame
