"""Failure drills with the real processes: the broker gone for 30 s, PostgreSQL restarted under the sink, and a
burst of 10,000 malformed frames. Each prints its figures (they go into the operator notes)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from cb_assets.db.connection import connect, ensure_database, wait_for_postgres
from cb_assets.db.migrate import migrate
from cb_assets.feed.protocol import build_envelope
from cb_assets.feed.simulate import simulate_ticks
from cb_assets.feed.timestamps import format_rfc3339_ns
from cb_assets.stack.broker import BundledBroker
from cb_assets.stack.postgres import EmbeddedPostgres
from cb_assets.stack.procs import free_port

PRODUCTS = ("BTC-USD", "ETH-USD", "SOL-USD")
CLI = [sys.executable, "-m", "cb_assets.cli"]


def _env(**values: str) -> dict[str, str]:
    return dict(os.environ, CB_PRODUCTS=",".join(PRODUCTS), PYTHONUNBUFFERED="1", **values)


def _count(url: str, table: str = "raw_ticks") -> int:
    with connect(url) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _stop(proc: subprocess.Popen, log: Path, timeout: float = 60) -> str:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=timeout)
    return log.read_text()


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    out = log.open("wb")
    return subprocess.Popen([*CLI, *args], env=env, stdout=out, stderr=subprocess.STDOUT)


def _producer_counters(log: str) -> dict[str, int]:
    m = re.search(r"producer closed: ProducerCounters\((.*?)\)", log)
    assert m, log[-2000:]
    return {k: int(float(v)) for k, v in re.findall(r"(\w+)=([\d.]+)", m.group(1))}


@pytest.mark.slow(expected_s=50)
def test_broker_down_for_30_s_then_back(tmp_path: Path, make_database) -> None:
    db = make_database()
    broker = BundledBroker(free_port(), tmp_path / "broker.pid", tmp_path / "broker.log")
    broker.start()
    env = _env(CB_DATABASE_URL=db, CB_KAFKA_BOOTSTRAP=broker.bootstrap, CB_TOPIC="drill-broker")
    # The simulated market in real time: a ticker_batch frame every 5 s.
    feed = _start(
        ["feed", "--source", "simulated", "--speed", "1", "--stats-interval", "5"], env, tmp_path / "feed.log"
    )
    sink = _start(["sink", "--stats-interval", "5", "--batch-size", "1000"], env, tmp_path / "sink.log")
    try:
        deadline = time.monotonic() + 90
        while _count(db) == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        # Stop the broker right after the sink caught up with a frame (the bundled broker keeps messages in
        # memory: whatever it still held would vanish with it, which is the documented limit of that broker).
        last, since = _count(db), time.monotonic()
        while time.monotonic() - since < 1.5:
            time.sleep(0.1)
            now = _count(db)
            if now != last:
                last, since = now, time.monotonic()
        before = last
        os.kill(broker.status().pid, signal.SIGKILL)  # a crash, not a polite shutdown
        time.sleep(30)
        assert feed.poll() is None and sink.poll() is None, "neither process may die while the broker is away"
        during = _count(db)
        broker.start()
        # The feed's buffered frames go out and the sink resubscribes: rows arrive again.
        deadline = time.monotonic() + 90
        while _count(db) == during and time.monotonic() < deadline:
            time.sleep(0.5)
        feed_log = _stop(feed, tmp_path / "feed.log")
        produced = _producer_counters(feed_log)
        deadline = time.monotonic() + 60
        while _count(db) < produced["delivered"] and time.monotonic() < deadline:
            time.sleep(0.5)
        after = _count(db)
        sink_log = _stop(sink, tmp_path / "sink.log")
    finally:
        for proc in (feed, sink):
            if proc.poll() is None:
                proc.kill()
        broker.stop()
    print(
        f"\nbroker drill: rows before stop {before}, during 30 s outage {during}, after {after}; feed produced "
        f"{produced['produced']}, delivered {produced['delivered']}, failed {produced['failed']}, "
        f"max buffered {produced.get('max_queued')}, blocked {produced.get('blocked_s', 0)} s"
    )
    assert feed.returncode == 0 and sink.returncode == 0, (feed_log[-1500:], sink_log[-1500:])
    assert during == before  # nothing reached PostgreSQL without the broker ...
    assert produced["failed"] == 0 and produced["delivered"] == produced["produced"]
    assert after == produced["delivered"]  # ... and everything the feed produced arrived once it was back
    with connect(db) as conn:
        assert conn.execute("SELECT count(*) = count(DISTINCT (product_id, time)) FROM raw_ticks").fetchone()[
            0
        ]


@pytest.mark.slow(expected_s=20)
def test_postgres_restarted_under_the_sink(tmp_path: Path, kafka_bootstrap: str, topic_name: str) -> None:
    server = EmbeddedPostgres(tmp_path / "pg", free_port(), tmp_path / "pg.log")
    server.start()
    url = server.url_base + "/drill"
    try:
        wait_for_postgres(server.url_base + "/postgres")
        ensure_database(url)
        migrate(url)
        sim = simulate_ticks(PRODUCTS, 1_709_251_200 * 10**9, 4 * 3600, seed=9)
        recording = tmp_path / "sim.jsonl"
        recording.write_text("\n".join(sim.frame_texts()) + "\n")
        expected = int(sim.emitted.sum())
        env = _env(CB_DATABASE_URL=url, CB_KAFKA_BOOTSTRAP=kafka_bootstrap, CB_TOPIC=topic_name)
        sink = _start(["sink", "--stats-interval", "2", "--batch-size", "200"], env, tmp_path / "sink.log")
        feed = subprocess.run(
            [*CLI, "feed", "--source", "replay", "--file", str(recording), "--speed", "0"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert feed.returncode == 0, feed.stderr[-2000:]
        deadline = time.monotonic() + 120
        while _count(url) < expected // 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        at_stop = _count(url)
        server.stop()
        time.sleep(5)
        assert sink.poll() is None, "the sink must survive PostgreSQL going away"
        server.start()
        while _count(url) < expected and time.monotonic() < deadline + 60:
            time.sleep(0.5)
        time.sleep(2)
        final = _count(url)
        sink_log = _stop(sink, tmp_path / "sink.log")
        with connect(url) as conn:
            distinct = conn.execute("SELECT count(DISTINCT (product_id, time)) FROM raw_ticks").fetchone()[0]
    finally:
        server.stop()
    retries = re.findall(r"db retries (\d+)", sink_log)
    print(
        f"\npostgres drill: {expected} ticks, {at_stop} in before the restart, {final} after; sink db retries "
        f"{retries[-1] if retries else '?'}"
    )
    assert 0 < at_stop < expected, "the restart should land mid-stream"
    assert final == distinct == expected
    assert "PostgreSQL unavailable" in sink_log and sink.returncode == 0


def _malformed(i: int, base_ns: int) -> str:
    """Ten kinds of bad frames, cycling: unparseable text, broken envelopes, and tickers the sink refuses."""
    ts = format_rfc3339_ns(base_ns + i * 1000)
    good = {
        "type": "ticker",
        "product_id": "BTC-USD",
        "price": "100",
        "volume_24_h": "1",
        "low_24_h": "90",
        "high_24_h": "110",
        "low_52_w": "50",
        "high_52_w": "200",
        "price_percent_chg_24_h": "0",
    }
    kind = i % 10
    if kind == 0:
        return "{not json at all"
    if kind == 1:
        return "[1, 2, 3]"
    if kind == 2:
        return orjson.dumps(
            {"channel": "ticker_batch", "timestamp": ts, "events": []}
        ).decode()  # no sequence_num
    if kind == 3:
        return build_envelope("ticker_batch", "yesterday", i, [{"type": "update", "tickers": [good]}])
    if kind == 4:
        return build_envelope(
            "ticker_batch", ts, i, [{"type": "update", "tickers": [dict(good, price="abc")]}]
        )
    if kind == 5:
        return build_envelope(
            "ticker_batch", ts, i, [{"type": "update", "tickers": [dict(good, price="-5")]}]
        )
    if kind == 6:
        return build_envelope(
            "ticker_batch", ts, i, [{"type": "update", "tickers": [dict(good, low_24_h="120")]}]
        )
    if kind == 7:
        return build_envelope(
            "ticker_batch", ts, i, [{"type": "update", "tickers": [dict(good, product_id="NOPE-USD")]}]
        )
    if kind == 8:
        return build_envelope("ticker_batch", ts, i, [{"type": "update", "tickers": [dict(good, price="0")]}])
    return build_envelope(
        "ticker_batch",
        ts,
        i,
        [{"type": "update", "tickers": [{k: v for k, v in good.items() if k != "volume_24_h"}]}],
    )


@pytest.mark.slow(expected_s=20)
def test_burst_of_10000_malformed_frames(
    tmp_path: Path, kafka_bootstrap: str, topic_name: str, make_database
) -> None:
    db = make_database()
    sim = simulate_ticks(PRODUCTS, 1_709_251_200 * 10**9, 1800, seed=4)
    good_frames = list(sim.frame_texts())
    expected_good = int(sim.emitted.sum())
    base = int(sim.frame_times_ns[len(good_frames) // 2])
    burst = [_malformed(i, base) for i in range(10_000)]
    half = len(good_frames) // 2
    recording = tmp_path / "burst.jsonl"
    recording.write_text("\n".join([*good_frames[:half], *burst, *good_frames[half:]]) + "\n")
    env = _env(CB_DATABASE_URL=db, CB_KAFKA_BOOTSTRAP=kafka_bootstrap, CB_TOPIC=topic_name)
    sink = _start(["sink", "--stats-interval", "2"], env, tmp_path / "sink.log")
    try:
        feed = subprocess.run(
            [*CLI, "feed", "--source", "replay", "--file", str(recording), "--speed", "0"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert feed.returncode == 0, feed.stderr[-2000:]
        deadline = time.monotonic() + 120
        while (
            _count(db) < expected_good or _count(db, "raw_ticks_rejected") < 10_000
        ) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)
    finally:
        sink_log = _stop(sink, tmp_path / "sink.log")
    with connect(db) as conn:
        reasons = conn.execute(
            "SELECT split_part(reason, ':', 1), count(*) FROM raw_ticks_rejected GROUP BY 1 ORDER BY 2 DESC"
        ).fetchall()
        rejected, empty_reasons = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE reason = '' OR payload = '') FROM raw_ticks_rejected"
        ).fetchone()
        bad_in_raw = conn.execute(
            "SELECT count(*) FROM raw_ticks WHERE price <= 0 OR low_24_h > high_24_h OR product_id = 'NOPE-USD'"
        ).fetchone()[0]
    print(
        f"\nmalformed burst: {rejected} rejected rows, {_count(db)} good ticks of {expected_good}; reasons {reasons}"
    )
    assert sink.returncode == 0, sink_log[-2000:]
    assert rejected == 10_000 and empty_reasons == 0
    assert bad_in_raw == 0
    assert _count(db) == expected_good  # nothing else was lost
