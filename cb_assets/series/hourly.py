"""The steps of one hour, exactly as every caller runs them: the assets, the experiments and the benchmarks.

- `rule_failures_of_hour`: which raw ticks of the hour break a tick rule (series.tick_rules);
- `fill_hour`: the filled 1 s series of every product (series.fill, from the ticks of the hour and the one
  before);
- `indicators_of_hour`: one product's features from its filled rows of the previous hour and the hour;
  a cold-start hour (filter fitted on itself) is never warm, so no training window uses it;
- the windows of an hour: `series.windows.build_window_set` on two hours of indicators and observed prices.

Data arrives here as the tables hold it, one long frame (product_id, time, ...) per read, or as per-product
frames indexed by second; `by_product` and `to_long` convert between the two so that no caller writes that
glue itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from cb_assets.series import tick_rules
from cb_assets.series.fill import FilledHour, fill_product_hour
from cb_assets.series.indicators import FEATURE_NAMES, compute_indicators
from cb_assets.series.resample import grid_index
from cb_assets.series.schema import HOUR_S, SECOND_NS, SERIES_COLUMNS

HOUR_NS = HOUR_S * SECOND_NS
FILTERED_COLUMNS: tuple[str, ...] = tuple(f"{c}_filtered" for c in SERIES_COLUMNS)
# What the indicators of an hour read from the filled series.
INDICATOR_INPUTS: tuple[str, ...] = ("causal", "price", *FILTERED_COLUMNS)
UTC_NS = pd.DatetimeTZDtype(unit="ns", tz="UTC")
_FILL_THREADS = 2


def hour_ns(hour: datetime | pd.Timestamp | int) -> int:
    return int(hour) if isinstance(hour, int | np.integer) else int(pd.Timestamp(hour).as_unit("ns").value)


@dataclass(frozen=True)
class Ticks:
    """One product's ticks: times (n,) int64 ns and values (n, len(SERIES_COLUMNS)) float64."""

    times_ns: np.ndarray
    values: np.ndarray


def _times_ns(times: pd.Series) -> np.ndarray:
    return pd.DatetimeIndex(times).as_unit("ns").asi8


def ticks_by_product(raw: pd.DataFrame, products: Sequence[str]) -> dict[str, Ticks]:
    """Per product the ticks of a raw_ticks frame (columns product_id, time, SERIES_COLUMNS...)."""
    times = _times_ns(raw["time"])
    values = raw[list(SERIES_COLUMNS)].to_numpy(dtype=np.float64)
    ids = raw["product_id"].to_numpy()
    out = {}
    for p in products:
        idx = np.flatnonzero(ids == p)
        out[p] = Ticks(times[idx], values[idx])
    return out


def _rule_masks(raw: pd.DataFrame, start: datetime, end: datetime) -> dict[str, np.ndarray]:
    return tick_rules.hour_violations(
        raw["product_id"].to_numpy(),
        _times_ns(raw["time"]),
        raw[list(SERIES_COLUMNS)].to_numpy(dtype=np.float64),
        hour_ns(start),
        hour_ns(end),
        bid=raw["best_bid"].to_numpy(dtype=np.float64) if "best_bid" in raw else None,
        ask=raw["best_ask"].to_numpy(dtype=np.float64) if "best_ask" in raw else None,
    )


def rule_failures_of_hour(raw: pd.DataFrame, start: datetime, end: datetime) -> dict[str, pd.DataFrame]:
    """Per tick rule, the rows of `raw` (a raw_ticks frame) that break it within the hours [start, end)."""
    return {name: raw[mask] for name, mask in _rule_masks(raw, start, end).items()}


def split_invalid_ticks(
    raw: pd.DataFrame, hours: Sequence[datetime]
) -> tuple[pd.DataFrame, dict[datetime, str], int]:
    """Remove the raw rows that break a tick rule before anything is filled from them.

    `raw` covers the hours and the one before them. Returns the clean rows, the reason per hour of `hours`
    that had such rows (those hours fail: never fill from bad data), and how many rows were dropped from the
    look-back hour (only counted: one bad tick must not fail the next hour too).
    """
    one = pd.Timedelta(hours=1)
    masks = _rule_masks(raw, hours[0] - one, hours[-1] + one)
    bad = tick_rules.any_broken(masks)
    if not bad.any():
        return raw, {}, 0
    times = _times_ns(raw["time"])
    reasons: dict[datetime, str] = {}
    for h in hours:
        inside = (times >= hour_ns(h)) & (times < hour_ns(h) + HOUR_NS)
        parts = [f"{rule}: {n} rows" for rule, m in masks.items() if (n := int(np.count_nonzero(m & inside)))]
        if parts:
            reasons[h] = (
                "raw_ticks break the rules the filled series relies on (" + "; ".join(parts) + "); fix or "
                "delete the rows in raw_ticks, then re-materialise"
            )
    dropped = int(np.count_nonzero(bad & (times < hour_ns(hours[0]))))
    return raw[~bad], reasons, dropped


def fill_hour(ticks: Mapping[str, Ticks], hour: datetime | int, products: Sequence[str]) -> list[FilledHour]:
    """The filled series of `hour` for every product, from its ticks of that hour and the one before."""
    h = hour_ns(hour)
    empty = Ticks(np.zeros(0, np.int64), np.zeros((0, len(SERIES_COLUMNS))))
    return [
        fill_product_hour(p, ticks.get(p, empty).times_ns, ticks.get(p, empty).values, h) for p in products
    ]


def filled_long(filled: Sequence[FilledHour]) -> pd.DataFrame:
    """The filled hours of several products in the filled_series table's long layout."""
    return to_long({fh.product_id: fh.frame for fh in filled})


def indicators_of_hour(
    previous: pd.DataFrame | None, current: pd.DataFrame | None, hour: datetime | int
) -> pd.DataFrame:
    """One product's indicators of `hour` (3600 rows: FEATURE_NAMES and `warm`, indexed by second).

    `previous` and `current` are the product's filled rows of the hour before and of the hour (indexed by
    second, with INDICATOR_INPUTS columns); a missing hour is a gap (NaN), so the hour after it warms up
    again from its own first second.
    """
    h = hour_ns(hour)
    index = grid_index(h - HOUR_NS, 2 * HOUR_S)
    parts = [f for f in (previous, current) if f is not None and not f.empty]
    two = (
        pd.concat(parts).reindex(index)
        if parts
        else pd.DataFrame(np.nan, index=index, columns=list(INDICATOR_INPUTS))
    )
    filtered = two.loc[:, list(FILTERED_COLUMNS)].astype(float).set_axis(list(SERIES_COLUMNS), axis=1)
    ind = compute_indicators(filtered, two["price"].astype(float)).iloc[HOUR_S:]
    # A cold-start hour's filter used parameters fitted on itself: keep it out of training data.
    ind["warm"] = ind["warm"].to_numpy() & two["causal"].iloc[HOUR_S:].eq(True).to_numpy()
    return ind


def by_product(frame: pd.DataFrame, products: Sequence[str] | None = None) -> dict[str, pd.DataFrame]:
    """A long frame (product_id, time, ...) as one frame per product indexed by time (no product_id)."""
    out = {
        str(p): g.drop(columns="product_id").set_index("time")
        for p, g in frame.groupby("product_id", sort=False)
    }
    if products is not None:
        out = {p: out[p] for p in products if p in out}
    return out


def to_long(frames: Mapping[str, pd.DataFrame], columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-product frames indexed by time -> one long frame (product_id, time, columns...)."""
    parts = []
    for product, f in frames.items():
        part = (f if columns is None else f.loc[:, list(columns)]).reset_index(names="time")
        part.insert(0, "product_id", product)
        parts.append(part)
    out = pd.concat(parts, ignore_index=True)
    out["time"] = out["time"].astype(UTC_NS)
    return out


def indicators_long(frames: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Indicator frames per product -> the indicators table's long layout."""
    return to_long(frames, ("warm", *FEATURE_NAMES))
