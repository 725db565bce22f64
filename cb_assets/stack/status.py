"""The one-line platform status `cb-assets up` prints while it runs (and as its exit summary)."""

from __future__ import annotations

import psycopg

from cb_assets.config import Settings
from cb_assets.db import hour_runs_store
from cb_assets.db.connection import connect
from cb_assets.db.forecast_store import live_skill_by_version, read_status
from cb_assets.db.status_store import dagster_run_counts, failing_checks, platform_counts
from cb_assets.series.clock import newest_complete_hour

# The freshness checks (defs/freshness.py), named here so the status line needs no Dagster import.
FRESHNESS_CHECKS = ("raw_ticks_fresh", "champion_fresh", "no_skipped_hours")


def _runs(settings: Settings) -> str:
    try:
        with connect(settings.dagster_database_url, autocommit=True, timeout_s=3) as conn:
            by = dagster_run_counts(conn)
            failing = failing_checks(conn, FRESHNESS_CHECKS)
    except psycopg.Error:
        return "runs: -"
    return (
        f"runs {by.get('SUCCESS', 0)} ok, {by.get('STARTED', 0) + by.get('STARTING', 0)} running, "
        f"{by.get('QUEUED', 0)} queued, {by.get('FAILURE', 0)} failed"
        + (f"; FAILING checks: {', '.join(failing)}" if failing else "")
    )


def _forecaster(conn: psycopg.Connection, champion_id: int | None) -> str:
    status = read_status(conn)
    if status is None:
        return "forecaster: not started"
    c = status.counters
    skips = ", ".join(
        f"{k} {v}" for k, v in sorted((c.get("skips") or {}).items(), key=lambda kv: -kv[1])[:4]
    )
    skill = live_skill_by_version(conn).get(champion_id) if champion_id else None
    live = f", live skill {skill[0]:+.3f} on {skill[1]} scored" if skill and skill[1] else ""
    return f"forecaster {c.get('state', '?')}: {status.forecasts_last_minute} forecasts/min{live}" + (
        f"; skipped: {skips}" if skips else ""
    )


def status_line(settings: Settings) -> str:
    with connect(settings.database_url, autocommit=True, timeout_s=3) as conn:
        c = platform_counts(conn)
        forecaster = _forecaster(conn, c.champion_id)
        skipped = hour_runs_store.skipped(conn)
    if c.newest_tick is not None:
        complete = newest_complete_hour(c.newest_tick, settings.hour_grace_s)
        clock = f"newest tick {c.newest_tick:%Y-%m-%d %H:%M:%S}, complete hours through {complete:%H:00}"
    else:
        clock = "no ticks yet"
    model = (
        f"champion v{c.champion_id} of {c.versions} versions"
        if c.champion_id
        else f"no champion ({c.versions} versions)"
    )
    return (
        f"ticks {c.ticks} (+{c.ticks_last_minute}/min), rejected {c.rejected}, {clock}; "
        f"hours filled {c.hours_filled}"
        + (
            f" ({len(skipped)} skipped after retries, newest {skipped[-1].hour:%m-%d %H:00})"
            if skipped
            else ""
        )
        + f"; {_runs(settings)}; {model}; {forecaster}"
    )
