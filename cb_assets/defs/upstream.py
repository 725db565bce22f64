"""Whether the upstream hours a derived hour reads exist, and what to say when they do not.

Computing with a missing upstream hour would silently give a different (colder) result than computing in
order; refusing keeps every hour a function of its inputs alone (backfills order upstream hours first by
themselves). Two kinds of look-back hour are gaps instead (noted, never blocking): one whose raw ticks break
the tick rules, which cannot exist until they are fixed, and one the retraining sensor gave up on after its
retries (skipped in `hour_runs`): the hour after it then starts cold, and is recomputed if the skipped hour
is materialised later.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import psycopg

from cb_assets.automation.planner import SKIPPED
from cb_assets.db import hour_runs_store
from cb_assets.db.raw_store import has_ticks, read_raw_ticks
from cb_assets.db.series_store import has_rows
from cb_assets.series.clock import HOUR, partition_key
from cb_assets.series.hourly import rule_failures_of_hour

HourState = Literal["present", "no_data", "invalid_raw", "skipped", "missing"]


def upstream_hour_state(conn: psycopg.Connection, table: str, hour: datetime) -> HourState:
    """'present', 'no_data' (no raw ticks either), 'invalid_raw' (raw ticks break a tick rule, so the
    upstream hour cannot exist until they are fixed), 'skipped' (given up on after its retries) or 'missing'
    (the hour is just not computed)."""
    end = hour + HOUR
    if has_rows(conn, table, hour, end):
        return "present"
    if not has_ticks(conn, hour, end):
        return "no_data"
    broken = rule_failures_of_hour(read_raw_ticks(conn, hour, end), hour, end)
    if any(not rows.empty for rows in broken.values()):
        return "invalid_raw"
    return "skipped" if hour_runs_store.state_of(conn, [hour]).get(hour) == SKIPPED else "missing"


def upstream_problems(
    conn: psycopg.Connection, table: str, hours: list[datetime]
) -> tuple[dict[str, str], list[str]]:
    """Which hours of the run cannot be computed from `table` (key -> reason), and notes for the metadata."""
    states = {h: upstream_hour_state(conn, table, h) for h in [hours[0] - HOUR, *hours]}
    reasons: dict[str, str] = {}
    notes: list[str] = []
    for h in hours:
        key, prev = partition_key(h), partition_key(h - HOUR)
        if states[h] in ("missing", "skipped"):
            reasons[key] = (
                f"{table} {key} has raw ticks but is not materialised: materialise {table} {key} first"
            )
        elif states[h] == "invalid_raw":
            reasons[key] = (
                f"{table} {key} does not exist because raw_ticks of that hour break the tick rules (see the "
                "raw_ticks checks); fix the rows, then re-materialise"
            )
        elif states[h - HOUR] == "missing":
            reasons[key] = (
                f"needs the look-back hour {table} {prev}, which has raw ticks but is not materialised: "
                f"materialise {table} {prev} first"
            )
        elif states[h - HOUR] == "invalid_raw":
            notes.append(f"{key}: look-back hour {prev} skipped, its raw ticks are invalid")
        elif states[h - HOUR] == "skipped":
            notes.append(f"{key}: look-back hour {prev} was skipped after its retries: {key} starts cold")
    return reasons, notes
