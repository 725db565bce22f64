"""The one partitioning of the platform: UTC hours. Products are a column, not a partition dimension: training
windows align all products on one clock, and hourly x product partitions would pass Dagster's ~100k limit."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

from cb_assets.config import load_settings
from cb_assets.series.clock import HOUR

hourly_partitions = dg.HourlyPartitionsDefinition(start_date=load_settings().partitions_start, timezone="UTC")

# Every derived hour reads its own hour and the one before (Kalman warm-up, indicator look-back, window
# history): the mapping makes that dependency visible in the UI and to backfills.
previous_and_current_hour = dg.TimeWindowPartitionMapping(start_offset=-1)


def hours_in(window: dg.TimeWindow) -> list[datetime]:
    """The hour starts of a (possibly multi-hour, single-run backfill) partition time window."""
    start = window.start.astimezone(UTC)
    end = window.end.astimezone(UTC)
    return [start + i * HOUR for i in range(int((end - start) / HOUR))]
