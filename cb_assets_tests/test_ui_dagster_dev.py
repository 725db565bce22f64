"""Against a real `dagster dev` started here (instance on PostgreSQL): the UI in headless Chromium, and a day's
backfill launched the way the UI launches it, with a failing hour re-run alone."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from cb_assets.db import model_registry as registry
from cb_assets.db.connection import connect
from cb_assets.feed.seed import simulate_rows, write_rows
from cb_assets_tests.dagster_dev_support import DagsterDev, dagster_dev
from cb_assets_tests.forecast_support import ledger_version, seed_scored_ledger

PRODUCTS = ("BTC-USD", "ETH-USD", "SOL-USD")
UI_DAY = datetime(2024, 3, 1, tzinfo=UTC)
LEDGER_HOUR = datetime(2024, 3, 2, 12, tzinfo=UTC)
BACKFILL_DAY = datetime(2024, 3, 5, tzinfo=UTC)
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _key(t: datetime) -> str:
    return t.strftime("%Y-%m-%d-%H:%M")


@pytest.fixture(scope="module")
def platform(make_database, tmp_path_factory) -> DagsterDev:
    url = make_database()
    work = tmp_path_factory.mktemp("dagster-dev")
    env = {
        "CB_DATABASE_URL": url,
        "CB_DAGSTER_DATABASE_URL": url,
        "CB_HOME": str(work / "cb_home"),
        "CB_PRODUCTS": ",".join(PRODUCTS),
        "CB_PARTITIONS_START": "2024-03-01-00:00",
    }
    _, rows = simulate_rows(PRODUCTS, UI_DAY, 3, seed=5)
    write_rows(url, rows)
    with dagster_dev(env, work) as dev:
        # The pages show each check's latest execution: runs the sensor launched on seeing these hours must
        # have ended before the runs below, whose results the test reads. (Its page and cursor stay.)
        assert dev.stop_sensor("raw_ticks_sensor") == "STOPPED"
        dev.wait_until_quiet(quiet_s=10)
        # Two hours materialised by a job run in the same instance, as a user would from the UI.
        os.environ.update(dev.env)
        # The resources read CB_* variables; fill in the computed defaults as the code location does on import.
        from cb_assets.config import export_env, load_settings
        from cb_assets.definitions import defs

        export_env(load_settings())

        with dev.instance() as instance:
            job = defs.resolve_job_def("hourly_assets_job")
            for hour in (UI_DAY, UI_DAY + timedelta(hours=1)):
                result = job.execute_in_process(
                    partition_key=_key(hour), instance=instance, raise_on_error=False
                )
                assert result.success
            # Live forecasts of a champion, scored, and their hourly summary with its plot.
            with connect(url) as conn:
                champion = ledger_version(conn, heldout=0.2)
                registry.set_alias(conn, champion, "test")
                conn.commit()
            seed_scored_ledger(url, LEDGER_HOUR, PRODUCTS, {champion: 0.5})
            scores = defs.resolve_job_def("forecast_scores_job").execute_in_process(
                partition_key=_key(LEDGER_HOUR), instance=instance
            )
            assert scores.success
        yield dev


@pytest.mark.browser
@pytest.mark.slow(expected_s=205)  # with the module fixture's dagster dev and backfill of its hours
def test_ui_shows_lineage_automation_plots_and_checks(platform: DagsterDev) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"Debian's chromium is required at {CHROMIUM} (.ci/run installs it: apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        try:
            page.goto(f"{platform.url}/asset-groups")
            for name in ("raw_ticks", "filled_series", "indicators", "training_windows", "price_model"):
                page.get_by_text(name, exact=True).first.wait_for(timeout=90_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(ARTIFACTS / "01-lineage.png"))

            # The edges: each middle asset's lineage tab names its upstream and downstream neighbours.
            for asset, upstream, downstream in (
                ("filled_series", "raw_ticks", "indicators"),
                ("indicators", "filled_series", "training_windows"),
                ("training_windows", "indicators", "price_model"),
            ):
                page.goto(f"{platform.url}/assets/{asset}?view=lineage")
                for neighbour in (upstream, downstream):
                    page.get_by_text(neighbour, exact=True).first.wait_for(timeout=60_000)
            page.wait_for_timeout(2000)  # node details load after the names
            page.screenshot(path=str(ARTIFACTS / "02-asset-lineage-training_windows.png"))

            page.goto(f"{platform.url}/automation")
            page.get_by_text("raw_ticks_sensor", exact=True).first.wait_for(timeout=60_000)
            page.get_by_text("hourly_assets_schedule", exact=True).first.wait_for(timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "03-automation.png"))
            page.goto(f"{platform.url}/locations/cb_assets.definitions/sensors/raw_ticks_sensor")
            page.get_by_text("Cursor").first.wait_for(timeout=60_000)

            # One materialisation with its plot (markdown image metadata) ...
            page.goto(f"{platform.url}/assets/filled_series?view=events")
            page.get_by_text("price_plot").first.wait_for(timeout=60_000)
            page.get_by_text("[Show Markdown]").first.click()
            plot = page.locator('img[src^="data:image/png"]').first
            plot.wait_for(timeout=30_000)
            assert plot.bounding_box()["width"] > 200
            page.screenshot(path=str(ARTIFACTS / "04-filled_series-plot.png"))
            # ... and its checks.
            page.goto(f"{platform.url}/assets/filled_series?view=checks")
            page.get_by_text("complete_grid").first.wait_for(timeout=60_000)
            page.get_by_text("Passed").first.wait_for(timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "05-filled_series-checks.png"))
            page.goto(f"{platform.url}/assets/raw_ticks?view=checks")
            for check in (
                "price_positive",
                "low_24_h_not_above_high",
                "time_inside_partition",
                "product_time_unique",
            ):
                page.get_by_text(check).first.wait_for(timeout=60_000)
            # The live scores: their plot of skill per hour and horizon.
            page.goto(f"{platform.url}/assets/forecast_scores?view=events")
            page.get_by_text("live_skill_plot").first.wait_for(timeout=60_000)
            page.get_by_text("[Show Markdown]").first.click()
            plot = page.locator('img[src^="data:image/png"]').first
            plot.wait_for(timeout=30_000)
            assert plot.bounding_box()["width"] > 200
            page.screenshot(path=str(ARTIFACTS / "06-forecast_scores-plot.png"))
        finally:
            browser.close()
    assert len(list(ARTIFACTS.glob("0*.png"))) >= 6


@pytest.mark.slow(expected_s=520)
def test_backfill_of_a_day_then_rerun_of_the_failed_hour_only(platform: DagsterDev) -> None:
    url = platform.env["CB_DATABASE_URL"]
    # Keep the sensor out of it: this test drives the day through a backfill, as a user catching up would.
    assert platform.stop_sensor("raw_ticks_sensor") == "STOPPED"
    _, rows = simulate_rows(PRODUCTS, BACKFILL_DAY, 24, seed=6)
    write_rows(url, rows)
    bad_hour = BACKFILL_DAY + timedelta(hours=10)
    with connect(url) as conn:
        conn.execute(
            "UPDATE raw_ticks SET price = -price WHERE product_id = 'ETH-USD' AND time = "
            "(SELECT min(time) FROM raw_ticks WHERE product_id = 'ETH-USD' AND time >= %s)",
            (bad_hour + timedelta(minutes=20),),
        )
    partitions = [_key(BACKFILL_DAY + timedelta(hours=h)) for h in range(24)]
    # The hours that cannot be computed while hour 10 is bad: it and what reads it (each hour also reads the
    # hour before): raw 10; filled 10-11; indicators 10-12; training_windows 10-13.
    blocked = {
        "raw_ticks": {10},
        "filled_series": {10, 11},
        "indicators": {10, 11, 12},
        "training_windows": {10, 11, 12, 13},
    }
    backfill_id = platform.launch_asset_backfill(list(blocked), partitions)
    done = platform.wait_backfill(backfill_id, timeout_s=1500)
    assert done["status"] in ("COMPLETED_FAILED", "FAILED", "COMPLETED"), done["status"]

    def materialisations() -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        with platform.instance() as instance:
            for asset in blocked:
                records = instance.fetch_materializations(
                    dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=partitions),
                    limit=1000,
                ).records
                for r in records:
                    key = (asset, r.asset_materialization.partition)
                    counts[key] = counts.get(key, 0) + 1
        return counts

    first = materialisations()
    for asset, bad in blocked.items():
        for h, key in enumerate(partitions):
            assert first.get((asset, key), 0) == (0 if h in bad else 1), (asset, key, first.get((asset, key)))

    # Fix the data, then re-run the failed partitions only (the backfill page's "re-execute failed").
    with connect(url) as conn:
        conn.execute("UPDATE raw_ticks SET price = -price WHERE price < 0")
    rerun_id = platform.reexecute_backfill_from_failure(backfill_id)
    rerun = platform.wait_backfill(rerun_id, timeout_s=900)
    assert rerun["status"] in ("COMPLETED_SUCCESS", "COMPLETED"), rerun["status"]
    second = materialisations()
    for asset in blocked:
        for key in partitions:
            # The good hours were not redone; the blocked ones were materialised once, now.
            assert second.get((asset, key), 0) == 1, (asset, key, second.get((asset, key)))
    with connect(url) as conn:
        hours = conn.execute(
            "SELECT count(DISTINCT date_trunc('hour', time)) FROM indicators WHERE time >= %s AND time < %s",
            (BACKFILL_DAY, BACKFILL_DAY + timedelta(days=1)),
        ).fetchone()[0]
    assert hours == 24
