"""Speed of the live forecaster: latency, throughput, inference, CPU and memory, beside the sink.

Run: `python bench/forecast.py [--products 12] [--live-s 120] [--no-fine-tune]`. Goals on 2 cores: p99 tick
produced -> forecast row committed <= 250 ms at the live cadence (sink running); keeps up with a 20x replay;
memory flat over time.

What it does (real processes, as `cb-assets up` runs them):
- PostgreSQL (CB_DATABASE_URL's server, or an embedded one) and the bundled broker (or CB_KAFKA_BOOTSTRAP);
  three hours of the simulated market for 12 products stored as history; a champion of the production
  shape (the default NetworkConfig, statistics of the stored windows) registered;
- `cb-assets sink` and `cb-assets forecast` as subprocesses; this process produces the following hours'
  frames to the topic at a chosen pace and notes when each frame was produced;
- live cadence: one frame every 5 s for `--live-s` seconds; replays at 20x and 100x (an hour of data each);
  then live cadence and the 20x replay again while a TensorFlow fine-tune runs in another process, at nice 0
  (the baseline) and at price_model's training priority (model/priority.py).
Latency is `made_at` of the anchor's ledger rows (set when the row reaches PostgreSQL) minus the time the
frame whose second is the anchor was produced. CPU share and resident memory are the forecaster process's
(psutil). It prints figures, never asserts.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import orjson
import pandas as pd
import psutil
from bench_services import kafka_bootstrap, postgres_server
from confluent_kafka import Producer

from cb_assets.config import DEFAULT_PRODUCTS
from cb_assets.db import model_registry as registry
from cb_assets.db.connection import connect
from cb_assets.feed.seed import rows_from_simulation, write_rows
from cb_assets.feed.simulate import simulate_ticks
from cb_assets.model.experiment import series_for, window_sets
from cb_assets.model.priority import TRAINING_NICE
from cb_assets.stack.procs import free_port
from cb_assets.stream.topics import ensure_topic

START = datetime(2024, 3, 1, tzinfo=UTC)
DAY_H = 24  # hours of the market the champion's statistics come from
CLI = [sys.executable, "-m", "cb_assets.cli"]
P99_TARGET_MS = 250.0
# A fine-tune's load: the production network trained on windows of the production shape, until killed, at
# the nice value given as its argument (price_model trains under the same `training_priority`).
_TRAINER = """
import sys, numpy as np
from cb_assets.model.priority import training_priority
with training_priority(int(sys.argv[1])):
    import keras
    from cb_assets.model.network import NetworkConfig, build_model, standardised_head
    cfg = NetworkConfig()
    head = standardised_head(build_model(cfg))
    head.compile(optimizer="adam", loss="mse")
    x = np.random.default_rng(0).normal(size=(64, cfg.window, cfg.n_features)).astype("float32")
    y = np.zeros((64, cfg.n_outputs), "float32")
    while True:
        head.fit(x, y, batch_size=16, epochs=1, verbose=0)
"""


def champion(url: str, directory: Path, products: tuple[str, ...], sim, hours: int) -> int:
    """The production network shape with the feature statistics of a day of windows (as an initial training
    on 24 hours stores them), untrained: inference costs the same."""
    from cb_assets.model.baselines import merged_stats
    from cb_assets.model.network import NetworkConfig, build_model, save_model

    rows = rows_from_simulation(sim)
    ticks = {}
    for p in products:
        mine = [r for r in rows if r[0] == p]
        ticks[p] = (
            np.array([pd.Timestamp(r[1]).value for r in mine]),
            np.array([r[2:9] for r in mine], float),
        )
    start = int(pd.Timestamp(START).value)
    hours_ns = [start + k * 3_600_000_000_000 for k in range(hours)]
    sets = window_sets(series_for(ticks, products, hours_ns), products, hours_ns[2:])
    fstats, lstats = merged_stats(sets)
    ws = sets[-1]
    cfg = NetworkConfig(n_features=ws.features.shape[1], n_outputs=ws.labels.shape[1])
    model = build_model(cfg, fstats, lstats, feature_names=ws.feature_names, output_names=ws.output_names)
    with connect(url) as conn, conn.transaction():
        v = registry.register(conn, kind="initial", parent_id=None, partitions=["2024-03-01-02:00"], target_hour=None,
                              metrics={}, artifact_path="", status="promoted", decision_reason="benchmark")  # fmt: skip
        path = save_model(model, directory / f"v{v}.keras")
        registry.set_artifact_path(conn, v, str(path))
        registry.set_alias(conn, v, "benchmark")
    return v


class Player:
    def __init__(self, bootstrap: str, topic: str, sim, from_ns: int) -> None:
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
        self.topic = topic
        by_time: dict[int, list[dict]] = {}
        for m, t in ((m, m["time"]) for m in sim.messages()):
            by_time.setdefault(t, []).append(m)
        from cb_assets.feed.timestamps import parse_rfc3339_ns

        self.frames = sorted((parse_rfc3339_ns(t), msgs) for t, msgs in by_time.items())
        self.frames = [f for f in self.frames if f[0] >= from_ns]
        self.next = 0
        self.produced: dict[int, float] = {}  # anchor second -> wall time produced

    def play(self, n: int, every_s: float) -> None:
        t0 = time.monotonic()
        for i, (t_ns, msgs) in enumerate(self.frames[self.next : self.next + n]):
            wait = t0 + i * every_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            for m in msgs:
                self.producer.produce(self.topic, key=m["product_id"].encode(), value=orjson.dumps(m))
            self.producer.flush(5)
            self.produced[-(-t_ns // 10**9)] = time.time()
        self.next += n


def latencies_ms(url: str, produced: dict[int, float], since: float) -> np.ndarray:
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM anchor)::bigint, extract(epoch FROM min(made_at))::float8 FROM forecasts "
            "WHERE made_at >= to_timestamp(%s) GROUP BY anchor",
            (since,),
        ).fetchall()
    return np.array([(made - produced[a]) * 1000 for a, made in rows if a in produced])


def phase(name: str, player: Player, n_frames: int, every_s: float, url: str, proc: psutil.Process) -> None:
    since = time.time()
    cpu0, wall0 = sum(proc.cpu_times()[:2]), time.monotonic()
    first = player.frames[player.next][0]
    player.play(n_frames, every_s)
    last = player.frames[player.next - 1][0]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until the last frame's anchor is in the ledger (or 2 min)
        lat = latencies_ms(url, player.produced, since)
        with connect(url) as conn:
            newest = conn.execute("SELECT extract(epoch FROM max(anchor))::bigint FROM forecasts").fetchone()[
                0
            ]
        if newest is not None and newest >= -(-last // 10**9):
            break
        time.sleep(0.2)
    wall = time.monotonic() - wall0
    cpu = sum(proc.cpu_times()[:2]) - cpu0
    data_s = (last - first) / 1e9
    lat = latencies_ms(url, player.produced, since)
    p50, p99 = (np.percentile(lat, 50), np.percentile(lat, 99)) if lat.size else (float("nan"),) * 2
    print(
        f"{name:<34} frames {n_frames:5d}  anchors {lat.size:5d}  latency p50 {p50:7.0f} ms  p99 {p99:7.0f} ms  "
        f"forecasts/s {lat.size / wall:6.1f}  data x{data_s / wall:6.1f}  CPU {100 * cpu / wall:5.1f}%  "
        f"RSS {proc.memory_info().rss / 2**20:6.0f} MB"
    )


@contextmanager
def fine_tune_running(nice: int) -> Iterator[None]:
    trainer = subprocess.Popen([sys.executable, "-c", _TRAINER, str(nice)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(20)  # past its TensorFlow import: training is running
        yield
    finally:
        trainer.kill()
        trainer.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--products", type=int, default=12)
    ap.add_argument("--live-s", type=float, default=120.0)
    ap.add_argument("--no-fine-tune", action="store_true")
    args = ap.parse_args()
    products = tuple(DEFAULT_PRODUCTS[: args.products])
    with postgres_server() as pg, kafka_bootstrap() as bootstrap, tempfile.TemporaryDirectory() as tmp:
        url = pg.fresh_database()
        sim = simulate_ticks(products, int(START.timestamp()) * 10**9, (DAY_H + 6) * 3600, seed=5)
        rows = rows_from_simulation(sim)
        live = START + timedelta(hours=DAY_H + 3)
        write_rows(url, [r for r in rows if live - timedelta(hours=3) <= r[1] < live])
        champion(url, Path(tmp), products, sim, DAY_H + 2)
        topic = "bench-forecast"
        ensure_topic(bootstrap, topic, partitions=6)
        env = dict(os.environ, CB_DATABASE_URL=url, CB_KAFKA_BOOTSTRAP=bootstrap, CB_TOPIC=topic,
                   CB_PRODUCTS=",".join(products), CB_HOME=tmp, CB_FORECAST_PORT=str(free_port()))  # fmt: skip
        logs = Path(tmp)
        sink = subprocess.Popen(
            [*CLI, "sink"], env=env, stdout=(logs / "sink.log").open("wb"), stderr=subprocess.STDOUT
        )
        fc = subprocess.Popen(
            [*CLI, "forecast"], env=env, stdout=(logs / "fc.log").open("wb"), stderr=subprocess.STDOUT
        )
        player = Player(bootstrap, topic, sim, int(live.timestamp()) * 10**9)
        proc = psutil.Process(fc.pid)
        try:
            started = time.monotonic()
            player.play(1, 0)
            while True:
                with connect(url) as conn:
                    if conn.execute("SELECT count(*) FROM forecasts").fetchone()[0]:
                        break
                time.sleep(0.2)
            print(
                f"{len(products)} products; forecaster up and forecasting {time.monotonic() - started:.1f} s after start"
            )
            print(f"RSS after start: {proc.memory_info().rss / 2**20:.0f} MB")
            phase("live cadence (a frame every 5 s)", player, int(args.live_s / 5), 5.0, url, proc)
            phase("replay 20x (an hour of data)", player, 720 - int(args.live_s / 5) - 1, 0.25, url, proc)
            phase("replay 100x (an hour of data)", player, 720, 0.05, url, proc)
            if not args.no_fine_tune:
                # At nice 0 (the baseline, as price_model trained before) and at price_model's default.
                for nice in (0, TRAINING_NICE):
                    with fine_tune_running(nice):
                        phase(f"live cadence, fine-tune at nice {nice}", player, 24, 5.0, url, proc)
                        phase(f"replay 20x, fine-tune at nice {nice}", player, 240, 0.25, url, proc)
            with connect(url) as conn:
                inf = conn.execute("SELECT counters->>'inference_ms_p50' FROM forecaster_status").fetchone()[
                    0
                ]
            print(
                f"inference per forecast (p50, one window of {len(products)} products): {float(inf):.1f} ms"
            )
        finally:
            for p in (fc, sink):
                p.send_signal(signal.SIGTERM)
            for p in (fc, sink):
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    main()
