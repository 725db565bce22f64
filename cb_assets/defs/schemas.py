"""pandera models of every asset's data, and their Dagster column schemas (shown in the asset's Columns tab).

The wide tables have families of columns (four estimates per ticker field, 43 indicators): those models are
built from the same name lists the computation uses, so a new indicator cannot be missing from its schema.
"""

from __future__ import annotations

import warnings
from typing import Any

import dagster as dg
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from cb_assets.series import tick_rules
from cb_assets.series.indicators import FEATURES, WARM_DESCRIPTION
from cb_assets.series.schema import SERIES_COLUMNS

UTC_NS = pd.DatetimeTZDtype(unit="ns", tz="UTC")


class _Strict(pa.DataFrameModel):
    class Config:
        strict = True
        coerce = False


def _tick_rule_check(name: str) -> Any:
    """A dataframe-level pandera check that is the tick rule `name` (series.tick_rules) over the frame."""

    def check(cls: type, df: pd.DataFrame) -> Series[bool]:
        if name == "product_time_unique":
            broken = df.duplicated(["product_id", "time"], keep=False).to_numpy()
        else:
            bid = df["best_bid"].to_numpy(dtype=float)
            ask = df["best_ask"].to_numpy(dtype=float)
            broken = tick_rules.violations(df[list(SERIES_COLUMNS)].to_numpy(dtype=float), bid, ask)[name]
        return pd.Series(~broken, index=df.index)

    check.__name__ = name
    return pa.dataframe_check(check, name=name, error=f"{name}: {tick_rules.RULES[name].description}")


_raw_columns: dict[str, tuple[Any, Any]] = {
    "product_id": (str, pa.Field(description="Coinbase product id, e.g. BTC-USD")),
    "time": (UTC_NS, pa.Field(description="ticker_batch envelope time (floored to the microsecond)")),
    "price": (float, pa.Field(description="last trade price")),
    "volume_24_h": (float, pa.Field(description="24 h traded volume (base currency)")),
    "low_24_h": (float, pa.Field(description="24 h low")),
    "high_24_h": (float, pa.Field(description="24 h high")),
    "low_52_w": (float, pa.Field(description="52 week low")),
    "high_52_w": (float, pa.Field(description="52 week high")),
    "price_percent_chg_24_h": (float, pa.Field(description="24 h price change in percent")),
    "best_bid": (float, pa.Field(nullable=True, description="best bid (ticker channel only)")),
    "best_ask": (float, pa.Field(nullable=True, description="best ask (ticker channel only)")),
    "received_at": (UTC_NS, pa.Field(description="when the sink committed the row")),
    "source": (str, pa.Field(description="live | replay | simulated")),
}
# Every tick rule that needs no partition bounds (time_inside_partition is the asset check's alone).
_raw_rules = [
    r.name for r in (*tick_rules.VALUE_RULES, *tick_rules.HOUR_RULES) if r.name != "time_inside_partition"
]

RawTicksModel = type(
    "RawTicksModel",
    (_Strict,),
    {
        "__doc__": "One hour of the Kafka-fed raw table: one row per product and envelope time.",
        "__annotations__": {c: Series[t] for c, (t, _) in _raw_columns.items()},
        **{c: f for c, (_, f) in _raw_columns.items()},
        **{f"rule_{name}": _tick_rule_check(name) for name in _raw_rules},
    },
)


def _build(name: str, doc: str, base: type[pa.DataFrameModel], columns: dict[str, tuple[Any, Any]]) -> type:
    ns: dict[str, Any] = {"__annotations__": {c: Series[t] for c, (t, _) in columns.items()}, "__doc__": doc}
    ns.update({c: field for c, (_, field) in columns.items()})
    return type(name, (base,), ns)


class _FilledBase(_Strict):
    @pa.dataframe_check(error="a second with a tick must have an observed price")
    def observed_has_price(cls, df: pd.DataFrame) -> Series[bool]:
        return ~df["observed"] | df["price"].notna()

    @pa.dataframe_check(error="after the first tick every field has a causal estimate")
    def filtered_known_after_first_tick(cls, df: pd.DataFrame) -> Series[bool]:
        seen = df.groupby("product_id", sort=False)["observed"].cummax()
        return ~seen | df["price_filtered"].notna()


_filled_columns: dict[str, tuple[Any, Any]] = {
    "product_id": (str, pa.Field(description="product")),
    "time": (UTC_NS, pa.Field(description="grid second t: the last tick with t-1s < time <= t")),
    "observed": (bool, pa.Field(description="a tick landed in this second")),
    "causal": (
        bool,
        pa.Field(description="Kalman parameters fitted on the previous hour (False on a cold start)"),
    ),
}
for _c in SERIES_COLUMNS:
    _filled_columns[_c] = (float, pa.Field(nullable=True, description=f"observed {_c} (null: no tick)"))
    _filled_columns[f"{_c}_filtered"] = (
        float,
        pa.Field(nullable=True, description=f"causal Kalman filter of {_c}: uses ticks up to t only"),
    )
    _filled_columns[f"{_c}_filtered_std"] = (
        float,
        pa.Field(nullable=True, ge=0, description=f"standard deviation of the filtered {_c}"),
    )
    _filled_columns[f"{_c}_smoothed"] = (
        float,
        pa.Field(nullable=True, description=f"RTS smoother of {_c} (display only: uses the future)"),
    )

FilledSeriesModel = _build(
    "FilledSeriesModel",
    "Per product a 1-second grid for the hour: observed values, causal filter, its std, smoother.",
    _FilledBase,
    _filled_columns,
)


class _IndicatorsBase(_Strict):
    @pa.dataframe_check(error="a warm row has every feature finite")
    def warm_rows_complete(cls, df: pd.DataFrame) -> Series[bool]:
        feats = df[list(FEATURES)]
        return ~df["warm"] | feats.notna().all(axis=1)


_indicator_columns: dict[str, tuple[Any, Any]] = {
    "product_id": (str, pa.Field(description="product")),
    "time": (UTC_NS, pa.Field(description="grid second t (features use inputs at times <= t only)")),
    "warm": (bool, pa.Field(description=WARM_DESCRIPTION)),
}
_indicator_columns.update({n: (float, pa.Field(nullable=True, description=d)) for n, d in FEATURES.items()})

IndicatorsModel = _build(
    "IndicatorsModel",
    "Per product and second, causal scale-free features from the filtered series.",
    _IndicatorsBase,
    _indicator_columns,
)


class TrainingWindowsModel(_Strict):
    """One row per window of the partition (the window is the 1000 s of features ending at anchor_time)."""

    anchor_time: Series[UTC_NS] = pa.Field(description="t: the window's last second; labels are from t")
    valid: Series[bool] = pa.Field(description="full warm history and every label known")
    label_abs_max: Series[float] = pa.Field(nullable=True, ge=0, description="largest |label| of the window")


class ModelMetricsModel(_Strict):
    """Held-out scores of a model version per product and horizon (prequential: scored before training)."""

    model: Series[str] = pa.Field(description="champion | challenger | ridge | persistence")
    product_id: Series[str] = pa.Field(description="product, or ALL for the aggregate")
    horizon_s: Series[int] = pa.Field(isin=[10, 20, 100, 200], description="forecast horizon")
    n: Series[int] = pa.Field(ge=0, description="windows scored")
    mae: Series[float] = pa.Field(nullable=True, ge=0)
    rmse: Series[float] = pa.Field(nullable=True, ge=0)
    skill: Series[float] = pa.Field(nullable=True, description="1 - MSE(model) / MSE(persistence)")
    mae_ratio: Series[float] = pa.Field(nullable=True, description="MAE(model) / MAE(persistence)")
    ic: Series[float] = pa.Field(nullable=True, description="information coefficient")
    hit_rate: Series[float] = pa.Field(nullable=True, description="sign hit rate on moves above the deadband")


class ForecastScoresModel(_Strict):
    """Live scores of the forecasts anchored in one hour: per model version, product and horizon."""

    version_id: Series[int] = pa.Field(ge=1, description="model version that made the forecasts")
    product_id: Series[str] = pa.Field(description="product")
    horizon_s: Series[int] = pa.Field(isin=[10, 20, 100, 200], description="forecast horizon")
    n: Series[int] = pa.Field(ge=1, description="forecasts with an observed outcome")
    skill: Series[float] = pa.Field(nullable=True, description="1 - MSE / MSE(persistence) on live outcomes")
    hit_rate: Series[float] = pa.Field(
        nullable=True, ge=0, le=1, description="direction right on moves > 1 bp"
    )
    ic: Series[float] = pa.Field(
        nullable=True, ge=-1, le=1, description="Spearman correlation of forecast and outcome"
    )
    mae_bp: Series[float] = pa.Field(ge=0, description="mean absolute error, basis points")
    mse: Series[float] = pa.Field(ge=0, description="mean squared error (log-return units)")
    mse_persistence: Series[float] = pa.Field(ge=0, description="mean squared outcome: persistence's MSE")


def column_schema(model: type[pa.DataFrameModel]) -> dg.TableSchema:
    """The Dagster TableSchema of a pandera model (for `dagster/column_schema`)."""
    from dagster_pandera import pandera_schema_to_dagster_type

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the function is marked beta
        return pandera_schema_to_dagster_type(model).metadata["schema"].schema


def validate(model: type[pa.DataFrameModel], frame: pd.DataFrame) -> pa.errors.SchemaErrors | None:
    """Validate lazily (every failure at once); return the errors instead of raising them."""
    try:
        model.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        return exc
    return None


def describe_failures(
    errors: pa.errors.SchemaErrors, frame: pd.DataFrame | None = None, limit: int = 10
) -> str:
    """One readable sentence per failed rule: which rule, how many rows, and a few offending rows."""
    cases = errors.failure_cases
    lines = []
    for check, group in cases.groupby("check", sort=False):
        if (group["schema_context"] == "Column").all():
            for column, col_group in group.groupby("column", sort=False):
                sample = ", ".join(map(str, col_group["failure_case"].head(3).tolist()))
                lines.append(f"{column} {check}: {len(col_group)} rows (e.g. {sample})")
        else:
            idx = group["index"].dropna().unique()
            sample = ""
            if frame is not None and len(idx) and {"product_id", "time"} <= set(frame.columns):
                rows = frame.loc[frame.index.intersection(idx[:3]), ["product_id", "time"]]
                sample = " (e.g. " + ", ".join(f"{p} {t}" for p, t in rows.itertuples(index=False)) + ")"
            lines.append(f"{check}: {len(idx)} rows{sample}")
    return "; ".join(lines[:limit])
