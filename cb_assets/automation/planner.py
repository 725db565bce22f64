"""What the retraining sensor asks for next, as a pure function of what it sees (no Dagster, no database).

Per hour of data the chain raw_ticks -> training_windows is requested once the hour is complete. An hour moves
through these states (kept in the `hour_runs` table, so the status line and a check can show them):

    requested --run failed--> retry_wait --delay passed--> requested (again) ... --3 retries--> skipped
        \\--windows stored--> done                                    skipped --windows stored--> done

- A failed chain run (not one Dagster itself will retry: `dagster/will_retry`) is requested again after 1, 4 and
  16 minutes of wall clock, then the hour is recorded as skipped with its last error. A skipped hour is a gap:
  the next hour starts its filter cold instead of waiting for it, and fine-tuning goes on past it.
- When a skipped hour gets its windows after all (a manual run, a backfill), the hour after it, computed cold
  meanwhile, is requested again.
- Catch-up: after downtime, every complete hour within the last `catchup_hours` not requested yet is asked for
  oldest first, in one single-run backfill over the range; older ones are left to an explicit backfill.

Fine-tuning: hours with stored windows are handed to one fine-tune run at a time, in order; skipped hours and
hours with too few valid windows are passed over. The fine-tune cursor moves only when that run succeeded; the
hours of a run that failed are folded into the next request, so no hour is dropped from learning.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from cb_assets.series.clock import HOUR, partition_key

REQUESTED, RETRY_WAIT, SKIPPED, DONE = "requested", "retry_wait", "skipped", "done"
DEFAULT_RETRY_DELAYS_S: tuple[int, ...] = (60, 240, 960)
# A run that was requested but has not shown up in Dagster's run storage after this long is requested again
# (a request lost with a daemon that died before launching it).
LOST_AFTER = timedelta(minutes=10)


@dataclass(frozen=True)
class HourRun:
    hour: datetime
    state: str
    attempts: int
    run_key: str | None
    requested_at: datetime | None = None
    last_error: str | None = None
    next_attempt_at: datetime | None = None


@dataclass(frozen=True)
class RunOutcome:
    """What Dagster's run storage says about the run of a run key."""

    status: str  # queued | running | success | failure | canceled
    will_retry: bool = False  # Dagster's run retries will start another run for it
    error: str | None = None


@dataclass(frozen=True)
class ChainRequest:
    first: datetime
    last: datetime
    run_key: str


@dataclass
class ChainPlan:
    requests: list[ChainRequest] = field(default_factory=list)
    changed: list[HourRun] = field(default_factory=list)
    requested_through: datetime | None = None
    skipped_now: list[HourRun] = field(default_factory=list)


def plan_chain(
    *,
    now: datetime,
    complete_through: datetime,
    requested_through: datetime | None,
    earliest: datetime,
    open_hours: Mapping[datetime, HourRun],
    outcomes: Mapping[str, RunOutcome],
    has_windows: Callable[[datetime], bool],
    catchup_hours: int = 48,
    retry_delays_s: Sequence[int] = DEFAULT_RETRY_DELAYS_S,
) -> ChainPlan:
    """The chain runs to request now and the hour states that change.

    `open_hours`: hours in state requested, retry_wait or skipped; `outcomes`: by run key, for their runs;
    `has_windows(hour)`: whether the hour's training windows are stored.
    """
    plan = ChainPlan(requested_through=requested_through)
    # 1. New complete hours, oldest first, within the catch-up horizon, as one range.
    start = requested_through + HOUR if requested_through else earliest
    start = max(start, complete_through - (catchup_hours - 1) * HOUR, earliest)
    if start <= complete_through:
        key = f"hours:{partition_key(start)}..{partition_key(complete_through)}"
        plan.requests.append(ChainRequest(start, complete_through, key))
        h = start
        while h <= complete_through:
            plan.changed.append(HourRun(h, REQUESTED, 1, key, now))
            h += HOUR
        plan.requested_through = complete_through

    # 2. Hours already asked for: done, failed (retry later or skip), due again, or found after a skip.
    for hour, hr in sorted(open_hours.items()):
        if has_windows(hour):
            plan.changed.append(replace(hr, state=DONE, next_attempt_at=None))
            if hr.state == SKIPPED and hour + HOUR <= (requested_through or hour):
                # The next hour was computed cold meanwhile: compute it again with its look-back.
                nxt = hour + HOUR
                key = f"recompute:{partition_key(nxt)}:{now:%Y%m%dT%H%M%S}"
                plan.requests.append(ChainRequest(nxt, nxt, key))
            continue
        if hr.state == REQUESTED:
            outcome = outcomes.get(hr.run_key or "")
            if outcome is None:
                if hr.requested_at is not None and now - hr.requested_at > LOST_AFTER:
                    plan.requests.append(_again(hr, now, plan))
                continue
            if outcome.status not in ("failure", "canceled", "success") or outcome.will_retry:
                continue  # still queued or running, or Dagster retries the whole run itself
            error = outcome.error or f"the run ended {outcome.status} without windows for this hour"
            if hr.attempts > len(retry_delays_s):
                skipped = replace(hr, state=SKIPPED, last_error=error, next_attempt_at=None)
                plan.changed.append(skipped)
                plan.skipped_now.append(skipped)
            else:
                delay = timedelta(seconds=retry_delays_s[hr.attempts - 1])
                plan.changed.append(
                    replace(hr, state=RETRY_WAIT, last_error=error, next_attempt_at=now + delay)
                )
        elif hr.state == RETRY_WAIT and hr.next_attempt_at is not None and now >= hr.next_attempt_at:
            plan.requests.append(_again(hr, now, plan))
    return plan


def _again(hr: HourRun, now: datetime, plan: ChainPlan) -> ChainRequest:
    attempt = hr.attempts + 1
    key = f"hour:{partition_key(hr.hour)}:attempt{attempt}"
    plan.changed.append(replace(hr, state=REQUESTED, attempts=attempt, run_key=key, requested_at=now))
    return ChainRequest(hr.hour, hr.hour, key)


@dataclass(frozen=True)
class FineTuneCursor:
    through: datetime | None = None  # every hour up to here was learned by a successful fine-tune run
    inflight_key: str | None = None
    inflight_hours: tuple[str, ...] = ()
    carry: tuple[str, ...] = ()  # hours of a failed fine-tune run, folded into the next request
    failures: int = 0  # fine-tune runs failed or canceled in a row


@dataclass
class FineTunePlan:
    cursor: FineTuneCursor
    request_hours: tuple[str, ...] = ()
    request_key: str | None = None
    passed_over: list[str] = field(default_factory=list)
    already_learned: list[str] = field(default_factory=list)  # ready, but the registry holds them already
    waiting: str | None = None  # why nothing is requested although hours are ready


# After this many failed fine-tunes in a row the same hours are not tried again until a new hour is ready:
# a failure that repeats would otherwise launch a run per sensor tick.
MAX_FINE_TUNE_FAILURES = 3


def plan_fine_tune(
    cursor: FineTuneCursor,
    *,
    requested_through: datetime | None,
    earliest: datetime,
    outcome: RunOutcome | None,
    hour_state: Callable[[datetime], str | None],
    valid_windows: Callable[[datetime], int | None],
    min_valid_windows: int,
    paused: bool = False,
    learned: Collection[str] = (),
) -> FineTunePlan:
    """The next fine-tune request (at most one run in flight) and the cursor after this evaluation.

    `learned` holds the hours price_model would refuse as nothing new (learned by a promoted version, or
    the target of an earlier fine-tune): a run whose worker died after registering its version, retried,
    or hours a rejected challenger already took. They are dropped from the request rather than sent to
    fail with "nothing to train on" (and count towards the failures that hold fine-tuning back)."""
    if cursor.inflight_key is not None:
        if outcome is None or outcome.status in ("queued", "running") or outcome.will_retry:
            return FineTunePlan(cursor)
        if outcome.status == "success":
            last = max(cursor.inflight_hours)
            cursor = FineTuneCursor(through=max(cursor.through, _h(last)) if cursor.through else _h(last))
        else:
            cursor = FineTuneCursor(
                through=cursor.through,
                carry=tuple(sorted({*cursor.carry, *cursor.inflight_hours})),
                failures=cursor.failures + 1,
            )
    if paused or requested_through is None:
        return FineTunePlan(cursor)
    ready, passed = list(cursor.carry), []
    scanned_to = cursor.through
    h = cursor.through + HOUR if cursor.through else earliest
    while h <= requested_through:
        state = hour_state(h)
        valid = valid_windows(h)
        if valid is None:
            if state == SKIPPED or (state is None and h < requested_through - 48 * HOUR):
                passed.append(partition_key(h))
                scanned_to = h
                h += HOUR
                continue
            break  # not there yet: wait, in order
        (ready if valid >= min_valid_windows else passed).append(partition_key(h))
        scanned_to = h
        h += HOUR
    known = set(learned)
    already = sorted({h for h in ready if h in known})
    ready = sorted({h for h in ready if h not in known})
    if already:
        carry = tuple(h for h in cursor.carry if h not in known)
        cursor = replace(cursor, carry=carry, failures=cursor.failures if carry else 0)
    if not ready:
        return FineTunePlan(replace(cursor, through=scanned_to), passed_over=passed, already_learned=already)
    if cursor.failures >= MAX_FINE_TUNE_FAILURES and set(ready) <= set(cursor.carry):
        return FineTunePlan(
            cursor,
            passed_over=passed,
            waiting=f"{cursor.failures} fine-tunes of {ready[0]}..{ready[-1]} failed; trying again with the "
            "next hour",
        )
    # A run key is used once: a retry of the same hours needs its own.
    key = f"finetune:{ready[0]}..{ready[-1]}" + (f":attempt{cursor.failures + 1}" if cursor.failures else "")
    # The cursor moves when the run succeeds; hours passed over are behind it already.
    return FineTunePlan(
        FineTuneCursor(
            through=cursor.through,
            inflight_key=key,
            inflight_hours=tuple(ready),
            carry=cursor.carry,
            failures=cursor.failures,
        ),
        request_hours=tuple(ready),
        request_key=key,
        passed_over=passed,
        already_learned=already,
    )


def _h(key: str) -> datetime:
    from cb_assets.series.clock import hour_start

    return hour_start(key)
