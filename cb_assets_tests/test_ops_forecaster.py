"""Drills for the live forecaster with the real processes (`cb-assets feed`, `sink`, `forecast`), on a
PostgreSQL and a broker of the test's own so that both can be taken away:

1. SIGKILL the forecaster mid-stream and start it again: no ledger row is written twice or changed, and it
   forecasts again within 45 s of the restart (TensorFlow's import alone takes 15-19 s here);
2. PostgreSQL restarted under it: it does not crash, and the forecasts made while the database was away are
   written once it is back (buffered, retried);
3. the broker gone for 30 s: forecasting stops with the reason "stale", and resumes when ticks come back.
Each prints its figures (they go into the operator notes).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cb_assets.db.connection import connect, ensure_database, wait_for_postgres
from cb_assets.db.migrate import migrate
from cb_assets.feed.seed import rows_from_simulation, write_rows
from cb_assets.feed.simulate import simulate_ticks
from cb_assets.stack.broker import BundledBroker
from cb_assets.stack.postgres import EmbeddedPostgres
from cb_assets.stack.procs import free_port
from cb_assets_tests.forecast_support import register_champion

PRODUCTS = ("BTC-USD", "ETH-USD", "SOL-USD")
START = datetime(2024, 3, 1, tzinfo=UTC)
CLI = [sys.executable, "-m", "cb_assets.cli"]


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *args], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _ledger(url: str) -> dict[tuple, datetime]:
    with connect(url, timeout_s=2) as conn:
        rows = conn.execute(
            "SELECT version_id, product_id, anchor, horizon_s, made_at FROM forecasts"
        ).fetchall()
    return {r[:4]: r[4] for r in rows}


def _newest_anchor(url: str) -> datetime | None:
    try:
        with connect(url, timeout_s=2) as conn:
            return conn.execute("SELECT max(anchor) FROM forecasts").fetchone()[0]
    except Exception:
        return None


def _ledger_stats(url: str, since: datetime) -> dict:
    """The ledger writer's counters from a heartbeat written after `since` ({} while there is none)."""
    with connect(url, timeout_s=2) as conn:
        row = conn.execute(
            "SELECT counters->'ledger' FROM forecaster_status WHERE updated_at > %s", (since,)
        ).fetchone()
    return row[0] if row and row[0] else {}


def _state(url: str) -> str | None:
    with connect(url, timeout_s=2) as conn:
        row = conn.execute("SELECT counters->>'state' FROM forecaster_status").fetchone()
    return row[0] if row else None


def _wait(predicate, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen within {timeout_s:.0f} s")


@pytest.mark.slow(expected_s=160)
def test_forecaster_survives_kill_database_restart_and_broker_outage(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "pg", free_port(), tmp_path / "pg.log")
    broker = BundledBroker(free_port(), tmp_path / "broker.pid", tmp_path / "broker.log")
    pg.start()
    broker.start()
    procs: dict[str, subprocess.Popen] = {}
    try:
        wait_for_postgres(pg.url_base + "/postgres")
        url = pg.url_base + "/drill"
        ensure_database(url)
        migrate(url)
        sim = simulate_ticks(PRODUCTS, int(START.timestamp()) * 10**9, 6 * 3600, seed=11)
        history = [r for r in rows_from_simulation(sim) if r[1] < START + timedelta(hours=3)]
        write_rows(url, history)
        register_champion(url, tmp_path, PRODUCTS, history, START + timedelta(hours=2))
        live_from = int((START + timedelta(hours=3)).timestamp()) * 10**9
        recording = tmp_path / "live.jsonl"
        texts = [t for t, ns in zip(sim.frame_texts(), sim.frame_times_ns, strict=True) if ns >= live_from]
        recording.write_text("\n".join(texts) + "\n")
        env = dict(
            os.environ,
            CB_DATABASE_URL=url,
            CB_KAFKA_BOOTSTRAP=broker.bootstrap,
            CB_TOPIC="drill-forecast",
            CB_PRODUCTS=",".join(PRODUCTS),
            CB_HOME=str(tmp_path / "home"),
            CB_FORECAST_PORT=str(free_port()),
            PYTHONUNBUFFERED="1",
        )
        procs["sink"] = _start(["sink", "--stats-interval", "5"], env, tmp_path / "sink.log")
        procs["forecast"] = _start(["forecast"], env, tmp_path / "forecast.log")
        # Three data hours at 20x: about 9 minutes of frames, more than the drills need.
        procs["feed"] = _start(
            ["feed", "--source", "replay", "--file", str(recording), "--speed", "20"],
            env,
            tmp_path / "feed.log",
        )
        first_s = _wait(lambda: _newest_anchor(url) is not None, 120, "a first forecast")

        # 1. SIGKILL and restart.
        time.sleep(5)
        procs["forecast"].send_signal(signal.SIGKILL)
        procs["forecast"].wait(10)
        before = _ledger(url)
        killed_at = max(k[2] for k in before)
        procs["forecast"] = _start(["forecast"], env, tmp_path / "forecast.log")
        restart_s = _wait(
            lambda: (_newest_anchor(url) or killed_at) > killed_at, 45, "forecasting after the kill"
        )
        after = _ledger(url)
        assert all(after[k] == made for k, made in before.items()), "a ledger row was rewritten"

        # 2. PostgreSQL restarted under it: forecasts made meanwhile are written when it is back.
        time.sleep(3)
        anchor_at_stop = _newest_anchor(url)
        pg.stop()
        time.sleep(8)
        assert procs["forecast"].poll() is None, "the forecaster must survive PostgreSQL going away"
        pg.start()
        wait_for_postgres(url)
        back_at = datetime.now(UTC)
        _wait(lambda: _newest_anchor(url) is not None, 30, "PostgreSQL back")
        # The writer catches up with what it held (its heartbeat, every 5 s, says when nothing is pending).
        _wait(lambda: _ledger_stats(url, back_at).get("pending") == 0, 60, "the held forecasts being written")
        with connect(url) as conn:
            total, distinct = conn.execute(
                "SELECT count(*), count(DISTINCT (version_id, product_id, anchor, horizon_s)) FROM forecasts"
            ).fetchone()
            ledger = _ledger_stats(url, back_at)
            during = conn.execute(
                "SELECT count(DISTINCT anchor) FROM forecasts WHERE anchor > %s AND anchor <= %s",
                (anchor_at_stop, anchor_at_stop + timedelta(seconds=100)),
            ).fetchone()[0]
        # The writer kept what it could not write (retries) and has written all of it since.
        assert ledger["retries"] >= 1 and ledger["pending"] == 0, ledger
        assert during >= 15 and total == distinct

        # 3. The broker gone for 30 s: stale, then forecasting again.
        before_outage = _newest_anchor(url)
        os.kill(broker.status().pid, signal.SIGKILL)
        stale_s = _wait(lambda: _state(url) == "stale", 60, "the forecaster reporting stale")
        time.sleep(max(0.0, 30 - stale_s))
        assert procs["forecast"].poll() is None and procs["sink"].poll() is None
        broker.start()
        back_s = _wait(
            lambda: (_newest_anchor(url) or before_outage) > before_outage, 90, "forecasts after the outage"
        )
        _wait(lambda: _state(url) == "forecasting", 30, "the state going back to forecasting")
        with connect(url) as conn:
            stale_skips = conn.execute(
                "SELECT coalesce(sum(n), 0) FROM forecast_skips WHERE reason = 'stale'"
            ).fetchone()[0]
        assert stale_skips > 0
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        broker.stop()
        pg.stop()
    print(
        f"\nforecaster drill: first forecast {first_s:.0f} s after start; SIGKILL -> forecasting again in "
        f"{restart_s:.0f} s; PostgreSQL away 8 s: {ledger['retries']} ledger retries, max {ledger['max_pending']} "
        f"rows held, {during} anchors in the 100 data s after the stop, no duplicates ({total} rows); broker away 30 s: stale after {stale_s:.0f} s, "
        f"forecasting {back_s:.0f} s after it returned ({stale_skips} stale skips counted)"
    )
