"""The code location as a user's tools see it, in a fresh environment: no CB_* variable, no DAGSTER_HOME, no
service running. `dg list defs` must load it and list exactly what the platform is made of; a change to the
graph (an asset, a check, a job, a sensor, a schedule) shows up here and is made on purpose."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

ASSETS = {
    "raw_ticks",
    "filled_series",
    "indicators",
    "training_windows",
    "price_model",
    "forecast_ledger",
    "forecast_scores",
}
CHECKS = {
    "raw_ticks": {
        "numbers_finite",
        "price_positive",
        "volume_not_negative",
        "extremes_positive",
        "low_24_h_not_above_high",
        "low_52_w_not_above_high",
        "book_positive",
        "time_inside_partition",
        "product_time_unique",
        "no_late_live_ticks",
        "all_products_present",
        "raw_ticks_fresh",
    },
    "filled_series": {"complete_grid"},
    "indicators": {"warm_rows_complete"},
    "training_windows": {"windows_well_formed", "no_skipped_hours"},
    "price_model": {"finite_forecasts", "skill_not_below_persistence", "champion_fresh"},
    "forecast_scores": {"champion_live_skill"},
}
JOBS = {"hourly_assets_job", "fine_tune_job", "forecast_scores_job", "freshness_checks_job", "retention_job"}
SENSORS = {"raw_ticks_sensor", "run_failure_alerts"}
SCHEDULES = {
    "hourly_assets_schedule": "5 * * * *",
    "freshness_checks_job_schedule": "*/5 * * * *",
    "retention_job_schedule": "17 3 * * *",
}
RESOURCES = {"postgres", "market", "artifacts", "windows", "windows_io_manager"}


def test_dg_lists_the_definitions_without_any_environment(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CB_", "DAGSTER_"))}
    env["HOME"] = str(tmp_path)  # no user-level dg configuration either
    out = subprocess.run(
        [str(Path(sys.executable).with_name("dg")), "list", "defs", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    defs = json.loads(out.stdout)
    assert {a["asset_key"] for a in defs["assets"]} == ASSETS
    checks: dict[str, set[str]] = {}
    for c in defs["asset_checks"]:
        checks.setdefault(c["asset_key"], set()).add(c["name"])
    assert checks == CHECKS
    assert {j["name"] for j in defs["jobs"]} == JOBS
    assert {s["name"] for s in defs["sensors"]} == SENSORS
    assert {s["name"]: s["cron_schedule"] for s in defs["schedules"]} == SCHEDULES
    assert {r["name"] for r in defs["resources"]} == RESOURCES
