"""`raw_ticks`: an hour of the Kafka-fed raw table, validated and profiled.

Why an asset that reads the table rather than an observed source asset: the sink writes the rows outside
Dagster, but a materialisation per hour gives each partition a status in the UI, metadata that is charted
across hours (ticks, gaps, rejections), and blocking asset checks that stop a run before bad ticks reach the
filled series. Observations of a source asset carry neither partition status nor blocking checks. Nothing
is copied: the rows stay in PostgreSQL and downstream assets read them there.
"""

from datetime import datetime, timedelta

import dagster as dg
import numpy as np
import pandas as pd

from cb_assets.db.series_store import read_raw_ticks
from cb_assets.defs.hour_outcomes import HourOutcomes
from cb_assets.defs.partitions import HOUR, hourly_partitions, hours_in, partition_key
from cb_assets.defs.plots import as_markdown, bars
from cb_assets.defs.resources import MarketResource, PostgresResource
from cb_assets.defs.schemas import RawTicksModel, column_schema, describe_failures, validate

RAW_TICKS = dg.AssetKey("raw_ticks")

_BLOCKING_RULES = {
    "price_positive": "every price > 0",
    "low_24_h_not_above_high": "low_24_h <= high_24_h on every row",
    "time_inside_partition": "every tick's time lies inside the partition's hour(s)",
    "product_time_unique": "(product_id, time) is unique",
}
RAW_CHECK_SPECS = [
    *(
        dg.AssetCheckSpec(name, asset=RAW_TICKS, blocking=True, description=d)
        for name, d in _BLOCKING_RULES.items()
    ),
    dg.AssetCheckSpec(
        "no_late_live_ticks",
        asset=RAW_TICKS,
        description="no tick of the live feed was ingested after its hour counted as complete (end + "
        "CB_HOUR_GRACE_S): such ticks are suspect, and downstream hours computed before they came are stale. "
        "Replayed and simulated ticks arrive late by design and are only counted in the metadata.",
    ),
    dg.AssetCheckSpec(
        "all_products_present", asset=RAW_TICKS, description="every configured product has at least one tick"
    ),
]


def rule_failures(frame: pd.DataFrame, start: datetime, end: datetime) -> dict[str, pd.DataFrame]:
    """Offending rows per blocking rule (empty frames when the rule holds)."""
    inside = (frame["time"] >= start) & (frame["time"] < end)
    return {
        "price_positive": frame[~(frame["price"] > 0)],
        "low_24_h_not_above_high": frame[frame["low_24_h"] > frame["high_24_h"]],
        "time_inside_partition": frame[~inside],
        "product_time_unique": frame[frame.duplicated(["product_id", "time"], keep=False)],
    }


def _largest_gap_s(frame: pd.DataFrame, start: datetime, end: datetime) -> dict[str, float]:
    """Largest stretch without a tick per product, counting the hour's edges."""
    gaps: dict[str, float] = {}
    for product, group in frame.groupby("product_id", sort=True):
        t = np.concatenate(
            ([pd.Timestamp(start).value], group["time"].astype("int64").to_numpy(), [pd.Timestamp(end).value])
        )
        gaps[str(product)] = float(np.diff(t).max() / 1e9)
    return gaps


def _sample(rows: pd.DataFrame) -> str:
    return ", ".join(
        f"{p} {t:%H:%M:%S.%f}" for p, t in rows[["product_id", "time"]].head(5).itertuples(index=False)
    )


@dg.asset(
    partitions_def=hourly_partitions,
    check_specs=RAW_CHECK_SPECS,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool="postgres",
    group_name="market",
    kinds={"postgres", "kafka"},
    metadata={"dagster/column_schema": column_schema(RawTicksModel), "dagster/table_name": "raw_ticks"},
)
def raw_ticks(
    context: dg.AssetExecutionContext, postgres: PostgresResource, market: MarketResource
) -> dg.MaterializeResult:
    """The hour's rows of the Kafka-fed `raw_ticks` table (written by `cb-assets sink`), validated with
    pandera and profiled: ticks and largest gap per product, rejected messages and feed gaps of the hour."""
    window = context.partition_time_window
    start, end = window.start, window.end
    with postgres.connection() as conn:
        frame = read_raw_ticks(conn, start, end)
        rejected = conn.execute(
            """SELECT reason, count(*) FROM raw_ticks_rejected
               WHERE (tick_time >= %(s)s AND tick_time < %(e)s)
                  OR (tick_time IS NULL AND received_at >= %(s)s AND received_at < %(e)s)
               GROUP BY reason ORDER BY count(*) DESC""",
            {"s": start, "e": end},
        ).fetchall()
        feed_gaps = conn.execute(
            "SELECT count(*), coalesce(sum(to_seq - from_seq - 1), 0) FROM feed_gaps "
            "WHERE after_time >= %s AND before_time < %s",
            (start, end),
        ).fetchone()

    hours = hours_in(window)
    if len(hours) > 1:
        # A range run: a bad hour must not take the good ones down with it (see hour_outcomes).
        outcomes = HourOutcomes()
        for h in hours:
            part = frame[(frame["time"] >= h) & (frame["time"] < h + HOUR)]
            bad = {k: v for k, v in rule_failures(part, h, h + HOUR).items() if not v.empty}
            if bad:
                outcomes.fail(
                    partition_key(h),
                    "; ".join(f"{k}: {len(v)} rows (e.g. {_sample(v)})" for k, v in bad.items()),
                )
            else:
                outcomes.succeed(partition_key(h), {"dagster/row_count": len(part)})
        outcomes.raise_if_failed(context)

    failures = rule_failures(frame, start, end)
    pandera_errors = validate(RawTicksModel, frame)
    checks = [
        dg.AssetCheckResult(
            check_name=name,
            passed=bad.empty,
            severity=dg.AssetCheckSeverity.ERROR,
            description=None
            if bad.empty
            else f"{len(bad)} rows violate '{_BLOCKING_RULES[name]}': {_sample(bad)}",
            metadata={"failing_rows": len(bad)},
        )
        for name, bad in failures.items()
    ]
    grace = timedelta(seconds=market.hour_grace_s)
    after_complete = frame["received_at"] > frame["time"].dt.floor("h") + timedelta(hours=1) + grace
    late = frame[after_complete & (frame["source"] == "live")]
    checks.append(
        dg.AssetCheckResult(
            check_name="no_late_live_ticks",
            passed=late.empty,
            severity=dg.AssetCheckSeverity.WARN,
            description=None
            if late.empty
            else f"{len(late)} live ticks arrived after their hour was complete: {_sample(late)}",
            metadata={
                "late_ticks": len(late),
                "max_lateness_s": float((late["received_at"] - late["time"]).max().total_seconds())
                if len(late)
                else 0.0,
            },
        )
    )
    per_product = frame.groupby("product_id").size().reindex(list(market.product_list), fill_value=0)
    missing = [p for p, n in per_product.items() if n == 0]
    checks.append(
        dg.AssetCheckResult(
            check_name="all_products_present",
            passed=not missing,
            severity=dg.AssetCheckSeverity.WARN,
            description=None if not missing else f"no ticks for {', '.join(missing)}",
            metadata={"missing_products": dg.MetadataValue.json(missing)},
        )
    )
    if pandera_errors is not None:
        context.log.warning(
            "raw_ticks %s: %s", context.partition_key_range, describe_failures(pandera_errors, frame)
        )

    gaps = _largest_gap_s(frame, start, end)
    table = "| product | ticks | largest gap (s) |\n|---|---:|---:|\n" + "\n".join(
        f"| {p} | {n} | {gaps.get(p, 3600.0 * len(context.partition_keys)):.0f} |"
        for p, n in per_product.items()
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(frame),
            "ticks_per_product": dg.MetadataValue.md(table),
            "largest_gap_s": max(gaps.values(), default=float(3600 * len(context.partition_keys))),
            "products_with_ticks": int((per_product > 0).sum()),
            "rejected_rows": sum(n for _, n in rejected),
            "rejected_reasons": dg.MetadataValue.md(
                "| reason | rows |\n|---|---:|\n"
                + "\n".join(f"| {r[:120]} | {n} |" for r, n in rejected[:10])
                if rejected
                else "none"
            ),
            "feed_gaps": int(feed_gaps[0]),
            "frames_missed_in_gaps": int(feed_gaps[1]),
            "pandera_valid": pandera_errors is None,
            "ingested_after_hour_complete": int(after_complete.sum()),
            "ticks_plot": as_markdown(
                bars(list(per_product.index), per_product.astype(float).tolist(), "ticks per product"),
                "ticks per product",
            ),
        },
        check_results=checks,
    )
