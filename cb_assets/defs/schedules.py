"""The hourly schedule: a wall-clock backstop for the data-driven `raw_ticks_sensor`.

At minute 5 it requests the hour that just ended, unless the data does not show that hour complete yet (the
newest tick is not past its end plus the grace period: computing it now would freeze a partial hour), its
training windows already exist, or a run for it is queued or running (the sensor usually got there first).
"""

import dagster as dg

from cb_assets.db.raw_store import newest_tick
from cb_assets.defs.jobs import hourly_assets_job
from cb_assets.defs.resources import MarketResource, PostgresResource
from cb_assets.defs.training_windows import TRAINING_WINDOWS
from cb_assets.series.clock import HOUR, floor_hour, is_complete, partition_key

_ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@dg.schedule(
    job=hourly_assets_job,
    cron_schedule="5 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Materialise the newest complete hour (raw_ticks -> training_windows) if the sensor has not.",
)
def hourly_assets_schedule(
    context: dg.ScheduleEvaluationContext, postgres: PostgresResource, market: MarketResource
) -> dg.RunRequest | dg.SkipReason:
    hour = floor_hour(context.scheduled_execution_time) - HOUR
    key = partition_key(hour)
    with postgres.connection() as conn:
        newest = newest_tick(conn)
    if not is_complete(hour, newest, market.hour_grace_s):
        return dg.SkipReason(f"{key} is not complete in the data yet (newest tick {newest})")
    instance = context.instance
    done = instance.get_materialized_partitions(TRAINING_WINDOWS)
    if key in done:
        return dg.SkipReason(f"{key} is already materialised")
    active = instance.get_run_records(
        dg.RunsFilter(statuses=_ACTIVE, tags={"dagster/partition": key}), limit=1
    )
    if active:
        return dg.SkipReason(f"a run for {key} is already {active[0].dagster_run.status.value.lower()}")
    return dg.RunRequest(run_key=f"hour:{key}", partition_key=key)
