"""Retention: derived data older than CB_RETENTION_DAYS goes, daily; the raw table is kept.

filled_series, indicators and the training windows are recomputable from raw_ticks (every hour is a function
of its raw hours), so keeping them forever only costs disk (README: the disk budget). Old forecast ledger rows
are dropped by the forecaster once forecast_scores summarised them. Dagster still shows the dropped hours as
materialised: materialise them again to get them back.
"""

from datetime import UTC, datetime, timedelta

import dagster as dg

from cb_assets.config import load_settings
from cb_assets.db.series_store import delete_before
from cb_assets.defs.resources import PostgresResource, WindowStoreResource
from cb_assets.series.clock import floor_hour, partition_key


@dg.op(description="Delete filled_series, indicators and training windows older than CB_RETENTION_DAYS.")
def apply_retention(
    context: dg.OpExecutionContext, postgres: PostgresResource, windows: WindowStoreResource
) -> None:
    days = load_settings().retention_days
    cutoff = floor_hour(datetime.now(UTC) - timedelta(days=days))
    with postgres.connection(autocommit=True) as conn:
        filled = delete_before(conn, "filled_series", cutoff)
        indicators = delete_before(conn, "indicators", cutoff)
    dropped = windows.store.drop_before(partition_key(cutoff))
    context.log.info(
        "retention (%d days, before %s): %d filled_series rows, %d indicators rows, %d window hours deleted",
        days, cutoff, filled, indicators, len(dropped),
    )  # fmt: skip
    context.add_output_metadata(
        {"filled_rows": filled, "indicator_rows": indicators, "window_hours": len(dropped)}
    )


@dg.job(description="Apply the retention of derived data (see cb_assets/defs/retention.py).")
def retention_job() -> None:
    apply_retention()


retention_schedule = dg.ScheduleDefinition(
    job=retention_job,
    cron_schedule="17 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
