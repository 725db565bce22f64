"""Window sets: the partition rule, labels, validity, views, leakage, statistics and storage."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from cb_assets.model.baselines import merged_stats
from cb_assets.series.indicators import FEATURE_NAMES, compute_indicators
from cb_assets.series.windows import (
    ColumnStats,
    WindowSet,
    build_window_set,
    load_window_set,
    save_window_set,
)
from cb_assets_tests.test_series_indicators import synthetic_inputs

S = 1_000_000_000
T0 = pd.Timestamp("2024-03-01 00:00", tz="UTC")
PRODUCTS = ("AAA-USD", "BBB-USD", "CCC-USD")
N_HOURS = 5
COLD_TICK = 2 * 3600 + 1000  # BBB-USD's first-ever tick: hour 2 + 1000 s
F = len(FEATURE_NAMES)


def hour(h: int) -> pd.Timestamp:
    return T0 + pd.Timedelta(hours=h)


@dataclass
class Market:
    filtered: dict[str, pd.DataFrame]
    observed: dict[str, pd.Series]
    features: dict[str, pd.DataFrame]


def features_like_the_asset(filtered: pd.DataFrame, observed: pd.Series) -> pd.DataFrame:
    """Hour h's indicators from hours (h - 1, h), concatenated over hours 1.. like the stored partitions."""
    parts = []
    for h in range(1, N_HOURS):
        rows = slice((h - 1) * 3600, (h + 1) * 3600)
        parts.append(compute_indicators(filtered.iloc[rows], observed.iloc[rows]).iloc[3600:])
    return pd.concat(parts)


def make_market(seed: int = 0) -> Market:
    filtered, observed, features = {}, {}, {}
    for k, product in enumerate(PRODUCTS):
        first = COLD_TICK if product == "BBB-USD" else 0
        f, o = synthetic_inputs(N_HOURS * 3600, seed=seed + k, first_tick=first)
        filtered[product], observed[product] = f, o
        features[product] = features_like_the_asset(f, o)
    return Market(filtered, observed, features)


@pytest.fixture(scope="module")
def market() -> Market:
    return make_market()


@pytest.fixture(scope="module")
def sets(market: Market) -> dict[int, WindowSet]:
    return {h: build_window_set(market.features, market.observed, PRODUCTS, hour(h)) for h in (1, 2, 3, 4)}


def test_each_anchor_belongs_to_exactly_one_hour(sets: dict[int, WindowSet]) -> None:
    times = np.concatenate([sets[h].anchor_times_ns for h in (2, 3, 4)])
    # Three consecutive partitions tile the time axis: consecutive seconds, no duplicate, no hole.
    assert times.size == 3 * 3600 and np.all(np.diff(times) == S)
    for h in (2, 3, 4):
        ws, start = sets[h], hour(h).value
        assert len(ws) == 3600
        assert ws.anchor_times_ns[0] == start - 200 * S and ws.anchor_times_ns[-1] == start + 3399 * S
        # The owning hour is the one holding the last label time t + 200 s.
        assert np.all((ws.anchor_times_ns + 200 * S - T0.value) // (3600 * S) == h)
        assert ws.row_times_ns()[0] == start - 1199 * S and ws.row_times_ns()[-1] == start + 3399 * S


def test_shapes_names_and_dtype(sets: dict[int, WindowSet]) -> None:
    ws = sets[3]
    assert ws.features.shape == (3600 + 999, len(PRODUCTS) * F) and ws.features.dtype == np.float32
    assert ws.labels.shape == (3600, len(PRODUCTS) * 4) and ws.labels.dtype == np.float32
    assert ws.feature_names[:2] == ("AAA-USD:ret_1s", "AAA-USD:ret_5s")
    assert ws.feature_names[F] == f"BBB-USD:{FEATURE_NAMES[0]}"
    assert ws.output_names[:5] == (
        "AAA-USD:r10s",
        "AAA-USD:r20s",
        "AAA-USD:r100s",
        "AAA-USD:r200s",
        "BBB-USD:r10s",
    )
    assert ws.views().shape == (3600, 1000, len(PRODUCTS) * F)


def test_views_are_slices_of_the_matrix_and_hold_the_indicators(
    market: Market, sets: dict[int, WindowSet]
) -> None:
    ws = sets[3]
    views = ws.views()
    assert not views.flags.writeable and np.shares_memory(views, ws.features)
    for i in np.random.default_rng(1).integers(0, len(ws), size=10):
        a = ws.anchors[i]
        np.testing.assert_array_equal(views[i], ws.features[a - 999 : a + 1])
        np.testing.assert_array_equal(views[i], ws.window_at(i))
        t = pd.Timestamp(int(ws.anchor_times_ns[i]), unit="ns", tz="UTC")
        for j, product in enumerate(PRODUCTS):
            expected = market.features[product].loc[t, list(FEATURE_NAMES)].to_numpy(dtype=np.float32)
            np.testing.assert_array_equal(views[i][-1, j * F : (j + 1) * F], expected)


def hand_label(observed: pd.Series, t: pd.Timestamp, h: int) -> float:
    def last_price_at(when: pd.Timestamp) -> float:
        known = observed.loc[:when].dropna()
        return float(known.iloc[-1]) if len(known) else np.nan

    return np.log(last_price_at(t + pd.Timedelta(seconds=h))) - np.log(last_price_at(t))


def test_labels_are_log_returns_of_the_last_observed_price(
    market: Market, sets: dict[int, WindowSet]
) -> None:
    ws = sets[3]
    for i in np.random.default_rng(2).integers(0, len(ws), size=8):
        t = pd.Timestamp(int(ws.anchor_times_ns[i]), unit="ns", tz="UTC")
        for j, product in enumerate(PRODUCTS):
            for k, h in enumerate((10, 20, 100, 200)):
                expected = hand_label(market.observed[product], t, h)
                np.testing.assert_allclose(ws.labels[i, j * 4 + k], expected, rtol=1e-5, atol=1e-9)
    # Prices after the hour are never read: perturbing them changes nothing.
    later = {p: s.where(s.index < hour(4), s * 3.0) for p, s in market.observed.items()}
    again = build_window_set(market.features, later, PRODUCTS, hour(3))
    np.testing.assert_array_equal(again.labels, ws.labels)


def test_validity_is_warm_finite_rows_and_finite_labels(market: Market, sets: dict[int, WindowSet]) -> None:
    for h in (2, 3):
        ws = sets[h]
        row_times = pd.DatetimeIndex(pd.to_datetime(ws.row_times_ns(), utc=True))
        row_ok = np.ones(len(row_times), dtype=bool)
        for product in PRODUCTS:
            frame = market.features[product].reindex(row_times)
            row_ok &= frame["warm"].eq(True).to_numpy()
        expected = np.array(
            [
                row_ok[a - 999 : a + 1].all() and np.isfinite(ws.labels[i]).all()
                for i, a in enumerate(ws.anchors)
            ]
        )
        np.testing.assert_array_equal(ws.valid, expected)
    # BBB-USD has no data before hour 2 + 1000 s: no window of hour 1 or 2 can be valid.
    assert not sets[1].valid.any() and not sets[2].valid.any()
    # Without it, hour 1 has no stored features before it: only windows starting inside hour 1 are valid.
    pair = ("AAA-USD", "CCC-USD")
    ws1 = build_window_set(market.features, market.observed, pair, hour(1))
    np.testing.assert_array_equal(ws1.valid, ws1.anchor_times_ns - 999 * S >= hour(1).value)
    # BBB-USD warms up WARMUP_S after its first-ever tick (hour 2 + 1000 s): hour 3's first 399 windows fail.
    assert not sets[3].valid[:399].any() and sets[3].valid[399:].all()
    assert sets[4].valid.all()


def test_a_product_without_data_makes_nan_columns_and_invalid_windows(market: Market) -> None:
    features = {p: f for p, f in market.features.items() if p != "CCC-USD"}
    observed = dict(market.observed) | {"CCC-USD": pd.Series(dtype=float)}
    ws = build_window_set(features, observed, PRODUCTS, hour(4))
    assert np.isnan(ws.features[:, 2 * F :]).all() and np.isfinite(ws.features[:, : 2 * F]).all()
    assert not ws.valid.any() and np.isnan(ws.labels[:, 8:]).all()
    assert ws.feature_stats is not None and (ws.feature_stats.count == 0).all()


def test_window_features_never_see_the_future() -> None:
    base_market = make_market(seed=10)
    base = build_window_set(base_market.features, base_market.observed, PRODUCTS, hour(4))
    rng = np.random.default_rng(3)
    for cut in rng.integers(4 * 3600 - 200, 5 * 3600 - 200, size=2):
        filtered, observed, features = {}, {}, {}
        for product in PRODUCTS:
            f = base_market.filtered[product].copy()
            o = base_market.observed[product].copy()
            f.iloc[cut + 1 :] *= rng.uniform(0.5, 2.0, size=(len(f) - cut - 1, f.shape[1]))
            o.iloc[cut + 1 :] = np.where(np.isnan(o.iloc[cut + 1 :]), 7.0, np.nan)
            filtered[product], observed[product] = f, o
            features[product] = features_like_the_asset(f, o)
        ws = build_window_set(features, observed, PRODUCTS, hour(4))
        last = int(np.flatnonzero(ws.anchor_times_ns <= T0.value + int(cut) * S)[-1])
        # Every window anchored at or before the cut is a slice of rows up to the last such anchor, so
        # comparing those rows checks all of them without copying 3600 windows out.
        np.testing.assert_array_equal(
            ws.features[: ws.anchors[last] + 1], base.features[: ws.anchors[last] + 1]
        )
        for i in (0, last // 2, last):
            np.testing.assert_array_equal(ws.views()[i], base.views()[i])
        assert not np.array_equal(ws.views()[last + 1], base.views()[last + 1])


def covered_owned_rows(ws: WindowSet) -> np.ndarray:
    covered = np.zeros(ws.features.shape[0], dtype=bool)
    for a in ws.anchors[ws.valid]:
        covered[a - ws.window + 1 : a + 1] = True
    return np.flatnonzero(covered[ws.window - 1 :]) + ws.window - 1


def test_statistics_cover_distinct_rows_and_merge(sets: dict[int, WindowSet]) -> None:
    for h in (3, 4):
        ws = sets[h]
        rows = covered_owned_rows(ws)
        expected = ColumnStats.of(ws.features[rows])
        assert ws.feature_stats is not None and ws.label_stats is not None
        np.testing.assert_array_equal(ws.feature_stats.count, expected.count)
        np.testing.assert_allclose(ws.feature_stats.total, expected.total, rtol=1e-12)
        np.testing.assert_allclose(
            ws.label_stats.mean, ws.labels[ws.valid].astype(np.float64).mean(0), rtol=1e-9
        )
    # Merging consecutive partitions counts every second once. Hour 3's first 399 windows are invalid, but
    # their anchor rows lie inside the history of its first valid window: all 2 x 3600 seconds count.
    feats, labels = merged_stats([sets[3], sets[4]])
    seconds = np.union1d(*(s.row_times_ns()[covered_owned_rows(s)] for s in (sets[3], sets[4])))
    assert feats.count[0] == seconds.size == 2 * 3600
    both = np.concatenate([sets[3].labels[sets[3].valid], sets[4].labels[sets[4].valid]]).astype(np.float64)
    np.testing.assert_allclose(labels.std, both.std(0), rtol=1e-6)
    assert labels.count[0] == both.shape[0]


def test_save_and_load_memory_maps(tmp_path, sets: dict[int, WindowSet]) -> None:
    ws = sets[3]
    save_window_set(ws, tmp_path / "h3")
    loaded = load_window_set(tmp_path / "h3", mmap=True)
    assert isinstance(loaded.features, np.memmap) and not loaded.features.flags.writeable
    for name in ("features", "labels", "anchors", "anchor_times_ns", "valid"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(ws, name))
    assert loaded.feature_names == ws.feature_names and loaded.output_names == ws.output_names
    assert loaded.window == ws.window
    np.testing.assert_array_equal(loaded.views()[::500], ws.views()[::500])
    for name in ("feature_stats", "label_stats"):
        np.testing.assert_array_equal(getattr(loaded, name).total_sq, getattr(ws, name).total_sq)
    in_ram = load_window_set(tmp_path / "h3", mmap=False)
    assert not isinstance(in_ram.features, np.memmap)
