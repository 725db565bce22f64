"""`cb-assets sink`: Kafka -> PostgreSQL without losing or duplicating a tick.

The order of operations is the whole design:
1. consume a batch (librdkafka's batch `consume()`, several times faster than `poll()` on small messages):
   up to batch_size messages or whatever arrived within linger_s, whichever comes first;
2. decode and validate the batch as columns (`sink_batch` / `tick_batch`: msgspec, numpy, the array form of
   the tick rules, `parse_tick` for the messages the batch path cannot decide); bad messages become
   `raw_ticks_rejected` rows with the reason and original bytes;
3. in ONE PostgreSQL transaction: binary COPY (a buffer numpy builds for the whole batch) into raw_ticks
   (or, when some ticks are already there, into staging and an upsert), insert the rejections;
4. only after that commit, commit the Kafka offsets (synchronously).
A crash between 3 and 4 redelivers the batch, and the upsert on (product_id, time) makes that harmless; a crash
before 3 loses nothing because offsets were not committed. PostgreSQL going away is retried with backoff
(the batch is held, nothing more is consumed beyond the one batch read ahead); SIGTERM finishes the current
batch, commits and exits.

Step 3 runs in a writer thread while the main thread consumes and validates the next batch, so PostgreSQL's
share of the work (and its WAL flush at commit) overlaps Python's instead of adding to it (bench/ingest.py
measures the result). At most one batch is being written at a time (one writer also keeps raw_ticks'
received_at, the sensor's high-water mark, in commit order) and offsets are still committed in batch order,
each only after its own transaction has committed; the next batch is handed to the writer before the
previous one's offsets go to the broker, so PostgreSQL does not wait for that round trip. All Kafka calls
stay on the main thread; a rebalance first finishes the batch in flight and commits it.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from confluent_kafka import Consumer, Message, TopicPartition

from cb_assets.db.connection import connect
from cb_assets.stream.pg_writer import NaiveTickWriter, RejectedMessage, TickWriter, WriteResult
from cb_assets.stream.sink_batch import SinkBatch, split_messages
from cb_assets.stream.tick_batch import clean_text
from cb_assets.stream.tick_columns import TickColumns
from cb_assets.stream.ticks import Rejection

log = logging.getLogger(__name__)

# Errors that mean "the server or the connection is gone": retry the same batch later.
_TRANSIENT = (psycopg.OperationalError, psycopg.InterfaceError)
# While a batch is being written, consume in slices this long so its offsets are committed (and `on_commit`
# fires) soon after PostgreSQL has it, not only when the next batch is full or linger_s has passed.
_SLICE_S = 0.02


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a batch is consumed and split.

    A batch allocates 10,000 GC-tracked `Message` objects that live until the batch is split; with the
    collector running, their allocation triggers gen-1 and full collections that walk them (and the whole
    heap) again and again: ~1 us per tick, a fifth of the sink's CPU in a py-spy profile. They hold no
    reference cycles and are freed by refcounting before the collector is back on, which also takes them
    off its allocation count.
    """
    if not gc.isenabled():  # someone else's decision; leave it alone
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass
class SinkConfig:
    bootstrap: str
    topic: str
    database_url: str
    products: Collection[str]
    group_id: str = "cb-assets-sink"
    batch_size: int = 10_000
    # A batch is flushed when batch_size messages are in or this long after the sink started waiting for it,
    # whichever comes first: a backlog is read in full batches, a trickle waits at most this long (commit
    # latency budget: p99 <= 250 ms at 2,000 ticks/s, bench/ingest.py).
    linger_s: float = 0.05
    stats_interval_s: float = 30.0
    retry_max_s: float = 10.0
    # After SIGTERM, how long to keep retrying a batch PostgreSQL refuses before giving up on it (it is then
    # redelivered on the next start, since its offsets were not committed).
    stop_retry_s: float = 10.0
    naive: bool = False  # the benchmark's baseline writer
    consumer_overrides: dict[str, object] = field(default_factory=dict)

    def consumer_config(self) -> dict[str, object]:
        conf: dict[str, object] = {
            "bootstrap.servers": self.bootstrap,
            "group.id": self.group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # Quick group joins (the bundled broker is slow to rebalance with the defaults) ...
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            # ... but a long PostgreSQL outage must not get us evicted while we hold a batch.
            "max.poll.interval.ms": 900_000,
            # Notice a topic that reappears (a broker restarted without persistent storage) within seconds.
            "topic.metadata.refresh.interval.ms": 10_000,
            # A fetch that finds nothing new is held by the broker up to this long (librdkafka's default is
            # 500 ms, and the bundled broker does not answer early when data arrives): that wait was most of
            # the commit latency at a trickle. An idle sink sends ~50 empty fetches/s per broker for it.
            "fetch.wait.max.ms": 20,
            # Prefetch until the byte cap below, not librdkafka's default 100,000 messages per partition: with
            # that, draining 10,000 at a time left the consumer waiting on fetches at ~175,000 msgs/s (no
            # PostgreSQL involved); with the byte cap governing it reads > 700,000 msgs/s from the bundled broker.
            "queued.min.messages": 1_000_000,
            # Larger fetches keep consume(10000) fed.
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 8 * 1024 * 1024,
            "queued.max.messages.kbytes": 256 * 1024,
        }
        conf.update(self.consumer_overrides)
        return conf


@dataclass
class SinkStats:
    consumed: int = 0
    inserted: int = 0
    duplicates: int = 0
    rejected: int = 0
    batches: int = 0
    db_retries: int = 0
    commit_failures: int = 0
    kafka_errors: int = 0

    def line(self) -> str:
        return (
            f"consumed {self.consumed}, inserted {self.inserted}, duplicates {self.duplicates}, "
            f"rejected {self.rejected}, batches {self.batches}, db retries {self.db_retries}, "
            f"commit failures {self.commit_failures}, kafka errors {self.kafka_errors}"
        )


@dataclass(frozen=True)
class CommittedBatch:
    """Handed to `on_commit` after offsets are committed (benchmarks measure latency with it)."""

    result: WriteResult
    committed_at: float  # time.time()
    message_timestamps_ms: list[int]


@dataclass
class _InFlight:
    """A batch handed to the writer thread whose offsets are committed once its write has returned."""

    future: Future[WriteResult | None]
    offsets: dict[tuple[str, int], int]
    stamps: list[int]


class Sink:
    def __init__(self, cfg: SinkConfig, on_commit: Callable[[CommittedBatch], None] | None = None) -> None:
        self.cfg = cfg
        self.on_commit = on_commit
        self.stats = SinkStats()
        self._products = frozenset(cfg.products)
        self._conn: psycopg.Connection | None = None
        self._writer: TickWriter | NaiveTickWriter | None = None
        self._in_flight: _InFlight | None = None

    # -- PostgreSQL ------------------------------------------------------------------------------------------
    def _ensure_writer(self) -> TickWriter | NaiveTickWriter:
        if self._writer is None or self._conn is None or self._conn.closed:
            # Autocommit: TickWriter then writes a batch without rejections as one self-committing COPY.
            self._conn = connect(self.cfg.database_url, application_name="cb-assets sink", autocommit=True)
            self._writer = NaiveTickWriter(self._conn) if self.cfg.naive else TickWriter(self._conn)
        return self._writer

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # already broken; nothing more to do
                log.debug("closing a broken connection failed", exc_info=True)
        self._conn, self._writer = None, None

    def _write(self, batch: SinkBatch, stop: threading.Event) -> WriteResult | None:
        """Write with retries; None if we are stopping and PostgreSQL still refuses."""
        delay = 0.25
        stop_deadline: float | None = None
        while True:
            try:
                return self._write_isolating(batch)
            except _TRANSIENT as exc:
                self.stats.db_retries += 1
                self._drop_connection()
                if stop.is_set():
                    stop_deadline = stop_deadline or time.monotonic() + self.cfg.stop_retry_s
                    if time.monotonic() > stop_deadline:
                        log.error(
                            "stopping with an unwritten batch (offsets not committed; it will be redelivered)"
                        )
                        return None
                log.warning(
                    "PostgreSQL unavailable (%s); retrying the batch in %.1f s", str(exc).strip(), delay
                )
                time.sleep(delay)
                delay = min(self.cfg.retry_max_s, delay * 2)

    def _write_isolating(self, batch: SinkBatch) -> WriteResult:
        """Write the batch; if PostgreSQL refuses a row's content, write row by row and reject the culprits
        (with the original message bytes)."""
        writer = self._ensure_writer()
        try:
            return writer.write(batch.for_writer(), batch.rejected)  # type: ignore[arg-type]
        except _TRANSIENT:
            raise
        except psycopg.Error as exc:
            log.warning("batch refused by PostgreSQL (%s); isolating the offending rows", exc)
        total = WriteResult(0, 0, 0)
        rejected = list(batch.rejected)
        ticks = batch.ticks
        for i in range(len(ticks)):
            one = ticks.take([i]) if isinstance(ticks, TickColumns) else [ticks[i]]
            try:
                r = writer.write(one)  # type: ignore[arg-type]
            except _TRANSIENT:
                raise
            except psycopg.Error as exc:
                row = one.rows()[0] if isinstance(one, TickColumns) else one[0]
                payload = batch.payload_of_row(i)
                reason = clean_text(f"database refused the row: {str(exc).strip()}")
                rejected.append(
                    RejectedMessage(
                        Rejection(reason, row[0], row[1]),
                        repr(row).encode() if payload is None else payload,
                        row[11],
                        self.cfg.topic,
                        row[12],
                        row[13],
                    )
                )
                continue
            total = WriteResult(total.staged + r.staged, total.inserted + r.inserted, 0)
        r = writer.write([], rejected)
        return WriteResult(total.staged, total.inserted, r.rejected)

    # -- Kafka -----------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event, max_messages: int | None = None) -> SinkStats:
        consumer = Consumer(self.cfg.consumer_config())

        def on_revoke(c: Consumer, ps: list[TopicPartition]) -> None:
            # The batch being written belongs to these partitions: commit it while they are still ours.
            self._finish_in_flight(c)
            log.info("revoked %s", [p.partition for p in ps])

        consumer.subscribe(
            [self.cfg.topic],
            on_assign=lambda c, ps: log.info("assigned %s", [p.partition for p in ps]),
            on_revoke=on_revoke,
        )
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink-writer")
        next_stats = time.monotonic() + self.cfg.stats_interval_s
        try:
            while not stop.is_set():
                if max_messages is not None and self.stats.consumed >= max_messages:
                    break
                with _gc_paused():
                    batch = self._next_batch(consumer)  # its Message objects are freed on return
                if batch is not None:
                    self._handle(consumer, batch, stop, writer)
                if time.monotonic() >= next_stats:
                    next_stats = time.monotonic() + self.cfg.stats_interval_s
                    log.info("sink: %s", self.stats.line())
        finally:
            try:
                self._finish_in_flight(consumer)  # the last batch is written and committed before we go
            finally:
                writer.shutdown(wait=True)
                consumer.close()  # leaves the group promptly so a restart gets the partitions back at once
                self._drop_connection()
                log.info("sink stopped: %s", self.stats.line())
        return self.stats

    def _consume(self, consumer: Consumer) -> list[Message]:
        """Up to batch_size messages, waiting at most linger_s for them (librdkafka's batch consume).

        While a write is in flight the wait is cut into short slices, so that batch is committed as soon as
        its write returns; a backlog still comes back full from the first slice.
        """
        size, timeout = self.cfg.batch_size, self.cfg.linger_s
        if self._in_flight is None:
            return consumer.consume(size, timeout)
        deadline = time.monotonic() + timeout
        msgs: list[Message] = []
        while True:
            left = deadline - time.monotonic()
            if self._in_flight is not None:
                msgs.extend(consumer.consume(size - len(msgs), max(0.0, min(_SLICE_S, left))))
                # (A rebalance inside consume() may have finished the batch already: see on_revoke.)
                if self._in_flight is not None and self._in_flight.future.done():
                    self._finish_in_flight(consumer)
            elif left > 0:
                msgs.extend(consumer.consume(size - len(msgs), left))
            if len(msgs) >= size or time.monotonic() >= deadline:
                return msgs

    def _next_batch(self, consumer: Consumer) -> SinkBatch | None:
        msgs = self._consume(consumer)
        if not msgs:
            return None
        batch = split_messages(
            msgs,
            topic=self.cfg.topic,
            products=self._products,
            now=datetime.now(UTC),
            want_stamps=self.on_commit is not None,  # only the hook reads them
            per_message=self.cfg.naive,
        )
        self.stats.consumed += batch.consumed
        self.stats.kafka_errors += batch.kafka_errors
        return batch

    def _handle(
        self, consumer: Consumer, batch: SinkBatch, stop: threading.Event, writer: ThreadPoolExecutor
    ) -> None:
        # One batch at a time in PostgreSQL, and offsets committed in batch order, each only after its own
        # transaction has committed.
        done = self._await_in_flight()
        if done is not None and done[1] is None:
            return  # stopping with an unwritten batch: nothing after it may be committed either
        if batch.offsets:
            self._in_flight = _InFlight(writer.submit(self._write, batch, stop), batch.offsets, batch.stamps)
        if done is not None:
            # The previous batch's offsets go to the broker (a synchronous round trip) while PostgreSQL is
            # already writing this one: committing first left PostgreSQL idle for every offset commit.
            self._commit(consumer, *done)

    def _finish_in_flight(self, consumer: Consumer) -> None:
        """Wait for the batch being written (if any), then commit its offsets."""
        done = self._await_in_flight()
        if done is not None:
            self._commit(consumer, *done)

    def _await_in_flight(self) -> tuple[_InFlight, WriteResult | None] | None:
        batch, self._in_flight = self._in_flight, None
        if batch is None:
            return None
        return batch, batch.future.result()

    def _commit(self, consumer: Consumer, batch: _InFlight, result: WriteResult | None) -> None:
        if result is None:  # not written (stopping while PostgreSQL refuses): redelivered on the next start
            return
        self.stats.batches += 1
        self.stats.inserted += result.inserted
        self.stats.duplicates += result.duplicates
        self.stats.rejected += result.rejected
        try:
            consumer.commit(
                offsets=[TopicPartition(t, p, o + 1) for (t, p), o in batch.offsets.items()],
                asynchronous=False,
            )
        except (
            Exception
        ) as exc:  # e.g. a rebalance took the partition: the batch is redelivered and deduplicated
            self.stats.commit_failures += 1
            log.warning("offset commit failed (%s); the batch will be redelivered and deduplicated", exc)
            return
        if self.on_commit is not None:
            self.on_commit(CommittedBatch(result, time.time(), batch.stamps))
