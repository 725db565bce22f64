"""The one place that assembles the Dagster code location (`workspace.yaml` loads this module).

Settings are validated here, once, at load time; the computed local defaults are exported as CB_* variables so
that the resources' `dg.EnvVar`s resolve in every process Dagster starts. Nothing heavy (TensorFlow) is imported
at module level anywhere below: sensors are evaluated in this process and time out after 60 s.
"""

from __future__ import annotations

import dagster as dg

from cb_assets.config import export_env, load_settings

export_env(load_settings())

from cb_assets.defs.filled_series import filled_series  # noqa: E402  (needs the exported environment)
from cb_assets.defs.indicators import indicators  # noqa: E402
from cb_assets.defs.jobs import fine_tune_job, hourly_assets_job  # noqa: E402
from cb_assets.defs.price_model import price_model  # noqa: E402
from cb_assets.defs.raw_ticks import raw_ticks  # noqa: E402
from cb_assets.defs.resources import default_resources  # noqa: E402
from cb_assets.defs.schedules import hourly_assets_schedule  # noqa: E402
from cb_assets.defs.sensors import raw_ticks_sensor  # noqa: E402
from cb_assets.defs.training_windows import training_windows  # noqa: E402

defs = dg.Definitions(
    assets=[raw_ticks, filled_series, indicators, training_windows, price_model],
    jobs=[hourly_assets_job, fine_tune_job],
    schedules=[hourly_assets_schedule],
    sensors=[raw_ticks_sensor],
    resources=default_resources(),
)
