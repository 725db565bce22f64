"""Helpers for tests of the live forecaster: a small real champion, and the platform's threads in process."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from cb_assets.config import Settings
from cb_assets.db.connection import connect
from cb_assets.model import registry
from cb_assets.model.experiment import series_for, window_sets
from cb_assets.series.schema import HOUR_S, SECOND_NS


def ticks_of(rows: Sequence[tuple], products: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for p in products:
        mine = [r for r in rows if r[0] == p]
        times = np.array([pd.Timestamp(r[1]).value for r in mine], dtype=np.int64)
        out[p] = (times, np.array([r[2:9] for r in mine], dtype=np.float64).reshape(-1, 7))
    return out


def register_champion(
    database_url: str,
    directory: Path,
    products: Sequence[str],
    rows: Sequence[tuple],
    last_hour: datetime,
    *,
    seed: int = 0,
) -> int:
    """A small untrained network with the real input layout and the training statistics of `last_hour`'s
    windows (so that inputs standardise as they would for a trained champion), registered and promoted."""
    from cb_assets.model.network import NetworkConfig, build_model, save_model

    h = int(pd.Timestamp(last_hour).value)
    hours = [h - 2 * HOUR_S * SECOND_NS, h - HOUR_S * SECOND_NS, h]
    ws = window_sets(series_for(ticks_of(rows, products), products, hours), products, [h])[0]
    cfg = NetworkConfig(
        n_features=ws.features.shape[1],
        n_outputs=ws.labels.shape[1],
        conv_filters=(8,),
        conv_kernels=(10,),
        conv_strides=(10,),
        d_model=8,
        heads=2,
        ff_dim=8,
        head_units=8,
    )
    import keras

    keras.utils.set_random_seed(seed)
    model = build_model(
        cfg, ws.feature_stats, ws.label_stats, feature_names=ws.feature_names, output_names=ws.output_names
    )
    with connect(database_url) as conn, conn.transaction():
        version = registry.register(
            conn,
            kind="initial",
            parent_id=None,
            partitions=[last_hour.strftime("%Y-%m-%d-%H:%M")],
            target_hour=None,
            metrics={},
            artifact_path="",
            status="promoted",
            decision_reason="test champion",
        )
        path = save_model(model, directory / f"champion_v{version}.keras")
        registry.set_artifact_path(conn, version, str(path))
        registry.set_alias(conn, version, "test")
    return version


@contextlib.contextmanager
def running(target, *args, **kwargs) -> Iterator[threading.Event]:
    """`target(*args, stop=..., **kwargs)`-style services (sink, forecaster) in a thread, stopped on exit."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def main() -> None:
        try:
            target(*args, stop, **kwargs)
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(60)
        assert not thread.is_alive(), "the service did not stop within 60 s"
        if errors:
            raise errors[0]


def run_forecaster(settings: Settings, stop: threading.Event, **kwargs) -> None:
    from cb_assets.forecast.service import Forecaster

    Forecaster(settings, **kwargs).run(stop)


def run_sink(settings: Settings, stop: threading.Event) -> None:
    from cb_assets.stream.sink import Sink, SinkConfig

    cfg = SinkConfig(
        bootstrap=settings.kafka_bootstrap,
        topic=settings.topic,
        database_url=settings.database_url,
        products=settings.products,
        group_id="test-sink",
        batch_size=2000,
        batch_timeout_s=0.05,
    )
    Sink(cfg).run(stop)
