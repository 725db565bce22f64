"""Retention deletes derived hours older than CB_RETENTION_DAYS (tables and windows) and keeps raw_ticks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cb_assets.db.connection import connect
from cb_assets.db.series_store import INDICATOR_TYPES, replace_slice
from cb_assets.defs.resources import resources_for
from cb_assets.defs.retention import retention_job
from cb_assets.series.clock import floor_hour, partition_key
from cb_assets.series.indicators import FEATURE_NAMES
from cb_assets.series.window_store import WindowStore


def _indicator_hour(conn, hour: datetime) -> None:
    times = pd.date_range(hour, periods=3600, freq="s", tz="UTC")
    frame = pd.DataFrame({"product_id": "BTC-USD", "time": times, "warm": True})
    for f in FEATURE_NAMES:
        frame[f] = np.arange(3600, dtype=float)
    replace_slice(conn, "indicators", hour, hour + timedelta(hours=1), frame, INDICATOR_TYPES)


def test_retention_drops_old_derived_hours_only(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CB_RETENTION_DAYS", "7")
    now = floor_hour(datetime.now(UTC))
    old, recent = now - timedelta(days=8), now - timedelta(days=6)
    with connect(database_url) as conn:
        for h in (old, recent):
            _indicator_hour(conn, h)
        conn.execute(
            "INSERT INTO raw_ticks (product_id, time, price, volume_24_h, low_24_h, high_24_h, low_52_w, high_52_w, "
            "price_percent_chg_24_h, source) VALUES ('BTC-USD', %s, 1, 1, 1, 1, 1, 1, 0, 'simulated')",
            (old,),
        )
        conn.commit()
    res = resources_for(database_url, tmp_path, ["BTC-USD"])
    store = WindowStore(res["windows"].base_dir)
    for h in (old, recent):
        d = store.path(partition_key(h))
        d.mkdir(parents=True)
        (d / "meta.json").write_text("{}")
    result = retention_job.execute_in_process(resources=res)
    assert result.success
    with connect(database_url) as conn:
        hours = [
            r[0] for r in conn.execute("SELECT DISTINCT date_trunc('hour', time) FROM indicators").fetchall()
        ]
        raw = conn.execute("SELECT count(*) FROM raw_ticks").fetchone()[0]
    assert hours == [recent] and raw == 1
    assert store.keys() == [partition_key(recent)]
