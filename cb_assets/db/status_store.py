"""The cheap questions the `cb-assets up` status line asks every few seconds.

Indexed maxima, small tables and a planner estimate for large counts only: it runs against the same database
the sink is writing to.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

_EXACT_COUNT_LIMIT = 2_000_000


@dataclass(frozen=True)
class PlatformCounts:
    newest_tick: datetime | None
    ticks_last_minute: int
    ticks: int
    rejected: int
    hours_filled: int
    champion_id: int | None
    versions: int


def approximate_count(conn: psycopg.Connection, table: str) -> int:
    """Rows of `table`: exact below two million, the planner's estimate above (a count(*) would scan)."""
    estimate = conn.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = %s", (table,)).fetchone()
    if estimate and estimate[0] > _EXACT_COUNT_LIMIT:
        return int(estimate[0])
    return int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0])


def platform_counts(conn: psycopg.Connection) -> PlatformCounts:
    newest, per_minute, hours_filled, champion, versions = conn.execute(
        """SELECT (SELECT max(time) FROM raw_ticks),
                  (SELECT count(*) FROM raw_ticks WHERE received_at > now() - interval '1 minute'),
                  (SELECT count(DISTINCT hour) FROM kalman_params),
                  (SELECT version_id FROM model_aliases WHERE alias = 'champion'),
                  (SELECT count(*) FROM model_versions)"""
    ).fetchone()
    return PlatformCounts(
        newest_tick=newest,
        ticks_last_minute=int(per_minute),
        ticks=approximate_count(conn, "raw_ticks"),
        rejected=approximate_count(conn, "raw_ticks_rejected"),
        hours_filled=int(hours_filled),
        champion_id=champion,
        versions=int(versions),
    )


def dagster_run_counts(conn: psycopg.Connection) -> dict[str, int]:
    """Runs per status in Dagster's run storage (dagster-postgres' `runs` table)."""
    return {status: int(n) for status, n in conn.execute("SELECT status, count(*) FROM runs GROUP BY status")}


def failing_checks(conn: psycopg.Connection, names: tuple[str, ...]) -> list[str]:
    """The checks among `names` whose latest execution failed (Dagster's `asset_check_executions` table)."""
    rows = conn.execute(
        """SELECT DISTINCT ON (check_name) check_name, execution_status FROM asset_check_executions
           WHERE check_name = ANY(%s) AND execution_status IN ('SUCCEEDED', 'FAILED')
           ORDER BY check_name, id DESC""",
        (list(names),),
    ).fetchall()
    return [name for name, status in rows if status == "FAILED"]
