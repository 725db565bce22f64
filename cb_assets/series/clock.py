"""Hours on the data clock: the partition key format and when an hour counts as complete.

Every hourly partition is a UTC hour written `YYYY-MM-DD-HH:00` (Dagster's hourly key format). An hour H is
complete once the newest tick is at or past H + 1 h + grace: the clock is the data's own, so replays and the
accelerated demo complete hours at their pace, live data at the wall clock's. The sensor, the schedule, the
status line, the raw_ticks checks and the live forecaster all decide it here.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

HOUR = timedelta(hours=1)
PARTITION_KEY_FORMAT = "%Y-%m-%d-%H:%M"


def partition_key(hour: datetime) -> str:
    """'2024-03-01-05:00' for the hour starting at 05:00 UTC (an aware datetime in any zone)."""
    return hour.astimezone(UTC).strftime(PARTITION_KEY_FORMAT)


def hour_start(key: str) -> datetime:
    """The UTC start of the hour a partition key names; ValueError when it is not one."""
    start = datetime.strptime(key, PARTITION_KEY_FORMAT).replace(tzinfo=UTC)
    if start.minute:
        raise ValueError(f"{key!r} is not an hour partition key (minutes must be 00)")
    return start


def floor_hour(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def hours_from(start: datetime, end: datetime) -> Iterator[datetime]:
    """The hour starts h with start <= h < end (start is floored to its hour)."""
    h = floor_hour(start)
    while h < end:
        yield h
        h += HOUR


def completes_at(hour: datetime, grace_s: int) -> datetime:
    """The data time from which `hour` counts as complete: its end plus the grace for late ticks."""
    return hour + HOUR + timedelta(seconds=grace_s)


def is_complete(hour: datetime, newest_tick: datetime | None, grace_s: int) -> bool:
    return newest_tick is not None and newest_tick >= completes_at(hour, grace_s)


def newest_complete_hour(newest_tick: datetime, grace_s: int) -> datetime:
    """The last hour that `is_complete` at this data clock."""
    return floor_hour(newest_tick - timedelta(seconds=grace_s)) - HOUR
