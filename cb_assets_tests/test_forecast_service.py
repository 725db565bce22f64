"""The live forecaster against a real broker and PostgreSQL, beside the real sink: forecasts are made at data
seconds, kept once, scored from raw_ticks, served over HTTP and SSE, survive a restart, follow a champion swap
within seconds without a gap, and shrug off malformed messages."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cb_assets.cli import main
from cb_assets.config import load_settings
from cb_assets.db.connection import connect
from cb_assets.feed.seed import simulate_rows, write_rows
from cb_assets.feed.simulate import simulate_ticks
from cb_assets.stack.procs import free_port
from cb_assets.stream.topics import ensure_topic
from cb_assets_tests.forecast_support import FramePlayer, register_champion, run_forecaster, run_sink, running
from cb_assets_tests.ticks_support import wait_until

PRODUCTS = ("BTC-USD", "ETH-USD", "SOL-USD")
START = datetime(2024, 3, 1, tzinfo=UTC)
LIVE_HOUR = START + timedelta(hours=3)


def _ledger(url: str) -> list[tuple]:
    with connect(url) as conn:
        return conn.execute(
            "SELECT version_id, product_id, anchor, horizon_s, made_at, outcome_reason, outcome_return, last_price "
            "FROM forecasts ORDER BY anchor, version_id, product_id, horizon_s"
        ).fetchall()


def _loaded(caplog: pytest.LogCaptureFixture, version_id: int) -> bool:
    return any(r.getMessage().startswith(f"champion is now v{version_id} ") for r in caplog.records)


def _wait(what, timeout_s: float, message: str):
    return wait_until(what, timeout_s, message, every_s=0.25)


def _ns(rfc3339: str) -> int:
    from cb_assets.feed.timestamps import parse_rfc3339_ns

    return parse_rfc3339_ns(rfc3339)


def _sse_first_event(port: int, timeout_s: float) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/forecasts/stream", timeout=timeout_s) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        for raw in resp:
            line = raw.decode().strip()
            if line.startswith("data: "):
                return json.loads(line[6:])
    raise AssertionError("the stream ended without an event")


@pytest.mark.slow(expected_s=20)
def test_forecasts_are_made_kept_scored_served_and_survive_restart_and_swap(
    make_database,
    kafka_bootstrap: str,
    topic_name: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG, logger="cb_assets.forecast.service")
    url = make_database()
    _, rows = simulate_rows(PRODUCTS, START, 3, seed=3)
    write_rows(url, rows)  # three stored hours: the live hour's features are warm from its first second
    v1 = register_champion(url, tmp_path, PRODUCTS, rows, START + timedelta(hours=2), seed=1)
    port = free_port()
    settings = load_settings(
        {
            "CB_DATABASE_URL": url,
            "CB_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "CB_TOPIC": topic_name,
            "CB_PRODUCTS": ",".join(PRODUCTS),
            "CB_HOME": str(tmp_path / "home"),
            "CB_FORECAST_PORT": str(port),
        }
    )
    ensure_topic(kafka_bootstrap, topic_name, partitions=3)
    sim = simulate_ticks(PRODUCTS, int(START.timestamp()) * 10**9, 4 * 3600, seed=3)
    player = FramePlayer(sim, LIVE_HOUR, kafka_bootstrap, topic_name)

    with running(run_sink, settings), running(run_forecaster, settings):
        # The champion loads beside the forecaster (2-3 s alone); the frames wait for it, or a slow load on
        # a busy machine would leave the first anchors without a forecast. A load that hangs logs its stack.
        _wait(lambda: _loaded(caplog, v1), 180, f"champion v{v1} was not loaded")
        player.play(60)  # five data minutes
        _wait(lambda: [r for r in _ledger(url) if r[2] >= LIVE_HOUR + timedelta(seconds=250)], 60,
                       "no forecasts were written")  # fmt: skip
        first = _ledger(url)
        assert {r[0] for r in first} == {v1}
        anchors = sorted({r[2] for r in first})
        # Anchors are data seconds, from the newest stored frame's second on.
        assert anchors[0] >= LIVE_HOUR - timedelta(seconds=5) and all(a.microsecond == 0 for a in anchors)
        per_anchor = {a: [r for r in first if r[2] == a] for a in anchors}
        assert all(len(v) == len(PRODUCTS) * 4 for v in per_anchor.values())

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/forecasts/latest", timeout=10) as resp:
            latest = json.loads(resp.read())
        assert latest["version_id"] == v1 and {f["product"] for f in latest["forecasts"]} == set(PRODUCTS)
        assert set(latest["forecasts"][0]["horizons"]) == {"10", "20", "100", "200"} and latest["age_s"] >= 0
        events: list[dict] = []
        reader = threading.Thread(target=lambda: events.append(_sse_first_event(port, 30)), daemon=True)
        reader.start()
        player.junk()  # malformed messages on the topic are skipped, counted, and nothing stops
        player.play(12)
        reader.join(30)
        assert events and events[0]["version_id"] == v1

        # Outcomes: once the data has passed anchor + horizon, each row gets the last price at that time.
        scored = _wait(
            lambda: [r for r in _ledger(url) if r[5] == "observed" and r[3] == 200], 60, "nothing was scored"
        )
        with connect(url) as conn:
            r = scored[0]
            price = conn.execute(
                "SELECT price FROM raw_ticks WHERE product_id = %s AND time <= %s ORDER BY time DESC LIMIT 1",
                (r[1], r[2] + timedelta(seconds=200)),
            ).fetchone()[0]
        assert abs(r[6] - math.log(price / r[7])) < 1e-12

        # A new champion reaches the forecaster within 10 s, and no anchor goes without a forecast.
        v2 = register_champion(url, tmp_path, PRODUCTS, rows, START + timedelta(hours=2), seed=2)
        swapped = time.monotonic()
        while time.monotonic() - swapped < 10 and not any(r[0] == v2 for r in _ledger(url)):
            player.play(2)
        assert any(r[0] == v2 for r in _ledger(url)), "the new champion was not used within 10 s"
        player.play(6)
    with connect(url) as conn:
        counters = conn.execute("SELECT counters FROM forecaster_status").fetchone()[0]
    assert counters["malformed"] >= 1 and counters["anchors"] > 0
    before_restart = {(r[0], r[1], r[2], r[3]): r[4] for r in _ledger(url)}
    stopped_after = max(k[2] for k in before_restart)

    # A restart: state from PostgreSQL, the topic re-read from shortly before; rows already written stay as
    # they were (first write wins) and forecasting goes on.
    with running(run_sink, settings), running(run_forecaster, settings):
        resumed = time.monotonic()
        _wait(lambda: (player.play(2), [r for r in _ledger(url) if r[2] > stopped_after])[1], 45,
              "no forecast within 45 s of the restart")  # fmt: skip
        restart_s = time.monotonic() - resumed
        player.play(12)
        time.sleep(1)
    after = {(r[0], r[1], r[2], r[3]): r[4] for r in _ledger(url)}
    resumed_at = min(k[2] for k in after if k[2] > stopped_after)
    assert all(after[k] == made for k, made in before_restart.items())
    anchors = {k[2] for k in after}
    played = {
        datetime.fromtimestamp(-(-_ns(msgs[0]["time"]) // 10**9), UTC)
        for msgs in player.frames[: player.next]
    }
    # Every frame has its forecasts, or a guard said why not: the champion swap lost none, and only frames
    # the sink stored while the forecaster was down are not forecast after the fact.
    guarded = {
        datetime.fromisoformat(r.getMessage().split()[3].rstrip(":"))
        for r in caplog.records
        if r.getMessage().startswith("no forecast at ")
    }
    missing = sorted(t for t in played - anchors - guarded if not stopped_after < t < resumed_at)
    assert not missing, f"frames without a forecast or a reason: {missing[:5]} of {len(played)}"
    # `cb-assets predict` shows the newest ledger forecasts and their age.
    monkeypatch.setenv("CB_DATABASE_URL", url)
    capsys.readouterr()
    assert main(["predict"]) == 0
    out = capsys.readouterr().out
    newest = max(k[2] for k in after)
    assert (
        f"anchor {newest:%Y-%m-%d %H:%M:%S} UTC" in out and "s ago" in out and all(p in out for p in PRODUCTS)
    )
    print(f"\nforecaster: {len(after)} ledger rows, forecasting again {restart_s:.1f} s after the restart")


def test_a_backlog_delivered_partition_by_partition_loses_no_tick(
    make_database, kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    """Catching up on a backlog, the client hands over one partition's messages as a block, minutes of data
    ahead of the others. Seconds must not close on the leading partition's clock, or every other product's
    ticks arrive late and are dropped (a CI run saw ETH-USD go silent and every forecast refused)."""
    import orjson
    from confluent_kafka import Producer

    from cb_assets.forecast.service import Forecaster

    ensure_topic(kafka_bootstrap, topic_name, partitions=3)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
    sent = 0
    for m in simulate_ticks(PRODUCTS, int(START.timestamp()) * 10**9, 4 * 3600, seed=5).messages():
        producer.produce(topic_name, key=m["product_id"].encode(), value=orjson.dumps(m))
        sent += 1
    assert producer.flush(30) == 0
    settings = load_settings(
        {"CB_DATABASE_URL": make_database(), "CB_KAFKA_BOOTSTRAP": kafka_bootstrap, "CB_TOPIC": topic_name,
         "CB_PRODUCTS": ",".join(PRODUCTS), "CB_HOME": str(tmp_path / "home")}
    )  # fmt: skip
    forecaster = Forecaster(settings, serve_http=False, group_id=f"{topic_name}-forecaster")
    with running(lambda stop: forecaster.run(stop)):
        wait_until(
            lambda: forecaster.engine is not None and forecaster.engine.counters.ticks >= sent,
            60,
            f"the forecaster did not read the {sent} ticks of the backlog",
        )
    counters = forecaster.engine.counters
    assert counters.ticks == sent and counters.late_ticks == 0
    assert (
        forecaster.engine.next_second >= int(START.timestamp()) + 4 * 3600 - 10
    )  # and the seconds did close


def test_a_partition_running_behind_in_a_fast_replay_loses_no_tick(
    make_database, kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    """A replay at 500x (a 5 s frame every 10 ms) in which one product's partition runs four frames behind
    the others: a newer second shows on the leading partitions before its ticks of the older ones are in.
    Closing a second on the first newer one would drop all of that product's ticks as late (a CI run of the
    end-to-end replay lost 664 ticks so and refused half its forecasts as out of range). Every second waits
    the linger (1 s here, 25 times the lag, so that a stall of this process under CI load is not a lag)."""
    import orjson
    from confluent_kafka import Producer

    from cb_assets.forecast.service import Forecaster

    ensure_topic(kafka_bootstrap, topic_name, partitions=3)
    settings = load_settings(
        {"CB_DATABASE_URL": make_database(), "CB_KAFKA_BOOTSTRAP": kafka_bootstrap, "CB_TOPIC": topic_name,
         "CB_PRODUCTS": ",".join(PRODUCTS), "CB_HOME": str(tmp_path / "home"), "CB_FORECAST_LINGER_MS": "1000"}
    )  # fmt: skip
    frames: dict[str, list[dict]] = {}
    for m in simulate_ticks(PRODUCTS, int(START.timestamp()) * 10**9, 3600, seed=6).messages():
        frames.setdefault(m["time"], []).append(m)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 1})
    behind: list[list[dict]] = []
    forecaster = Forecaster(settings, serve_http=False, group_id=f"{topic_name}-forecaster")
    with running(lambda stop: forecaster.run(stop)):
        _wait(lambda: forecaster.progress.start, 30, "the forecaster was not assigned its partitions")
        for _, msgs in sorted(frames.items()):
            behind.append([m for m in msgs if m["product_id"] == "ETH-USD"])
            for m in [m for m in msgs if m["product_id"] != "ETH-USD"] + (
                behind.pop(0) if len(behind) > 4 else []
            ):
                partition = PRODUCTS.index(m["product_id"])
                producer.produce(topic_name, partition=partition, value=orjson.dumps(m))
            producer.poll(0)
            time.sleep(0.01)
        for m in [m for msgs in behind for m in msgs]:
            producer.produce(topic_name, partition=1, value=orjson.dumps(m))
        assert producer.flush(30) == 0
        sent = sum(len(msgs) for msgs in frames.values())
        _wait(
            lambda: forecaster.engine is not None and forecaster.engine.counters.ticks >= sent,
            60,
            "ticks missing",
        )
    counters = forecaster.engine.counters
    print(f"\nfast replay, one partition 4 frames behind: {sent} ticks, {counters.late_ticks} late")
    assert counters.ticks == sent and counters.late_ticks == 0
