"""The 1-second grid: right-closed, right-labelled, last tick wins, nothing outside the range, no back-fill."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cb_assets.series.resample import grid_index, grid_seconds, last_observed, to_grid

S = 1_000_000_000
H = int(pd.Timestamp("2024-03-01 12:00", tz="UTC").value)


def test_exact_second_boundaries_belong_to_that_second() -> None:
    times = np.array([H, H + S, H + 2 * S + 1, H + 4 * S - 1], dtype=np.int64)
    grid, observed = to_grid(times, np.array([1.0, 2.0, 3.0, 4.0]), H, 6)
    # t - 1 s < time <= t: a tick exactly on t is row t; one nanosecond later it is row t + 1.
    np.testing.assert_array_equal(grid[:, 0], [1.0, 2.0, np.nan, 3.0, 4.0, np.nan])
    np.testing.assert_array_equal(observed, [True, True, False, True, True, False])
    assert grid.shape == (6, 1) and grid.dtype == np.float64


def test_two_ticks_in_one_second_last_wins_even_unsorted_and_on_ties() -> None:
    times = np.array([H + 2 * S, H + 500, H + 900, H + 2 * S, H + 100], dtype=np.int64)
    values = np.array([[10.0, 1.0], [20.0, 2.0], [30.0, 3.0], [40.0, 4.0], [50.0, 5.0]])
    grid, observed = to_grid(times, values, H, 3)
    # Row 1 holds (H, H + 1 s]: the latest of its three ticks (H + 900 ns) wins whatever the input order.
    np.testing.assert_array_equal(grid[1], [30.0, 3.0])
    # Row 2 holds two ticks at the same instant: the one delivered later wins.
    np.testing.assert_array_equal(grid[2], [40.0, 4.0])
    assert np.isnan(grid[0]).all()
    assert observed.tolist() == [False, True, True]


def test_ticks_outside_the_range_are_ignored() -> None:
    times = np.array([H - S, H - S + 1, H + 3 * S, H + 3 * S + 1, H - 10 * S], dtype=np.int64)
    grid, observed = to_grid(times, np.array([1.0, 2.0, 3.0, 4.0, 5.0]), H, 4)
    # H - 1 s is row -1 (outside); H - 1 s + 1 ns is row 0; H + 3 s + 1 ns would be row 4 (outside).
    np.testing.assert_array_equal(grid[:, 0], [2.0, np.nan, np.nan, 3.0])
    np.testing.assert_array_equal(observed, [True, False, False, True])


def test_empty_input_gives_an_all_missing_grid() -> None:
    grid, observed = to_grid(np.array([], dtype=np.int64), np.empty((0, 3)), H, 6)
    assert grid.shape == (6, 3) and np.isnan(grid).all()
    assert observed.shape == (6,) and not observed.any()
    grid0, observed0 = to_grid(np.array([H], dtype=np.int64), np.ones((1, 2)), H, 0)
    assert grid0.shape == (0, 2) and observed0.shape == (0,)


def test_float_times_are_refused() -> None:
    with pytest.raises(TypeError):
        to_grid(np.array([1.5]), np.array([1.0]), 0, 3)
    with pytest.raises(ValueError):
        to_grid(np.array([H], dtype=np.int64), np.ones((2, 1)), H, 3)


def test_matches_a_brute_force_reference_on_random_ticks() -> None:
    rng = np.random.default_rng(7)
    n_seconds = 120
    # Ticks spread a little beyond both ends, some on exact boundaries, shuffled.
    times = H + rng.integers(-3 * S, (n_seconds + 3) * S, size=400)
    times[:40] = H + rng.integers(-2, n_seconds + 2, size=40) * S
    times = rng.permutation(times).astype(np.int64)
    values = rng.normal(size=(times.size, 2))
    grid, observed = to_grid(times, values, H, n_seconds)

    expected = np.full((n_seconds, 2), np.nan)
    for i in range(n_seconds):
        t = H + i * S
        inside = np.flatnonzero((times > t - S) & (times <= t))
        if inside.size:
            latest = inside[times[inside] == times[inside].max()][-1]
            expected[i] = values[latest]
    np.testing.assert_array_equal(grid, expected)
    np.testing.assert_array_equal(observed, np.isfinite(expected[:, 0]))
    np.testing.assert_array_equal(grid_seconds(np.array([H - S + 1, H, H + 1]), H), [0, 0, 1])


def test_last_observed_carries_forward_without_back_fill() -> None:
    col = np.array([np.nan, np.nan, 3.0, np.nan, 5.0, np.nan])
    np.testing.assert_array_equal(last_observed(col), [np.nan, np.nan, 3.0, 3.0, 5.0, 5.0])
    two = np.column_stack([col, [1.0, np.nan, np.nan, 2.0, np.nan, np.nan]])
    np.testing.assert_array_equal(
        last_observed(two), [[np.nan, 1], [np.nan, 1], [3, 1], [3, 2], [5, 2], [5, 2]]
    )
    assert last_observed(np.array([])).shape == (0,)


def test_grid_index_is_utc_seconds() -> None:
    idx = grid_index(H, 3)
    assert str(idx.tz) == "UTC" and idx.freqstr == "s"
    assert idx[0] == pd.Timestamp(H, unit="ns", tz="UTC") and idx[-1] - idx[0] == pd.Timedelta(seconds=2)
