"""The one-line platform status `cb-assets up` prints while it runs (and as its exit summary).

Cheap queries only (indexed maxima, small tables, a planner estimate for large counts): it runs every few
seconds against the same database the sink is writing to.
"""

from __future__ import annotations

from datetime import timedelta

import psycopg

from cb_assets.config import Settings
from cb_assets.db.connection import connect

_EXACT_COUNT_LIMIT = 2_000_000


def _count(conn: psycopg.Connection, table: str) -> int:
    estimate = conn.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = %s", (table,)).fetchone()
    if estimate and estimate[0] > _EXACT_COUNT_LIMIT:
        return int(estimate[0])
    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _runs(settings: Settings) -> str:
    try:
        with connect(settings.dagster_database_url, autocommit=True, timeout_s=3) as conn:
            rows = conn.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall()
    except psycopg.Error:
        return "runs: -"
    by = {status: n for status, n in rows}
    return (
        f"runs {by.get('SUCCESS', 0)} ok, {by.get('STARTED', 0) + by.get('STARTING', 0)} running, "
        f"{by.get('QUEUED', 0)} queued, {by.get('FAILURE', 0)} failed"
    )


def status_line(settings: Settings) -> str:
    with connect(settings.database_url, autocommit=True, timeout_s=3) as conn:
        newest, per_minute = conn.execute(
            """SELECT (SELECT max(time) FROM raw_ticks),
                      (SELECT count(*) FROM raw_ticks WHERE received_at > now() - interval '1 minute')"""
        ).fetchone()
        total, rejected = _count(conn, "raw_ticks"), _count(conn, "raw_ticks_rejected")
        hours_filled = conn.execute("SELECT count(DISTINCT hour) FROM kalman_params").fetchone()[0]
        champion = conn.execute(
            "SELECT (SELECT version_id FROM model_aliases WHERE alias = 'champion'), (SELECT count(*) FROM model_versions)"
        ).fetchone()
    if newest is not None:
        complete = (newest - timedelta(seconds=settings.hour_grace_s)).replace(
            minute=0, second=0, microsecond=0
        )
        clock = f"newest tick {newest:%Y-%m-%d %H:%M:%S}, complete hours through {complete - timedelta(hours=1):%H:00}"
    else:
        clock = "no ticks yet"
    model = (
        f"champion v{champion[0]} of {champion[1]} versions"
        if champion[0]
        else f"no champion ({champion[1]} versions)"
    )
    return (
        f"ticks {total} (+{per_minute}/min), rejected {rejected}, {clock}; hours filled {hours_filled}; "
        f"{_runs(settings)}; {model}"
    )
