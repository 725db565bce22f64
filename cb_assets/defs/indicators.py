"""`indicators`: per product and second, causal features from the filtered series (see
`cb_assets.series.indicators` for every definition). The previous hour of `filled_series` is the warm-up, so
no hour starts with NaN or back-filled values."""

from datetime import datetime

import dagster as dg
import pandas as pd
import psycopg

from cb_assets.db.series_store import read_frame, replace_slice
from cb_assets.defs.filled_series import FILLED_SERIES
from cb_assets.defs.hour_outcomes import HourOutcomes
from cb_assets.defs.partitions import (
    HOUR,
    hourly_partitions,
    hours_in,
    partition_key,
    previous_and_current_hour,
)
from cb_assets.defs.plots import as_markdown, indicator_snapshot
from cb_assets.defs.resources import MarketResource, PostgresResource
from cb_assets.defs.schemas import IndicatorsModel, column_schema, describe_failures, validate
from cb_assets.series.indicators import FEATURE_NAMES, compute_indicators
from cb_assets.series.resample import grid_index
from cb_assets.series.schema import HOUR_S, SERIES_COLUMNS

INDICATORS = dg.AssetKey("indicators")
INDICATOR_TYPES = {
    "product_id": "text",
    "time": "timestamptz",
    "warm": "bool",
    **dict.fromkeys(FEATURE_NAMES, "float8"),
}
_FILLED_READ = ("product_id", "time", "causal", "price", *(f"{c}_filtered" for c in SERIES_COLUMNS))


def upstream_hour_state(conn: psycopg.Connection, table: str, hour: datetime) -> str:
    """'present', 'no_data' (no raw ticks either), 'invalid_raw' (raw ticks break the rules, so the upstream
    hour cannot exist until they are fixed) or 'missing' (raw ticks are fine, the hour is just not computed)."""
    raw, invalid, derived = conn.execute(
        f"""SELECT EXISTS (SELECT 1 FROM raw_ticks WHERE time >= %(s)s AND time < %(e)s),
                   EXISTS (SELECT 1 FROM raw_ticks WHERE time >= %(s)s AND time < %(e)s
                           AND (price <= 0 OR low_24_h > high_24_h)),
                   EXISTS (SELECT 1 FROM {table} WHERE time >= %(s)s AND time < %(e)s)""",
        {"s": hour, "e": hour + HOUR},
    ).fetchone()
    if derived:
        return "present"
    if not raw:
        return "no_data"
    return "invalid_raw" if invalid else "missing"


def upstream_problems(
    conn: psycopg.Connection, table: str, hours: list[datetime]
) -> tuple[dict[str, str], list[str]]:
    """Which hours of the run cannot be computed from `table` (key -> reason), and notes for the metadata.

    Computing with a missing upstream hour would silently give a different (colder) result than computing in
    order; refusing keeps every hour a function of its inputs alone (backfills order upstream hours first by
    themselves). A look-back hour whose raw ticks are invalid can never exist until they are fixed, so it is
    treated as a gap (and noted) rather than blocking every later hour.
    """
    states = {h: upstream_hour_state(conn, table, h) for h in [hours[0] - HOUR, *hours]}
    reasons: dict[str, str] = {}
    notes: list[str] = []
    for h in hours:
        key, prev = partition_key(h), partition_key(h - HOUR)
        if states[h] == "missing":
            reasons[key] = (
                f"{table} {key} has raw ticks but is not materialised: materialise {table} {key} first"
            )
        elif states[h] == "invalid_raw":
            reasons[key] = (
                f"{table} {key} does not exist because raw_ticks of that hour break the validation rules (see the "
                "raw_ticks checks); fix the rows, then re-materialise"
            )
        elif states[h - HOUR] == "missing":
            reasons[key] = (
                f"needs the look-back hour {table} {prev}, which has raw ticks but is not materialised: "
                f"materialise {table} {prev} first"
            )
        elif states[h - HOUR] == "invalid_raw":
            notes.append(f"{key}: look-back hour {prev} skipped, its raw ticks are invalid")
    return reasons, notes


def indicators_for_hour(filled: pd.DataFrame, hour: datetime, products: tuple[str, ...]) -> pd.DataFrame:
    """Indicator rows of `hour` for every product, from filled rows of [hour - 1h, hour + 1h)."""
    index = grid_index(pd.Timestamp(hour - HOUR).value, 2 * HOUR_S)
    parts = []
    for product in products:
        f = filled[filled["product_id"] == product].set_index("time").reindex(index)
        filtered = f[[f"{c}_filtered" for c in SERIES_COLUMNS]].set_axis(list(SERIES_COLUMNS), axis=1)
        ind = compute_indicators(filtered.astype(float), f["price"].astype(float)).iloc[HOUR_S:]
        # A cold-start hour's filter used parameters fitted on itself: keep it out of training data.
        causal = f["causal"].iloc[HOUR_S:].eq(True).to_numpy()
        ind["warm"] = ind["warm"].to_numpy() & causal
        ind = ind.reset_index(names="time")
        ind.insert(0, "product_id", product)
        parts.append(ind)
    out = pd.concat(parts, ignore_index=True)
    out["time"] = out["time"].astype(pd.DatetimeTZDtype(unit="ns", tz="UTC"))
    return out[["product_id", "time", "warm", *FEATURE_NAMES]]


@dg.asset(
    partitions_def=hourly_partitions,
    deps=[dg.AssetDep(FILLED_SERIES, partition_mapping=previous_and_current_hour)],
    check_specs=[
        dg.AssetCheckSpec(
            "warm_rows_complete",
            asset=INDICATORS,
            blocking=True,
            description="every warm row has all features finite (no NaN, nothing back-filled)",
        )
    ],
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool="postgres",
    group_name="market",
    kinds={"postgres", "pandas"},
    metadata={"dagster/column_schema": column_schema(IndicatorsModel), "dagster/table_name": "indicators"},
)
def indicators(
    context: dg.AssetExecutionContext, postgres: PostgresResource, market: MarketResource
) -> dg.MaterializeResult:
    """Per product and second, 43 causal scale-free features of the filtered series (returns, SMA/EMA ratios,
    RSI, MACD, Bollinger, volatility, ranges, 24 h/52 w fields, time of day, staleness, tick rate)."""
    window = context.partition_time_window
    hours = hours_in(window)
    products = market.product_list
    outcomes = HourOutcomes()
    with postgres.connection() as conn:
        blocked, notes = upstream_problems(conn, "filled_series", hours)
        for key, reason in blocked.items():
            outcomes.fail(key, reason)
        filled = read_frame(conn, "filled_series", _FILLED_READ, hours[0] - HOUR, window.end)
        frames = {}
        for hour in hours:
            if partition_key(hour) in blocked:
                continue
            rows = filled[(filled["time"] >= hour - HOUR) & (filled["time"] < hour + HOUR)]
            frame = indicators_for_hour(rows, hour, products)
            errors = validate(IndicatorsModel, frame)
            if errors is not None:
                outcomes.fail(partition_key(hour), f"schema: {describe_failures(errors, frame)}")
                continue
            replace_slice(conn, "indicators", hour, hour + HOUR, frame, INDICATOR_TYPES)
            frames[hour] = frame
            outcomes.succeed(
                partition_key(hour),
                {"dagster/row_count": len(frame), "warm_fraction": float(frame["warm"].mean())},
            )
    outcomes.raise_if_failed(context)

    all_rows = pd.concat(frames.values(), ignore_index=True)
    warm_nan = int(all_rows.loc[all_rows["warm"], list(FEATURE_NAMES)].isna().any(axis=1).sum())
    last = frames[hours[-1]]
    show_product = next((p for p in products if last.loc[last["product_id"] == p, "warm"].any()), products[0])
    snap = last[last["product_id"] == show_product].set_index("time")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(all_rows),
            "warm_fraction": float(all_rows["warm"].mean()),
            "warm_fraction_by_product": dg.MetadataValue.json(
                {p: round(float(v), 4) for p, v in all_rows.groupby("product_id")["warm"].mean().items()}
            ),
            "features": len(FEATURE_NAMES),
            "notes": dg.MetadataValue.json(notes),
            "indicator_plot": as_markdown(
                indicator_snapshot(snap, show_product, ["ret_60s", "rsi_300s", "macd_hist", "vol_300s"]),
                "indicator snapshot",
            ),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="warm_rows_complete",
                passed=warm_nan == 0,
                metadata={"warm_rows_with_nan": warm_nan},
            )
        ],
    )
