"""What makes a tick valid: every rule once, with a scalar form and an array form.

The scalar form (`problem`) serves code that looks at one message at a time and needs a reason a person can
act on; the array form (`violations`) serves batches: the sink's validation, the pandera schema of raw_ticks
and the raw_ticks asset checks. Both are written from the same rule list, so a tick the sink accepts is one
the asset accepts.

Value rules look at one tick's numbers. Hour rules need the hour's rows together: every tick inside the
partition's hour and (product, time) unique.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from cb_assets.series.schema import SERIES_COLUMNS

# Positions in a row of SERIES_COLUMNS values.
_PRICE, _VOLUME, _LOW24, _HIGH24, _LOW52, _HIGH52, _PCT = range(len(SERIES_COLUMNS))
_EXTREMES = (_LOW24, _HIGH24, _LOW52, _HIGH52)


@dataclass(frozen=True)
class Rule:
    name: str
    description: str


VALUE_RULES: tuple[Rule, ...] = (
    Rule("numbers_finite", "every ticker field is a finite number"),
    Rule("price_positive", "price > 0"),
    Rule("volume_not_negative", "volume_24_h >= 0"),
    Rule("extremes_positive", "low_24_h, high_24_h, low_52_w and high_52_w > 0"),
    Rule("low_24_h_not_above_high", "low_24_h <= high_24_h"),
    Rule("low_52_w_not_above_high", "low_52_w <= high_52_w"),
    Rule("book_positive", "best_bid and best_ask are absent, or finite and > 0"),
)
HOUR_RULES: tuple[Rule, ...] = (
    Rule("time_inside_partition", "every tick's time lies inside the partition's hour(s)"),
    Rule("product_time_unique", "(product_id, time) is unique"),
)
RULES: dict[str, Rule] = {r.name: r for r in (*VALUE_RULES, *HOUR_RULES)}


def _num(v: float) -> str:
    return repr(v).removesuffix(".0")


def problem(values: tuple[float, ...], bid: float | None = None, ask: float | None = None) -> str | None:
    """The reason the first broken value rule gives for one tick, or None when it holds them all.

    `values` are the tick's SERIES_COLUMNS numbers in that order.
    """
    price, volume, low24, high24, low52, high52, pct = values
    if not math.isfinite(price + volume + low24 + high24 + low52 + high52 + pct):
        bad = [c for c, v in zip(SERIES_COLUMNS, values, strict=True) if not math.isfinite(v)]
        return f"{', '.join(bad)} not finite"
    if not price > 0:
        return f"price must be > 0, got {_num(price)}"
    if not volume >= 0:
        return f"volume_24_h must be >= 0, got {_num(volume)}"
    if not (low24 > 0 and high24 > 0 and low52 > 0 and high52 > 0):
        return f"24 h / 52 w lows and highs must be > 0, got {_num(low24)}, {_num(high24)}, {_num(low52)}, {_num(high52)}"
    if low24 > high24:
        return f"low_24_h {_num(low24)} > high_24_h {_num(high24)}"
    if low52 > high52:
        return f"low_52_w {_num(low52)} > high_52_w {_num(high52)}"
    for name, v in (("best_bid", bid), ("best_ask", ask)):
        if v is not None and not (math.isfinite(v) and v > 0):
            return f"{name} must be > 0 when present, got {_num(v)}"
    return None


def violations(
    values: np.ndarray, bid: np.ndarray | None = None, ask: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Per value rule, a bool mask of the rows that break it.

    `values` is (n, len(SERIES_COLUMNS)) float64; `bid`/`ask` (n,) with NaN for absent. A row with a
    non-finite number breaks `numbers_finite` only: the comparisons below would be meaningless on it.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != len(SERIES_COLUMNS):
        raise ValueError(f"values must be (n, {len(SERIES_COLUMNS)}), got {v.shape}")
    finite = np.isfinite(v).all(axis=1)
    with np.errstate(invalid="ignore"):
        out = {
            "numbers_finite": ~finite,
            "price_positive": finite & ~(v[:, _PRICE] > 0),
            "volume_not_negative": finite & ~(v[:, _VOLUME] >= 0),
            "extremes_positive": finite & ~(v[:, list(_EXTREMES)] > 0).all(axis=1),
            "low_24_h_not_above_high": finite & (v[:, _LOW24] > v[:, _HIGH24]),
            "low_52_w_not_above_high": finite & (v[:, _LOW52] > v[:, _HIGH52]),
        }
        book = np.zeros(v.shape[0], dtype=bool)
        for side in (bid, ask):
            if side is not None:
                s = np.asarray(side, dtype=np.float64)
                book |= ~np.isnan(s) & ~(np.isfinite(s) & (s > 0))
    out["book_positive"] = book
    return out


def levels_usable(values: np.ndarray) -> np.ndarray:
    """Rows whose levels a log or ratio can use: finite, price and extremes > 0, volume >= 0.

    The value rules a filtered series must keep too (the indicators take logs of them); the order rules
    (low <= high) are about what the exchange reported and do not bind an estimate.
    """
    broken = violations(values)
    return ~(
        broken["numbers_finite"]
        | broken["price_positive"]
        | broken["volume_not_negative"]
        | broken["extremes_positive"]
    )


def hour_violations(
    product_ids: np.ndarray,
    times_ns: np.ndarray,
    values: np.ndarray,
    start_ns: int,
    end_ns: int,
    bid: np.ndarray | None = None,
    ask: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Every rule (value and hour rules) over the rows of the hours [start, end): a mask per rule."""
    out = violations(values, bid, ask)
    t = np.asarray(times_ns, dtype=np.int64)
    out["time_inside_partition"] = (t < start_ns) | (t >= end_ns)
    keys = np.rec.fromarrays([np.asarray(product_ids).astype(str), t])
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    out["product_time_unique"] = counts[inverse.ravel()] > 1
    return out


def count_broken(masks: Mapping[str, np.ndarray]) -> dict[str, int]:
    return {name: int(np.count_nonzero(m)) for name, m in masks.items()}


def any_broken(masks: Mapping[str, np.ndarray]) -> np.ndarray:
    it = iter(masks.values())
    acc = np.array(next(it), dtype=bool, copy=True)
    for m in it:
        acc |= m
    return acc
