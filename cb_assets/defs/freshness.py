"""Freshness you can see: data-time checks run every five minutes, and alerts when runs or checks fail.

- `raw_ticks_fresh`: while a live feed runs, the newest tick is at most 2 minutes old (wall clock). Replays and
  the simulation run on their own clock, so they are reported, not judged.
- `champion_fresh`: the champion was trained on data no older than 3 hours behind the data clock; when it is
  older the check says why (the gate refused the latest challengers, fine-tuning is paused, or no fine-tune
  ran), from the registry.
- `no_skipped_hours`: no hour was given up on after its retries (they are listed with their last error).
A failing check also posts an alert (automation/alerts.py); `run_failure_alerts` does the same for every
failed run that Dagster will not retry itself.
"""

from datetime import UTC, datetime, timedelta

import dagster as dg

from cb_assets.automation.alerts import alert
from cb_assets.config import load_settings
from cb_assets.db import hour_runs_store
from cb_assets.db import model_registry as registry
from cb_assets.db.raw_store import newest_tick, newest_tick_detail
from cb_assets.defs.price_model import PRICE_MODEL
from cb_assets.defs.raw_ticks import RAW_TICKS
from cb_assets.defs.resources import PostgresResource
from cb_assets.defs.training_windows import TRAINING_WINDOWS
from cb_assets.series.clock import HOUR, hour_start, partition_key

LIVE_MAX_AGE = timedelta(minutes=2)
FEED_RUNNING = timedelta(minutes=10)  # a tick ingested this recently means a feed is running
CHAMPION_MAX_AGE = timedelta(hours=3)


def _alert_if_failed(result: dg.AssetCheckResult, check: str) -> dg.AssetCheckResult:
    if not result.passed:
        alert(
            load_settings().alert_webhook_url, "check_failed", f"{check}: {result.description}", check=check
        )
    return result


@dg.asset_check(
    asset=RAW_TICKS, description="while a live feed runs, the newest tick is at most 2 minutes old"
)
def raw_ticks_fresh(postgres: PostgresResource) -> dg.AssetCheckResult:
    now = datetime.now(UTC)
    with postgres.connection() as conn:
        newest = newest_tick_detail(conn)
    if newest is None:
        return dg.AssetCheckResult(passed=True, description="raw_ticks is empty: no feed has run yet")
    time, source, received = newest
    meta = {"newest_tick": time.isoformat(), "source": source, "age_s": (now - time).total_seconds()}
    if source != "live" or now - received > FEED_RUNNING:
        why = (
            "no feed has written for 10 minutes"
            if now - received > FEED_RUNNING
            else f"the feed is a {source} one"
        )
        return dg.AssetCheckResult(passed=True, description=f"not judged: {why}", metadata=meta)
    ok = now - time <= LIVE_MAX_AGE
    result = dg.AssetCheckResult(
        passed=ok,
        severity=dg.AssetCheckSeverity.WARN,
        description=None if ok else f"the newest live tick is {(now - time).total_seconds():.0f} s old",
        metadata=meta,
    )
    return _alert_if_failed(result, "raw_ticks_fresh")


@dg.asset_check(
    asset=PRICE_MODEL, description="the champion was trained on data at most 3 hours behind the newest tick"
)
def champion_fresh(postgres: PostgresResource) -> dg.AssetCheckResult:
    with postgres.connection() as conn:
        champ = registry.alias(conn)
        clock = newest_tick(conn)
        latest = registry.versions(conn, limit=1)
    if clock is None:
        return dg.AssetCheckResult(passed=True, description="no data yet")
    if champ is None:
        return _alert_if_failed(
            dg.AssetCheckResult(
                passed=False, severity=dg.AssetCheckSeverity.WARN, description="no champion yet"
            ),
            "champion_fresh",
        )
    trained_to = max(hour_start(k) for k in champ.partitions) + HOUR
    behind = clock - trained_to
    meta = {"champion_version_id": champ.id, "trained_through": partition_key(trained_to - HOUR),
            "hours_behind": round(behind.total_seconds() / 3600, 2)}  # fmt: skip
    if behind <= CHAMPION_MAX_AGE:
        return dg.AssetCheckResult(passed=True, metadata=meta)
    if latest and latest[0].id != champ.id and latest[0].status == "rejected":
        why = f"the gate refused the latest challenger v{latest[0].id}: {latest[0].decision_reason}"
    else:
        why = (
            "no fine-tune has produced a newer version (is raw_ticks_sensor running, or fine-tuning paused?)"
        )
    result = dg.AssetCheckResult(
        passed=False,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"the champion v{champ.id} is {behind.total_seconds() / 3600:.1f} h behind the data: {why}",
        metadata=meta,
    )
    return _alert_if_failed(result, "champion_fresh")


@dg.asset_check(asset=TRAINING_WINDOWS, description="no hour was skipped after its retries")
def no_skipped_hours(postgres: PostgresResource) -> dg.AssetCheckResult:
    with postgres.connection() as conn:
        skipped = hour_runs_store.skipped(conn)
    if not skipped:
        return dg.AssetCheckResult(passed=True)
    listing = "; ".join(f"{partition_key(h.hour)}: {(h.last_error or '?')[:200]}" for h in skipped[:10])
    result = dg.AssetCheckResult(
        passed=False,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{len(skipped)} hours skipped after their retries ({listing}); materialise them to fill the gap",
        metadata={"skipped_hours": dg.MetadataValue.json([partition_key(h.hour) for h in skipped])},
    )
    return _alert_if_failed(result, "no_skipped_hours")


FRESHNESS_CHECKS = [raw_ticks_fresh, champion_fresh, no_skipped_hours]

freshness_checks_job = dg.define_asset_job(
    "freshness_checks_job",
    selection=dg.AssetSelection.checks(*FRESHNESS_CHECKS),
    description="The data-time freshness checks (raw ticks, champion, skipped hours).",
)

freshness_checks_schedule = dg.ScheduleDefinition(
    job=freshness_checks_job,
    cron_schedule="*/5 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)


@dg.run_failure_sensor(
    name="run_failure_alerts",
    default_status=dg.DefaultSensorStatus.RUNNING,
    monitor_all_code_locations=False,
    description="Posts an alert for every failed run Dagster will not retry (CB_ALERT_WEBHOOK_URL, else the log).",
)
def run_failure_alerts(context: dg.RunFailureSensorContext) -> None:
    run = context.dagster_run
    if run.tags.get("dagster/will_retry") == "true":
        return
    tags = run.tags
    partition = tags.get("dagster/partition") or "..".join(
        t
        for t in (
            tags.get("dagster/asset_partition_range_start"),
            tags.get("dagster/asset_partition_range_end"),
        )
        if t
    )
    alert(
        load_settings().alert_webhook_url,
        "run_failed",
        f"{run.job_name} run {run.run_id[:8]} failed: {context.failure_event.message}",
        run_id=run.run_id,
        job=run.job_name,
        partition=partition,
    )
