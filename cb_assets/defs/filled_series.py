"""`filled_series`: per product a 1-second grid per hour with observed values, causal filter and smoother.

The numerics live in `cb_assets.series.fill` (no Dagster); this module reads the raw hours, validates, writes
the `filled_series` and `kalman_params` tables (each hour replaced atomically) and reports metadata.
"""

import dagster as dg
import numpy as np
import pandas as pd

from cb_assets.db.series_store import read_raw_ticks, replace_hour_rows, replace_slice
from cb_assets.defs.hour_outcomes import HourOutcomes
from cb_assets.defs.partitions import (
    HOUR,
    hourly_partitions,
    hours_in,
    partition_key,
    previous_and_current_hour,
)
from cb_assets.defs.plots import as_markdown, observed_vs_filled
from cb_assets.defs.raw_ticks import RAW_TICKS, rule_failures
from cb_assets.defs.resources import MarketResource, PostgresResource
from cb_assets.defs.schemas import FilledSeriesModel, column_schema, describe_failures, validate
from cb_assets.series.fill import FILLED_COLUMNS, FilledHour, fill_product_hour
from cb_assets.series.schema import SERIES_COLUMNS

FILLED_SERIES = dg.AssetKey("filled_series")
FILLED_TYPES = {
    "product_id": "text",
    "time": "timestamptz",
    "observed": "bool",
    "causal": "bool",
    **dict.fromkeys(FILLED_COLUMNS, "float8"),
}


def split_invalid(raw: pd.DataFrame, hours: list, start, end) -> tuple[pd.DataFrame, dict[str, str], int]:
    """Remove raw rows that break the rules the filled series relies on.

    Returns the clean rows, the reason per hour of the run that had such rows (those hours fail: never
    fill from bad data), and how many were dropped from the look-back hour (only counted: one bad tick
    must not fail the next hour too).
    """
    failures = {k: v for k, v in rule_failures(raw, start, end).items() if not v.empty}
    bad_index = (
        pd.Index([]).append([v.index for v in failures.values()]).unique() if failures else pd.Index([])
    )
    reasons: dict[str, str] = {}
    for h in hours:
        parts = []
        for rule, rows in failures.items():
            n = int(((rows["time"] >= h) & (rows["time"] < h + HOUR)).sum())
            if n:
                parts.append(f"{rule}: {n} rows")
        if parts:
            reasons[partition_key(h)] = (
                "raw_ticks break the rules the filled series relies on (" + "; ".join(parts) + "); fix or "
                "delete the rows in raw_ticks, then re-materialise"
            )
    dropped = int((raw.loc[bad_index, "time"] < hours[0]).sum()) if len(bad_index) else 0
    return raw.drop(index=bad_index), reasons, dropped


def fill_hours(raw: pd.DataFrame, hours: list, products: tuple[str, ...]) -> dict:
    """{hour: [FilledHour per product]} from the raw rows of [hours[0] - 1h, hours[-1] + 1h)."""
    times = raw["time"].astype("int64").to_numpy()
    values = raw[list(SERIES_COLUMNS)].to_numpy(dtype=np.float64)
    by_product = {p: np.flatnonzero(raw["product_id"].to_numpy() == p) for p in products}
    out = {}
    for hour in hours:
        h_ns = pd.Timestamp(hour).value
        out[hour] = [fill_product_hour(p, times[idx], values[idx], h_ns) for p, idx in by_product.items()]
    return out


def _hour_frame(filled: list[FilledHour]) -> pd.DataFrame:
    parts = []
    for fh in filled:
        f = fh.frame.reset_index()
        f.insert(0, "product_id", fh.product_id)
        parts.append(f)
    frame = pd.concat(parts, ignore_index=True)
    frame["time"] = frame["time"].astype(pd.DatetimeTZDtype(unit="ns", tz="UTC"))
    return frame


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
    group_name="market",
    kinds={"postgres", "numba"},
    metadata={
        "dagster/column_schema": column_schema(FilledSeriesModel),
        "dagster/table_name": "filled_series",
    },
)
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
    with postgres.connection() as conn:
        raw = read_raw_ticks(conn, hours[0] - HOUR, window.end)
        raw, bad_hours, dropped = split_invalid(raw, hours, hours[0] - HOUR, window.end)
        if dropped:
            context.log.warning("dropped %d invalid raw ticks of the look-back hour", dropped)
        for key, reason in bad_hours.items():
            outcomes.fail(key, reason)
        good = [h for h in hours if partition_key(h) not in bad_hours]
        filled = fill_hours(raw, good, products)
        frames = {hour: _hour_frame(fh) for hour, fh in filled.items()}
        for hour, frame in frames.items():
            errors = validate(FilledSeriesModel, frame)
            if errors is not None:
                outcomes.fail(partition_key(hour), f"schema: {describe_failures(errors, frame)}")
                continue
            replace_slice(conn, "filled_series", hour, hour + HOUR, frame, FILLED_TYPES)
            replace_hour_rows(
                conn,
                "kalman_params",
                "hour",
                [hour],
                [
                    (hour, fh.product_id, p.field, p.q, p.r, p.em_iterations, p.converged, p.fitted_on)
                    for fh in filled[hour]
                    for p in fh.params
                ],
                ("hour", "product_id", "field", "q", "r", "em_iterations", "converged", "fitted_on"),
            )
            outcomes.succeed(
                partition_key(hour),
                {"dagster/row_count": len(frame), "observed_fraction": float(frame["observed"].mean())},
            )
    outcomes.raise_if_failed(context)

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
