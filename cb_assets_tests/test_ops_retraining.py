"""Drill: retraining that heals itself, in a real `dagster dev` on PostgreSQL storage with the sensor running.

Six stored hours, the third of them (H2) with a tick of negative price: its chain fails, is requested again
after the (shortened) retry delays, and is then recorded as skipped with its error; the hours after it are
materialised (H3 starting cold after the gap) and the platform still gets its first model and learns H3 and
H4. Then the platform is stopped, three more data-hours arrive, and after the restart every new hour is
materialised and fine-tuned unattended.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cb_assets.db.connection import connect
from cb_assets.feed.seed import simulate_rows, write_rows
from cb_assets.series.clock import partition_key
from cb_assets.series.window_store import WindowStore
from cb_assets_tests.dagster_dev_support import dagster_dev

PRODUCTS = ("BTC-USD", "ETH-USD", "SOL-USD")
START = datetime(2024, 3, 1, tzinfo=UTC)


def H(i: int) -> datetime:
    return START + timedelta(hours=i)


def _wait(what, timeout_s: float, message: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(2)
    raise AssertionError(message)


def _hour_state(url: str, hour: datetime) -> tuple | None:
    with connect(url) as conn:
        return conn.execute(
            "SELECT state, attempts, last_error FROM hour_runs WHERE hour = %s", (hour,)
        ).fetchone()


def _learned(url: str) -> set[str]:
    """Hours some model version was trained on."""
    with connect(url) as conn:
        return {
            r[0] for r in conn.execute("SELECT DISTINCT unnest(partitions) FROM model_versions").fetchall()
        }


@pytest.mark.slow
def test_a_failing_hour_is_skipped_learning_goes_on_and_downtime_is_caught_up(
    make_database, tmp_path: Path
) -> None:
    url = make_database()
    env = {
        "CB_DATABASE_URL": url,
        "CB_DAGSTER_DATABASE_URL": url,
        "CB_HOME": str(tmp_path / "cb_home"),
        "CB_PRODUCTS": ",".join(PRODUCTS),
        "CB_PARTITIONS_START": "2024-03-01-00:00",
        "CB_SENSOR_INTERVAL_S": "5",
        "CB_HOUR_RETRY_DELAYS_S": "2,4,8",
    }
    _, rows = simulate_rows(PRODUCTS, START, 9, seed=13)
    write_rows(url, [r for r in rows if r[1] < H(6)])  # complete through H4
    with connect(url) as conn:
        conn.execute(
            "UPDATE raw_ticks SET price = -price WHERE product_id = 'ETH-USD' AND time = "
            "(SELECT min(time) FROM raw_ticks WHERE product_id = 'ETH-USD' AND time >= %s)",
            (H(2) + timedelta(minutes=7),),
        )
    store = WindowStore(Path(env["CB_HOME"]) / "training_windows")

    started = time.monotonic()
    with dagster_dev(env, tmp_path):
        skipped = _wait(
            lambda: (s := _hour_state(url, H(2))) and s[0] == "skipped" and s, 600, "H2 was not skipped"
        )
        skipped_s = time.monotonic() - started
        _wait(
            lambda: {partition_key(H(3)), partition_key(H(4))} <= _learned(url),
            900,
            "H3 and H4 were not learned",
        )
        first_model_s = time.monotonic() - started
    _, attempts, error = skipped
    assert attempts == 4 and "price_positive" in error  # the first run and three retries, then skipped
    assert all(store.exists(partition_key(H(i))) for i in (0, 1, 3, 4)) and not store.exists(
        partition_key(H(2))
    )
    assert partition_key(H(2)) not in _learned(url)

    # Down for three data-hours: they arrive while nothing runs; the restarted platform catches up alone.
    write_rows(url, [r for r in rows if r[1] >= H(6)])  # complete through H7
    restarted = time.monotonic()
    with dagster_dev(env, tmp_path):
        _wait(
            lambda: all(store.exists(partition_key(H(i))) for i in (5, 6, 7)),
            600,
            "the missed hours were not materialised",
        )
        _wait(
            lambda: {partition_key(H(i)) for i in (5, 6, 7)} <= _learned(url),
            900,
            "the missed hours were not learned",
        )
        caught_up_s = time.monotonic() - restarted
    print(
        f"\nretraining drill: H2 skipped after {attempts} attempts in {skipped_s:.0f} s ({error[:80]}...); "
        f"H3/H4 learned {first_model_s:.0f} s after start; after a restart the three missed hours were "
        f"materialised and learned in {caught_up_s:.0f} s"
    )
