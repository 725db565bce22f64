"""Writing a batch of ticks to PostgreSQL in one transaction: binary COPY into staging, then an upsert.

COPY is the only fast way in from Python (binary, because text COPY is bound by float formatting); the
staging table lets `INSERT ... ON CONFLICT (product_id, time) DO NOTHING` make redelivered messages harmless,
which is what allows the sink to commit Kafka offsets only after this transaction has committed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from cb_assets.stream.ticks import Rejection, TickRow

log = logging.getLogger(__name__)

RAW_COLUMNS = (
    "product_id",
    "time",
    "price",
    "volume_24_h",
    "low_24_h",
    "high_24_h",
    "low_52_w",
    "high_52_w",
    "price_percent_chg_24_h",
    "best_bid",
    "best_ask",
    "source",
    "kafka_partition",
    "kafka_offset",
)
_TYPES = ["text", "timestamptz", *["float8"] * 9, "text", "int4", "int8"]
_COLS = ", ".join(RAW_COLUMNS)

_CREATE_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS raw_ticks_staging (
    product_id text, time timestamptz, price float8, volume_24_h float8, low_24_h float8, high_24_h float8,
    low_52_w float8, high_52_w float8, price_percent_chg_24_h float8, best_bid float8, best_ask float8,
    source text, kafka_partition int4, kafka_offset int8
) ON COMMIT DELETE ROWS
"""
_UPSERT = f"INSERT INTO raw_ticks ({_COLS}) SELECT {_COLS} FROM raw_ticks_staging ON CONFLICT (product_id, time) DO NOTHING"
_REJECT = """
INSERT INTO raw_ticks_rejected
    (source, reason, payload, product_id, tick_time, kafka_topic, kafka_partition, kafka_offset)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (kafka_topic, kafka_partition, kafka_offset) DO NOTHING
"""


@dataclass(frozen=True)
class RejectedMessage:
    rejection: Rejection
    payload: bytes
    source: str
    topic: str | None
    partition: int | None
    offset: int | None


@dataclass(frozen=True)
class WriteResult:
    staged: int
    inserted: int
    rejected: int

    @property
    def duplicates(self) -> int:
        return self.staged - self.inserted


class TickWriter:
    """Owns one connection; `write` is all-or-nothing."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        with conn.transaction():
            conn.execute(_CREATE_STAGING)

    def write(self, rows: Sequence[TickRow], rejected: Sequence[RejectedMessage] = ()) -> WriteResult:
        inserted = 0
        with self.conn.transaction(), self.conn.cursor() as cur:
            if rows:
                with cur.copy(f"COPY raw_ticks_staging ({_COLS}) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(_TYPES)
                    for row in rows:
                        copy.write_row(row)
                cur.execute(_UPSERT)
                inserted = cur.rowcount
            if rejected:
                cur.executemany(
                    _REJECT,
                    [
                        (
                            r.source,
                            r.rejection.reason,
                            r.payload,
                            r.rejection.product_id,
                            r.rejection.tick_time,
                            r.topic,
                            r.partition,
                            r.offset,
                        )
                        for r in rejected
                    ],
                )
        return WriteResult(len(rows), inserted, len(rejected))


class NaiveTickWriter:
    """The baseline the benchmark compares against: executemany INSERT per batch, same idempotency."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    def write(self, rows: Sequence[TickRow], rejected: Sequence[RejectedMessage] = ()) -> WriteResult:
        placeholders = ", ".join(["%s"] * len(RAW_COLUMNS))
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO raw_ticks ({_COLS}) VALUES ({placeholders}) ON CONFLICT (product_id, time) DO NOTHING",
                rows,
            )
        return WriteResult(len(rows), len(rows), 0)
