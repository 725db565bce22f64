"""End to end and live: a champion trained on a planted lead-lag market, the hour after its training replayed
through Kafka at about 500x with the sink and the forecaster beside it, and that hour's forecast_scores: the
follower shows positive live skill at 10 s and 20 s. The same market without the relation shows none.

The champion is trained as price_model trains it (`pipeline.train_initial` on the shared core's windows of
eight hours), with the composite's linear part alone so that the test takes seconds rather than minutes: the
planted relation is linear, and the network's part is tested in test_model_learning_e2e.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from cb_assets.config import load_settings
from cb_assets.db import model_registry as registry
from cb_assets.db.connection import connect
from cb_assets.defs.forecast_scores import forecast_scores
from cb_assets.defs.resources import resources_for
from cb_assets.feed.market import LeadLag
from cb_assets.feed.seed import rows_from_simulation, write_rows
from cb_assets.feed.simulate import simulate_ticks
from cb_assets.model.experiment import series_for, window_sets
from cb_assets.model.network import save_model
from cb_assets.model.pipeline import train_initial
from cb_assets.model.settings import TrainSettings
from cb_assets.series.clock import partition_key
from cb_assets.stack.procs import free_port
from cb_assets.stream.topics import ensure_topic
from cb_assets_tests.forecast_support import FramePlayer, run_forecaster, run_sink, running, ticks_of

PRODUCTS = ("BTC-USD", "ETH-USD", "SOL-USD")
START = datetime(2024, 3, 4, tzinfo=UTC)
TRAIN_HOURS = 25  # hour 0 is a cold start; 1..24 are the training windows (a day, as price_model trains)
LIVE = START + timedelta(hours=TRAIN_HOURS)
PLANTED = LeadLag(leader="BTC-USD", follower="ETH-USD", horizon_s=20, beta=1.0)


def _champion(url: str, directory: Path, rows: list[tuple]) -> int:
    hours = [int(pd.Timestamp(START + timedelta(hours=k)).value) for k in range(TRAIN_HOURS)]
    sets = window_sets(series_for(ticks_of(rows, PRODUCTS), PRODUCTS, hours), PRODUCTS, hours[1:])
    outcome = train_initial(sets[:-1], sets[-1], TrainSettings(train_network=False))
    with connect(url) as conn, conn.transaction():
        version = registry.register(
            conn,
            kind="initial",
            parent_id=None,
            partitions=[partition_key(START + timedelta(hours=k)) for k in range(1, TRAIN_HOURS)],
            target_hour=None,
            metrics={},
            artifact_path="",
            status="promoted",
            decision_reason="test: linear part only",
        )
        path = save_model(outcome.model, directory / f"v{version}.keras")
        registry.set_artifact_path(conn, version, str(path))
        registry.set_alias(conn, version, "test")
    return version


def _live_scores(make_database, kafka_bootstrap: str, tmp_path: Path, lead_lag: LeadLag | None) -> dict:
    url = make_database()
    sim = simulate_ticks(
        PRODUCTS, int(START.timestamp()) * 10**9, (TRAIN_HOURS + 2) * 3600, seed=8, lead_lag=lead_lag
    )
    rows = rows_from_simulation(sim)
    version = _champion(url, tmp_path, [r for r in rows if r[1] < LIVE])
    write_rows(url, [r for r in rows if LIVE - timedelta(hours=3) <= r[1] < LIVE])
    topic = f"e2e-{'planted' if lead_lag else 'free'}-{time.time_ns()}"
    ensure_topic(kafka_bootstrap, topic, partitions=3)
    settings = load_settings(
        {
            "CB_DATABASE_URL": url,
            "CB_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "CB_TOPIC": topic,
            "CB_PRODUCTS": ",".join(PRODUCTS),
            "CB_HOME": str(tmp_path / "home"),
            "CB_FORECAST_PORT": str(free_port()),
            # At 500x a partition a few ms behind is seconds of data behind: a second waits up to 0.5 s
            # for its ticks from every partition (a loaded CI machine saw lags past the default 50 ms).
            "CB_FORECAST_LINGER_MS": "500",
        }
    )
    player = FramePlayer(sim, LIVE, kafka_bootstrap, topic)
    end = LIVE + timedelta(hours=1)
    with running(run_sink, settings), running(run_forecaster, settings, serve_http=False):
        player.play(720 + 60, per_second=100)  # the hour and 5 minutes more, for the outcomes
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            with connect(url) as conn:
                made, open_ = conn.execute(
                    "SELECT count(*), count(*) FILTER (WHERE scored_at IS NULL) FROM forecasts "
                    "WHERE anchor >= %s AND anchor < %s",
                    (LIVE, end),
                ).fetchone()
            if made > 600 * len(PRODUCTS) * 4 and open_ == 0:
                break
            time.sleep(1)
    with connect(url) as conn:
        status = conn.execute("SELECT counters FROM forecaster_status").fetchone()
        skips = conn.execute("SELECT reason, sum(n) FROM forecast_skips GROUP BY 1").fetchall()
    print(f"\nforecaster counters ({'planted' if lead_lag else 'signal-free'}): {status[0]}")
    assert made > 600 * len(PRODUCTS) * 4, f"only {made} forecasts in the live hour: {status}, skips {skips}"
    res = resources_for(url, tmp_path, PRODUCTS)
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        assert dg.materialize(
            [forecast_scores], partition_key=partition_key(LIVE), resources=res, instance=instance
        ).success
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT product_id, horizon_s, n, skill FROM forecast_scores WHERE hour = %s AND version_id = %s",
            (LIVE, version),
        ).fetchall()
    return {(p, h): (n, skill) for p, h, n, skill in rows}


@pytest.mark.slow(expected_s=95)
def test_live_skill_on_the_planted_follower_and_none_without_the_relation(
    make_database, kafka_bootstrap: str, tmp_path: Path
) -> None:
    planted = _live_scores(make_database, kafka_bootstrap, tmp_path / "planted", PLANTED)
    free = _live_scores(make_database, kafka_bootstrap, tmp_path / "free", None)
    table = "\n".join(
        f"  {p:<8} {h:>4} s  planted {planted[(p, h)][1]:+.3f} (n {planted[(p, h)][0]})  "
        f"signal-free {free[(p, h)][1]:+.3f} (n {free[(p, h)][0]})"
        for p in PRODUCTS
        for h in (10, 20, 100, 200)
    )
    print(f"\nlive skill against persistence in the replayed hour:\n{table}")
    for h in (10, 20):
        assert planted[("ETH-USD", h)][1] > 0.1, table
        assert abs(free[("ETH-USD", h)][1]) < 0.02, table
