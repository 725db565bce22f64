"""Tick messages -> Kafka, with delivery accounted for and memory bounded when the broker is away.

Policy when the broker is down or slow (the only choices are block, drop or grow, and growing is how the
original ran out of memory while dropping silently loses data):
- librdkafka holds at most `max_buffer_messages` messages / `max_buffer_kbytes` KiB. When that buffer is
  full, `produce` BLOCKS (serving delivery reports while it waits) until there is room. The feed then
  stops reading its socket; the live websocket lags, Coinbase may close it, and the client reconnects
  (visible in the feed's `reconnects` counter and in `buffer_full`/`blocked_s` here).
- A message that cannot be delivered within `message_timeout_ms` fails; every failure is counted in
  `failed`, logged (summarised per reason so an outage does not write a line per tick) and handed to
  `on_failure` if given. So `produced == delivered + failed` once `close()` has returned.
- A broker that comes back WITHOUT our state (a bundled broker restarted with memory storage, a recreated
  topic with another partition count) refuses the buffered messages as from an unknown producer or for an
  unknown partition, or never acknowledges them. Those messages are re-sent through a fresh producer (a new
  producer id): a re-send may duplicate a tick the broker did keep, which the sink's upsert absorbs.
- `close()` flushes; whatever is still undelivered when its timeout ends is purged, which reports each
  purged message as failed rather than dropping it unseen.
No flush per message: `poll(0)` after each produce serves callbacks; `linger.ms` lets librdkafka batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from cb_assets.stream.dead_letter import DEAD_LETTER_KEY

log = logging.getLogger(__name__)
# librdkafka's own log lines go through `logging` instead of raw stderr.
_RDKAFKA_LOG = logging.getLogger("cb_assets.stream.librdkafka")

# Best ratio first; librdkafka builds without zstd exist, and gzip/none are always there.
COMPRESSION_PREFERENCE: tuple[str, ...] = ("zstd", "lz4", "gzip", "none")
_SUMMARY_EVERY_S = 5.0
# No acknowledgement for this long while the broker answers metadata requests: it lost our state; start over.
_STALL_S = 20.0
# Refusals that mean "the broker forgot us", not "this message is bad": send again through a fresh producer.
_RESEND_CODES = frozenset(
    {
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError.INVALID_PRODUCER_EPOCH,
    }
)
_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})


class _OncePer(logging.Filter):
    """Lets an identical log message through once per `every_s`: an outage must not write a line a second."""

    def __init__(self, every_s: float) -> None:
        super().__init__()
        self.every_s = every_s
        self._seen: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key, now = record.getMessage(), time.monotonic()
        if now - self._seen.get(key, -self.every_s) < self.every_s:
            return False
        self._seen[key] = now
        if len(self._seen) > 1000:
            self._seen.clear()
        return True


_RDKAFKA_LOG.addFilter(_OncePer(30.0))
log.addFilter(_OncePer(30.0))


class ProducerFullError(TimeoutError):
    """The local buffer stayed full for the whole `timeout_s` given to `produce`: nothing was queued."""


@dataclass
class ProducerCounters:
    produced: int = 0  # accepted into librdkafka's buffer
    delivered: int = 0  # acknowledged by the broker
    failed: int = 0  # reported as failed (timeout, broker error, purge at close)
    buffer_full: int = 0  # times produce found the buffer full and had to wait
    blocked_s: float = 0.0  # total time spent waiting for room
    # High-water mark of len(producer): librdkafka's messages plus the few requests and delivery reports it
    # has queued besides them, so it may pass max_buffer_messages by a handful (the message limit itself holds).
    max_queued: int = 0
    bytes_produced: int = 0
    client_errors: int = 0  # broker-level errors (connection refused, all brokers down...)
    compression_downgrades: int = 0
    resent: int = 0  # messages sent again through a fresh producer after the broker forgot this one
    producer_resets: int = 0
    dead_lettered: int = 0  # frames sent to the dead-letter path (produce_rejected_async)

    @property
    def in_flight(self) -> int:
        return self.produced - self.delivered - self.failed

    def as_dict(self) -> dict[str, int | float]:
        return {
            "produced": self.produced,
            "delivered": self.delivered,
            "failed": self.failed,
            "in_flight": self.in_flight,
            "buffer_full": self.buffer_full,
            "blocked_s": round(self.blocked_s, 3),
            "max_queued": self.max_queued,
            "client_errors": self.client_errors,
            "resent": self.resent,
            "producer_resets": self.producer_resets,
        }


FailureCallback = Callable[[bytes | None, bytes | None, KafkaError], None]


class TickProducer:
    """Produces contract messages to `topic`, key = product_id (so each product stays in order)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        compression: str = "zstd",
        linger_ms: int = 50,
        max_buffer_messages: int = 100_000,
        max_buffer_kbytes: int = 65_536,
        message_timeout_ms: int = 300_000,
        wait_poll_s: float = 0.05,
        on_failure: FailureCallback | None = None,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.counters = ProducerCounters()
        self.max_buffer_messages = max_buffer_messages
        self._wait_poll_s = wait_poll_s
        self._on_failure = on_failure
        self._base_config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "client.id": "cb-assets-feed",
            # Idempotence: retries after a lost ack cannot duplicate or reorder a product's ticks.
            "enable.idempotence": True,
            "linger.ms": linger_ms,
            "queue.buffering.max.messages": max_buffer_messages,
            "queue.buffering.max.kbytes": max_buffer_kbytes,
            "message.timeout.ms": message_timeout_ms,
            "logger": _RDKAFKA_LOG,
            "error_cb": self._on_client_error,
            **dict(extra_config or {}),
        }
        start = COMPRESSION_PREFERENCE.index(compression) if compression in COMPRESSION_PREFERENCE else -1
        self._codecs: list[str] = (
            list(COMPRESSION_PREFERENCE[start:]) if start >= 0 else [compression, *COMPRESSION_PREFERENCE]
        )
        self._producer = self._build()
        self._resend: list[tuple[bytes | None, bytes | None]] = []
        self._downgrade = False  # the pending re-send is for a refused codec
        self._resetting = False  # purges now are ours: their messages go to _resend
        self._last_progress = time.monotonic()
        self._fail_summary: dict[str, int] = {}
        self._last_summary = time.monotonic()
        self._closed = False

    # ------------------------------------------------------------------------------------ setup

    @property
    def compression(self) -> str:
        return self._codecs[0]

    def _build(self) -> Producer:
        # Fall back along the codec list when this librdkafka build refuses a codec.
        while True:
            codec = self._codecs[0]
            try:
                return Producer({**self._base_config, "compression.type": codec})
            except KafkaException as e:
                if len(self._codecs) == 1:
                    raise
                log.warning("compression %s unavailable in this librdkafka build (%s); trying next", codec, e)
                self._codecs.pop(0)

    # -------------------------------------------------------------------------------- callbacks

    def _on_client_error(self, err: KafkaError) -> None:
        self.counters.client_errors += 1
        if err.fatal():
            log.error("fatal Kafka producer error: %s", err)
        else:
            # Broker unreachable etc.: librdkafka keeps retrying; the delivery timeout decides failures.
            log.warning("Kafka client error: %s", err)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.counters.delivered += 1
            self._last_progress = time.monotonic()
            return
        code = err.code()
        if code == KafkaError.UNSUPPORTED_COMPRESSION_TYPE and len(self._codecs) > 1:
            # The broker cannot store this codec: resend with the next one instead of losing the tick.
            self._resend.append((msg.key(), msg.value()))
            self._downgrade = True
            return
        if not self._closed and (code in _RESEND_CODES or (self._resetting and code in _PURGED)):
            self._resend.append((msg.key(), msg.value()))
            return
        self.counters.failed += 1
        reason = err.name()
        if not self._fail_summary:
            log.warning("Kafka delivery failed (key=%r): %s", msg.key(), err)
        self._fail_summary[reason] = self._fail_summary.get(reason, 0) + 1
        if self._on_failure is not None:
            self._on_failure(msg.key(), msg.value(), err)

    def _maybe_summarise(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._fail_summary and (force or now - self._last_summary >= _SUMMARY_EVERY_S):
            log.warning(
                "Kafka deliveries failed since last report: %s (total failed %d of %d produced)",
                self._fail_summary,
                self.counters.failed,
                self.counters.produced,
            )
            self._fail_summary = {}
            self._last_summary = now

    def _rebuild(self) -> None:
        """Replace the producer and send `_resend` through the new one (after a refused codec, or after the
        broker forgot this producer)."""
        old = self._producer
        if self._downgrade:
            old.flush(10)  # let the rest of the batch be refused too, rather than resend them one by one
        # Whatever the old producer still holds goes over to the new one (its delivery reports land in
        # _resend); dropping it unpurged would report those messages as failed when it is destroyed.
        self._resetting = True
        try:
            old.purge(in_queue=True, in_flight=True, blocking=True)
            old.flush(1.0)
        finally:
            self._resetting = False
        if self._downgrade:
            rejected = self._codecs.pop(0)
            self.counters.compression_downgrades += 1
            log.warning("broker rejected %s compression; switching to %s", rejected, self._codecs[0])
        else:
            self.counters.producer_resets += 1
            log.warning(
                "the broker lost this producer's state; re-sending %d messages through a new one",
                len(self._resend),
            )
        self._downgrade = False
        self._producer = self._build()
        pending, self._resend = self._resend, []
        # These were counted as produced once already; resending must not count them twice.
        self.counters.produced -= len(pending)
        self.counters.resent += len(pending)
        self._last_progress = time.monotonic()
        for key, value in pending:
            self._produce_blocking(key, value, None)

    def _check_stalled(self) -> None:
        """Nothing acknowledged for a while although the broker answers: it forgot us (see the module doc)."""
        now = time.monotonic()
        if self.counters.in_flight <= 0:
            self._last_progress = now
            return
        if now - self._last_progress < _STALL_S:
            return
        try:
            self._producer.list_topics(self.topic, timeout=1.0)
        except KafkaException:
            self._last_progress = now - _STALL_S / 2  # still away: look again a little later
            return
        self._rebuild()

    # ---------------------------------------------------------------------------------- produce

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery reports (and librdkafka logs); returns how many events were served."""
        served = self._producer.poll(timeout_s)
        if self._resend:
            self._rebuild()
        elif not self._closed:
            self._check_stalled()
        self._maybe_summarise()
        return served

    def _try_produce(self, key: bytes | None, value: bytes | None) -> bool:
        try:
            self._producer.produce(self.topic, value=value, key=key, on_delivery=self._on_delivery)
        except BufferError:
            return False
        self.counters.produced += 1
        self.counters.bytes_produced += len(value or b"")
        queued = len(self._producer)
        if queued > self.counters.max_queued:
            self.counters.max_queued = queued
        self._producer.poll(0)
        return True

    def _produce_blocking(self, key: bytes | None, value: bytes | None, timeout_s: float | None) -> None:
        if self._try_produce(key, value):
            return
        self.counters.buffer_full += 1
        t0 = time.monotonic()
        try:
            while True:
                self.poll(self._wait_poll_s)
                if self._try_produce(key, value):
                    return
                if timeout_s is not None and time.monotonic() - t0 >= timeout_s:
                    raise ProducerFullError(f"Kafka buffer full for {timeout_s:.1f}s; message not queued")
        finally:
            self.counters.blocked_s += time.monotonic() - t0

    @staticmethod
    def encode(message: Mapping[str, Any]) -> tuple[bytes, bytes]:
        return str(message["product_id"]).encode(), orjson.dumps(message)

    def produce(self, message: Mapping[str, Any], *, timeout_s: float | None = None) -> None:
        """Queue one contract message; blocks while the buffer is full (see the module docstring).

        With `timeout_s`, gives up after that long with `ProducerFullError` (the caller then owns the tick).
        """
        if self._closed:
            raise RuntimeError("producer is closed")
        key, value = self.encode(message)
        self._produce_blocking(key, value, timeout_s)

    async def produce_async(self, message: Mapping[str, Any], *, timeout_s: float | None = None) -> None:
        """As `produce`, but waits with `asyncio.sleep`, so the event loop (websocket pings) keeps running."""
        if self._closed:
            raise RuntimeError("producer is closed")
        key, value = self.encode(message)
        if self._try_produce(key, value):
            return
        self.counters.buffer_full += 1
        t0 = time.monotonic()
        try:
            while True:
                self.poll(0)
                await asyncio.sleep(self._wait_poll_s)
                if self._try_produce(key, value):
                    return
                if timeout_s is not None and time.monotonic() - t0 >= timeout_s:
                    raise ProducerFullError(f"Kafka buffer full for {timeout_s:.1f}s; message not queued")
        finally:
            self.counters.blocked_s += time.monotonic() - t0

    async def produce_rejected_async(self, payload: str | bytes, reason: str) -> None:
        """Dead-letter a frame the feed could not turn into tickers: the sink stores it in raw_ticks_rejected
        with the reason and the original text, so bad input is recorded, never silently dropped."""
        if self._closed:
            raise RuntimeError("producer is closed")
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
        value = orjson.dumps({"reason": reason, "payload": text, "rejected_by": "feed"})
        while not self._try_produce(DEAD_LETTER_KEY, value):
            self.counters.buffer_full += 1
            self.poll(0)
            await asyncio.sleep(self._wait_poll_s)
        self.counters.dead_lettered += 1

    def __len__(self) -> int:
        """Messages librdkafka still holds (queued, in flight, or with an unserved delivery report)."""
        return len(self._producer)

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait for outstanding deliveries; returns how many are still outstanding."""
        deadline = time.monotonic() + timeout_s
        remaining = self._producer.flush(timeout_s)
        while self._resend and time.monotonic() < deadline:
            self._rebuild()
            remaining = self._producer.flush(max(0.1, deadline - time.monotonic()))
        self._maybe_summarise(force=True)
        return remaining

    def close(self, timeout_s: float = 30.0) -> ProducerCounters:
        """Flush; purge what is still undelivered after `timeout_s` so each of those counts as failed."""
        if self._closed:
            return self.counters
        remaining = self.flush(timeout_s)
        self._closed = True  # from here on a purge or refusal is a failure, not a reason to re-send
        if remaining:
            log.error(
                "%d messages undelivered after %.1fs at close: purging them as failed", remaining, timeout_s
            )
            self._producer.purge(in_queue=True, in_flight=True, blocking=True)
            self._producer.flush(5.0)
            self._maybe_summarise(force=True)
        self._closed = True
        log.info("producer closed: %s", self.counters.as_dict())
        return self.counters
