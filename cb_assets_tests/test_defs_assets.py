"""The hourly asset graph in process against PostgreSQL: outputs, determinism, order independence, leakage,
bad data. One simulated market is materialised once per module and compared against variants of it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from cb_assets.db.connection import connect
from cb_assets.feed.seed import simulate_rows, write_rows
from cb_assets.forecast.engine import LiveEngine
from cb_assets.model.experiment import series_for, window_sets
from cb_assets.series.hourly import Ticks
from cb_assets.series.indicators import FEATURE_NAMES
from cb_assets.series.window_store import WindowStore
from cb_assets_tests.assets_support import (
    ASSET_NAMES,
    HOUR,
    PRODUCTS,
    hour,
    key_of,
    materialize,
    materialize_range,
    resources,
    table_slice,
)

H0, H1, H2 = "2024-03-01-00:00", "2024-03-01-01:00", "2024-03-01-02:00"
HOURS = (H0, H1, H2)


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> dg.DagsterInstance:
    # Under pytest's own temporary tree (kept until the session ends), not an anonymous /tmp directory.
    with dg.instance_for_test(temp_dir=str(tmp_path_factory.mktemp("dagster_instance"))) as inst:
        yield inst


@pytest.fixture(scope="module")
def market_rows() -> list[tuple]:
    _, rows = simulate_rows(PRODUCTS, hour(H0), 3, seed=7)
    return rows


def _fresh(make_database: Callable[..., str], rows: list[tuple]) -> str:
    url = make_database()
    write_rows(url, rows)
    return url


@pytest.fixture(scope="module")
def in_order(make_database, market_rows, instance, tmp_path_factory) -> tuple[str, dict]:
    """The three hours materialised in order, one partition per run, every asset."""
    url = _fresh(make_database, market_rows)
    res = resources(url, tmp_path_factory.mktemp("in_order"))
    for key in HOURS:
        result = materialize(ASSET_NAMES, key, res, instance)
        assert result.success
    return url, res


def test_outputs_of_a_warm_hour(in_order) -> None:
    url, res = in_order
    filled = table_slice(url, "filled_series", hour(H2), hour(H2) + HOUR)
    assert len(filled) == 3600 * len(PRODUCTS)
    assert filled["causal"].all()  # parameters came from H1
    assert filled["price_filtered"].notna().all()
    # Filtered values track the observations closely, the smoother too.
    obs = filled[filled["observed"]]
    rel = (obs["price_filtered"] - obs["price"]).abs() / obs["price"]
    assert rel.median() < 1e-3
    ind = table_slice(url, "indicators", hour(H2), hour(H2) + HOUR)
    assert ind["warm"].all() and ind.drop(columns=["product_id", "time", "warm"]).notna().all().all()
    store = WindowStore(res["windows_io_manager"].base_dir)
    ws = store.load(H2)
    assert len(ws) == 3600 and ws.valid.all()
    assert ws.features.shape == (1199 + 3400, len(PRODUCTS) * 43) and ws.features.dtype == np.float32
    first_anchor = pd.Timestamp(int(ws.anchor_times_ns[0]), tz="UTC")
    assert first_anchor == hour(H2) - pd.Timedelta(seconds=200)


def test_materialised_hours_equal_the_in_memory_chain(in_order, market_rows) -> None:
    """The assets (PostgreSQL reads and writes around the shared per-hour core) give, bit for bit, what the
    core gives in memory (model/experiment.py's chain, which the live path and the benchmarks share)."""
    url, res = in_order
    ticks = _ticks(market_rows)
    hours_ns = [int(pd.Timestamp(hour(k)).value) for k in HOURS]
    series = series_for(ticks, PRODUCTS, hours_ns)
    stored = table_slice(url, "indicators", hour(H2), hour(H2) + HOUR)
    for p in PRODUCTS:
        mine = series[p].indicators.loc[hour(H2) : hour(H2) + HOUR - pd.Timedelta(seconds=1)]
        theirs = stored[stored["product_id"] == p].set_index("time")[mine.columns]
        pd.testing.assert_frame_equal(theirs, mine, check_exact=True, check_freq=False, check_names=False)
    in_memory = window_sets(series, PRODUCTS, [hours_ns[2]])[0]
    materialised = WindowStore(res["windows_io_manager"].base_dir).load(H2)
    np.testing.assert_array_equal(materialised.features, in_memory.features)
    np.testing.assert_array_equal(materialised.labels, in_memory.labels)
    np.testing.assert_array_equal(materialised.valid, in_memory.valid)


def test_live_engine_steps_every_second_exactly_as_the_assets(in_order, market_rows) -> None:
    """The live forecaster's engine, fed the stored rows frame by frame (microsecond times, as in raw_ticks)
    from the start of H1, computes for every second of H1 and H2 the features the indicators asset stored,
    and its window at an anchor is the stored training window there."""
    url, res = in_order
    h1 = int(pd.Timestamp(hour(H1)).value) // 1_000_000_000
    ticks = _ticks(market_rows)
    # Start as the forecaster does after a restart at H1's first second: state from the stored history.
    history = {p: Ticks(t[t <= h1 * 10**9], v[t <= h1 * 10**9]) for p, (t, v) in ticks.items()}
    engine = LiveEngine.from_history(PRODUCTS, history, h1)
    stream = sorted(
        (int(t), p, v) for p, (ts, vs) in ticks.items() for t, v in zip(ts, vs, strict=True) if t > h1 * 10**9
    )
    live = {p: [engine.live[p].ring.block()[0][-1:].copy()] for p in PRODUCTS}
    usable = {p: [engine.live[p].ring.block()[1][-1:].copy()] for p in PRODUCTS}
    end = h1 + 2 * 3600 - 1
    anchor = h1 + 3600 + 3395  # one of H2's windows (anchors H2 - 200 s .. H2 + 3399 s)
    i = 0
    for second in range(h1 + 5, end + 5, 5):  # frames every 5 s: close what a frame's arrival closes
        while i < len(stream) and stream[i][0] <= second * 10**9:
            t, p, v = stream[i]
            engine.add_ticks([p], np.array([t]), v[None])
            i += 1
        n = engine.advance_to(min(second, end))
        if engine.anchor_s == anchor:
            x = engine.model_input()
        for p in PRODUCTS:
            block, ok = engine.live[p].ring.block()
            live[p].append(block[-n:].copy())
            usable[p].append(ok[-n:].copy())
    assert engine.counters.late_ticks == 0 and engine.anchor_s == end
    stored = table_slice(url, "indicators", hour(H1), hour(H2) + HOUR)
    for p in PRODUCTS:
        expected = stored[stored["product_id"] == p]
        got = np.concatenate(live[p])
        assert got.shape == (7200, len(FEATURE_NAMES))
        np.testing.assert_array_equal(got, expected[list(FEATURE_NAMES)].to_numpy(np.float32))
        np.testing.assert_array_equal(np.concatenate(usable[p]), expected["warm"].to_numpy())
    # The live window at an anchor is the stored training window ending there.
    ws = WindowStore(res["windows_io_manager"].base_dir).load(H2)
    k = int(np.flatnonzero(ws.anchor_times_ns == anchor * 10**9)[0])
    assert x.valid and ws.valid[k]
    np.testing.assert_array_equal(x.matrix, ws.window_at(k))


def _ticks(market_rows: list[tuple]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for p in PRODUCTS:
        rows = [r for r in market_rows if r[0] == p]
        times = np.array([pd.Timestamp(r[1]).value for r in rows], dtype=np.int64)
        out[p] = (times, np.array([r[2:9] for r in rows], dtype=np.float64))
    return out


def test_kalman_parameters_recorded_per_hour(in_order) -> None:
    url, _ = in_order
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT fitted_on, count(*), bool_and(q > 0 AND r > 0) FROM kalman_params GROUP BY 1 ORDER BY 1"
        ).fetchall()
    # H0 has no previous hour: a cold start fitted on itself; H1 and H2 are causal.
    assert rows == [("previous_hour", 2 * len(PRODUCTS) * 7, True), ("same_hour", len(PRODUCTS) * 7, True)]


def test_rematerialising_gives_identical_results(in_order, instance) -> None:
    url, res = in_order
    before_f = table_slice(url, "filled_series", hour(H1), hour(H1) + HOUR)
    before_i = table_slice(url, "indicators", hour(H1), hour(H1) + HOUR)
    before_w = np.array(WindowStore(res["windows_io_manager"].base_dir).load(H1).features)
    assert materialize(ASSET_NAMES[1:], H1, res, instance).success
    pd.testing.assert_frame_equal(table_slice(url, "filled_series", hour(H1), hour(H1) + HOUR), before_f)
    pd.testing.assert_frame_equal(table_slice(url, "indicators", hour(H1), hour(H1) + HOUR), before_i)
    np.testing.assert_array_equal(WindowStore(res["windows_io_manager"].base_dir).load(H1).features, before_w)


def test_out_of_order_backfill_equals_in_order(
    in_order, make_database, market_rows, instance, tmp_path
) -> None:
    url, res = in_order
    other = _fresh(make_database, market_rows)
    res2 = resources(other, tmp_path)
    # Asset by asset (as a backfill orders them), hours shuffled within each asset; one range run included.
    for name, order in (
        ("raw_ticks", (H2, H0, H1)),
        ("filled_series", (H2, H0, H1)),
        ("indicators", (H1, H0, H2)),
    ):
        for key in order:
            assert materialize([name], key, res2, instance).success
    assert materialize_range(["training_windows"], H0, H2, res2, instance).success
    for table in ("filled_series", "indicators"):
        pd.testing.assert_frame_equal(
            table_slice(other, table, hour(H0), hour(H2) + HOUR),
            table_slice(url, table, hour(H0), hour(H2) + HOUR),
        )
    a, b = WindowStore(res["windows_io_manager"].base_dir), WindowStore(res2["windows_io_manager"].base_dir)
    for key in HOURS:
        np.testing.assert_array_equal(a.load(key).features, b.load(key).features)
        np.testing.assert_array_equal(a.load(key).labels, b.load(key).labels)


def test_missing_upstream_hour_fails_with_a_clear_message(
    make_database, market_rows, instance, tmp_path
) -> None:
    url = _fresh(make_database, market_rows)
    res = resources(url, tmp_path)
    assert materialize(["filled_series"], H2, res, instance).success
    result = materialize(["indicators"], H2, res, instance, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert f"materialise filled_series {H1} first" in failure.step_failure_data.error.message


def test_leakage_perturbing_the_future_changes_nothing_before_t(
    in_order, make_database, market_rows, instance, tmp_path
) -> None:
    url, res = in_order
    t = pd.Timestamp(hour(H2)) + pd.Timedelta(minutes=31, seconds=17)
    rng = np.random.default_rng(3)
    perturbed = [
        (*r[:2], *(v * float(np.exp(rng.normal(0, 0.01))) for v in r[2:4]), *r[4:]) if r[1] > t else r
        for r in market_rows
    ]
    assert sum(a != b for a, b in zip(perturbed, market_rows, strict=True)) > 1000
    other = _fresh(make_database, perturbed)
    res2 = resources(other, tmp_path)
    for key in HOURS:
        assert materialize(ASSET_NAMES, key, res2, instance).success

    def upto(table: str, db: str) -> pd.DataFrame:
        f = table_slice(db, table, hour(H0), hour(H2) + HOUR)
        return f[f["time"] <= t].reset_index(drop=True)

    causal_cols = [
        "product_id",
        "time",
        "observed",
        "causal",
        *[c for c in upto("filled_series", url) if c.endswith(("_filtered", "_filtered_std"))],
    ]
    pd.testing.assert_frame_equal(
        upto("filled_series", other)[causal_cols], upto("filled_series", url)[causal_cols]
    )
    pd.testing.assert_frame_equal(upto("indicators", other), upto("indicators", url))
    a = WindowStore(res["windows_io_manager"].base_dir).load(H2)
    b = WindowStore(res2["windows_io_manager"].base_dir).load(H2)
    up_to_t = a.anchor_times_ns <= t.value
    assert up_to_t.sum() > 1000
    np.testing.assert_array_equal(a.views()[up_to_t], b.views()[up_to_t])
    # ... while the smoother and the future did change (the perturbation was real).
    after = table_slice(other, "filled_series", t, hour(H2) + HOUR)
    assert not after["price_filtered"].equals(
        table_slice(url, "filled_series", t, hour(H2) + HOUR)["price_filtered"]
    )


def test_bad_hour_is_flagged_and_the_others_materialise(
    make_database, market_rows, instance, tmp_path
) -> None:
    url = _fresh(make_database, market_rows)
    with connect(url) as conn:
        conn.execute(
            "UPDATE raw_ticks SET price = -price WHERE product_id = 'ETH-USD' AND time = "
            "(SELECT min(time) FROM raw_ticks WHERE product_id = 'ETH-USD' AND time >= %s)",
            (hour(H1) + pd.Timedelta(minutes=10),),
        )
        # A live tick ingested three hours after its hour ended: suspect, flagged (not blocking).
        conn.execute(
            "UPDATE raw_ticks SET source = 'live', received_at = time + interval '4 hours' WHERE product_id = "
            "'SOL-USD' AND time = (SELECT min(time) FROM raw_ticks WHERE product_id = 'SOL-USD' AND time >= %s)",
            (hour(H2) + pd.Timedelta(minutes=5),),
        )
    res = resources(url, tmp_path)
    outcomes = {key: materialize(ASSET_NAMES, key, res, instance, raise_on_error=False) for key in HOURS}

    bad = outcomes[H1]
    checks = {c.check_name: c for c in bad.get_asset_check_evaluations()}
    assert not checks["price_positive"].passed
    assert (
        "ETH-USD" in checks["price_positive"].description and "1 rows" in checks["price_positive"].description
    )
    materialized = {e.asset_key.path[-1] for e in bad.get_asset_materialization_events()}
    assert materialized == {"raw_ticks"}  # the blocking check stopped the chain for this hour

    late = {c.check_name: c for c in outcomes[H2].get_asset_check_evaluations()}["no_late_live_ticks"]
    assert not late.passed and "SOL-USD" in late.description
    for key in (H0, H2):
        done = {e.asset_key.path[-1] for e in outcomes[key].get_asset_materialization_events()}
        assert done == set(ASSET_NAMES), key
    # Re-running filled_series on the bad hour fails with the reason instead of computing on bad data.
    retry = materialize(["filled_series"], H1, res, instance, raise_on_error=False)
    assert not retry.success
    failure = next(e for e in retry.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "price_positive: 1 rows" in failure.step_failure_data.error.message


def test_schedule_requests_the_newest_complete_hour(in_order, instance) -> None:
    from cb_assets.defs.schedules import hourly_assets_schedule

    url, res = in_order

    def tick(at: datetime) -> dg.RunRequest | dg.SkipReason:
        ctx = dg.build_schedule_context(instance=instance, scheduled_execution_time=at)
        return hourly_assets_schedule(ctx, postgres=res["postgres"], market=res["market"])

    skipped = tick(hour(H1) + HOUR + pd.Timedelta(minutes=5))
    assert isinstance(skipped, dg.SkipReason) and "already materialised" in skipped.skip_message
    # The data ends at 03:00; hour 03:00 is not complete in the data, whatever the wall clock says.
    partial = tick(hour(H2) + 2 * HOUR + pd.Timedelta(minutes=5))
    assert isinstance(partial, dg.SkipReason) and "not complete in the data" in partial.skip_message
    with connect(url) as conn:  # a tick well past 03:00 + grace completes it
        conn.execute(
            "INSERT INTO raw_ticks (product_id, time, price, volume_24_h, low_24_h, high_24_h, low_52_w, high_52_w, "
            "price_percent_chg_24_h, source) VALUES ('BTC-USD', %s, 1, 1, 1, 1, 1, 1, 0, 'test')",
            (hour(H2) + 2 * HOUR + pd.Timedelta(minutes=3),),
        )
    request = tick(hour(H2) + 2 * HOUR + pd.Timedelta(minutes=5))
    assert isinstance(request, dg.RunRequest) and request.partition_key == key_of(hour(H2) + HOUR)


def test_a_range_runs_as_one_run(make_database, market_rows, instance, tmp_path: Path) -> None:
    url = _fresh(make_database, market_rows)
    res = resources(url, tmp_path)
    result = materialize_range(ASSET_NAMES, H0, H2, res, instance)
    assert result.success
    keys = {(e.asset_key.path[-1], e.partition) for e in result.get_asset_materialization_events()}
    assert keys == {(a, k) for a in ASSET_NAMES for k in HOURS}


def test_a_range_run_records_its_good_hours_when_one_is_bad(
    make_database, market_rows, instance, tmp_path
) -> None:
    """A single-run backfill over three hours with a bad middle hour: the good hours are recorded as
    materialised (so a re-run of the failed partitions leaves them alone) and the run names the bad one."""
    url = _fresh(make_database, market_rows)
    with connect(url) as conn:
        conn.execute(
            "UPDATE raw_ticks SET low_24_h = high_24_h + 1 WHERE time = (SELECT min(time) FROM raw_ticks WHERE time >= %s)",
            (hour(H1) + pd.Timedelta(minutes=3),),
        )
    res = resources(url, tmp_path)
    result = materialize_range(["raw_ticks"], H0, H2, res, instance, raise_on_error=False)
    assert not result.success
    records = instance.fetch_materializations(dg.AssetKey("raw_ticks"), limit=100).records
    recorded = {r.asset_materialization.partition for r in records if r.run_id == result.run_id}
    assert recorded == {H0, H2}
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    message = failure.step_failure_data.user_failure_data.description
    assert f"{H1}: low_24_h_not_above_high:" in message and "1 of 3 hours failed" in message
