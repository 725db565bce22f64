"""The sink against a real broker and a real PostgreSQL: validation, idempotency, crashes, outages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from cb_assets.db.connection import connect
from cb_assets.stream.sink import Sink, SinkConfig
from cb_assets.stream.ticks import Rejection, parse_tick
from cb_assets_tests.ticks_support import ticker_message

PRODUCTS = ("BTC-USD", "ETH-USD", "SOL-USD")
BASE = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def tick(product: str, i: int, **overrides: object) -> dict:
    return ticker_message(product, BASE + timedelta(seconds=5 * i), i, **overrides)


MALFORMED: list[tuple[bytes, str]] = [
    (b"{not json", "invalid JSON"),
    (b"[1, 2]", "not an object"),
    (
        orjson.dumps({k: v for k, v in tick("BTC-USD", 10_001).items() if k != "price"}),
        "missing fields: price",
    ),
    (orjson.dumps(tick("BTC-USD", 10_002, price="abc")), "price is not a number"),
    (orjson.dumps(tick("BTC-USD", 10_003, price="-3")), "price must be > 0"),
    (orjson.dumps(tick("BTC-USD", 10_004, low_24_h="900", high_24_h="800")), "low_24_h 900 > high_24_h 800"),
    (orjson.dumps(tick("BTC-USD", 10_005, time="yesterday")), "unparseable time"),
    (orjson.dumps(tick("FOO-USD", 10_006)), "unknown product"),
    (orjson.dumps(tick("BTC-USD", 10_007, price="NaN")), "not finite"),
    (b"", "empty message"),
]


def produce(bootstrap: str, topic: str, values: list[tuple[bytes, bytes]], partitions: int = 3) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(10)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for key, value in values:
        producer.produce(topic, key=key, value=value)
        producer.poll(0)
    assert producer.flush(30) == 0


def good_messages(n_per_product: int) -> list[tuple[bytes, bytes]]:
    return [(p.encode(), orjson.dumps(tick(p, i))) for i in range(n_per_product) for p in PRODUCTS]


def count(url: str, table: str = "raw_ticks") -> int:
    with connect(url) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def cfg(bootstrap: str, topic: str, url: str, **kw: object) -> SinkConfig:
    return SinkConfig(
        bootstrap=bootstrap, topic=topic, database_url=url, products=PRODUCTS, stats_interval_s=5, **kw
    )


def run_sink_until(sink: Sink, done: Callable[[], bool], timeout_s: float = 60) -> None:
    stop = threading.Event()
    t = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    t.start()
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    t.join(30)
    assert not t.is_alive()


@pytest.fixture
def db(make_database: Callable[..., str]) -> str:
    return make_database()


def test_parse_tick_floors_nanoseconds_to_microseconds() -> None:
    row = parse_tick(orjson.dumps(tick("BTC-USD", 0)), products=PRODUCTS, partition=0, offset=0, now=BASE)
    assert not isinstance(row, Rejection)
    assert row[1] == BASE.replace(microsecond=0) and row[1].microsecond == 0
    later = parse_tick(
        orjson.dumps(tick("BTC-USD", 0, time="2024-03-01T12:00:00.123456999Z")),
        products=PRODUCTS,
        partition=0,
        offset=1,
        now=BASE,
    )
    assert later[1].microsecond == 123456  # floored, not rounded up to ...457


def test_future_ticks_are_rejected() -> None:
    res = parse_tick(
        orjson.dumps(tick("BTC-USD", 0, time="2030-01-01T00:00:00Z")),
        products=PRODUCTS,
        partition=0,
        offset=0,
        now=BASE,
    )
    assert isinstance(res, Rejection) and "in the future" in res.reason


def test_malformed_messages_are_rejected_with_reasons_and_the_rest_lands(
    kafka_bootstrap: str, topic_name: str, db: str
) -> None:
    good = good_messages(200)
    bad = [(b"BTC-USD", payload) for payload, _ in MALFORMED]
    produce(kafka_bootstrap, topic_name, good[:300] + bad + good[300:])
    sink = Sink(cfg(kafka_bootstrap, topic_name, db))
    run_sink_until(sink, lambda: sink.stats.consumed >= len(good) + len(bad))

    assert count(db) == len(good)
    with connect(db) as conn:
        rows = conn.execute("SELECT reason, payload FROM raw_ticks_rejected ORDER BY id").fetchall()
        stored = conn.execute(
            "SELECT time, price, best_bid, source FROM raw_ticks WHERE product_id = 'ETH-USD' ORDER BY time LIMIT 1"
        ).fetchone()
    assert len(rows) == len(MALFORMED)
    for (payload, expected), (reason, stored_payload) in zip(
        sorted(MALFORMED, key=lambda m: m[0]), sorted(rows, key=lambda r: bytes(r[1])), strict=True
    ):
        assert expected in reason, (expected, reason)
        assert bytes(stored_payload) == payload  # the original bytes, untouched
    assert stored == (BASE, 100.0, None, "simulated")
    assert sink.stats.rejected == len(MALFORMED) and sink.stats.inserted == len(good)

    # Offsets were committed for everything (rejected messages included): a restart has nothing to do.
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "cb-assets-sink"})
    committed = consumer.committed([TopicPartition(topic_name, p) for p in range(3)], timeout=10)
    consumer.close()
    # Offsets count from 0 in each partition; a partition no key hashed to has no committed offset (< 0).
    assert sum(max(tp.offset, 0) for tp in committed) == len(good) + len(bad)

    # Redelivery (another group reading the same messages) changes nothing: idempotent upsert.
    again = Sink(cfg(kafka_bootstrap, topic_name, db, group_id="replayer"))
    run_sink_until(again, lambda: again.stats.consumed >= len(good) + len(bad))
    assert again.stats.inserted == 0 and again.stats.duplicates == len(good)
    assert count(db) == len(good) and count(db, "raw_ticks_rejected") == len(MALFORMED)


def test_postgres_connection_loss_is_retried_without_loss(
    kafka_bootstrap: str, topic_name: str, db: str
) -> None:
    first, second = good_messages(300)[:450], good_messages(300)[450:]
    produce(kafka_bootstrap, topic_name, first)
    sink = Sink(cfg(kafka_bootstrap, topic_name, db, batch_size=100, retry_max_s=0.5))
    stop = threading.Event()
    t = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while count(db) < len(first) and time.monotonic() < deadline:
        time.sleep(0.2)
    # Kill the sink's server connection (as a PostgreSQL restart or a network cut would), then send more.
    with connect(db, autocommit=True) as conn:
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'cb-assets sink'"
        ).fetchone()[0]
    assert killed == 1
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for key, value in second:
        producer.produce(topic_name, key=key, value=value)
    producer.flush(10)
    while count(db) < len(first) + len(second) and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    t.join(30)
    assert count(db) == len(first) + len(second)
    assert sink.stats.db_retries >= 1


def _sink_process(kafka_bootstrap: str, topic: str, db: str, batch_size: int) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        CB_DATABASE_URL=db,
        CB_KAFKA_BOOTSTRAP=kafka_bootstrap,
        CB_TOPIC=topic,
        CB_PRODUCTS=",".join(PRODUCTS),
    )
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cb_assets.cli",
            "sink",
            "--batch-size",
            str(batch_size),
            "--stats-interval",
            "2",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.slow(expected_s=25)
def test_sigkill_mid_stream_then_restart_loses_and_duplicates_nothing(
    kafka_bootstrap: str, topic_name: str, db: str
) -> None:
    n_per_product = 6000
    good = good_messages(n_per_product)
    bad = [(b"SOL-USD", payload) for payload, _ in MALFORMED]
    produce(kafka_bootstrap, topic_name, good[:9000] + bad + good[9000:])
    proc = _sink_process(kafka_bootstrap, topic_name, db, batch_size=500)
    deadline = time.monotonic() + 120
    while count(db) < 3000 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    at_kill = count(db)
    assert 0 < at_kill < len(good), "the kill should land mid-stream"

    proc = _sink_process(kafka_bootstrap, topic_name, db, batch_size=500)
    try:
        while count(db) < len(good) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)  # anything duplicated or late would show up now
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()[-2000:]
    with connect(db) as conn:
        n, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT (product_id, time)) FROM raw_ticks"
        ).fetchone()
        per_product = dict(conn.execute("SELECT product_id, count(*) FROM raw_ticks GROUP BY 1").fetchall())
        rejected = conn.execute("SELECT count(*) FROM raw_ticks_rejected").fetchone()[0]
    assert n == distinct == len(good)
    assert per_product == dict.fromkeys(PRODUCTS, n_per_product)
    assert rejected == len(MALFORMED)  # redelivered bad messages are not recorded twice either
    assert b"sink stopped" in out


def test_dead_letters_from_the_feed_are_recorded_with_their_reason(
    kafka_bootstrap: str, topic_name: str, db: str
) -> None:
    from cb_assets.stream.dead_letter import DEAD_LETTER_KEY

    frame = '{"channel": "ticker_batch", "broken'
    envelope = orjson.dumps(
        {"reason": "unparseable frame: invalid JSON", "payload": frame, "rejected_by": "feed"}
    )
    produce(kafka_bootstrap, topic_name, [(DEAD_LETTER_KEY, envelope), *good_messages(10)])
    sink = Sink(cfg(kafka_bootstrap, topic_name, db))
    run_sink_until(sink, lambda: sink.stats.consumed >= 31)
    with connect(db) as conn:
        rows = conn.execute("SELECT source, reason, payload FROM raw_ticks_rejected").fetchall()
    assert [(s, r, bytes(p)) for s, r, p in rows] == [
        ("feed", "feed: unparseable frame: invalid JSON", frame.encode())
    ]
    assert count(db) == 30
