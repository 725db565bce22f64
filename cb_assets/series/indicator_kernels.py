"""The compiled step of the indicator features: one pass over new seconds, carrying its state.

All jitted code of the indicators lives in this one file (numba's on-disk cache is keyed on the defining
file's modification time, see kalman_kernels.py). `indicators.IndicatorState` owns the state arrays and
calls `advance`; the hourly asset runs it over two hours at once, the live forecaster over one second at a
time, and both get the same numbers because it is the same loop.

Layout of the state (allocated by `indicators.IndicatorState`):
- `counters` int64: [rows seen, last row with no usable price, last row with no 1 s return, last row with
  no log volume, last row with a tick, length of the current run of usable rows]; -1 = none yet.
- `rings` float64 (5, RING): the last RING values of log price, price, squared 1 s return, log volume and
  the tick flag, indexed by row number modulo RING (RING > the longest lookback).
- `deques` int64 (2 * n_range, RING) and `deque_ends` (2 * n_range, 2): monotonic queues of row numbers for
  the rolling maxima (even rows) and minima (odd rows) of the price.
- running sums of the price (per SMA window), squared returns (per volatility window) and tick flags (per
  tick-rate window), and the exponential averages (price EMAs, then the Wilder gain and loss averages, then
  the MACD signal).
A rolling feature is defined only when its whole window is usable (no NaN, not before the first row), which
the "last row with no ..." counters decide: a running sum only ever holds finite values.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

N_COUNTERS = 6
_N, _BAD_P, _BAD_R1, _BAD_LV, _LAST_TICK, _RUN = range(N_COUNTERS)
N_RINGS = 5
_LOGP, _P, _R1SQ, _LOGV, _OBS = range(N_RINGS)
RING = 1024
_MASK = RING - 1
_DAY_S = 86_400


@njit(cache=True)
def _ema(s: float, v: float, alpha: float) -> float:
    """One step of an EMA that starts at the first finite value and restarts after a non-finite one."""
    if not math.isfinite(v):
        return np.nan
    if math.isnan(s):
        return v
    return s + alpha * (v - s)


@njit(cache=True)
def advance(
    x: np.ndarray,
    observed: np.ndarray,
    seconds: np.ndarray,
    ret_lags: np.ndarray,
    sma_windows: np.ndarray,
    ema_alphas: np.ndarray,
    n_ema_features: int,
    rsi_alphas: np.ndarray,
    signal_alpha: float,
    boll_window: int,
    boll_k: float,
    boll_sd_floor: float,
    pctb_lo: float,
    pctb_hi: float,
    vol_windows: np.ndarray,
    range_windows: np.ndarray,
    volume_lags: np.ndarray,
    tick_windows: np.ndarray,
    stale_cap: int,
    warmup: int,
    counters: np.ndarray,
    rings: np.ndarray,
    deques: np.ndarray,
    deque_ends: np.ndarray,
    sma_sums: np.ndarray,
    vol_sums: np.ndarray,
    tick_sums: np.ndarray,
    emas: np.ndarray,
    wilder: np.ndarray,
    signal: np.ndarray,
    out: np.ndarray,
    warm: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Features of each row of `x` (n, 7 filtered series; rows without usable levels all NaN) into `out`
    (n, n_features) in `indicators.FEATURES` order, and the warm flag into `warm`; advances the state."""
    n_rsi = rsi_alphas.shape[0]
    for i in range(x.shape[0]):
        n = counters[_N]
        k = n & _MASK
        p = x[i, 0]
        usable = math.isfinite(p)  # the caller blanks whole rows whose levels are not usable
        logp = math.log(p) if usable else np.nan
        r1 = logp - rings[_LOGP, (n - 1) & _MASK] if n >= 1 else np.nan
        logv = math.log1p(x[i, 1]) if usable else np.nan
        obs = 1.0 if observed[i] else 0.0
        rings[_LOGP, k] = logp
        rings[_P, k] = p
        rings[_R1SQ, k] = r1 * r1
        rings[_LOGV, k] = logv
        rings[_OBS, k] = obs
        if not usable:
            counters[_BAD_P] = n
        if not math.isfinite(r1):
            counters[_BAD_R1] = n
        if not math.isfinite(logv):
            counters[_BAD_LV] = n
        if observed[i]:
            counters[_LAST_TICK] = n
        counters[_RUN] = counters[_RUN] + 1 if usable else 0
        clean_p = n - counters[_BAD_P]  # rows in a row, ending here, with a usable price
        c = 0

        for lag in ret_lags:
            out[i, c] = logp - rings[_LOGP, (n - lag) & _MASK] if n >= lag else np.nan
            c += 1

        for j in range(sma_windows.shape[0]):
            w = sma_windows[j]
            if usable:
                sma_sums[j] += p
            if n >= w:
                old = rings[_P, (n - w) & _MASK]
                if math.isfinite(old):
                    sma_sums[j] -= old
            out[i, c] = math.log(sma_sums[j] / w / p) if clean_p >= w else np.nan
            c += 1

        for j in range(ema_alphas.shape[0]):
            emas[j] = _ema(emas[j], p, ema_alphas[j])
        for j in range(n_ema_features):
            out[i, c] = math.log(emas[j] / p) if usable else np.nan
            c += 1

        gain = max(r1, 0.0) if math.isfinite(r1) else np.nan
        loss = max(-r1, 0.0) if math.isfinite(r1) else np.nan
        for j in range(n_rsi):
            wilder[j] = _ema(wilder[j], gain, rsi_alphas[j])
            wilder[n_rsi + j] = _ema(wilder[n_rsi + j], loss, rsi_alphas[j])
            total = wilder[j] + wilder[n_rsi + j]
            if not math.isfinite(total):
                out[i, c] = np.nan
            elif total > 0:
                out[i, c] = 100.0 * wilder[j] / total
            else:
                out[i, c] = 50.0
            c += 1

        n_ema = ema_alphas.shape[0]
        macd = (emas[n_ema - 2] - emas[n_ema - 1]) / p
        signal[0] = _ema(signal[0], macd, signal_alpha)
        out[i, c] = macd
        out[i, c + 1] = signal[0]
        out[i, c + 2] = macd - signal[0]
        c += 3

        if clean_p >= boll_window:
            # Deviations from the newest log price: small numbers, so a flat window is exactly flat and the
            # band of a quiet one is not rounding noise of log prices near 11.
            mean_d = 0.0
            for b in range(n - boll_window + 1, n + 1):
                mean_d += rings[_LOGP, b & _MASK] - logp
            mean_d /= boll_window
            ss = 0.0
            for b in range(n - boll_window + 1, n + 1):
                d = rings[_LOGP, b & _MASK] - logp - mean_d
                ss += d * d
            half = boll_k * max(math.sqrt(ss / boll_window), boll_sd_floor)
            # (log p - (mid - half)) / (2 half) with log p - mid = -mean_d
            out[i, c] = min(max((half - mean_d) / (2.0 * half), pctb_lo), pctb_hi)
            out[i, c + 1] = 2.0 * half
        else:
            out[i, c] = np.nan
            out[i, c + 1] = np.nan
        c += 2

        clean_r1 = n - counters[_BAD_R1]
        for j in range(vol_windows.shape[0]):
            w = vol_windows[j]
            if math.isfinite(r1):
                vol_sums[j] += r1 * r1
            if n >= w:
                old = rings[_R1SQ, (n - w) & _MASK]
                if math.isfinite(old):
                    vol_sums[j] -= old
            out[i, c] = math.sqrt(max(vol_sums[j] / w, 0.0)) if clean_r1 >= w else np.nan
            c += 1

        for j in range(range_windows.shape[0]):
            w = range_windows[j]
            for side in range(2):  # 0: maxima, 1: minima
                q = 2 * j + side
                if not usable:
                    deque_ends[q, 0] = deque_ends[q, 1]  # nothing before a gap can matter again
                    continue
                head, tail = deque_ends[q, 0], deque_ends[q, 1]
                while tail > head:
                    back = rings[_P, deques[q, (tail - 1) & _MASK] & _MASK]
                    if (side == 0 and back <= p) or (side == 1 and back >= p):
                        tail -= 1
                    else:
                        break
                deques[q, tail & _MASK] = n
                tail += 1
                while deques[q, head & _MASK] <= n - w:
                    head += 1
                deque_ends[q, 0], deque_ends[q, 1] = head, tail
            if clean_p >= w:
                hi = rings[_P, deques[2 * j, deque_ends[2 * j, 0] & _MASK] & _MASK]
                lo = rings[_P, deques[2 * j + 1, deque_ends[2 * j + 1, 0] & _MASK] & _MASK]
                out[i, c] = math.log(hi / lo)
            else:
                out[i, c] = np.nan
            c += 1

        for col in range(2, 6):  # low_24_h, high_24_h, low_52_w, high_52_w relative to the price
            out[i, c] = math.log(x[i, col] / p) if usable else np.nan
            c += 1
        out[i, c] = logv
        c += 1
        for lag in volume_lags:
            out[i, c] = logv - rings[_LOGV, (n - lag) & _MASK] if n >= lag else np.nan
            c += 1
        out[i, c] = x[i, 6] / 100.0
        c += 1

        angle = 2.0 * np.pi * (seconds[i] % _DAY_S) / _DAY_S
        out[i, c] = math.sin(angle)
        out[i, c + 1] = math.cos(angle)
        c += 2

        # Without a tick since the first row the age is unknown but at least n + 1 s: exact once that
        # reaches the cap.
        last = counters[_LAST_TICK]
        if last >= 0:
            age = n - last
        elif n + 1 >= stale_cap:
            age = stale_cap
        else:
            age = -1
        out[i, c] = math.log1p(min(age, stale_cap)) if age >= 0 else np.nan
        c += 1

        for j in range(tick_windows.shape[0]):
            w = tick_windows[j]
            tick_sums[j] += obs
            if n >= w:
                tick_sums[j] -= rings[_OBS, (n - w) & _MASK]
            out[i, c] = tick_sums[j] / w if n + 1 >= w else np.nan
            c += 1

        ok = counters[_RUN] > warmup
        if ok:
            for f in range(c):
                if not math.isfinite(out[i, f]):
                    ok = False
                    break
        warm[i] = ok
        counters[_N] = n + 1
