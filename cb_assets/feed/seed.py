"""Writing simulated or recorded ticks straight into raw_ticks, bypassing Kafka.

For benchmarks, tests and demos that need many hours of history at once (24 h x 12 products is ~100,000
ticks: seconds through COPY, minutes through the live path). The rows are the ones the sink would write for
the same messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import numpy as np

from cb_assets.db.connection import connect
from cb_assets.feed.market import LeadLag
from cb_assets.feed.simulate import SimulatedTicks, simulate_ticks
from cb_assets.series.schema import SECOND_NS
from cb_assets.stream.pg_writer import TickWriter
from cb_assets.stream.ticks import TickRow


def _utc(ns: int) -> datetime:
    return datetime.fromtimestamp((ns // 1000) / 1e6, tz=UTC).replace(microsecond=(ns // 1000) % 1_000_000)


def rows_from_simulation(sim: SimulatedTicks, source: str = "simulated") -> list[TickRow]:
    rows: list[TickRow] = []
    for k, t_ns in enumerate(sim.frame_times_ns):
        t = _utc(int(t_ns))
        for p in np.flatnonzero(sim.emitted[k]):
            v = sim.values[k, p]
            # The wire carries prices rounded to the product's decimals: store what the sink would.
            d = int(sim.decimals[p])
            v = [
                round(float(v[0]), d),
                float(v[1]),
                round(float(v[2]), d),
                round(float(v[3]), d),
                round(float(v[4]), d),
                round(float(v[5]), d),
                float(v[6]),
            ]
            rows.append((sim.products[p], t, *v, None, None, source, -1, -1))  # type: ignore[arg-type]
    return rows


def simulate_rows(
    products: Sequence[str], start: datetime, hours: int, *, seed: int = 0, lead_lag: LeadLag | None = None
) -> tuple[SimulatedTicks, list[TickRow]]:
    start_ns = int(start.timestamp()) * SECOND_NS
    sim = simulate_ticks(products, start_ns, hours * 3600, seed=seed, lead_lag=lead_lag)
    return sim, rows_from_simulation(sim)


def write_rows(database_url: str, rows: Iterable[TickRow], batch: int = 50_000) -> int:
    """Upsert rows (idempotent, like the sink); returns how many were new."""
    inserted = 0
    buf: list[TickRow] = []
    with connect(database_url) as conn:
        writer = TickWriter(conn)
        for row in rows:
            buf.append(row)
            if len(buf) >= batch:
                inserted += writer.write(buf).inserted
                buf.clear()
        if buf:
            inserted += writer.write(buf).inserted
    return inserted
