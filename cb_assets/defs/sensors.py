"""`raw_ticks_sensor`: newly complete hours of the Kafka-fed table become runs, failed hours are retried and
then skipped, fine-tunes follow the stored windows, and live forecasts are scored once their outcomes are in.

Each evaluation gathers what it needs cheaply: the data clock (one indexed query), the hours still open in
`hour_runs`, the Dagster runs of their run keys (by the `dagster/run_key` tag), the stored windows' meta.json,
and hands it to `automation.planner`, which decides (see there for the rules). Its state lives in the cursor
(high-water marks and the fine-tune in flight) and in `hour_runs`. No TensorFlow here: sensors are evaluated
in the code server and time out after 60 s.
"""

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

import dagster as dg

from cb_assets.automation.planner import (
    SKIPPED,
    ChainRequest,
    FineTuneCursor,
    RunOutcome,
    plan_chain,
    plan_fine_tune,
)
from cb_assets.config import load_settings
from cb_assets.db import hour_runs_store, model_registry
from cb_assets.db.raw_store import raw_clock
from cb_assets.defs.jobs import fine_tune_job, forecast_scores_job, hourly_assets_job
from cb_assets.defs.partitions import hourly_partitions
from cb_assets.defs.resources import MarketResource, PostgresResource, WindowStoreResource
from cb_assets.model.pipeline import MIN_HOLDOUT_WINDOWS
from cb_assets.series.clock import HOUR, floor_hour, hour_start, newest_complete_hour, partition_key
from cb_assets.series.schema import HORIZONS_S

# A fine-tune needs held-out windows in the newest hour; hours with fewer valid windows are passed over.
MIN_VALID_WINDOWS = 3 * MIN_HOLDOUT_WINDOWS
_SETTINGS = load_settings()
_STATUS = {
    dg.DagsterRunStatus.SUCCESS: "success",
    dg.DagsterRunStatus.FAILURE: "failure",
    dg.DagsterRunStatus.CANCELED: "canceled",
    dg.DagsterRunStatus.STARTED: "running",
    dg.DagsterRunStatus.CANCELING: "running",
}


@dataclass
class SensorCursor:
    requested_through: str | None = None
    fine_tuned_through: str | None = None
    fine_tune_inflight: str | None = None
    fine_tune_inflight_hours: list[str] = field(default_factory=list)
    fine_tune_carry: list[str] = field(default_factory=list)
    fine_tune_failures: int = 0
    scored_through: str | None = None
    newest_tick: str | None = None
    newest_received_at: str | None = None

    @classmethod
    def parse(cls, raw: str | None) -> "SensorCursor":
        if not raw:
            return cls()
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in json.loads(raw).items() if k in known})

    def dump(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def fine_tune(self) -> FineTuneCursor:
        return FineTuneCursor(
            through=hour_start(self.fine_tuned_through) if self.fine_tuned_through else None,
            inflight_key=self.fine_tune_inflight,
            inflight_hours=tuple(self.fine_tune_inflight_hours),
            carry=tuple(self.fine_tune_carry),
            failures=self.fine_tune_failures,
        )

    def set_fine_tune(self, c: FineTuneCursor) -> None:
        self.fine_tuned_through = partition_key(c.through) if c.through else None
        self.fine_tune_inflight = c.inflight_key
        self.fine_tune_inflight_hours = list(c.inflight_hours)
        self.fine_tune_carry = list(c.carry)
        self.fine_tune_failures = c.failures


def run_outcome(instance: dg.DagsterInstance, run_key: str) -> RunOutcome | None:
    """The newest run of `run_key` (a run retried by Dagster has the same key), or None if there is none."""
    records = instance.get_run_records(dg.RunsFilter(tags={"dagster/run_key": run_key}), limit=1)
    if not records:
        return None
    run = records[0].dagster_run
    status = _STATUS.get(run.status, "queued")
    error = None
    if status == "failure":
        failures = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        if failures and failures[-1].dagster_event is not None:
            data = failures[-1].dagster_event.step_failure_data
            error = data.error.message.strip()[:500] if data and data.error else None
    return RunOutcome(status, run.tags.get("dagster/will_retry") == "true", error)


def _range_request(job_name: str, first: datetime, last: datetime, run_key: str) -> dg.RunRequest:
    first_key, last_key = partition_key(first), partition_key(last)
    if first_key == last_key:
        return dg.RunRequest(run_key=run_key, job_name=job_name, partition_key=first_key)
    return dg.RunRequest(
        run_key=run_key,
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
    key = f"scores:{partition_key(start)}..{partition_key(scoreable)}"
    return _range_request(forecast_scores_job.name, start, scoreable, key)


def _chain_requests(chain: list[ChainRequest]) -> list[dg.RunRequest]:
    return [_range_request(hourly_assets_job.name, r.first, r.last, r.run_key) for r in chain]


@dg.sensor(
    name="raw_ticks_sensor",
    jobs=[hourly_assets_job, fine_tune_job, forecast_scores_job],
    minimum_interval_seconds=_SETTINGS.sensor_interval_s,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests the hourly chain for every newly completed hour of raw_ticks (failed hours again after "
    "1, 4 and 16 minutes, then skipped), a fine-tune of price_model on the hours whose windows are stored, and "
    "forecast_scores once an hour's outcomes are known.",
)
def raw_ticks_sensor(
    context: dg.SensorEvaluationContext,
    postgres: PostgresResource,
    market: MarketResource,
    windows: WindowStoreResource,
) -> dg.SensorResult | dg.SkipReason:
    cursor = SensorCursor.parse(context.cursor)
    now = datetime.now(UTC)
    with postgres.connection() as conn:
        clock = raw_clock(conn)
        if clock.newest_tick is None:
            return dg.SkipReason("raw_ticks is empty: no feed has delivered ticks yet")
        open_hours = hour_runs_store.open_hours(conn)
        paused, paused_why = model_registry.fine_tuning_paused(conn)
        learned = model_registry.held_hours(conn)
        earliest = max(floor_hour(clock.first_tick), floor_hour(hourly_partitions.start))
        store = windows.store
        chain = plan_chain(
            now=now,
            complete_through=newest_complete_hour(clock.newest_tick, market.hour_grace_s),
            requested_through=hour_start(cursor.requested_through) if cursor.requested_through else None,
            earliest=earliest,
            open_hours=open_hours,
            outcomes={
                h.run_key: o
                for h in open_hours.values()
                if h.run_key and h.state == "requested" and (o := run_outcome(context.instance, h.run_key))
            },
            has_windows=lambda h: store.exists(partition_key(h)),
            catchup_hours=_SETTINGS.catchup_hours,
            retry_delays_s=_SETTINGS.hour_retry_delays_s,
        )
        hour_runs_store.save(conn, chain.changed)
        states = {**{h: r.state for h, r in open_hours.items()}, **{r.hour: r.state for r in chain.changed}}
    cursor.newest_tick, cursor.newest_received_at = (
        clock.newest_tick.isoformat(),
        clock.newest_received.isoformat(),
    )
    if chain.requested_through is not None:
        cursor.requested_through = partition_key(chain.requested_through)
    for hr in chain.skipped_now:
        context.log.warning(
            "hour %s skipped after %d attempts: %s", partition_key(hr.hour), hr.attempts, hr.last_error
        )
    requests = _chain_requests(chain.requests)

    ft = cursor.fine_tune()
    tune = plan_fine_tune(
        ft,
        requested_through=chain.requested_through,
        earliest=earliest,
        outcome=run_outcome(context.instance, ft.inflight_key) if ft.inflight_key else None,
        hour_state=states.get,
        valid_windows=lambda h: store.valid_count(partition_key(h)),
        min_valid_windows=MIN_VALID_WINDOWS,
        paused=paused,
        learned=learned,
    )
    cursor.set_fine_tune(tune.cursor)
    if tune.waiting:
        context.log.warning(tune.waiting)
    if tune.already_learned:
        context.log.info("not fine-tuning on %s again: the registry holds them already", tune.already_learned)
    if tune.passed_over:
        context.log.info("not fine-tuning on %s: skipped, or too few valid windows", tune.passed_over)
    if tune.request_key:
        requests.append(
            dg.RunRequest(
                run_key=tune.request_key,
                job_name=fine_tune_job.name,
                run_config={
                    "ops": {"price_model": {"config": {"mode": "auto", "hours": list(tune.request_hours)}}}
                },
                tags={"cb/hours": ",".join(tune.request_hours)},
            )
        )
    scores = _scores_request(cursor, clock.newest_tick, earliest, market.hour_grace_s)
    if scores is not None:
        requests.append(scores)
    if not requests:
        skipped = sum(1 for s in states.values() if s == SKIPPED)
        return dg.SensorResult(
            skip_reason=dg.SkipReason(
                f"nothing new: newest tick {clock.newest_tick:%Y-%m-%d %H:%M:%S}, requested through "
                f"{cursor.requested_through}, fine-tuned through {cursor.fine_tuned_through}"
                + (f", fine-tune {cursor.fine_tune_inflight} in flight" if cursor.fine_tune_inflight else "")
                + (f", {skipped} hours skipped" if skipped else "")
                + (f"; fine-tuning paused ({paused_why})" if paused else "")
            ),
            cursor=cursor.dump(),
        )
    return dg.SensorResult(run_requests=requests, cursor=cursor.dump())
