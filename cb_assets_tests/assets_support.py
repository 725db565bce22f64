"""Helpers for tests that run the asset graph in process against a real PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pandas as pd

from cb_assets.db.connection import connect
from cb_assets.db.series_store import read_frame
from cb_assets.defs.resources import resources_for
from cb_assets.series.indicators import FEATURE_NAMES

PRODUCTS = ("BTC-USD", "ETH-USD", "SOL-USD", "ETH-BTC")
ASSET_NAMES = ("raw_ticks", "filled_series", "indicators", "training_windows")


def hour(key: str) -> datetime:
    return datetime.strptime(key, "%Y-%m-%d-%H:%M").replace(tzinfo=UTC)


def key_of(h: datetime) -> str:
    return h.strftime("%Y-%m-%d-%H:%M")


def resources(database_url: str, home: Path, products: Sequence[str] = PRODUCTS) -> dict[str, object]:
    return dict(resources_for(database_url, home, products))


def assets(*names: str) -> list[dg.AssetsDefinition]:
    from cb_assets.definitions import defs

    return [defs.get_assets_def(n) for n in (names or ASSET_NAMES)]


def materialize(
    names: Sequence[str], partition: str, res: dict[str, object], instance: dg.DagsterInstance, **kw: object
) -> dg.ExecuteInProcessResult:
    return dg.materialize(assets(*names), partition_key=partition, resources=res, instance=instance, **kw)


def materialize_range(
    names: Sequence[str],
    first: str,
    last: str,
    res: dict[str, object],
    instance: dg.DagsterInstance,
    **kw: object,
) -> dg.ExecuteInProcessResult:
    """One run over a range of hours, as a single-run backfill launches it."""
    return dg.materialize(
        assets(*names),
        resources=res,
        instance=instance,
        tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
        **kw,
    )


def table_slice(database_url: str, table: str, start: datetime, end: datetime) -> pd.DataFrame:
    cols = {
        "filled_series": None,
        "indicators": ("product_id", "time", "warm", *FEATURE_NAMES),
    }[table]
    if cols is None:
        from cb_assets.db.series_store import FILLED_TYPES

        cols = tuple(FILLED_TYPES)
    with connect(database_url) as conn:
        return read_frame(conn, table, cols, start, end)


@contextmanager
def env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


HOUR = timedelta(hours=1)
