"""Jobs: the hourly data chain (raw -> filled -> indicators -> windows) and its schedule."""

from __future__ import annotations

import dagster as dg

from cb_assets.defs.filled_series import FILLED_SERIES
from cb_assets.defs.indicators import INDICATORS
from cb_assets.defs.partitions import hourly_partitions
from cb_assets.defs.raw_ticks import RAW_TICKS
from cb_assets.defs.training_windows import TRAINING_WINDOWS

HOURLY_ASSETS = [RAW_TICKS, FILLED_SERIES, INDICATORS, TRAINING_WINDOWS]

hourly_assets_job = dg.define_asset_job(
    name="hourly_assets_job",
    selection=dg.AssetSelection.assets(*HOURLY_ASSETS),
    partitions_def=hourly_partitions,
    description="One hour through raw_ticks -> filled_series -> indicators -> training_windows.",
)
