"""`filled_series`: per product a 1-second grid per hour with observed values, causal filter and smoother.

The numerics live in `cb_assets.series.fill` (no Dagster); this module reads the raw hours, validates, writes
the `filled_series` and `kalman_params` tables (each hour replaced atomically) and reports metadata.
"""

import dagster as dg
import numpy as np
import pandas as pd

from cb_assets.db.raw_store import read_raw_ticks
from cb_assets.db.series_store import write_filled_hour
from cb_assets.defs.code_versions import CODE_VERSIONS
from cb_assets.defs.hour_outcomes import HourOutcomes
from cb_assets.defs.partitions import hourly_partitions, hours_in, previous_and_current_hour
from cb_assets.defs.plots import as_markdown, observed_vs_filled
from cb_assets.defs.raw_ticks import RAW_TICKS
from cb_assets.defs.resources import MarketResource, PostgresResource
from cb_assets.defs.retries import RETRY_POLICY, deterministic_failures
from cb_assets.defs.schemas import FilledSeriesModel, column_schema, describe_failures, validate
from cb_assets.series.clock import HOUR, partition_key
from cb_assets.series.hourly import fill_hour, filled_long, split_invalid_ticks, ticks_by_product

FILLED_SERIES = dg.AssetKey("filled_series")


@dg.asset(
    partitions_def=hourly_partitions,
    deps=[dg.AssetDep(RAW_TICKS, partition_mapping=previous_and_current_hour)],
    check_specs=[
        dg.AssetCheckSpec(
            "complete_grid",
            asset=FILLED_SERIES,
            blocking=True,
            description="3600 rows per product and hour, and every second after a product's first tick has a "
            "causal estimate",
        )
    ],
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool="postgres",
    retry_policy=RETRY_POLICY,
    code_version=CODE_VERSIONS["filled_series"],
    group_name="market",
    kinds={"postgres", "numba"},
    metadata={
        "dagster/column_schema": column_schema(FilledSeriesModel),
        "dagster/table_name": "filled_series",
    },
)
@deterministic_failures
def filled_series(
    context: dg.AssetExecutionContext, postgres: PostgresResource, market: MarketResource
) -> dg.MaterializeResult:
    """Per product, a 1-second grid for the hour with the observed value, the causal Kalman filter (the only
    estimate features may use), its std and the RTS smoother. A local-level model per field, parameters fitted
    by EM to convergence on the previous hour; the filter runs over the previous hour too, so hours join
    without a seam and can be computed in any order."""
    window = context.partition_time_window
    hours = hours_in(window)
    products = market.product_list
    outcomes = HourOutcomes()
    filled, frames = {}, {}
    with postgres.connection() as conn:
        raw, bad_hours, dropped = split_invalid_ticks(
            read_raw_ticks(conn, hours[0] - HOUR, window.end), hours
        )
        if dropped:
            context.log.warning("dropped %d invalid raw ticks of the look-back hour", dropped)
        for hour, reason in bad_hours.items():
            outcomes.fail(partition_key(hour), reason)
        ticks = ticks_by_product(raw, products)
        for hour in (h for h in hours if h not in bad_hours):
            filled[hour] = fill_hour(ticks, hour, products)
            frame = filled_long(filled[hour])
            errors = validate(FilledSeriesModel, frame)
            if errors is not None:
                outcomes.fail(partition_key(hour), f"schema: {describe_failures(errors, frame)}")
                continue
            write_filled_hour(conn, hour, frame, filled[hour])
            frames[hour] = frame
            outcomes.succeed(
                partition_key(hour),
                {"dagster/row_count": len(frame), "observed_fraction": float(frame["observed"].mean())},
            )
    outcomes.raise_if_failed(context)
    return _result(frames, filled, hours, dropped)


def _result(frames: dict, filled: dict, hours: list, dropped: int) -> dg.MaterializeResult:
    all_rows = pd.concat(frames.values(), ignore_index=True)
    seen = all_rows.groupby("product_id", sort=False)["observed"].cummax()
    unknown_after_first = int((seen & all_rows["price_filtered"].isna()).sum())
    rows_per_product = all_rows.groupby("product_id").size()
    complete = bool((rows_per_product == 3600 * len(hours)).all()) and unknown_after_first == 0
    last_hour = hours[-1]
    show = next((fh for fh in filled[last_hour] if fh.frame["observed"].any()), filled[last_hour][0])
    observed_frac = all_rows.groupby("product_id")["observed"].mean()
    converged = np.mean([p.converged for fhs in filled.values() for fh in fhs for p in fh.params])
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(all_rows),
            "observed_fraction": float(all_rows["observed"].mean()),
            "observed_fraction_by_product": dg.MetadataValue.json(
                {k: round(float(v), 4) for k, v in observed_frac.items()}
            ),
            "em_converged_fraction": float(converged),
            "dropped_lookback_rows": dropped,
            "cold_start_by_hour": dg.MetadataValue.json(
                {
                    partition_key(h): sorted(fh.product_id for fh in fhs if not fh.causal)
                    for h, fhs in filled.items()
                    if any(not fh.causal for fh in fhs)
                }
            ),
            "price_plot": as_markdown(observed_vs_filled(show.frame, show.product_id), "observed vs filled"),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="complete_grid",
                passed=complete,
                metadata={"seconds_without_estimate_after_first_tick": unknown_after_first},
            )
        ],
    )
