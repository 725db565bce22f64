"""The `hour_runs` table: what the retraining sensor asked for per hour, and how it went."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import psycopg

from cb_assets.automation.planner import DONE, SKIPPED, HourRun

_SELECT = "SELECT hour, state, attempts, run_key, requested_at, last_error, next_attempt_at FROM hour_runs"


def open_hours(conn: psycopg.Connection) -> dict[datetime, HourRun]:
    """Hours not done: requested, waiting for a retry, or skipped."""
    rows = conn.execute(_SELECT + " WHERE state <> %s ORDER BY hour", (DONE,)).fetchall()
    return {r[0]: HourRun(*r) for r in rows}


def save(conn: psycopg.Connection, hours: Sequence[HourRun]) -> None:
    if not hours:
        return
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO hour_runs (hour, state, attempts, run_key, requested_at, last_error, next_attempt_at,
                                      updated_at)
               VALUES (%s, %s, %s, %s, %s, %s, %s, now())
               ON CONFLICT (hour) DO UPDATE SET state = EXCLUDED.state, attempts = EXCLUDED.attempts,
                   run_key = EXCLUDED.run_key, requested_at = EXCLUDED.requested_at,
                   last_error = EXCLUDED.last_error, next_attempt_at = EXCLUDED.next_attempt_at, updated_at = now()""",
            [
                (h.hour, h.state, h.attempts, h.run_key, h.requested_at, h.last_error, h.next_attempt_at)
                for h in hours
            ],
        )


def skipped(conn: psycopg.Connection) -> list[HourRun]:
    rows = conn.execute(_SELECT + " WHERE state = %s ORDER BY hour", (SKIPPED,)).fetchall()
    return [HourRun(*r) for r in rows]


def state_of(conn: psycopg.Connection, hours: Sequence[datetime]) -> dict[datetime, str]:
    rows = conn.execute("SELECT hour, state FROM hour_runs WHERE hour = ANY(%s)", (list(hours),)).fetchall()
    return dict(rows)
