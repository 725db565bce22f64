"""`raw_ticks`: an hour of the Kafka-fed raw table, validated and profiled.

Why an asset that reads the table rather than an observed source asset: the sink writes the rows outside
Dagster, but a materialisation per hour gives each partition a status in the UI, metadata that is charted
across hours (ticks, gaps, rejections), and blocking asset checks that stop a run before bad ticks reach the
filled series. Observations of a source asset carry neither partition status nor blocking checks. Nothing
is copied: the rows stay in PostgreSQL and downstream assets read them there.

The blocking checks are the tick rules of `series.tick_rules`, one check per rule: the same rules the sink
applies to every message, so a failure here means rows that reached the table some other way (a manual
insert, an older sink) or an hour with ticks outside it.
"""

from datetime import datetime

import dagster as dg
import numpy as np
import pandas as pd

from cb_assets.db.raw_store import feed_gap_counts, read_raw_ticks, rejection_counts
from cb_assets.defs.code_versions import CODE_VERSIONS
from cb_assets.defs.hour_outcomes import HourOutcomes
from cb_assets.defs.partitions import hourly_partitions, hours_in
from cb_assets.defs.plots import as_markdown, bars
from cb_assets.defs.resources import MarketResource, PostgresResource
from cb_assets.defs.retries import RETRY_POLICY, deterministic_failures
from cb_assets.defs.schemas import RawTicksModel, column_schema, describe_failures, validate
from cb_assets.series.clock import HOUR, completes_at, partition_key
from cb_assets.series.hourly import rule_failures_of_hour
from cb_assets.series.tick_rules import RULES

RAW_TICKS = dg.AssetKey("raw_ticks")

RAW_CHECK_SPECS = [
    *(
        dg.AssetCheckSpec(r.name, asset=RAW_TICKS, blocking=True, description=r.description)
        for r in RULES.values()
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


def sample_rows(rows: pd.DataFrame) -> str:
    return ", ".join(
        f"{p} {t:%H:%M:%S.%f}" for p, t in rows[["product_id", "time"]].head(5).itertuples(index=False)
    )


def describe_broken(broken: dict[str, pd.DataFrame]) -> str:
    return "; ".join(f"{rule}: {len(rows)} rows (e.g. {sample_rows(rows)})" for rule, rows in broken.items())


def _record_hours(context: dg.AssetExecutionContext, frame: pd.DataFrame, hours: list[datetime]) -> None:
    """A range run: a bad hour must not take the good ones down with it (see hour_outcomes)."""
    outcomes = HourOutcomes()
    for h in hours:
        part = frame[(frame["time"] >= h) & (frame["time"] < h + HOUR)]
        bad = {k: v for k, v in rule_failures_of_hour(part, h, h + HOUR).items() if not v.empty}
        if bad:
            outcomes.fail(partition_key(h), describe_broken(bad))
        else:
            outcomes.succeed(partition_key(h), {"dagster/row_count": len(part)})
    outcomes.raise_if_failed(context)


def _largest_gap_s(frame: pd.DataFrame, start: datetime, end: datetime) -> dict[str, float]:
    """Largest stretch without a tick per product, counting the hour's edges."""
    gaps: dict[str, float] = {}
    for product, group in frame.groupby("product_id", sort=True):
        t = np.concatenate(
            ([pd.Timestamp(start).value], group["time"].astype("int64").to_numpy(), [pd.Timestamp(end).value])
        )
        gaps[str(product)] = float(np.diff(t).max() / 1e9)
    return gaps


def _checks(frame: pd.DataFrame, start: datetime, end: datetime, products: tuple[str, ...], grace_s: int):
    checks = [
        dg.AssetCheckResult(
            check_name=name,
            passed=bad.empty,
            severity=dg.AssetCheckSeverity.ERROR,
            description=None
            if bad.empty
            else f"{len(bad)} rows break '{RULES[name].description}': {sample_rows(bad)}",
            metadata={"failing_rows": len(bad)},
        )
        for name, bad in rule_failures_of_hour(frame, start, end).items()
    ]
    after_complete = frame["received_at"] > completes_at(frame["time"].dt.floor("h"), grace_s)
    late = frame[after_complete & (frame["source"] == "live")]
    checks.append(
        dg.AssetCheckResult(
            check_name="no_late_live_ticks",
            passed=late.empty,
            severity=dg.AssetCheckSeverity.WARN,
            description=None
            if late.empty
            else f"{len(late)} live ticks arrived after their hour was complete: {sample_rows(late)}",
            metadata={
                "late_ticks": len(late),
                "max_lateness_s": float((late["received_at"] - late["time"]).max().total_seconds())
                if len(late)
                else 0.0,
            },
        )
    )
    per_product = frame.groupby("product_id").size().reindex(list(products), fill_value=0)
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
    return checks, per_product, int(after_complete.sum())


def _profile(frame, start, end, per_product, rejected, gaps_missed, n_hours) -> dict[str, object]:
    gaps = _largest_gap_s(frame, start, end)
    table = "| product | ticks | largest gap (s) |\n|---|---:|---:|\n" + "\n".join(
        f"| {p} | {n} | {gaps.get(p, 3600.0 * n_hours):.0f} |" for p, n in per_product.items()
    )
    return {
        "dagster/row_count": len(frame),
        "ticks_per_product": dg.MetadataValue.md(table),
        "largest_gap_s": max(gaps.values(), default=float(3600 * n_hours)),
        "products_with_ticks": int((per_product > 0).sum()),
        "rejected_rows": sum(n for _, n in rejected),
        "rejected_reasons": dg.MetadataValue.md(
            "| reason | rows |\n|---|---:|\n" + "\n".join(f"| {r[:120]} | {n} |" for r, n in rejected[:10])
            if rejected
            else "none"
        ),
        "feed_gaps": gaps_missed[0],
        "frames_missed_in_gaps": gaps_missed[1],
        "ticks_plot": as_markdown(
            bars(list(per_product.index), per_product.astype(float).tolist(), "ticks per product"),
            "ticks per product",
        ),
    }


@dg.asset(
    partitions_def=hourly_partitions,
    check_specs=RAW_CHECK_SPECS,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool="postgres",
    retry_policy=RETRY_POLICY,
    code_version=CODE_VERSIONS["raw_ticks"],
    group_name="market",
    kinds={"postgres", "kafka"},
    metadata={"dagster/column_schema": column_schema(RawTicksModel), "dagster/table_name": "raw_ticks"},
)
@deterministic_failures
def raw_ticks(
    context: dg.AssetExecutionContext, postgres: PostgresResource, market: MarketResource
) -> dg.MaterializeResult:
    """The hour's rows of the Kafka-fed `raw_ticks` table (written by `cb-assets sink`), validated with
    pandera and profiled: ticks and largest gap per product, rejected messages and feed gaps of the hour."""
    window = context.partition_time_window
    start, end = window.start, window.end
    with postgres.connection() as conn:
        frame = read_raw_ticks(conn, start, end)
        rejected = rejection_counts(conn, start, end)
        gaps = feed_gap_counts(conn, start, end)
    hours = hours_in(window)
    if len(hours) > 1:
        _record_hours(context, frame, hours)
    checks, per_product, ingested_late = _checks(frame, start, end, market.product_list, market.hour_grace_s)
    pandera_errors = validate(RawTicksModel, frame)
    if pandera_errors is not None:
        context.log.warning(
            "raw_ticks %s: %s", context.partition_key_range, describe_failures(pandera_errors, frame)
        )
    metadata = _profile(frame, start, end, per_product, rejected, gaps, len(hours))
    metadata.update({"pandera_valid": pandera_errors is None, "ingested_after_hour_complete": ingested_late})
    return dg.MaterializeResult(metadata=metadata, check_results=checks)
