"""`training_windows`: all products aligned on one clock, as one float32 matrix per hour plus labels.

Partition rule (tested): a window belongs to the hour that contains its LAST label time t + 200 s, so hour H
holds the windows anchored at t in [H - 200 s, H + 3400 s): every label of H's windows is known once H is
complete, and no window is in two hours. The matrix covers [H - 1199 s, H + 3400 s) (each window is the 1000 s
of features ending at t) and the windows are strided views into it. Normalisation statistics are stored per
hour as sums, so a trainer merges exactly the hours it trains on.
"""

from collections.abc import Iterator
from datetime import timedelta

import dagster as dg
import numpy as np
import pandas as pd

from cb_assets.db.series_store import read_frame
from cb_assets.defs.code_versions import CODE_VERSIONS
from cb_assets.defs.filled_series import FILLED_SERIES
from cb_assets.defs.hour_outcomes import HourOutcomes
from cb_assets.defs.indicators import INDICATORS
from cb_assets.defs.partitions import hourly_partitions, hours_in, previous_and_current_hour
from cb_assets.defs.plots import as_markdown, bars
from cb_assets.defs.resources import MarketResource, PostgresResource, WindowStoreResource
from cb_assets.defs.retries import RETRY_POLICY, deterministic_failures
from cb_assets.defs.schemas import TrainingWindowsModel, column_schema, describe_failures, validate
from cb_assets.defs.upstream import upstream_problems
from cb_assets.series.clock import HOUR, partition_key
from cb_assets.series.hourly import by_product
from cb_assets.series.indicators import FEATURE_NAMES
from cb_assets.series.windows import WindowSet, build_window_set

TRAINING_WINDOWS = dg.AssetKey("training_windows")
_IND_READ = ("product_id", "time", "warm", *FEATURE_NAMES)
_OBS_READ = ("product_id", "time", "price")


def window_index_frame(ws: WindowSet) -> pd.DataFrame:
    labels = np.asarray(ws.labels, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        abs_max = np.where(
            np.isfinite(labels).any(axis=1), np.nanmax(np.abs(labels), axis=1, initial=0.0), np.nan
        )
    return pd.DataFrame(
        {
            "anchor_time": pd.to_datetime(ws.anchor_times_ns, utc=True).astype(
                pd.DatetimeTZDtype(unit="ns", tz="UTC")
            ),
            "valid": ws.valid.astype(bool),
            "label_abs_max": abs_max,
        }
    )


@dg.asset(
    partitions_def=hourly_partitions,
    deps=[
        dg.AssetDep(INDICATORS, partition_mapping=previous_and_current_hour),
        dg.AssetDep(FILLED_SERIES, partition_mapping=previous_and_current_hour),
    ],
    check_specs=[
        dg.AssetCheckSpec(
            "windows_well_formed",
            asset=TRAINING_WINDOWS,
            blocking=True,
            description="3600 windows per hour, float32 features, every valid window finite with finite labels",
        )
    ],
    io_manager_key="windows_io_manager",
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool="postgres",
    retry_policy=RETRY_POLICY,
    code_version=CODE_VERSIONS["training_windows"],
    # An hour's windows are due within 20 minutes of its end: with hourly partitions, no materialisation for
    # 80 minutes means an hour is late (the status shows in the UI's asset health).
    freshness_policy=dg.FreshnessPolicy.time_window(
        fail_window=timedelta(minutes=80), warn_window=timedelta(minutes=70)
    ),
    group_name="market",
    kinds={"numpy"},
    metadata={"dagster/column_schema": column_schema(TrainingWindowsModel)},
)
@deterministic_failures
def training_windows(
    context: dg.AssetExecutionContext,
    postgres: PostgresResource,
    market: MarketResource,
    windows: WindowStoreResource,
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Features of all products on one clock (time x product*feature, float32), labels = log return from the
    last observed price at t to t + 10/20/100/200 s per product, windows = the 1000 s ending at t as views."""
    window = context.partition_time_window
    hours = hours_in(window)
    products = market.product_list
    out: dict[str, WindowSet] = {}
    outcomes = HourOutcomes()
    prev_ind = prev_obs = None
    with postgres.connection() as conn:
        blocked, notes = upstream_problems(conn, "indicators", hours)
        for key, reason in blocked.items():
            outcomes.fail(key, reason)
        for hour in hours:
            # Each hour reads its own hour and keeps it as the next hour's history: one read per hour.
            if prev_ind is None:
                prev_ind = read_frame(conn, "indicators", _IND_READ, hour - HOUR, hour)
                prev_obs = read_frame(conn, "filled_series", _OBS_READ, hour - HOUR, hour)
            cur_ind = read_frame(conn, "indicators", _IND_READ, hour, hour + HOUR)
            cur_obs = read_frame(conn, "filled_series", _OBS_READ, hour, hour + HOUR)
            key = partition_key(hour)
            if key not in blocked:
                indicators = by_product(pd.concat([prev_ind, cur_ind], ignore_index=True))
                prices = by_product(pd.concat([prev_obs, cur_obs], ignore_index=True))
                ws = build_window_set(
                    indicators, {p: f["price"] for p, f in prices.items()}, products, pd.Timestamp(hour)
                )
                errors = validate(TrainingWindowsModel, window_index_frame(ws))
                if errors is None:
                    out[key] = ws
                    outcomes.succeed(
                        key, {"dagster/row_count": len(ws), "valid_windows": int(ws.valid.sum())}
                    )
                else:
                    outcomes.fail(key, f"schema: {describe_failures(errors)}")
            prev_ind, prev_obs = cur_ind, cur_obs
    if outcomes.failed:
        # Without an output the IO manager is not called: store the good hours here, then record them.
        for key, ws in out.items():
            windows.store.save(key, ws)
        outcomes.raise_if_failed(context)

    metadata, check = _report(out, hours, products, notes)
    yield dg.Output(out, metadata=metadata)
    yield check


def _report(out: dict[str, WindowSet], hours: list, products: tuple[str, ...], notes: list[str]):
    n_windows = sum(len(ws) for ws in out.values())
    n_valid = sum(int(ws.valid.sum()) for ws in out.values())
    well_formed = all(
        len(ws) == 3600
        and ws.features.dtype == np.float32
        and bool(np.isfinite(ws.labels[ws.valid]).all())
        and bool(
            all(
                np.isfinite(ws.window_at(i)).all()
                for i in np.flatnonzero(ws.valid)[:: max(1, int(ws.valid.sum()) // 20)]
            )
        )
        for ws in out.values()
    )
    last = out[partition_key(hours[-1])]
    coverage = {
        p: float(
            np.isfinite(
                last.features[:, [i for i, n in enumerate(last.feature_names) if n.startswith(p + ":")]]
            )
            .all(axis=1)
            .mean()
        )
        for p in products
    }
    metadata = {
        "dagster/row_count": n_windows,
        "valid_windows": n_valid,
        "valid_fraction": n_valid / max(n_windows, 1),
        "feature_matrix_shape": str(last.features.shape),
        "window_shape": f"({last.window}, {last.features.shape[1]})",
        "outputs": len(last.output_names),
        "notes": dg.MetadataValue.json(notes),
        "coverage_by_product": dg.MetadataValue.json({p: round(v, 4) for p, v in coverage.items()}),
        "coverage_plot": as_markdown(
            bars(list(coverage), list(coverage.values()), "rows with all features finite"), "coverage"
        ),
    }
    check = dg.AssetCheckResult(
        check_name="windows_well_formed",
        passed=well_formed,
        metadata={"windows": n_windows, "valid": n_valid},
    )
    return metadata, check
