"""Jobs: the hourly data chain (raw -> filled -> indicators -> windows) and the fine-tune of the model."""

from __future__ import annotations

import dagster as dg

from cb_assets.defs.filled_series import FILLED_SERIES
from cb_assets.defs.forecast_scores import FORECAST_SCORES
from cb_assets.defs.indicators import INDICATORS
from cb_assets.defs.partitions import hourly_partitions
from cb_assets.defs.price_model import PRICE_MODEL
from cb_assets.defs.raw_ticks import RAW_TICKS
from cb_assets.defs.training_windows import TRAINING_WINDOWS

HOURLY_ASSETS = [RAW_TICKS, FILLED_SERIES, INDICATORS, TRAINING_WINDOWS]

hourly_assets_job = dg.define_asset_job(
    name="hourly_assets_job",
    selection=dg.AssetSelection.assets(*HOURLY_ASSETS),
    partitions_def=hourly_partitions,
    description="One hour (or a range, in one run) through raw_ticks -> filled_series -> indicators -> "
    "training_windows.",
    # dagster.yaml limits runs with this tag to one at a time: hour H+1 reads what hour H wrote.
    tags={"cb/chain": "hourly"},
)

fine_tune_job = dg.define_asset_job(
    name="fine_tune_job",
    selection=dg.AssetSelection.assets(PRICE_MODEL),
    description="Warm-start price_model from the champion and fine-tune it on newly completed hours (with a "
    "replay sample of older ones); the challenger is promoted only if its held-out score is not worse.",
    tags={"cb/chain": "fine_tune"},
)

forecast_scores_job = dg.define_asset_job(
    name="forecast_scores_job",
    selection=dg.AssetSelection.assets(FORECAST_SCORES),
    partitions_def=hourly_partitions,
    description="Score the live forecasts anchored in an hour once their outcomes are known.",
)
