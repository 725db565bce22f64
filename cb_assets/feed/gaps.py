"""Recording feed gaps (missed frames) in PostgreSQL's `feed_gaps` table.

Called from the feed's event loop, so writes go to a worker thread; a database that is down only costs the
record (logged, kept, retried with the next gap), never the feed.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import psycopg

from cb_assets.db.connection import connect
from cb_assets.feed.sequence import GapRecord

log = logging.getLogger(__name__)

_INSERT = """
INSERT INTO feed_gaps (connection_id, from_seq, to_seq, detected_at, before_time, after_time, source)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (connection_id, from_seq, to_seq) DO NOTHING
"""


def _ts(ns: int | None) -> datetime | None:
    return None if ns is None else datetime.fromtimestamp(ns / 1e9, tz=UTC)


class GapWriter:
    def __init__(self, database_url: str, source: str) -> None:
        self.database_url = database_url
        self.source = source
        self.pending: list[GapRecord] = []
        self.written = 0

    def _write(self, records: list[GapRecord]) -> None:
        with connect(self.database_url, timeout_s=5, application_name="cb-assets feed") as conn:
            conn.cursor().executemany(
                _INSERT,
                [
                    (
                        g.connection_id,
                        g.from_seq,
                        g.to_seq,
                        _ts(g.wall_time_ns),
                        _ts(g.from_time_ns),
                        _ts(g.to_time_ns),
                        self.source,
                    )
                    for g in records
                ],
            )
            conn.commit()

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        try:
            self._write(batch)
            self.written += len(batch)
        except psycopg.Error as exc:
            log.warning("could not record %d feed gaps yet (%s); will retry", len(batch), exc)
            self.pending = batch + self.pending

    def __call__(self, gap: GapRecord) -> None:
        log.warning(
            "feed gap on %s: %d frames missed (seq %d -> %d)",
            gap.connection_id,
            gap.missed,
            gap.from_seq,
            gap.to_seq,
        )
        self.pending.append(gap)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        loop.run_in_executor(None, self.flush)
