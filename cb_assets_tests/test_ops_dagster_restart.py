"""Drill: `dagster dev` restarted mid-stream. The sensor keeps its cursor (in the PostgreSQL instance), so after
the restart it requests only what is new: no hour is processed twice, no hour is fine-tuned twice."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from cb_assets.db.connection import connect
from cb_assets.feed.seed import simulate_rows, write_rows
from cb_assets_tests.dagster_dev_support import LOCATION, REPOSITORY, DagsterDev, dagster_dev

PRODUCTS = ("BTC-USD", "ETH-USD", "SOL-USD")
START = datetime(2024, 3, 1, tzinfo=UTC)


def _key(t: datetime) -> str:
    return t.strftime("%Y-%m-%d-%H:%M")


def _versions(url: str) -> list[tuple]:
    with connect(url) as conn:
        return conn.execute(
            "SELECT id, kind, partitions, target_hour, status FROM model_versions ORDER BY id"
        ).fetchall()


def _wait_versions(url: str, n: int, timeout_s: float) -> list[tuple]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = _versions(url)
        if len(rows) >= n:
            return rows
        time.sleep(3)
    raise AssertionError(f"expected {n} model versions within {timeout_s:.0f} s, have {_versions(url)}")


def _cursor_when(dev: DagsterDev, key: str, value: str, timeout_s: float = 120) -> dict:
    """The sensor cursor once `key` has reached `value` (the fine-tune mark moves when its run succeeded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        cursor = _cursor(dev)
        if cursor.get(key) == value:
            return cursor
        time.sleep(1)
    return _cursor(dev)


def _cursor(dev: DagsterDev) -> dict:
    data = dev.graphql(
        "query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { ... on Sensor { sensorState { "
        "typeSpecificData { ... on SensorData { lastCursor } } } } } }",
        {
            "s": {
                "repositoryLocationName": LOCATION,
                "repositoryName": REPOSITORY,
                "sensorName": "raw_ticks_sensor",
            }
        },
    )
    raw = data["sensorOrError"]["sensorState"]["typeSpecificData"]["lastCursor"]
    return json.loads(raw) if raw else {}


@pytest.mark.slow(expected_s=460)
def test_dagster_dev_restart_keeps_the_cursor_and_never_repeats_work(make_database, tmp_path: Path) -> None:
    url = make_database()
    env = {
        "CB_DATABASE_URL": url,
        "CB_DAGSTER_DATABASE_URL": url,
        "CB_HOME": str(tmp_path / "cb_home"),
        "CB_PRODUCTS": ",".join(PRODUCTS),
        "CB_PARTITIONS_START": "2024-03-01-00:00",
        "CB_SENSOR_INTERVAL_S": "5",
    }
    _, rows = simulate_rows(PRODUCTS, START, 4, seed=21)
    first_three = [r for r in rows if r[1] < START + timedelta(hours=3)]
    write_rows(url, first_three)  # complete through 01:00 (02:00 is the newest, still open)

    with dagster_dev(env, tmp_path) as dev:
        versions = _wait_versions(url, 1, timeout_s=600)  # chain for 00:00-01:00, then the first training
        before = _cursor_when(dev, "fine_tuned_through", _key(START + timedelta(hours=1)))
    assert before["requested_through"] == _key(START + timedelta(hours=1))
    assert before["fine_tuned_through"] == _key(START + timedelta(hours=1))
    assert [(v[1], v[2]) for v in versions] == [("initial", [_key(START + timedelta(hours=1))])]

    # Stream on while the UI is down: hour 03:00 arrives, which completes 02:00.
    write_rows(url, [r for r in rows if r[1] >= START + timedelta(hours=3)])
    with dagster_dev(env, tmp_path) as dev:  # same DAGSTER_HOME and PostgreSQL storage: a restart
        versions = _wait_versions(url, 2, timeout_s=600)
        after = _cursor_when(dev, "fine_tuned_through", _key(START + timedelta(hours=2)))
        # Two more sensor evaluations: nothing else may be requested.
        dev.wait_sensor_evaluations("raw_ticks_sensor", 2, after=time.time())
        with dev.instance() as instance:
            runs = [
                r.dagster_run for r in instance.get_run_records(dg.RunsFilter(job_name="hourly_assets_job"))
            ]
            tunes = instance.get_run_records(dg.RunsFilter(job_name="fine_tune_job"))
    assert after["requested_through"] == after["fine_tuned_through"] == _key(START + timedelta(hours=2))
    assert [(v[1], v[3]) for v in versions] == [
        ("initial", None),
        ("fine_tune", _key(START + timedelta(hours=2))),
    ]
    assert len(tunes) == 2

    covered: list[str] = []
    for run in runs:
        first = run.tags.get("dagster/asset_partition_range_start") or run.tags["dagster/partition"]
        last = run.tags.get("dagster/asset_partition_range_end") or first
        h = datetime.strptime(first, "%Y-%m-%d-%H:%M").replace(tzinfo=UTC)
        while _key(h) <= last:
            covered.append(_key(h))
            h += timedelta(hours=1)
    assert sorted(covered) == [_key(START + timedelta(hours=h)) for h in range(3)]  # each hour exactly once
