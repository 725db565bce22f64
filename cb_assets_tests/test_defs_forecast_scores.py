"""forecast_scores on a ledger with known outcomes: the scores are the held-out metrics of those outcomes, a
champion worse than persistence is flagged, a good one is not, and the plot is there for the UI."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from cb_assets.db import model_registry as registry
from cb_assets.db.connection import connect
from cb_assets.defs.forecast_scores import forecast_scores
from cb_assets.defs.resources import resources_for
from cb_assets_tests.forecast_support import ledger_version, seed_scored_ledger

HOUR = datetime(2024, 3, 1, 12, tzinfo=UTC)
KEY = "2024-03-01-12:00"
PRODUCTS = ("BTC-USD", "ETH-USD")


@pytest.fixture(scope="module")
def scored(database_url: str, tmp_path_factory: pytest.TempPathFactory):
    with connect(database_url) as conn:
        good = ledger_version(conn, heldout=0.7)
        bad = ledger_version(conn, heldout=0.2)
        registry.set_alias(conn, bad, "test: a champion that is worse than persistence live")
        conn.commit()
    truth = seed_scored_ledger(database_url, HOUR, PRODUCTS, {good: 0.5, bad: -1.0})
    res = resources_for(database_url, tmp_path_factory.mktemp("scores"), PRODUCTS)
    with dg.instance_for_test(temp_dir=str(tmp_path_factory.mktemp("instance"))) as instance:
        result = dg.materialize([forecast_scores], partition_key=KEY, resources=res, instance=instance)
    return database_url, good, bad, truth, result


def test_scores_are_the_metrics_of_the_outcomes(scored) -> None:
    url, good, bad, truth, result = scored
    assert result.success
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT version_id, product_id, horizon_s, n, skill, mae_bp FROM forecast_scores WHERE hour = %s",
            (HOUR,),
        ).fetchall()
    assert len(rows) == 2 * len(PRODUCTS) * 4
    for version, product, h, n, skill, mae_bp in rows:
        y, f = truth[(version, product, h)]
        assert n == len(y) == 720
        assert skill == pytest.approx(1 - np.mean((f - y) ** 2) / np.mean(y**2), rel=1e-9)
        assert mae_bp == pytest.approx(np.mean(np.abs(f - y)) * 1e4, rel=1e-9)
    by_version = {v: [s for vv, _, _, _, s, _ in rows if vv == v] for v in (good, bad)}
    assert all(s == pytest.approx(0.75) for s in by_version[good])
    assert all(s == pytest.approx(-3.0) for s in by_version[bad])


def test_a_champion_worse_than_persistence_live_is_flagged_with_a_plot(scored) -> None:
    _, _, bad, _, result = scored
    check = result.get_asset_check_evaluations()[0]
    assert check.check_name == "champion_live_skill" and not check.passed
    assert check.severity == dg.AssetCheckSeverity.WARN
    assert "significantly below persistence" in check.description
    assert check.metadata["champion_version_id"].value == bad
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert meta["champion_skill"].value == pytest.approx(-3.0)
    assert "data:image/png;base64," in meta["live_skill_plot"].value


def test_outcomes_are_the_last_price_at_anchor_plus_horizon(scored) -> None:
    url, good, *_ = scored
    with connect(url) as conn:
        a, h, ret, last, outcome = conn.execute(
            "SELECT anchor, horizon_s, outcome_return, last_price, outcome_price FROM forecasts "
            "WHERE version_id = %s AND product_id = 'ETH-USD' ORDER BY anchor, horizon_s LIMIT 1 OFFSET 77",
            (good,),
        ).fetchone()
        price = conn.execute(
            "SELECT price FROM raw_ticks WHERE product_id = 'ETH-USD' AND time <= %s ORDER BY time DESC LIMIT 1",
            (a + timedelta(seconds=h),),
        ).fetchone()[0]
    assert outcome == price and ret == pytest.approx(np.log(price / last), abs=1e-15)


def test_a_good_champion_passes(database_url: str, tmp_path: Path, scored) -> None:
    _, good, *_ = scored
    with connect(database_url) as conn:
        registry.set_alias(conn, good, "test: the good one")
        conn.commit()
    res = resources_for(database_url, tmp_path, PRODUCTS)
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = dg.materialize([forecast_scores], partition_key=KEY, resources=res, instance=instance)
    check = result.get_asset_check_evaluations()[0]
    assert check.passed and check.metadata["live_skill_6h"].value == pytest.approx(0.75)


def test_models_list_shows_live_skill_beside_held_out(scored, monkeypatch, capsys) -> None:
    url, good, bad, *_ = scored
    from cb_assets.cli import main

    monkeypatch.setenv("CB_DATABASE_URL", url)
    assert main(["models", "list"]) == 0
    lines = {ln[2:6].strip(): ln for ln in capsys.readouterr().out.splitlines() if ln[2:6].strip().isdigit()}
    assert "0.7000" in lines[str(good)] and "0.7500" in lines[str(good)]  # held-out, then live
    assert "-3.0000" in lines[str(bad)]
