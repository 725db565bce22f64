"""Dagster resources. Values come from CB_* variables through `dg.EnvVar`, so the UI shows names, not values."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import psycopg

from cb_assets.db.connection import connect
from cb_assets.defs.io_managers import WindowsIOManager
from cb_assets.series.window_store import WindowStore


class PostgresResource(dg.ConfigurableResource):
    """The Kafka-fed raw table and the derived tables live here."""

    database_url: str

    @contextmanager
    def connection(self, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
        with connect(self.database_url, autocommit=autocommit, application_name="cb-assets dagster") as conn:
            yield conn


class MarketResource(dg.ConfigurableResource):
    """What the platform trades and how long it waits for late ticks before an hour counts as complete."""

    products: str  # comma-separated, in column order
    hour_grace_s: int = 120

    @property
    def product_list(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.products.split(",") if p.strip())


class ArtifactStore(dg.ConfigurableResource):
    """Where models and other files produced by assets are kept (under CB_HOME by default)."""

    base_dir: str

    def path(self, *parts: str) -> Path:
        p = Path(self.base_dir, *parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


class WindowStoreResource(dg.ConfigurableResource):
    """The training windows on disk, for code that trains on arbitrary ranges of hours (the IO manager of
    `training_windows` writes the same directories)."""

    base_dir: str

    @property
    def store(self) -> WindowStore:
        return WindowStore(self.base_dir)


def default_resources() -> dict[str, dg.ConfigurableResource | dg.ConfigurableIOManager]:
    """What the code location runs with: every value from the CB_* environment that config.py exported."""
    return {
        "postgres": PostgresResource(database_url=dg.EnvVar("CB_DATABASE_URL")),
        "market": MarketResource(
            products=dg.EnvVar("CB_PRODUCTS"), hour_grace_s=dg.EnvVar.int("CB_HOUR_GRACE_S")
        ),
        "artifacts": ArtifactStore(base_dir=dg.EnvVar("CB_ARTIFACTS_DIR")),
        "windows": WindowStoreResource(base_dir=dg.EnvVar("CB_WINDOWS_DIR")),
        "windows_io_manager": WindowsIOManager(base_dir=dg.EnvVar("CB_WINDOWS_DIR")),
    }


def resources_for(
    database_url: str, home: Path, products: Sequence[str], *, hour_grace_s: int = 120
) -> dict[str, dg.ConfigurableResource | dg.ConfigurableIOManager]:
    """The same resources with literal values, for in-process runs (tests, benchmarks) that bring their own
    database and directory instead of the environment's."""
    windows = str(home / "windows")
    return {
        "postgres": PostgresResource(database_url=database_url),
        "market": MarketResource(products=",".join(products), hour_grace_s=hour_grace_s),
        "artifacts": ArtifactStore(base_dir=str(home / "artifacts")),
        "windows": WindowStoreResource(base_dir=windows),
        "windows_io_manager": WindowsIOManager(base_dir=windows),
    }
