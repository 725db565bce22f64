"""`forecast_scores`: how the forecasts made live in an hour did against what happened.

The forecast ledger is written outside Dagster by `cb-assets forecast` (an external asset, `forecast_ledger`);
each hour's partition reads the forecasts anchored in it once their outcomes are attached, scores them per
model version, product and horizon (`forecast.scoring`, the metrics of the held-out evaluation), stores the
scores in PostgreSQL for the registry and the status line, and shows the champion's live skill of the last
day per horizon. Its check warns when the champion's live skill over the last 6 hours is significantly below
zero (Diebold-Mariano against persistence) or far below what its held-out evaluation promised.
"""

from datetime import datetime, timedelta

import dagster as dg
import numpy as np
import pandas as pd

from cb_assets.db import model_registry as registry
from cb_assets.db.forecast_store import ledger_rows, replace_scores, scores_between, skips_between
from cb_assets.defs.code_versions import CODE_VERSIONS
from cb_assets.defs.partitions import hourly_partitions, hours_in
from cb_assets.defs.plots import as_markdown, skill_lines
from cb_assets.defs.raw_ticks import RAW_TICKS
from cb_assets.defs.resources import PostgresResource
from cb_assets.defs.retries import RETRY_POLICY, deterministic_failures
from cb_assets.defs.schemas import ForecastScoresModel, column_schema, describe_failures, validate
from cb_assets.forecast.scoring import loss_differential_t, pooled_skill, score_rows
from cb_assets.series.clock import HOUR, partition_key

FORECAST_SCORES = dg.AssetKey("forecast_scores")
CHECK_WINDOW = timedelta(hours=6)
FAR_BELOW = 0.1  # live skill this far under the held-out skill is worth a look

forecast_ledger = dg.AssetSpec(
    "forecast_ledger",
    description="The `forecasts` table: every live forecast (model version, product, anchor second, horizon) "
    "written by `cb-assets forecast` while still in the future, with its outcome attached once the data passed "
    "anchor + horizon.",
    group_name="market",
    kinds={"postgres"},
    metadata={"dagster/table_name": "forecasts"},
)


def _champion_check(conn, end: datetime) -> dg.AssetCheckResult:
    champ = registry.alias(conn)
    if champ is None:
        return dg.AssetCheckResult(
            check_name="champion_live_skill", passed=True, description="no champion yet"
        )
    rows = ledger_rows(conn, end - CHECK_WINDOW, end)
    rows = rows[rows["version_id"] == champ.id]
    ld = loss_differential_t(rows)
    live = pooled_skill(score_rows(rows)) if len(rows) else float("nan")
    heldout = (champ.metrics or {}).get("challenger", {}).get("score")
    heldout = float(heldout) if isinstance(heldout, int | float) else float("nan")
    worse = bool(np.isfinite(ld.t) and ld.t > 2.0)
    far_below = bool(
        np.isfinite(live) and np.isfinite(heldout) and live < heldout - FAR_BELOW and ld.n_anchors >= 100
    )
    reasons = []
    if worse:
        reasons.append(f"live skill {live:+.3f} is significantly below persistence (DM t = {ld.t:.1f})")
    if far_below:
        reasons.append(f"live skill {live:+.3f} is far below the held-out {heldout:+.3f}")
    return dg.AssetCheckResult(
        check_name="champion_live_skill",
        passed=not reasons,
        severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(reasons) or None,
        metadata={
            "champion_version_id": champ.id,
            "live_skill_6h": float(live) if np.isfinite(live) else 0.0,
            "heldout_skill": float(heldout) if np.isfinite(heldout) else 0.0,
            "dm_t": float(ld.t) if np.isfinite(ld.t) else 0.0,
            "anchors_6h": ld.n_anchors,
        },
    )


def _metadata(
    scores: pd.DataFrame, history: pd.DataFrame, skips: dict[str, int], champion: int | None
) -> dict:
    mine = scores[scores["version_id"] == champion] if champion is not None else scores.iloc[0:0]
    meta: dict[str, object] = {
        "dagster/row_count": len(scores),
        "scored_forecasts": int(scores["n"].sum()),
        "versions": dg.MetadataValue.json(sorted(int(v) for v in scores["version_id"].unique())),
        "skipped": dg.MetadataValue.json(skips),
        "champion_skill": pooled_skill(mine) if len(mine) else float("nan"),
    }
    for h, g in mine.groupby("horizon_s"):
        meta[f"champion_skill_{int(h)}s"] = pooled_skill(g)
    table = mine.sort_values(["product_id", "horizon_s"])
    meta["champion_scores"] = dg.MetadataValue.md(
        "| product | horizon | n | skill | hit rate | IC | MAE (bp) |\n|---|---:|---:|---:|---:|---:|---:|\n"
        + "\n".join(
            f"| {r.product_id} | {r.horizon_s} s | {r.n} | {r.skill:+.3f} | {r.hit_rate:.2f} | {r.ic:+.2f} | "
            f"{r.mae_bp:.2f} |"
            for r in table.itertuples()
        )
        if len(table)
        else "no scored forecasts of the champion in this hour"
    )
    champ_history = history[history["version_id"] == champion] if champion is not None else history.iloc[0:0]
    if len(champ_history):
        meta["live_skill_plot"] = as_markdown(
            skill_lines(champ_history, f"live skill of v{champion}"), "live skill"
        )
    return meta


@dg.asset(
    partitions_def=hourly_partitions,
    deps=[RAW_TICKS, forecast_ledger.key],
    check_specs=[
        dg.AssetCheckSpec(
            "champion_live_skill",
            asset=FORECAST_SCORES,
            description="the champion's live skill over the last 6 hours is not significantly below zero "
            "(Diebold-Mariano against persistence) nor far below its held-out skill",
        )
    ],
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool="postgres",
    retry_policy=RETRY_POLICY,
    code_version=CODE_VERSIONS["forecast_scores"],
    group_name="market",
    kinds={"postgres", "pandas"},
    metadata={
        "dagster/column_schema": column_schema(ForecastScoresModel),
        "dagster/table_name": "forecast_scores",
    },
)
@deterministic_failures
def forecast_scores(context: dg.AssetExecutionContext, postgres: PostgresResource) -> dg.MaterializeResult:
    """Live skill against persistence, hit rate, IC and MAE of the ledger's forecasts anchored in the hour, per
    model version, product and horizon (only forecasts whose outcome is known count)."""
    hours = hours_in(context.partition_time_window)
    with postgres.connection() as conn:
        for hour in hours:
            scores = score_rows(ledger_rows(conn, hour, hour + HOUR))
            errors = validate(ForecastScoresModel, scores)
            if errors is not None:
                raise dg.Failure(
                    f"forecast_scores {partition_key(hour)}: {describe_failures(errors)}", allow_retries=False
                )
            replace_scores(conn, hour, scores.assign(hour=hour))
        end = hours[-1] + HOUR
        history = scores_between(conn, end - timedelta(hours=24), end)
        skips = skips_between(conn, hours[0], end)
        champ = registry.alias(conn)
        check = _champion_check(conn, end)
    meta = _metadata(scores, history, skips, champ.id if champ else None)
    return dg.MaterializeResult(metadata=meta, check_results=[check])
