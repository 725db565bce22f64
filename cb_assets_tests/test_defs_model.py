"""price_model, fine_tune_job, the registry and raw_ticks_sensor, in process against PostgreSQL.

The network is tiny so that TensorFlow stays fast; the data chain is the real one (simulated market ->
raw_ticks -> filled_series -> indicators -> training_windows)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest

from cb_assets.db import model_registry as registry
from cb_assets.db.connection import connect
from cb_assets.defs.sensors import SensorCursor, raw_ticks_sensor
from cb_assets.feed.seed import simulate_rows, write_rows
from cb_assets.series.clock import newest_complete_hour
from cb_assets_tests.assets_support import (
    ASSET_NAMES,
    HOUR,
    PRODUCTS,
    hour,
    materialize_range,
    resources,
)

H = ["2024-03-01-00:00", "2024-03-01-01:00", "2024-03-01-02:00", "2024-03-01-03:00"]
TINY = {
    "conv_filters": [8, 8],
    "d_model": 8,
    "heads": 2,
    "ff_dim": 16,
    "head_units": 8,
    "stride": 8,
    "epochs": 1,
}


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> dg.DagsterInstance:
    # Under pytest's own temporary tree (kept until the session ends), not an anonymous /tmp directory.
    with dg.instance_for_test(temp_dir=str(tmp_path_factory.mktemp("dagster_instance"))) as inst:
        yield inst


@pytest.fixture(scope="module")
def platform(make_database, instance, tmp_path_factory) -> tuple[str, dict, Path]:
    url = make_database()
    _, rows = simulate_rows(PRODUCTS, hour(H[0]), 4, seed=11)
    write_rows(url, rows)
    home = tmp_path_factory.mktemp("model")
    res = resources(url, home)
    assert materialize_range(ASSET_NAMES, H[0], H[3], res, instance).success
    return url, res, home


def _train(res: dict, instance: dg.DagsterInstance, **config: object) -> dg.ExecuteInProcessResult:
    from cb_assets.definitions import defs

    return dg.materialize(
        [defs.get_assets_def("price_model")],
        resources=res,
        instance=instance,
        run_config={"ops": {"price_model": {"config": {**TINY, **config}}}},
        raise_on_error=False,
    )


def test_sensor_requests_hours_then_fine_tunes_once(platform, instance) -> None:
    url, res, _ = platform
    sensor_resources = {k: res[k] for k in ("postgres", "market", "windows")}
    result = raw_ticks_sensor(dg.build_sensor_context(instance=instance, resources=sensor_resources))
    # The newest tick is just before 04:00; with 120 s grace hour 03:00 is not complete yet.
    with connect(url) as conn:
        newest = conn.execute("SELECT max(time) FROM raw_ticks").fetchone()[0]
    assert newest_complete_hour(newest, 120) == hour(H[2])
    hourly = [r for r in result.run_requests if r.job_name == "hourly_assets_job"]
    assert len(hourly) == 1 and hourly[0].tags["dagster/asset_partition_range_start"] == H[0]
    assert hourly[0].tags["dagster/asset_partition_range_end"] == H[2]
    tunes = [r for r in result.run_requests if r.job_name == "fine_tune_job"]
    # H0 is a cold start (no valid windows): passed over; H1 and H2 have windows and go into one run.
    assert len(tunes) == 1
    assert tunes[0].run_config["ops"]["price_model"]["config"]["hours"] == [H[1], H[2]]
    assert tunes[0].run_key == f"finetune:{H[1]}..{H[2]}"
    cursor = SensorCursor.parse(result.cursor)
    # The fine-tune cursor moves only once that run has succeeded.
    assert cursor.requested_through == H[2] and cursor.fine_tuned_through is None
    assert cursor.fine_tune_inflight == tunes[0].run_key

    # Nothing new: a skip with the reason, never the same request twice.
    again = raw_ticks_sensor(
        dg.build_sensor_context(instance=instance, cursor=result.cursor, resources=sensor_resources)
    )
    assert not again.run_requests and "nothing new" in again.skip_reason.skip_message

    # The fine-tune run succeeds; a new tick past 04:02 completes hour 03:00: the chain for H3, and (its
    # windows being materialised) a fine-tune on H3.
    instance.add_run(
        dg.DagsterRun(
            job_name="fine_tune_job",
            run_id=str(uuid.uuid4()),
            status=dg.DagsterRunStatus.SUCCESS,
            tags={"dagster/run_key": tunes[0].run_key},
        )
    )
    with connect(url) as conn:
        conn.execute(
            "INSERT INTO raw_ticks SELECT product_id, time + interval '5 minutes', price, volume_24_h, low_24_h, "
            "high_24_h, low_52_w, high_52_w, price_percent_chg_24_h, best_bid, best_ask, now(), source, -1, -1 "
            "FROM raw_ticks WHERE time = (SELECT max(time) FROM raw_ticks)"
        )
    third = raw_ticks_sensor(
        dg.build_sensor_context(instance=instance, cursor=again.cursor, resources=sensor_resources)
    )
    jobs = {r.job_name: r for r in third.run_requests}
    assert jobs["hourly_assets_job"].partition_key == H[3]
    assert jobs["fine_tune_job"].run_config["ops"]["price_model"]["config"]["hours"] == [H[3]]
    assert SensorCursor.parse(third.cursor).fine_tuned_through == H[2]


def test_initial_training_then_fine_tune_with_registry(platform, instance) -> None:
    url, res, _ = platform
    first = _train(res, instance, mode="initial", hours=[H[1], H[2]])
    assert first.success, first.all_events
    meta = first.get_asset_materialization_events()[0].materialization.metadata
    assert meta["mode"].value == "initial" and meta["promoted"].value is True
    assert meta["family"].value == "composite" and "gate" in meta
    v1 = meta["version_id"].value
    for key in (
        "skill_10s",
        "skill_200s",
        "challenger_score",
        "ridge_score",
        "persistence_score",
        "loss_curve",
    ):
        assert key in meta, key
    with connect(url) as conn:
        champ = registry.alias(conn)
        assert champ is not None and champ.id == v1 and champ.partitions == [H[1], H[2]]
        assert Path(champ.artifact_path).exists() and champ.artifact_path.endswith(".keras")

    second = _train(res, instance, mode="auto", hours=[H[3]])
    assert second.success
    meta2 = second.get_asset_materialization_events()[0].materialization.metadata
    assert meta2["mode"].value == "fine_tune"
    assert meta2["parent_version_id"].value == v1
    assert "champion_prequential_score" in meta2  # the champion was scored on H3 before any training on it
    assert meta2["replay_hours"].value == [H[1], H[2]]
    with connect(url) as conn:
        v2 = registry.get_version(conn, meta2["version_id"].value)
        assert v2.kind == "fine_tune" and v2.parent_id == v1 and v2.target_hour == H[3]
        expected_champion = v2.id if v2.status == "promoted" else v1
        assert registry.alias(conn).id == expected_champion
        assert v2.decision_reason.startswith(("promote", "keep champion"))
        roles = {
            (r[0], r[1])
            for r in conn.execute(
                "SELECT role, scope FROM model_evaluations WHERE partition_key = %s", (H[3],)
            )
        }
        assert roles == {
            ("champion", "full_hour"),
            ("champion", "holdout"),
            ("challenger", "holdout"),
            ("network", "holdout"),
            ("linear", "holdout"),
            ("ridge", "holdout"),
            ("persistence", "holdout"),
        }
        # One decision per output, kept with the version; the gate judged the tails of the newest hours.
        assert len(v2.gate["outputs"]) == 4 * len(PRODUCTS) and v2.family == "composite"
        assert v2.gate_partitions == [H[1], H[2], H[3]]
    assert meta2["gate_history_hours"].value == [H[1], H[2]]
    assert sum(meta2[f"outputs_{c}"].value for c in ("network", "linear", "persistence")) == 4 * len(PRODUCTS)

    # The same hour is never fine-tuned twice.
    again = _train(res, instance, mode="fine_tune", hours=[H[3]])
    assert not again.success
    failure = next(e for e in again.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "nothing to train on" in failure.step_failure_data.error.message


def test_models_commands_list_promote_rollback_pause_resume(platform, instance, monkeypatch, capsys) -> None:
    """Runs after the training test: operators see the versions and move the champion with a reason;
    pausing stops sensor-style (mode auto) fine-tunes and the asset says so; resume lifts it."""
    url, res, _ = platform
    from cb_assets.cli import main

    monkeypatch.setenv("CB_DATABASE_URL", url)
    with connect(url) as conn:
        first, second = sorted(v.id for v in registry.versions(conn))[:2]
        champion = registry.alias(conn).id
    assert main(["models", "list", "--gate"]) == 0
    out = capsys.readouterr().out
    assert f"* {champion:>4} " in out and "fine-tuning: running" in out and "per output" in out
    other = first if champion == second else second
    assert main(["models", "promote", str(other), "--reason", "operator test"]) == 0
    with connect(url) as conn:
        assert registry.alias(conn).id == other
        change = registry.alias_history(conn, limit=1)[0]
        assert (change.action, change.reason, change.previous_version_id) == (
            "promote",
            "operator test",
            champion,
        )
    assert main(["models", "rollback", "--reason", "back again"]) == 0
    with connect(url) as conn:
        assert registry.alias(conn).id == champion
        assert registry.alias_history(conn, limit=1)[0].action == "rollback"
    assert main(["models", "promote", "999999", "--reason", "x"]) == 1  # no such version: refused

    assert main(["models", "pause", "--reason", "bad feed day"]) == 0
    with connect(url) as conn:
        assert registry.fine_tuning_paused(conn) == (True, "bad feed day")
    paused = _train(res, instance, mode="auto")
    assert not paused.success
    failure = next(e for e in paused.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "paused (bad feed day)" in failure.step_failure_data.error.message
    assert main(["models", "list"]) == 0
    assert "PAUSED (bad feed day)" in capsys.readouterr().out
    assert main(["models", "resume"]) == 0
    with connect(url) as conn:
        assert registry.fine_tuning_paused(conn)[0] is False


def test_rejected_hours_stay_pending_until_a_promoted_version_learns_them(make_database) -> None:
    url = make_database()
    common = {"metrics": {}, "artifact_path": "x.keras", "decision_reason": "test", "family": "composite"}
    with connect(url) as conn:
        v1 = registry.register(
            conn,
            kind="initial",
            parent_id=None,
            partitions=[H[0], H[1]],
            target_hour=None,
            status="promoted",
            **common,
        )
        registry.set_alias(conn, v1, "first")
        registry.register(
            conn,
            kind="fine_tune",
            parent_id=v1,
            partitions=[H[2]],
            target_hour=H[2],
            status="rejected",
            **common,
        )
        assert registry.fine_tuned_hours(conn) == {H[0], H[1]}
        assert registry.pending_hours(conn) == [H[2]] and H[2] in registry.trained_hours(conn)
        assert registry.fine_tune_targets(conn) == {H[2]}
        v3 = registry.register(
            conn,
            kind="fine_tune",
            parent_id=v1,
            partitions=[H[2], H[3]],
            target_hour=H[3],
            status="promoted",
            **common,
        )
        registry.set_alias(conn, v3, "learned both")
        assert registry.pending_hours(conn) == []
        assert registry.fine_tuned_hours(conn) == set(H)


def test_empty_table_skips_with_reason(make_database, instance) -> None:
    url = make_database()
    res = resources(url, Path("/nonexistent"))
    ctx = dg.build_sensor_context(
        instance=instance, resources={k: res[k] for k in ("postgres", "market", "windows")}
    )
    assert "raw_ticks is empty" in raw_ticks_sensor(ctx).skip_message


def test_newest_complete_hour_uses_the_grace_period() -> None:
    t = hour(H[1]) + timedelta(seconds=119)
    assert newest_complete_hour(t, 120) == hour(H[0]) - HOUR
    assert newest_complete_hour(t + timedelta(seconds=1), 120) == hour(H[0])


def test_sensor_leaves_out_hours_the_registry_holds(platform, instance) -> None:
    """After the tests above trained on H1..H3, a sensor with a fresh cursor requests no fine-tune of them
    (price_model would refuse them as nothing to train on) and moves its fine-tune cursor past them."""
    url, res, _ = platform
    with connect(url) as conn:
        held = registry.held_hours(conn)
    assert {H[1], H[2], H[3]} <= held
    result = raw_ticks_sensor(
        dg.build_sensor_context(
            instance=instance, resources={k: res[k] for k in ("postgres", "market", "windows")}
        )
    )
    assert [r for r in result.run_requests if r.job_name == "fine_tune_job"] == []
    assert any(r.job_name == "hourly_assets_job" for r in result.run_requests)
    assert SensorCursor.parse(result.cursor).fine_tuned_through == H[3]
