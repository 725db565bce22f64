"""The `cb-assets up` status line shows what an operator must see: skipped hours and the forecaster."""

from __future__ import annotations

from datetime import UTC, datetime

from cb_assets.automation.planner import SKIPPED, HourRun
from cb_assets.config import load_settings
from cb_assets.db import hour_runs_store
from cb_assets.db.connection import connect
from cb_assets.db.forecast_store import write_status
from cb_assets.stack.status import status_line


def test_status_line_names_skipped_hours_and_the_forecasters_state(database_url: str) -> None:
    settings = load_settings({"CB_DATABASE_URL": database_url})
    assert "forecaster: not started" in status_line(settings)
    with connect(database_url, autocommit=True) as conn:
        hour_runs_store.save(
            conn, [HourRun(datetime(2024, 3, 1, 5, tzinfo=UTC), SKIPPED, 4, "k", None, "boom")]
        )
        write_status(conn, "forecaster", None, None, {"state": "stale", "skips": {"stale": 7, "not_warm": 2}})
    line = status_line(settings)
    assert "1 skipped after retries, newest 03-01 05:00" in line
    assert "forecaster stale: 0 forecasts/min" in line and "skipped: stale 7, not_warm 2" in line
