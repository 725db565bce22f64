"""`cb-assets forecast`: forecasts made while they are still in the future, kept, and served.

1. At start the state comes from PostgreSQL: the raw ticks of the hours the current hour's features depend
   on (`LiveEngine.from_history`), then the ticks topic is read from a little before the newest stored tick
   was received, in the forecaster's own consumer group. Ticks already reflected in the state are late and
   left out, so a restart neither skips nor doubles a tick.
2. Each consumed batch adds ticks; a second is closed when every partition has delivered a newer one, or
   when its ticks have waited `linger_ms` for the rest of their frame, and never while a partition with
   unread messages has not delivered past it (partitions.py). Closing seconds steps the engine.
3. When new seconds were closed (at most every `every_s` data seconds) the champion forecasts every product
   and horizon from the window ending at the newest second, unless a guard says why not (guards.py). Rows
   go to the ledger writer (never blocking) and to the HTTP/SSE hub.
4. Housekeeping: the champion alias is polled every 2 s and a new champion is loaded beside the old one and
   swapped in when ready (no gap); outcomes are attached to due forecasts; guard counts and a heartbeat go
   to PostgreSQL for `forecast_scores` and the `cb-assets up` status line; old scored rows are dropped.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
from confluent_kafka import Consumer, KafkaError, TopicPartition

from cb_assets.config import Settings
from cb_assets.db import model_registry as registry
from cb_assets.db.connection import connect
from cb_assets.db.forecast_store import LedgerRow, add_skips, drop_summarised, score_due, write_status
from cb_assets.db.raw_store import raw_clock, read_raw_ticks
from cb_assets.forecast import guards
from cb_assets.forecast.champion import Champion, ChampionLoader, limit_tensorflow_threads
from cb_assets.forecast.engine import LiveEngine
from cb_assets.forecast.ledger import LedgerWriter
from cb_assets.forecast.partitions import OFFSET_BEGINNING, PartitionProgress, log_end, unread_messages
from cb_assets.forecast.server import ForecastHub, HttpServer, forecast_payload
from cb_assets.series.clock import HOUR
from cb_assets.series.hourly import ticks_by_product
from cb_assets.series.resample import grid_second_of
from cb_assets.series.schema import HORIZONS_S, HOUR_S
from cb_assets.stream.dead_letter import DEAD_LETTER_KEY
from cb_assets.stream.ticks import Rejection, parse_tick

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_REWIND_S = 30.0  # read the topic from this long before the newest stored tick was received
_STATUS_EVERY_S = 5.0
_SCORE_EVERY_S = 5.0
_CHAMPION_EVERY_S = 2.0
_RETENTION_EVERY_S = 600.0


def _ns(t: datetime) -> int:
    return (t - _EPOCH) // timedelta(microseconds=1) * 1000


def _utc(second: int) -> datetime:
    return datetime.fromtimestamp(second, tz=UTC)


@dataclass
class ForecasterStats:
    anchors: int = 0
    forecasts: int = 0
    messages: int = 0
    malformed: int = 0
    dead_letters: int = 0
    skips: Counter = field(default_factory=Counter)
    last_forecast_wall: float = 0.0
    inference_ms: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        inf = sorted(self.inference_ms[-500:])
        return {
            "anchors": self.anchors,
            "forecasts": self.forecasts,
            "messages": self.messages,
            "malformed": self.malformed,
            "dead_letters": self.dead_letters,
            "skips": dict(self.skips),
            "inference_ms_p50": inf[len(inf) // 2] if inf else None,
        }


class Forecaster:
    def __init__(
        self,
        settings: Settings,
        *,
        group_id: str = "cb-assets-forecaster",
        serve_http: bool = True,
        on_commit: Callable[[Sequence[LedgerRow], float], None] | None = None,
    ) -> None:
        self.settings = settings
        self.cfg = settings.forecast
        self.products = settings.products
        self.group_id = group_id
        self.stats = ForecasterStats()
        self.hub = ForecastHub()
        self.http = HttpServer(self.hub, "127.0.0.1", self.cfg.port) if serve_http else None
        self.ledger = LedgerWriter(settings.database_url, on_commit=on_commit)
        self.engine: LiveEngine | None = None
        self.champion: Champion | None = None
        self._loader = ChampionLoader(self.products)
        self._pending_skips: Counter = Counter()
        self._last_forecast_anchor = -(10**12)
        self._last_tick_wall = 0.0
        self._state = "starting"
        self._rewind_to_ms: int | None = None
        self._conn: psycopg.Connection | None = None
        self._consumer: Consumer | None = None
        self.progress = PartitionProgress()
        self._next = {"champion": 0.0, "score": 0.0, "status": 0.0, "retention": 0.0, "stale": 0.0}

    # -- lifecycle -----------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> ForecasterStats:
        limit_tensorflow_threads(self.cfg.threads)
        self.ledger.start()
        if self.http is not None:
            self.http.start()
        self._init_from_database(stop)
        consumer = self._consumer = Consumer(self._consumer_config())
        consumer.subscribe([self.settings.topic], on_assign=self._on_assign)
        log.info("forecaster started: products %s, port %s", ",".join(self.products), self.cfg.port)
        try:
            while not stop.is_set():
                msgs = consumer.consume(2000, 0.05)
                if msgs:
                    self._handle(msgs)
                self._close_and_forecast()
                self._housekeeping()
        finally:
            consumer.close()
            self.ledger.close()
            if self.http is not None:
                self.http.stop()
            try:
                self._write_status()
            except psycopg.Error as exc:
                log.warning("could not write the final status (%s)", exc)
            if self._conn is not None:
                self._conn.close()
            log.info("forecaster stopped: %s", self.stats.as_dict())
        return self.stats

    def _consumer_config(self) -> dict[str, object]:
        conf: dict[str, object] = {
            "bootstrap.servers": self.settings.kafka_bootstrap,
            "group.id": self.group_id,
            "enable.auto.commit": False,  # the state is rebuilt from PostgreSQL: offsets are not ours to keep
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            "topic.metadata.refresh.interval.ms": 10_000,
        }
        conf.update(dict(self.settings.kafka_config))
        return conf

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._rewind_to_ms is None:
            self.progress.assigned((tp.partition, OFFSET_BEGINNING) for tp in partitions)
            consumer.assign(partitions)  # nothing stored yet: the whole topic (auto.offset.reset=earliest)
            return
        wanted = [TopicPartition(p.topic, p.partition, self._rewind_to_ms) for p in partitions]
        try:
            found = consumer.offsets_for_times(wanted, timeout=10)
        except Exception as exc:  # a broker that cannot answer: read from the beginning instead
            log.warning("offsets_for_times failed (%s); reading the topic from its start", exc)
            found = partitions
        for tp in found:
            if tp.offset < 0:  # nothing produced since: start at the end
                tp.offset = log_end(consumer, tp)
        self.progress.assigned((tp.partition, tp.offset) for tp in found)
        consumer.assign(found)

    def _init_from_database(self, stop: threading.Event) -> None:
        """State from the stored raw ticks; waits (without crashing) while PostgreSQL is away."""
        delay = 1.0
        while not stop.is_set():
            try:
                with connect(self.settings.database_url, autocommit=True, timeout_s=5) as conn:
                    clock = raw_clock(conn)
                    if clock.newest_tick is None:
                        self._state = "waiting"
                        return  # nothing stored: the first consumed tick starts the engine
                    now_s = grid_second_of(_ns(clock.newest_tick)) - 1
                    start = _utc(now_s - now_s % HOUR_S) - 3 * HOUR
                    raw = read_raw_ticks(conn, start, clock.newest_tick + timedelta(microseconds=1))
                self.engine = LiveEngine.from_history(
                    self.products, ticks_by_product(raw, self.products), now_s
                )
                self._rewind_to_ms = int((clock.newest_received.timestamp() - _REWIND_S) * 1000)
                self._state = "forecasting"
                log.info("state loaded from %d stored ticks up to %s", len(raw), clock.newest_tick)
                return
            except psycopg.Error as exc:
                log.warning("PostgreSQL not reachable (%s); retrying in %.0f s", exc, delay)
                stop.wait(delay)
                delay = min(30.0, delay * 2)

    # -- ticks and seconds ---------------------------------------------------------------------------------
    def _handle(self, msgs: list) -> None:
        now = datetime.now(UTC)
        products, times, values = [], [], []
        for m in msgs:
            if m.error() is not None:
                if m.error().code() != KafkaError._PARTITION_EOF:
                    log.debug("kafka: %s", m.error())
                continue
            self.stats.messages += 1
            if m.key() == DEAD_LETTER_KEY:
                self.stats.dead_letters += 1
                continue
            row = parse_tick(
                m.value(), products=self.products, partition=m.partition(), offset=m.offset(), now=now
            )
            if isinstance(row, Rejection):
                self.stats.malformed += 1
                continue
            products.append(row[0])
            times.append(_ns(row[1]))
            self.progress.seen(m.partition(), grid_second_of(times[-1]))
            values.append(row[2:9])
        if not products:
            return
        self._last_tick_wall = time.monotonic()
        t = np.asarray(times, dtype=np.int64)
        if self.engine is None:  # the first tick ever: start empty at its hour
            first_s = grid_second_of(int(t.min())) - 1
            self.engine = LiveEngine.from_history(self.products, {}, first_s)
            self._state = "forecasting"
        self.engine.add_ticks(products, t, np.asarray(values, dtype=np.float64))

    def _close_and_forecast(self) -> None:
        if self.engine is None:
            return
        floor = self.engine.next_second - 1
        upto = self.progress.settled(floor, self.cfg.linger_ms / 1000)  # (partitions.py)
        if upto <= floor:
            return
        if self._consumer is not None:  # and never before a backlogged partition's ticks are in
            upto = self.progress.closable(upto, unread_messages(self._consumer, self.progress), floor=floor)
            if upto <= floor:
                return
        # Each second that received ticks is an anchor (a replay running ahead must not skip frames).
        for tick_second in self.engine.seconds_with_ticks(upto):
            self.engine.advance_to(tick_second)
            if self.engine.anchor_s - self._last_forecast_anchor >= self.cfg.every_s:
                self._forecast()
        self.engine.advance_to(upto)

    # -- forecasting ---------------------------------------------------------------------------------------
    def _skip(self, reason: str, n: int = 1, detail: str = "") -> None:
        assert self.engine is not None
        anchor = self.engine.anchor_s
        hour = _utc(anchor - anchor % HOUR_S)
        if reason != guards.STALE:
            log.debug("no forecast at %s: %s %s", _utc(anchor).isoformat(), reason, detail)
        self.stats.skips[reason] += n
        self._pending_skips[(hour, reason)] += n

    def _forecast(self) -> None:
        engine, champ = self.engine, self.champion
        assert engine is not None
        self._last_forecast_anchor = engine.anchor_s
        self.stats.anchors += 1
        if champ is None:
            self._skip(guards.NO_CHAMPION)
            return
        if champ.mismatch is not None:
            self._skip(guards.INPUTS_MISMATCH)
            return
        x = engine.model_input(champ.products)
        if not x.valid:
            self._skip(guards.NOT_WARM, detail=x.reason or "")
            return
        beyond = guards.out_of_range(x.matrix[-1], champ.mean, champ.std, champ.feature_names)
        if beyond is not None:
            self._skip(guards.INPUT_OUT_OF_RANGE, detail=beyond)
            return
        from cb_assets.model.network import predict_returns

        started = time.perf_counter()
        returns = predict_returns(champ.model, x.matrix)[0]
        self.stats.inference_ms.append((time.perf_counter() - started) * 1000)
        if len(self.stats.inference_ms) > 5000:
            del self.stats.inference_ms[:2500]
        anchor = _utc(engine.anchor_s)
        rows: list[LedgerRow] = []
        for j, p in enumerate(champ.products):
            if engine.staleness_s(p) > self.cfg.max_staleness_s:
                self._skip(guards.STALE)
                continue
            last = engine.live[p].last_price
            for k, h in enumerate(HORIZONS_S):
                r = float(returns[j * len(HORIZONS_S) + k])
                rows.append(LedgerRow(champ.version_id, p, anchor, h, r, last * math.exp(r), last))
        self.ledger.put(rows)
        self.stats.forecasts += len(rows)
        self.stats.last_forecast_wall = time.time()
        self.hub.publish(forecast_payload(champ.version_id, anchor, rows))

    # -- housekeeping --------------------------------------------------------------------------------------
    def _due(self, what: str, every_s: float) -> bool:
        now = time.monotonic()
        if now < self._next[what]:
            return False
        self._next[what] = now + every_s
        return True

    def _db(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(
                self.settings.database_url, autocommit=True, application_name="cb-assets forecast"
            )
        return self._conn

    def _housekeeping(self) -> None:
        try:
            if self._due("champion", _CHAMPION_EVERY_S):
                self._poll_champion()
            if self._due("score", _SCORE_EVERY_S):
                score_due(self._db())
            if self._due("status", _STATUS_EVERY_S):
                self._write_status()
            if self._due("retention", _RETENTION_EVERY_S) and self.engine is not None:
                cutoff = _utc(self.engine.anchor_s) - timedelta(days=self.cfg.retention_days)
                drop_summarised(self._db(), cutoff)
        except psycopg.Error as exc:  # PostgreSQL away: forecasting goes on, the ledger writer buffers
            log.warning("housekeeping skipped (%s)", exc)
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        quiet_s = time.monotonic() - self._last_tick_wall
        if self.engine is not None and self._last_tick_wall and quiet_s > self.cfg.max_staleness_s:
            if self._state != "stale":
                log.warning("no ticks for %.0f s: forecasts stop until they come back", quiet_s)
            self._state = "stale"
            if self._due("stale", max(1.0, float(self.cfg.every_s))):
                self._skip(guards.STALE)
        elif self._state == "stale":
            log.info("ticks are back: forecasting again")
            self._state = "forecasting"

    def _poll_champion(self) -> None:
        if self._loader.busy():
            return
        current = registry.alias(self._db())
        if current is None or (self.champion is not None and current.id == self.champion.version_id):
            return
        self._loader.start(current.id, current.artifact_path, self._swap_champion)

    def _swap_champion(self, champ: Champion) -> None:
        self.champion = champ  # one reference swap: the next forecast uses it

    def _write_status(self) -> None:
        counters = {**self.stats.as_dict(), "state": self._state, "ledger": self.ledger.stats.__dict__}
        if self.engine is not None:
            counters["late_ticks"] = self.engine.counters.late_ticks
        conn = self._db()
        add_skips(conn, self._pending_skips)
        self._pending_skips.clear()
        write_status(
            conn,
            "forecaster",
            self.champion.version_id if self.champion else None,
            _utc(self.engine.anchor_s) if self.engine else None,
            counters,
        )
