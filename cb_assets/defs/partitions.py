"""The one partitioning of the platform: UTC hours. Products are a column, not a partition dimension: training
windows align all products on one clock, and hourly x product partitions would pass Dagster's ~100k limit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg

from cb_assets.config import load_settings

HOUR = timedelta(hours=1)

hourly_partitions = dg.HourlyPartitionsDefinition(start_date=load_settings().partitions_start, timezone="UTC")

# Every derived hour reads its own hour and the one before (Kalman warm-up, indicator look-back, window
# history): the mapping makes that dependency visible in the UI and to backfills.
previous_and_current_hour = dg.TimeWindowPartitionMapping(start_offset=-1)


def hour_start(partition_key: str) -> datetime:
    return datetime.strptime(partition_key, "%Y-%m-%d-%H:%M").replace(tzinfo=UTC)


def partition_key(hour: datetime) -> str:
    return hour.astimezone(UTC).strftime("%Y-%m-%d-%H:%M")


def hours_in(window: dg.TimeWindow) -> list[datetime]:
    """The hour starts of a (possibly multi-hour, single-run backfill) partition time window."""
    start = window.start.astimezone(UTC)
    end = window.end.astimezone(UTC)
    n = int((end - start) / HOUR)
    return [start + i * HOUR for i in range(n)]
