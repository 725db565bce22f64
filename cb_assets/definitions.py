"""The one place that assembles the Dagster code location (`workspace.yaml` and `dg` load this module).

Importing it has no side effects: resources name their CB_* variables with `dg.EnvVar` (the UI shows names,
never values) and resolve them when a run, sensor or schedule starts. `cb-assets up` passes the resolved
settings to the processes it starts; for a bare `dagster dev`, `cb-assets services up` writes them to a
`.env` that Dagster loads from the working directory. Nothing heavy (TensorFlow) is imported at module level
anywhere below: sensors are evaluated in this process and time out after 60 s.
"""

from __future__ import annotations

import dagster as dg

from cb_assets.defs.filled_series import filled_series
from cb_assets.defs.forecast_scores import forecast_ledger, forecast_scores
from cb_assets.defs.freshness import (
    FRESHNESS_CHECKS,
    freshness_checks_job,
    freshness_checks_schedule,
    run_failure_alerts,
)
from cb_assets.defs.indicators import indicators
from cb_assets.defs.jobs import fine_tune_job, forecast_scores_job, hourly_assets_job
from cb_assets.defs.price_model import price_model
from cb_assets.defs.raw_ticks import raw_ticks
from cb_assets.defs.resources import default_resources
from cb_assets.defs.retention import retention_job, retention_schedule
from cb_assets.defs.schedules import hourly_assets_schedule
from cb_assets.defs.sensors import raw_ticks_sensor
from cb_assets.defs.training_windows import training_windows

defs = dg.Definitions(
    assets=[
        raw_ticks,
        filled_series,
        indicators,
        training_windows,
        price_model,
        forecast_ledger,
        forecast_scores,
    ],
    asset_checks=FRESHNESS_CHECKS,
    jobs=[hourly_assets_job, fine_tune_job, forecast_scores_job, freshness_checks_job, retention_job],
    schedules=[hourly_assets_schedule, freshness_checks_schedule, retention_schedule],
    sensors=[raw_ticks_sensor, run_failure_alerts],
    resources=default_resources(),
    # One process per run rather than per step: each step process re-imported the code location (15-25 s
    # on two busy cores) for a few seconds of work. Pools still bound the PostgreSQL and training steps.
    executor=dg.in_process_executor,
)
