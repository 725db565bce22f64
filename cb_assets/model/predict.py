"""What `cb-assets predict` prints: the newest forecasts in the ledger, with their age.

The live forecaster (`cb-assets forecast`) makes them at the newest data second with the champion; this only
reads them, so it answers instantly and shows exactly what was recorded (and will be scored).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from cb_assets.db.connection import connect
from cb_assets.db.forecast_store import newest_forecasts
from cb_assets.series.schema import HORIZONS_S


class NoForecast(RuntimeError):
    """Why there is nothing to show yet."""


@dataclass(frozen=True)
class Forecast:
    version_id: int
    anchor_time: datetime
    made_at: datetime
    rows: list[dict]  # product, last_price, then r{h}s (log return) and p{h}s (price) per horizon

    def age_s(self, now: datetime | None = None) -> float:
        return ((now or datetime.now(UTC)) - self.made_at).total_seconds()


def newest_forecast(database_url: str) -> Forecast:
    with connect(database_url) as conn:
        frame = newest_forecasts(conn)
    if frame.empty:
        raise NoForecast(
            "the forecast ledger is empty: `cb-assets forecast` writes it (`cb-assets up` starts it) once a "
            "champion model exists and the features are warm"
        )
    rows = []
    for product, g in frame.groupby("product_id", sort=False):
        row: dict = {"product": product, "last_price": float(g["last_price"].iloc[0])}
        for h, r, p in zip(g["horizon_s"], g["forecast_return"], g["forecast_price"], strict=True):
            row[f"r{int(h)}s"], row[f"p{int(h)}s"] = float(r), float(p)
        rows.append(row)
    return Forecast(
        version_id=int(frame["version_id"].max()),
        anchor_time=frame["anchor"].iloc[0],
        made_at=max(frame["made_at"]),
        rows=rows,
    )


def render(fc: Forecast) -> str:
    head = (
        f"champion v{fc.version_id}, anchor {fc.anchor_time:%Y-%m-%d %H:%M:%S} UTC (data time), "
        f"made {fc.age_s():.0f} s ago"
    )
    cols = "".join(f" | {h:>4}s ret (bp) | {h:>4}s price" for h in HORIZONS_S)
    lines = [head, f"{'product':<9} | {'last price':>12}{cols}"]
    nan = float("nan")
    for r in fc.rows:
        cells = "".join(
            f" | {r.get(f'r{h}s', nan) * 1e4:>13.2f} | {r.get(f'p{h}s', nan):>10.6g}" for h in HORIZONS_S
        )
        lines.append(f"{r['product']:<9} | {r['last_price']:>12.6g}{cells}")
    return "\n".join(lines)
