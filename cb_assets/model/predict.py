"""The champion's forecasts for the newest complete window (what `cb-assets predict` prints).

The newest window is the 1000 seconds of indicators ending at the newest second where every product is warm;
forecast prices are the last observed price at that second times exp(forecast log return).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from cb_assets.db import model_registry as registry
from cb_assets.db.connection import connect
from cb_assets.db.series_store import read_frame
from cb_assets.series.indicators import FEATURE_NAMES
from cb_assets.series.schema import HORIZONS_S, WINDOW_S


class NoForecast(RuntimeError):
    """Why there is nothing to forecast from yet (no champion, no warm window)."""


@dataclass(frozen=True)
class Forecast:
    version_id: int
    anchor_time: datetime
    rows: list[dict]  # product, last_price, then r{h}s (log return) and p{h}s (price) per horizon


def newest_window(
    database_url: str, products: list[str], window: int = WINDOW_S
) -> tuple[datetime, np.ndarray, dict[str, float]]:
    with connect(database_url) as conn:
        anchor = conn.execute(
            "SELECT time FROM indicators WHERE warm GROUP BY time HAVING count(*) = %s ORDER BY time DESC LIMIT 1",
            (len(products),),
        ).fetchone()
        if anchor is None:
            raise NoForecast("no second has warm indicators for every product yet: materialise more hours")
        t = anchor[0]
        start = t - timedelta(seconds=window - 1)
        ind = read_frame(
            conn,
            "indicators",
            ("product_id", "time", "warm", *FEATURE_NAMES),
            start,
            t + timedelta(seconds=1),
        )
        obs = read_frame(
            conn,
            "filled_series",
            ("product_id", "time", "price"),
            t - timedelta(hours=1),
            t + timedelta(seconds=1),
        )
    index = pd.date_range(pd.Timestamp(start).tz_convert("UTC"), pd.Timestamp(t).tz_convert("UTC"), freq="s")
    blocks, cold = [], []
    for p in products:
        f = ind[ind["product_id"] == p].set_index("time").reindex(index)
        if not f["warm"].fillna(False).astype(bool).all():
            cold.append(p)
        blocks.append(f[list(FEATURE_NAMES)].to_numpy(np.float32))
    if cold:
        raise NoForecast(f"the newest {window} s are not warm for {cold}")
    last = {
        p: float(g["price"].dropna().iloc[-1])
        for p, g in obs.groupby("product_id")
        if g["price"].notna().any()
    }
    return t, np.concatenate(blocks, axis=1), last


def champion_forecast(database_url: str, products: list[str]) -> Forecast:
    from cb_assets.model.network import column_names_of, load_model, predict_returns

    with connect(database_url) as conn:
        champ = registry.alias(conn)
    if champ is None:
        raise NoForecast("no champion model yet: materialise price_model (or let raw_ticks_sensor do it)")
    model = load_model(champ.artifact_path)
    _, output_names = column_names_of(model)
    model_products = list(dict.fromkeys(n.split(":")[0] for n in (output_names or ())))
    if model_products and model_products != list(products):
        products = model_products  # the model decides the column order it was trained with
    t, matrix, last = newest_window(database_url, products)
    returns = predict_returns(model, matrix)[0]
    rows = []
    for j, p in enumerate(products):
        row: dict = {"product": p, "last_price": last.get(p, float("nan"))}
        for k, h in enumerate(HORIZONS_S):
            r = float(returns[j * len(HORIZONS_S) + k])
            row[f"r{h}s"] = r
            row[f"p{h}s"] = row["last_price"] * float(np.exp(r))
        rows.append(row)
    return Forecast(champ.id, t, rows)


def render(fc: Forecast) -> str:
    head = f"champion v{fc.version_id}, window ending {fc.anchor_time:%Y-%m-%d %H:%M:%S} UTC"
    cols = "".join(f" | {h:>4}s ret (bp) | {h:>4}s price" for h in HORIZONS_S)
    lines = [head, f"{'product':<9} | {'last price':>12}{cols}"]
    for r in fc.rows:
        cells = "".join(f" | {r[f'r{h}s'] * 1e4:>13.2f} | {r[f'p{h}s']:>10.6g}" for h in HORIZONS_S)
        lines.append(f"{r['product']:<9} | {r['last_price']:>12.6g}{cells}")
    return "\n".join(lines)
