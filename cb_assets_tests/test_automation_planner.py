"""The retraining planner's rules, as plain functions: retries then skip, a skipped hour found later, catch-up,
lost requests, and a fine-tune cursor that moves only on success."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cb_assets.automation.planner import (
    DONE,
    MAX_FINE_TUNE_FAILURES,
    REQUESTED,
    RETRY_WAIT,
    SKIPPED,
    FineTuneCursor,
    HourRun,
    RunOutcome,
    plan_chain,
    plan_fine_tune,
)
from cb_assets.series.clock import HOUR, partition_key

T0 = datetime(2024, 3, 1, tzinfo=UTC)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def h(i: int) -> datetime:
    return T0 + i * HOUR


def chain(**kw):
    base = dict(
        now=NOW,
        complete_through=h(2),
        requested_through=h(2),
        earliest=h(0),
        open_hours={},
        outcomes={},
        has_windows=lambda _: False,
    )
    return plan_chain(**{**base, **kw})


def test_new_complete_hours_are_requested_as_one_range() -> None:
    plan = chain(requested_through=None)
    assert [(r.first, r.last) for r in plan.requests] == [(h(0), h(2))]
    assert [c.state for c in plan.changed] == [REQUESTED] * 3 and plan.requested_through == h(2)


def test_catch_up_is_limited_to_the_horizon() -> None:
    plan = chain(complete_through=h(100), requested_through=h(2), catchup_hours=48)
    assert [(r.first, r.last) for r in plan.requests] == [(h(53), h(100))]


def test_a_failing_hour_is_retried_after_1_4_16_minutes_then_skipped() -> None:
    hr = HourRun(h(1), REQUESTED, 1, "hours:x", NOW)
    failed = {"hours:x": RunOutcome("failure", error="boom")}
    waits = []
    for attempt in range(1, 5):
        plan = chain(now=NOW, open_hours={h(1): hr}, outcomes=failed)
        (hr,) = [c for c in plan.changed if c.hour == h(1)]
        if attempt == 4:
            assert hr.state == SKIPPED and hr.last_error == "boom" and plan.skipped_now == [hr]
            break
        assert hr.state == RETRY_WAIT and not plan.requests
        waits.append(hr.next_attempt_at - NOW)
        early = chain(now=hr.next_attempt_at - timedelta(seconds=1), open_hours={h(1): hr})
        assert not early.requests
        due = chain(now=hr.next_attempt_at, open_hours={h(1): hr})
        (again,) = due.requests
        assert (again.first, again.last) == (h(1), h(1))
        (hr,) = [c for c in due.changed if c.hour == h(1)]
        assert hr.state == REQUESTED and hr.attempts == attempt + 1
        failed = {hr.run_key: RunOutcome("failure", error="boom")}
    assert waits == [timedelta(minutes=1), timedelta(minutes=4), timedelta(minutes=16)]


def test_a_run_that_dagster_retries_or_that_still_runs_is_left_alone() -> None:
    hr = HourRun(h(1), REQUESTED, 1, "k", NOW)
    for outcome in (RunOutcome("failure", will_retry=True), RunOutcome("running"), RunOutcome("queued")):
        plan = chain(open_hours={h(1): hr}, outcomes={"k": outcome})
        assert not plan.changed and not plan.requests


def test_windows_make_an_hour_done_and_a_late_skipped_hour_recomputes_the_next() -> None:
    requested = HourRun(h(0), REQUESTED, 1, "k", NOW)
    skipped = HourRun(h(1), SKIPPED, 4, "k4", NOW, last_error="boom")
    plan = chain(open_hours={h(0): requested, h(1): skipped}, has_windows=lambda x: x in (h(0), h(1)))
    assert {c.hour: c.state for c in plan.changed} == {h(0): DONE, h(1): DONE}
    assert [(r.first, r.last) for r in plan.requests] == [(h(2), h(2))]  # computed cold meanwhile


def test_a_request_lost_before_launch_is_made_again() -> None:
    hr = HourRun(h(1), REQUESTED, 1, "k", NOW - timedelta(minutes=11))
    plan = chain(open_hours={h(1): hr})
    assert [(r.first, r.last) for r in plan.requests] == [(h(1), h(1))]
    assert (
        chain(open_hours={h(1): HourRun(h(1), REQUESTED, 1, "k", NOW - timedelta(minutes=5))}).requests == []
    )


def tune(
    cursor: FineTuneCursor, valid: dict[int, int | None], states: dict[int, str] | None = None, outcome=None
):
    return plan_fine_tune(
        cursor,
        requested_through=h(max(valid)),
        earliest=h(0),
        outcome=outcome,
        hour_state=lambda x: (states or {}).get(int((x - T0) / HOUR)),
        valid_windows=lambda x: valid.get(int((x - T0) / HOUR)),
        min_valid_windows=300,
    )


def test_fine_tune_passes_skipped_and_thin_hours_and_moves_only_on_success() -> None:
    plan = tune(FineTuneCursor(), {0: 10, 1: 3000, 2: None, 3: 3000}, states={2: SKIPPED})
    keys = [partition_key(h(i)) for i in (1, 3)]
    assert plan.request_hours == tuple(keys) and plan.passed_over == [
        partition_key(h(0)),
        partition_key(h(2)),
    ]
    assert plan.cursor.through is None and plan.cursor.inflight_key == plan.request_key

    waiting = tune(plan.cursor, {0: 10, 1: 3000, 2: None, 3: 3000, 4: 3000}, outcome=RunOutcome("running"))
    assert waiting.request_hours == () and waiting.cursor == plan.cursor  # one fine-tune in flight at a time

    done = tune(plan.cursor, {0: 10, 1: 3000, 2: None, 3: 3000, 4: 3000}, outcome=RunOutcome("success"))
    assert done.cursor.through == h(3) and done.request_hours == (partition_key(h(4)),)


def test_a_failed_fine_tune_folds_its_hours_into_the_next_request() -> None:
    inflight = FineTuneCursor(through=h(0), inflight_key="finetune:a", inflight_hours=(partition_key(h(1)),))
    plan = tune(inflight, {0: 3000, 1: 3000, 2: 3000}, outcome=RunOutcome("failure"))
    assert plan.request_hours == (partition_key(h(1)), partition_key(h(2)))
    assert plan.cursor.through == h(0)


def test_a_canceled_fine_tune_is_requested_again_under_a_new_run_key_until_it_keeps_failing() -> None:
    """Dagster launches a run key once: re-requesting the same hours under the old key would be dropped and
    fine-tuning would stall for good."""
    valid = {0: 3000, 1: 3000}
    plan = tune(FineTuneCursor(), valid)
    keys = [plan.request_key]
    for _ in range(MAX_FINE_TUNE_FAILURES):
        plan = tune(plan.cursor, valid, outcome=RunOutcome("canceled"))
        keys.append(plan.request_key)
        assert plan.request_hours in ((), (partition_key(h(0)), partition_key(h(1))))
    assert None not in keys[:-1] and len(set(keys[:-1])) == MAX_FINE_TUNE_FAILURES
    assert keys[-1] is None and "failed" in (plan.waiting or "")  # no run per sensor tick for a lasting fault
    assert tune(plan.cursor, valid).request_key is None

    plan = tune(plan.cursor, {**valid, 2: 3000})  # a new hour: the failed ones go with it
    assert plan.request_hours == tuple(partition_key(h(i)) for i in range(3)) and plan.request_key not in keys
    done = tune(plan.cursor, {**valid, 2: 3000}, outcome=RunOutcome("success"))
    assert done.cursor == FineTuneCursor(through=h(2))


def test_an_hour_not_there_yet_holds_fine_tuning_in_order() -> None:
    plan = tune(FineTuneCursor(), {0: 3000, 1: None, 2: 3000}, states={1: RETRY_WAIT})
    assert plan.request_hours == (partition_key(h(0)),)


def test_hours_the_registry_holds_are_not_requested_again() -> None:
    """A fine-tune whose worker died after registering its version failed, so its hours are carried; the
    registry refuses them ("nothing to train on"), so they are dropped instead of failing run after run."""
    k = [partition_key(h(i)) for i in range(3)]
    inflight = FineTuneCursor(through=h(0), inflight_key="finetune:a", inflight_hours=(k[1],), failures=1)

    def evaluate(cursor: FineTuneCursor, through: int, outcome=None, learned=()):
        return plan_fine_tune(
            cursor,
            requested_through=h(through),
            earliest=h(0),
            outcome=outcome,
            hour_state=lambda x: None,
            valid_windows=lambda x: 3000,
            min_valid_windows=300,
            learned=learned,
        )

    again = evaluate(inflight, 1, RunOutcome("failure"))
    assert again.request_hours == (k[1],) and again.cursor.failures == 2  # without the registry's word

    held = evaluate(inflight, 1, RunOutcome("failure"), learned={k[0], k[1]})
    assert held.request_hours == () and held.already_learned == [k[1]]
    assert held.cursor == FineTuneCursor(through=h(1))  # carry and failure count cleared

    nxt = evaluate(held.cursor, 2, learned={k[0], k[1]})
    assert nxt.request_hours == (k[2],) and nxt.request_key == f"finetune:{k[2]}..{k[2]}"
