"""`raw_ticks_sensor`: turns newly completed hours of the Kafka-fed table into runs, then fine-tunes.

Each evaluation runs ONE indexed query (min/max of `time`, max of `received_at`, all answered from the
b-tree indexes) and keeps its state in the cursor:
- `requested_through`: the newest hour whose data chain (raw_ticks -> training_windows) was requested. An hour
  is complete when the data clock (the newest tick) has passed its end plus CB_HOUR_GRACE_S: replays and the
  accelerated demo complete hours on their own clock, live data on the wall clock's.
- `fine_tuned_through`: the newest hour handed to a fine-tune. A fine-tune is requested once an hour's
  training_windows are stored with enough valid windows; several ready hours go into one run.
Run keys make a repeated request harmless, and the registry refuses a second fine-tune of the same hour.
No TensorFlow here: sensors are evaluated in the code server and time out after 60 s.
"""

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import dagster as dg

from cb_assets.config import load_settings
from cb_assets.db.raw_store import raw_clock
from cb_assets.defs.jobs import fine_tune_job, forecast_scores_job, hourly_assets_job
from cb_assets.defs.partitions import hourly_partitions
from cb_assets.defs.resources import MarketResource, PostgresResource, WindowStoreResource
from cb_assets.model.pipeline import MIN_HOLDOUT_WINDOWS
from cb_assets.series.clock import HOUR, floor_hour, hour_start, newest_complete_hour, partition_key
from cb_assets.series.schema import HORIZONS_S

# A fine-tune needs held-out windows in the newest hour; hours with fewer valid windows are passed over.
MIN_VALID_WINDOWS = 3 * MIN_HOLDOUT_WINDOWS


@dataclass
class SensorCursor:
    requested_through: str | None = None
    fine_tuned_through: str | None = None
    newest_tick: str | None = None
    newest_received_at: str | None = None
    scored_through: str | None = None

    @classmethod
    def parse(cls, raw: str | None) -> "SensorCursor":
        return cls(**json.loads(raw)) if raw else cls()

    def dump(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _range_request(job_name: str, first: datetime, last: datetime, prefix: str) -> dg.RunRequest:
    first_key, last_key = partition_key(first), partition_key(last)
    if first_key == last_key:
        return dg.RunRequest(run_key=f"{prefix}:{first_key}", job_name=job_name, partition_key=first_key)
    return dg.RunRequest(
        run_key=f"{prefix}:{first_key}..{last_key}",
        job_name=job_name,
        tags={
            "dagster/asset_partition_range_start": first_key,
            "dagster/asset_partition_range_end": last_key,
        },
    )


def _scores_request(
    cursor: SensorCursor, newest: datetime, earliest: datetime, grace_s: int
) -> dg.RunRequest | None:
    """forecast_scores for the hours whose every forecast can be scored: the data has passed the hour's end
    plus the longest horizon plus the grace for late ticks."""
    scoreable = newest_complete_hour(newest - timedelta(seconds=max(HORIZONS_S)), grace_s)
    start = hour_start(cursor.scored_through) + HOUR if cursor.scored_through else earliest
    if start > scoreable:
        return None
    cursor.scored_through = partition_key(scoreable)
    return _range_request(forecast_scores_job.name, start, scoreable, "scores")


@dg.sensor(
    name="raw_ticks_sensor",
    jobs=[hourly_assets_job, fine_tune_job, forecast_scores_job],
    minimum_interval_seconds=load_settings().sensor_interval_s,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests the hourly chain for every newly completed hour of raw_ticks, then a fine-tune of "
    "price_model on it (cursor = high-water marks; one indexed query per evaluation).",
)
def raw_ticks_sensor(
    context: dg.SensorEvaluationContext,
    postgres: PostgresResource,
    market: MarketResource,
    windows: WindowStoreResource,
) -> dg.SensorResult | dg.SkipReason:
    cursor = SensorCursor.parse(context.cursor)
    with postgres.connection() as conn:
        clock = raw_clock(conn)
    first, newest, received = clock.first_tick, clock.newest_tick, clock.newest_received
    if newest is None:
        return dg.SkipReason("raw_ticks is empty: no feed has delivered ticks yet")
    cursor.newest_tick, cursor.newest_received_at = newest.isoformat(), received.isoformat()
    requests: list[dg.RunRequest] = []

    complete = newest_complete_hour(newest, market.hour_grace_s)
    earliest = max(floor_hour(first), floor_hour(hourly_partitions.start))
    start = hour_start(cursor.requested_through) + HOUR if cursor.requested_through else earliest
    if start <= complete:
        requests.append(_range_request(hourly_assets_job.name, start, complete, "hours"))
        cursor.requested_through = partition_key(complete)

    ready: list[str] = []
    passed_over: list[str] = []
    if cursor.requested_through:
        h = hour_start(cursor.fine_tuned_through) + HOUR if cursor.fine_tuned_through else earliest
        while h <= hour_start(cursor.requested_through):
            key = partition_key(h)
            # The stored partition's meta.json says how many windows are valid (a single-run backfill's
            # materialisation metadata only has totals over its whole range).
            valid = windows.store.valid_count(key)
            if valid is None:
                break  # its windows are not there yet: wait, in order
            (ready if valid >= MIN_VALID_WINDOWS else passed_over).append(key)
            cursor.fine_tuned_through = key
            h += HOUR
    if passed_over:
        context.log.info("not fine-tuning on %s: too few valid windows (warm-up or gaps)", passed_over)
    if ready:
        requests.append(
            dg.RunRequest(
                run_key=f"finetune:{ready[0]}..{ready[-1]}",
                job_name=fine_tune_job.name,
                run_config={"ops": {"price_model": {"config": {"mode": "auto", "hours": ready}}}},
                tags={"cb/hours": ",".join(ready)},
            )
        )
    scores = _scores_request(cursor, newest, earliest, market.hour_grace_s)
    if scores is not None:
        requests.append(scores)
    if not requests:
        return dg.SensorResult(
            skip_reason=dg.SkipReason(
                f"nothing new: newest tick {newest:%Y-%m-%d %H:%M:%S}, complete through "
                f"{cursor.requested_through}, fine-tuned through {cursor.fine_tuned_through}"
            ),
            cursor=cursor.dump(),
        )
    return dg.SensorResult(run_requests=requests, cursor=cursor.dump())
