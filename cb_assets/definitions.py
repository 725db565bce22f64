"""The one place that assembles the Dagster code location (`workspace.yaml` loads this module).

Settings are validated here, once, at load time; the computed local defaults are exported as CB_* variables so
that the resources' `dg.EnvVar`s resolve in every process Dagster starts.
"""

from __future__ import annotations

import dagster as dg

from cb_assets.config import export_env, load_settings
from cb_assets.defs.resources import default_resources

settings = load_settings()
export_env(settings)

defs = dg.Definitions(
    resources=default_resources(),
)
