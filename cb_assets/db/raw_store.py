"""Reads of the Kafka-fed raw layer: raw_ticks, raw_ticks_rejected and feed_gaps.

The sensor, the schedule, the status line and the raw_ticks asset ask these questions; every query is
answered from an index (time, received_at) so that asking every few seconds costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pandas as pd
import psycopg

from cb_assets.db.series_store import read_frame
from cb_assets.series.schema import SERIES_COLUMNS

RAW_READ_COLUMNS: tuple[str, ...] = (
    "product_id",
    "time",
    *SERIES_COLUMNS,
    "best_bid",
    "best_ask",
    "received_at",
    "source",
)


@dataclass(frozen=True)
class RawClock:
    """Where the raw table stands: its oldest and newest tick (the data clock) and its newest ingestion."""

    first_tick: datetime | None
    newest_tick: datetime | None
    newest_received: datetime | None


def read_raw_ticks(conn: psycopg.Connection, start: datetime, end: datetime) -> pd.DataFrame:
    return read_frame(conn, "raw_ticks", RAW_READ_COLUMNS, start, end)


def raw_clock(conn: psycopg.Connection) -> RawClock:
    row = conn.execute("SELECT min(time), max(time), max(received_at) FROM raw_ticks").fetchone()
    return RawClock(*row) if row else RawClock(None, None, None)


def newest_tick(conn: psycopg.Connection) -> datetime | None:
    return conn.execute("SELECT max(time) FROM raw_ticks").fetchone()[0]


def has_ticks(conn: psycopg.Connection, start: datetime, end: datetime) -> bool:
    return bool(
        conn.execute(
            "SELECT EXISTS (SELECT 1 FROM raw_ticks WHERE time >= %s AND time < %s)", (start, end)
        ).fetchone()[0]
    )


def rejection_counts(conn: psycopg.Connection, start: datetime, end: datetime) -> list[tuple[str, int]]:
    """(reason, rows) of messages refused for the hours [start, end), most frequent first.

    A rejection without a tick time (the payload did not say) counts in the hour it was received.
    """
    return conn.execute(
        """SELECT reason, count(*) FROM raw_ticks_rejected
           WHERE (tick_time >= %(s)s AND tick_time < %(e)s)
              OR (tick_time IS NULL AND received_at >= %(s)s AND received_at < %(e)s)
           GROUP BY reason ORDER BY count(*) DESC""",
        {"s": start, "e": end},
    ).fetchall()


def feed_gap_counts(conn: psycopg.Connection, start: datetime, end: datetime) -> tuple[int, int]:
    """(gaps, frames missed in them) the live feed recorded within [start, end)."""
    n, missed = conn.execute(
        "SELECT count(*), coalesce(sum(to_seq - from_seq - 1), 0) FROM feed_gaps "
        "WHERE after_time >= %s AND before_time < %s",
        (start, end),
    ).fetchone()
    return int(n), int(missed)


def newest_tick_detail(conn: psycopg.Connection) -> tuple[datetime, str, datetime] | None:
    """(time, source, received_at) of the newest tick (by time), or None when the table is empty."""
    return conn.execute(
        "SELECT time, source, received_at FROM raw_ticks ORDER BY time DESC LIMIT 1"
    ).fetchone()
