"""Ticks onto the 1-second grid, and carrying the last observation forward.

The grid is right-closed and right-labelled (docs/contracts.md): grid second ``t`` holds the last tick
with ``t - 1 s < time <= t``, i.e. ``grid_second = ceil(time)``. A row at ``t`` therefore never contains
anything that happened after ``t``, which is what keeps every downstream feature causal.

Everything here is vectorised numpy: an hour of a busy product is tens of thousands of ticks, and a
Python loop over them would dominate the hourly materialisation.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cb_assets.series.schema import SECOND_NS


def grid_seconds(times_ns: np.ndarray, start_ns: int) -> np.ndarray:
    """Row index of each tick on a grid whose row 0 is ``start_ns`` (``ceil`` of the elapsed seconds).

    Integer arithmetic only: float seconds since the epoch carry ~100 ns of rounding, enough to move a
    tick that lands exactly on a second boundary into the next row.
    """
    elapsed = np.asarray(times_ns, dtype=np.int64) - np.int64(start_ns)
    # ceil(a / b) == -((-a) // b) for integers, and floor division rounds toward -inf for negatives too.
    return -((-elapsed) // SECOND_NS)


def grid_second_of(t_ns: int) -> int:
    """The epoch second whose grid row holds a tick at `t_ns` (`grid_seconds` of one tick, row 0 = epoch):
    the live forecaster places ticks one at a time by the same rule as the hourly assets."""
    return -((-int(t_ns)) // SECOND_NS)


def to_grid(
    times_ns: np.ndarray, values: np.ndarray, start_ns: int, n_seconds: int
) -> tuple[np.ndarray, np.ndarray]:
    """Put ticks on the 1-second grid ``start_ns + i s`` for ``i in range(n_seconds)``.

    Args:
        times_ns: (n,) int64 tick times in nanoseconds since the epoch, in any order.
        values: (n, K) (or (n,), treated as K = 1) tick values.
        start_ns: time of grid row 0 (normally an hour boundary).
        n_seconds: number of grid rows.

    Returns:
        ``grid`` (n_seconds, K) float64, NaN where no tick fell in the second, and ``observed``
        (n_seconds,) bool, True where at least one tick fell in it. When several ticks share a second
        the latest one wins (ties in time: the later one in input order, the order the feed delivered
        them). Ticks outside ``(start - 1 s, start + (n_seconds - 1) s]`` are ignored.
    """
    times = np.asarray(times_ns)
    if times.dtype.kind not in "iu":
        raise TypeError(f"times_ns must be integer nanoseconds, got dtype {times.dtype}")
    vals = np.asarray(values, dtype=np.float64)
    if vals.ndim == 1:
        vals = vals[:, None]
    if vals.ndim != 2 or vals.shape[0] != times.shape[0]:
        raise ValueError(f"values shape {vals.shape} does not match {times.shape[0]} tick times")
    if n_seconds < 0:
        raise ValueError(f"n_seconds must be >= 0, got {n_seconds}")

    grid = np.full((n_seconds, vals.shape[1]), np.nan)
    observed = np.zeros(n_seconds, dtype=bool)
    if times.size == 0 or n_seconds == 0:
        return grid, observed

    rows = grid_seconds(times, start_ns)
    inside = (rows >= 0) & (rows < n_seconds)
    rows, tick_times, vals = rows[inside], times[inside].astype(np.int64), vals[inside]
    if rows.size == 0:
        return grid, observed

    # The feed is almost always time-ordered; only sort (stably, so ties keep feed order) when it is not.
    if np.any(np.diff(tick_times) < 0):
        order = np.argsort(tick_times, kind="stable")
        rows, vals = rows[order], vals[order]
    # Rows are now non-decreasing; the last tick of each second is where the row index changes next.
    # Selecting it explicitly avoids relying on numpy's unspecified winner among repeated fancy indices.
    last = np.ones(rows.size, dtype=bool)
    last[:-1] = rows[1:] != rows[:-1]
    grid[rows[last]] = vals[last]
    observed[rows[last]] = True
    return grid, observed


def last_observed(grid_col: np.ndarray) -> np.ndarray:
    """Carry the last finite value forward along axis 0 (1-D or 2-D, column by column).

    Never back-fills: entries before a column's first finite value stay NaN, because a value at ``t``
    may only depend on what was known at ``t``.
    """
    x = np.asarray(grid_col, dtype=np.float64)
    if x.ndim not in (1, 2):
        raise ValueError(f"expected a 1-D or 2-D array, got shape {x.shape}")
    if x.shape[0] == 0:
        return x.copy()
    finite = np.isfinite(x)
    positions = np.arange(x.shape[0]).reshape((-1,) + (1,) * (x.ndim - 1))
    source = np.maximum.accumulate(np.where(finite, positions, -1), axis=0)
    filled = np.take_along_axis(x, np.maximum(source, 0), axis=0)
    return np.where(source >= 0, filled, np.nan)


def grid_index(start_ns: int, n_seconds: int) -> pd.DatetimeIndex:
    """The tz-aware UTC index of a grid (freq 1 s), the index ``compute_indicators`` expects."""
    return pd.date_range(pd.Timestamp(int(start_ns), unit="ns", tz="UTC"), periods=n_seconds, freq="s")
