"""`indicators`: per product and second, causal features from the filtered series (see
`cb_assets.series.indicators` for every definition). The previous hour of `filled_series` is the warm-up, so
no hour starts with NaN or back-filled values."""

import dagster as dg
import pandas as pd

from cb_assets.db.series_store import read_frame, write_indicators_hour
from cb_assets.defs.code_versions import CODE_VERSIONS
from cb_assets.defs.filled_series import FILLED_SERIES
from cb_assets.defs.hour_outcomes import HourOutcomes
from cb_assets.defs.partitions import hourly_partitions, hours_in, previous_and_current_hour
from cb_assets.defs.plots import as_markdown, indicator_snapshot
from cb_assets.defs.resources import MarketResource, PostgresResource
from cb_assets.defs.retries import RETRY_POLICY, deterministic_failures
from cb_assets.defs.schemas import IndicatorsModel, column_schema, describe_failures, validate
from cb_assets.defs.upstream import upstream_problems
from cb_assets.series.clock import HOUR, partition_key
from cb_assets.series.hourly import INDICATOR_INPUTS, by_product, indicators_long, indicators_of_hour
from cb_assets.series.indicators import FEATURE_NAMES

INDICATORS = dg.AssetKey("indicators")


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
    retry_policy=RETRY_POLICY,
    code_version=CODE_VERSIONS["indicators"],
    group_name="market",
    kinds={"postgres", "pandas"},
    metadata={"dagster/column_schema": column_schema(IndicatorsModel), "dagster/table_name": "indicators"},
)
@deterministic_failures
def indicators(
    context: dg.AssetExecutionContext, postgres: PostgresResource, market: MarketResource
) -> dg.MaterializeResult:
    """Per product and second, 43 causal scale-free features of the filtered series (returns, SMA/EMA ratios,
    RSI, MACD, Bollinger, volatility, ranges, 24 h/52 w fields, time of day, staleness, tick rate)."""
    window = context.partition_time_window
    hours = hours_in(window)
    products = market.product_list
    outcomes = HourOutcomes()
    frames = {}
    with postgres.connection() as conn:
        blocked, notes = upstream_problems(conn, "filled_series", hours)
        for key, reason in blocked.items():
            outcomes.fail(key, reason)
        filled = read_frame(
            conn, "filled_series", ("product_id", "time", *INDICATOR_INPUTS), hours[0] - HOUR, window.end
        )
        filled = by_product(filled, products)
        for hour in (h for h in hours if partition_key(h) not in blocked):
            per_product = {
                p: indicators_of_hour(_slice(filled.get(p), hour - HOUR), _slice(filled.get(p), hour), hour)
                for p in products
            }
            frame = indicators_long(per_product)
            errors = validate(IndicatorsModel, frame)
            if errors is not None:
                outcomes.fail(partition_key(hour), f"schema: {describe_failures(errors, frame)}")
                continue
            write_indicators_hour(conn, hour, frame)
            frames[hour] = frame
            outcomes.succeed(
                partition_key(hour),
                {"dagster/row_count": len(frame), "warm_fraction": float(frame["warm"].mean())},
            )
    outcomes.raise_if_failed(context)
    return _result(frames, hours, products, notes)


def _slice(frame: pd.DataFrame | None, hour) -> pd.DataFrame | None:
    return None if frame is None else frame[(frame.index >= hour) & (frame.index < hour + HOUR)]


def _result(frames: dict, hours: list, products: tuple[str, ...], notes: list[str]) -> dg.MaterializeResult:
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
