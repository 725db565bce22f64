"""Helpers for tests of the live forecaster: a small real champion, and the platform's threads in process."""

from __future__ import annotations

import contextlib
import faulthandler
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from cb_assets.config import Settings
from cb_assets.db import model_registry as registry
from cb_assets.db.connection import connect
from cb_assets.model.experiment import series_for, window_sets
from cb_assets.series.schema import HOUR_S, SECOND_NS
from cb_assets.series.windows import ColumnStats


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
    # One hour of history sees one twenty-fourth of the day: the time-of-day inputs (sin and cos of the hour)
    # get their whole-day statistics, mean 0 and variance 1/2, or every later hour would lie out of range.
    fs = ws.feature_stats
    tod = np.array([n.split(":")[1] in ("tod_sin", "tod_cos") for n in ws.feature_names])
    fs = ColumnStats(fs.count, np.where(tod, 0.0, fs.total), np.where(tod, 0.5 * fs.count, fs.total_sq))
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
    model = build_model(cfg, fs, ws.label_stats, feature_names=ws.feature_names, output_names=ws.output_names)
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
    except BaseException:
        # What every thread was doing when the test gave up: a service stuck (a champion that never
        # loads, a poll that never returns) shows here rather than only as a timeout.
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        raise
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
        linger_s=0.05,
    )
    Sink(cfg).run(stop)


def ledger_version(conn, heldout: float) -> int:
    """A registered model version (no artifact: the ledger only names it) with a held-out skill."""
    return registry.register(
        conn,
        kind="initial",
        parent_id=None,
        partitions=["2024-03-01-11:00"],
        target_hour=None,
        metrics={"challenger": {"score": heldout}},
        artifact_path="/nonexistent.keras",
        status="promoted",
        decision_reason="test",
    )


def seed_scored_ledger(
    url: str, hour: datetime, products: Sequence[str], factors: dict[int, float], seed: int = 4
) -> dict[tuple[int, str, int], tuple[np.ndarray, np.ndarray]]:
    """Forecasts every 5 s of `hour` by each version (forecast = factor x the realised move), a price path
    with a tick per second written to raw_ticks, and the outcomes attached from it by the store.

    Returns {(version, product, horizon): (outcomes, forecasts)}."""
    from cb_assets.db.forecast_store import LedgerRow, score_due, write_forecasts

    rng = np.random.default_rng(seed)
    starts = range(0, 3600, 5)
    truth, rows, ticks = {}, [], []
    for p in products:
        path = (100.0 if p == "BTC-USD" else 10.0) * np.exp(np.cumsum(rng.normal(0, 1e-4, 4000)))
        ticks += [(p, hour + timedelta(seconds=s), float(path[s])) for s in range(4000)]
        for h in (10, 20, 100, 200):
            y = np.array([np.log(path[s + h] / path[s]) for s in starts])
            for version, factor in factors.items():
                f = factor * y
                truth[(version, p, h)] = (y, f)
                rows += [
                    LedgerRow(
                        version,
                        p,
                        hour + timedelta(seconds=s),
                        h,
                        float(r),
                        float(path[s] * np.exp(r)),
                        float(path[s]),
                    )
                    for s, r in zip(starts, f, strict=True)
                ]
    with connect(url) as conn:
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY raw_ticks (product_id, time, price, volume_24_h, low_24_h, high_24_h, low_52_w, high_52_w, "
                "price_percent_chg_24_h, source) FROM STDIN"
            ) as copy,
        ):
            for p, t, price in ticks:
                copy.write_row(
                    (p, t, price, 1.0, price / 2, price * 2, price / 3, price * 3, 0.0, "simulated")
                )
        conn.commit()
        write_forecasts(conn, rows)
        conn.commit()
        assert score_due(conn, slack_s=0) == len(rows)
        conn.commit()
    return truth


class FramePlayer:
    """Produces a simulated market's messages to Kafka frame by frame (5 data seconds a frame), from `live`."""

    def __init__(self, sim, live: datetime, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Producer

        from cb_assets.feed.timestamps import parse_rfc3339_ns

        live_ns = int(live.timestamp()) * 10**9
        by_time: dict[str, list[dict]] = {}
        for m in sim.messages():
            by_time.setdefault(m["time"], []).append(m)
        self.frames = [msgs for t, msgs in sorted(by_time.items()) if parse_rfc3339_ns(t) >= live_ns]
        self.next = 0
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
        self.topic = topic

    def play(self, n: int, per_second: float = 40.0) -> None:
        import orjson

        for msgs in self.frames[self.next : self.next + n]:
            for m in msgs:
                self.producer.produce(self.topic, key=m["product_id"].encode(), value=orjson.dumps(m))
            self.producer.poll(0)
            time.sleep(1.0 / per_second)
        self.next += n
        assert self.producer.flush(30) == 0

    def junk(self) -> None:
        for value in (b"{not json", b'{"product_id": "BTC-USD", "price": "-1"}', b""):
            self.producer.produce(self.topic, key=b"BTC-USD", value=value)
        assert self.producer.flush(30) == 0
