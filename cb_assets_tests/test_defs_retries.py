"""Retries on a Dagster instance whose storage is PostgreSQL: a database that refuses connections for a few
seconds is waited out by the ops' RetryPolicy; a deterministic failure (invalid ticks) is not retried."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from psycopg import sql

from cb_assets.db.connection import connect, database_name, with_database
from cb_assets.defs.filled_series import filled_series
from cb_assets.defs.raw_ticks import raw_ticks
from cb_assets.defs.resources import resources_for
from cb_assets.defs.retries import RETRY_POLICY, deterministic_failures
from cb_assets.feed.seed import simulate_rows, write_rows
from cb_assets.stack.dagster_home import write_instance_yaml

PRODUCTS = ("BTC-USD", "ETH-USD")
START = datetime(2024, 3, 1, tzinfo=UTC)
KEY = "2024-03-01-01:00"


@pytest.fixture
def instance(make_database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    home = tmp_path / "dagster_home"
    write_instance_yaml(home)
    monkeypatch.setenv("CB_DAGSTER_DATABASE_URL", make_database(migrated=False))
    with dg.DagsterInstance.from_config(str(home)) as inst:
        assert type(inst.run_storage).__name__ == "PostgresRunStorage"
        yield inst


def _allow_connections(url: str, allow: bool) -> None:
    with connect(with_database(url, "postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
                sql.Identifier(database_name(url)), sql.SQL("true" if allow else "false")
            )
        )


def _events(result: dg.ExecuteInProcessResult, kind: dg.DagsterEventType) -> list:
    return [e for e in result.all_events if e.event_type == kind]


def test_a_database_refusing_connections_is_waited_out(make_database, instance, tmp_path: Path) -> None:
    url = make_database()
    _, rows = simulate_rows(PRODUCTS, START, 2, seed=2)
    write_rows(url, rows)
    _allow_connections(url, False)
    threading.Timer(3.0, _allow_connections, (url, True)).start()
    try:
        result = dg.materialize(
            [raw_ticks, filled_series],
            partition_key=KEY,
            resources=resources_for(url, tmp_path, PRODUCTS),
            instance=instance,
        )
    finally:
        _allow_connections(url, True)
    assert result.success
    assert _events(result, dg.DagsterEventType.STEP_UP_FOR_RETRY), (
        "the first attempt should have been refused"
    )
    assert {e.asset_key.path[-1] for e in result.get_asset_materialization_events()} == {
        "raw_ticks",
        "filled_series",
    }


def test_invalid_ticks_fail_at_once_without_retries(make_database, instance, tmp_path: Path) -> None:
    url = make_database()
    _, rows = simulate_rows(PRODUCTS, START, 2, seed=2)
    write_rows(url, rows)
    with connect(url) as conn:
        conn.execute(
            "UPDATE raw_ticks SET price = -1 WHERE time = (SELECT min(time) FROM raw_ticks WHERE time >= %s)",
            (START + timedelta(hours=1, minutes=3),),
        )
    result = dg.materialize(
        [filled_series],
        partition_key=KEY,
        resources=resources_for(url, tmp_path, PRODUCTS),
        instance=instance,
        raise_on_error=False,
    )
    assert not result.success
    assert not _events(result, dg.DagsterEventType.STEP_UP_FOR_RETRY)
    failure = _events(result, dg.DagsterEventType.STEP_FAILURE)[0]
    assert "price_positive: 2 rows" in failure.step_failure_data.error.message  # one frame, two products


def _interrupted_asset(cancel: bool) -> dg.AssetsDefinition:
    """An asset whose first attempt is interrupted, as a run termination does (after marking the run
    CANCELING when `cancel`) or as a worker shutting down does."""

    @dg.asset(name="interrupted", retry_policy=RETRY_POLICY)
    @deterministic_failures
    def interrupted(context) -> None:  # unannotated: Dagster cannot resolve a string annotation here
        if context.retry_number == 0:
            if cancel:
                context.instance.report_run_canceling(context.dagster_run)
            raise dg.DagsterExecutionInterruptedError()

    return interrupted


def test_a_terminated_run_is_canceled_not_retried_while_other_interrupts_keep_their_retry() -> None:
    with dg.DagsterInstance.ephemeral() as instance:
        terminated = dg.materialize(
            [_interrupted_asset(cancel=True)], instance=instance, raise_on_error=False
        )
        assert not _events(terminated, dg.DagsterEventType.STEP_UP_FOR_RETRY)
        run = instance.get_run_by_id(terminated.run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.CANCELED

        shutdown = dg.materialize([_interrupted_asset(cancel=False)], instance=instance, raise_on_error=False)
        assert _events(shutdown, dg.DagsterEventType.STEP_UP_FOR_RETRY) and shutdown.success
