"""Writing forecasts to the ledger without ever losing one or holding up the next.

Forecasting must not wait for PostgreSQL, and PostgreSQL going away must not lose forecasts: rows are handed
to a writer thread, which writes them in order, one transaction per batch, and keeps a failed batch (and
everything after it) in memory, retrying with backoff until the database is back. The ledger's primary key
makes a retried batch that had in fact committed harmless.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg

from cb_assets.db.connection import connect
from cb_assets.db.forecast_store import LedgerRow, write_forecasts

log = logging.getLogger(__name__)


@dataclass
class LedgerStats:
    written: int = 0
    batches: int = 0
    retries: int = 0
    pending: int = 0
    max_pending: int = 0


class LedgerWriter:
    def __init__(
        self,
        database_url: str,
        *,
        retry_max_s: float = 10.0,
        on_commit: Callable[[Sequence[LedgerRow], float], None] | None = None,
    ) -> None:
        self.database_url = database_url
        self.retry_max_s = retry_max_s
        self.on_commit = on_commit
        self.stats = LedgerStats()
        self._queue: deque[list[LedgerRow]] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._stopping = threading.Event()  # backoff waits on this alone: new rows must not cut it short
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._conn: psycopg.Connection | None = None

    def start(self) -> LedgerWriter:
        self._thread.start()
        return self

    def put(self, rows: list[LedgerRow]) -> None:
        if not rows:
            return
        with self._cond:
            self._queue.append(rows)
            self.stats.pending += len(rows)
            self.stats.max_pending = max(self.stats.max_pending, self.stats.pending)
            self._cond.notify()

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (for up to `timeout_s` if PostgreSQL is away), then stop."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._stopping.set()
        self._thread.join(timeout_s)
        if self._conn is not None:
            self._conn.close()
        if self.stats.pending:
            log.warning("ledger writer stopped with %d forecasts unwritten", self.stats.pending)

    def _run(self) -> None:
        delay = 0.5
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait()
                if not self._queue:
                    return
                # Everything queued so far in one transaction: fewer commits when PostgreSQL is slow.
                batch = [r for rows in self._queue for r in rows]
                n_lists = len(self._queue)
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = connect(
                        self.database_url, autocommit=True, application_name="cb-assets forecast"
                    )
                write_forecasts(self._conn, batch)
            except psycopg.Error as exc:
                self.stats.retries += 1
                log.warning(
                    "ledger write of %d forecasts failed (%s); retrying in %.1f s", len(batch), exc, delay
                )
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                if self._stop and delay >= self.retry_max_s:
                    return
                self._stopping.wait(delay)
                delay = min(self.retry_max_s, delay * 2)
                continue
            delay = 0.5
            committed = time.time()
            with self._cond:
                for _ in range(n_lists):
                    self._queue.popleft()
                self.stats.pending -= len(batch)
            self.stats.written += len(batch)
            self.stats.batches += 1
            if self.on_commit is not None:
                self.on_commit(batch, committed)
