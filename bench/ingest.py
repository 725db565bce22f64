"""Speed of the Kafka -> PostgreSQL sink: throughput against the naive writer, and commit latency under load.

Run: `python bench/ingest.py [--ticks N] [--repeats K] [--rate R] [--latency-seconds S]` (a few minutes on
2 cores). Targets on 2 CPU cores (issue 16), with the broker and PostgreSQL on the same cores:
- the sink (`Sink`: batch decoding and validation, numpy-built binary COPY) ingests >= 100,000 ticks/s,
  with <= 4 us of CPU in the sink's process per tick, and >= 3x the naive sink (the same `Sink` with
  `naive=True`: `parse_tick` for every message and executemany INSERT per batch), both measured in this run
  over the same topic; with --repeats K the pair runs K times and the medians are judged;
- at a fixed offered load (default 2,000 ticks/s, produced in real time while the sink runs), p99 of
  "offsets committed" minus "message produced" is <= 250 ms.

Services: CB_DATABASE_URL / CB_KAFKA_BOOTSTRAP when set (fresh databases and topics are created there and
the databases dropped at the end), else an embedded PostgreSQL and the bundled broker started here in
temporary directories on free ports and stopped at the end.

The N ticks are simulated (the 12 default products over as many hours as it takes; every tick a distinct
(product, time) row), serialised and produced into a fresh 6-partition topic before anything is timed. Each
sink run reads that topic from offset 0 with a consumer group of its own into a fresh migrated database,
in this process, and is timed from its partition assignment until the commit of the batch holding the N-th
tick. Joining the group is left out of the headline because the bundled broker holds every new group for a
fixed ~3 s before assigning partitions, whatever the consumer does; the figure with it, and the one from the
first commit to the last, are printed beside it. CPU time per tick (this process; the embedded PostgreSQL
server, or on a configured server on this machine the sink's backend from its first commit to its last) and
the load average are printed too: the machine may be shared, and they show how much of a slow run is the
sink's own cost. The script prints figures and PASS/FAIL against the targets; it never asserts.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np
import orjson
from confluent_kafka import Producer
from ingest_runs import Services, SinkRun, services, throughput_runs

from cb_assets.config import DEFAULT_PRODUCTS
from cb_assets.feed.simulate import simulate_ticks
from cb_assets.feed.timestamps import parse_rfc3339_ns
from cb_assets.series.schema import HOUR_S
from cb_assets.stream.producer import TickProducer
from cb_assets.stream.sink import CommittedBatch, Sink, SinkConfig
from cb_assets.stream.topics import ensure_topic

# Far enough in the past that 100+ simulated hours never reach "now" (the sink refuses future ticks).
START = parse_rfc3339_ns("2024-05-01T00:00:00Z")
PARTITIONS = 6
THROUGHPUT_TARGET = 100_000.0
RATIO_TARGET = 3.0
SINK_CPU_TARGET_US = 4.0
P99_TARGET_S = 0.25


# -- data ------------------------------------------------------------------------------------------------


def build_messages(n: int, products: tuple[str, ...]) -> tuple[list[bytes], list[bytes], float]:
    """(keys, values, simulated hours): the first n ticks of a simulated market, serialised once."""
    probe = simulate_ticks(products, START, HOUR_S, seed=7)
    per_hour = max(1, int(probe.emitted.sum()))
    hours = math.ceil(n / per_hour * 1.05) + 1  # the tick rate wanders a little from hour to hour
    while True:
        sim = simulate_ticks(products, START, hours * HOUR_S, seed=7)
        if int(sim.emitted.sum()) >= n:
            break
        hours += max(1, hours // 10)
    keys: list[bytes] = []
    values: list[bytes] = []
    dumps = orjson.dumps
    for msg in sim.messages(connection_id="bench"):
        keys.append(msg["product_id"].encode())
        values.append(dumps(msg))
        if len(values) == n:
            break
    return keys, values, hours


def produce_all(bootstrap: str, topic: str, keys: list[bytes], values: list[bytes]) -> tuple[float, int]:
    """Produce everything as fast as the broker takes it; return (msgs/s, failed deliveries)."""
    failed = 0

    def on_error(err: object, _msg: object) -> None:
        nonlocal failed
        failed += 1

    # The production producer's codec and idempotence, with much larger batches: this is set-up, not the
    # subject of the benchmark, and one Python call per message is already the bound.
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "compression.type": "zstd",
            "linger.ms": 200,
            "batch.num.messages": 100_000,
            "batch.size": 8 * 1024 * 1024,
            "queue.buffering.max.messages": 2_000_000,
            "queue.buffering.max.kbytes": 2 * 1024 * 1024,
            # Delivery is accounted for without a Python callback per message: only failures call back.
            "delivery.report.only.error": True,
            "on_delivery": on_error,
        }
    )
    produce, poll = producer.produce, producer.poll
    t0 = time.perf_counter()
    for key, value in zip(keys, values, strict=True):
        while True:
            try:
                produce(topic, value, key)
                break
            except BufferError:
                poll(0.05)
    left = producer.flush(120)
    elapsed = time.perf_counter() - t0
    return len(values) / elapsed, failed + left


# -- latency ---------------------------------------------------------------------------------------------


@dataclass
class Latency:
    offered_rate: float
    achieved_rate: float
    sent: int
    committed: int
    seconds: np.ndarray  # one per committed message of the measured window


def measure_latency(
    svc: Services, products: tuple[str, ...], values: list[bytes], rate: float, duration_s: float
) -> Latency:
    """Offer `rate` ticks/s in real time through the production producer while the sink runs beside it."""
    topic = f"cb-bench-lat-{uuid.uuid4().hex[:8]}"
    ensure_topic(svc.bootstrap, topic, partitions=PARTITIONS)
    url = svc.fresh_database()
    n = int(rate * duration_s)
    msgs = [orjson.loads(v) for v in values[: n + 1]]
    lock = threading.Lock()
    latencies: list[float] = []
    committed = 0
    measure_from_ms = math.inf

    def on_commit(b: CommittedBatch) -> None:
        nonlocal committed
        at_ms = b.committed_at * 1000.0
        with lock:
            committed += len(b.message_timestamps_ms)
            latencies.extend((at_ms - ts) / 1000.0 for ts in b.message_timestamps_ms if ts >= measure_from_ms)

    # Everything else at the defaults `cb-assets sink` uses (batch size, batch timeout, consumer settings).
    cfg = SinkConfig(
        bootstrap=svc.bootstrap,
        topic=topic,
        database_url=url,
        products=products,
        group_id=f"bench-latency-{uuid.uuid4().hex[:6]}",
    )
    sink = Sink(cfg, on_commit=on_commit)
    stop = threading.Event()
    sink_thread = threading.Thread(target=sink.run, args=(stop,), name="sink", daemon=True)
    sink_thread.start()
    producer = TickProducer(svc.bootstrap, topic)
    try:
        # One warm-up tick, committed before the clock starts: joining the group is not steady-state latency.
        producer.produce(msgs[0])
        producer.flush(10)
        deadline = time.monotonic() + 60
        while committed < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        measure_from_ms = time.time() * 1000.0 - 1.0

        t0 = time.perf_counter()
        sent = 0
        while sent < n:
            due = min(n, int((time.perf_counter() - t0) * rate) + 1)
            while sent < due:
                sent += 1
                producer.produce(msgs[sent])
            producer.poll(0)
            time.sleep(0.001)
        achieved = sent / (time.perf_counter() - t0)
        producer.flush(30)
        deadline = time.monotonic() + 30
        while committed < n + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        producer.close(10)
        stop.set()
        sink_thread.join(60)
    with lock:
        return Latency(rate, achieved, n, committed - 1, np.asarray(latencies))


# -- report ----------------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=1_000_000, help="ticks for the throughput runs")
    parser.add_argument("--repeats", type=int, default=1, help="throughput pairs to run (medians judged)")
    parser.add_argument("--rate", type=float, default=2_000.0, help="offered load for the latency run")
    parser.add_argument("--latency-seconds", type=float, default=30.0, help="length of the latency run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        # The sink's logger is raised to INFO during the throughput runs (see _AssignmentClock); keep the
        # console to warnings.
        handler.setLevel(logging.WARNING)
    products = tuple(DEFAULT_PRODUCTS)
    n = args.ticks

    t = time.perf_counter()
    keys, values, hours = build_messages(n, products)
    print(
        f"simulated {len(values):,} ticks ({len(products)} products, {hours} h) and serialised them "
        f"in {time.perf_counter() - t:.1f} s"
    )
    if len(values) < n:
        print(f"  WARNING: only {len(values):,} ticks; using that")
        n = len(values)

    with services() as svc:
        topic = f"cb-bench-{uuid.uuid4().hex[:8]}"
        ensure_topic(svc.bootstrap, topic, partitions=PARTITIONS)
        produce_rate, undelivered = produce_all(svc.bootstrap, topic, keys, values)
        print(
            f"produced {n:,} ticks into {topic} ({PARTITIONS} partitions): {produce_rate:,.0f} msgs/s, "
            f"{undelivered} not delivered"
        )
        del keys

        pairs: list[tuple[SinkRun, SinkRun]] = []
        for k in range(args.repeats):
            if args.repeats > 1:
                print(f"-- throughput pair {k + 1} of {args.repeats}")
            real, naive_run = throughput_runs(svc, topic, products, n)
            pairs.append((real, naive_run))
            ratio = real.rate / naive_run.rate if naive_run.rate else math.inf
            print(f"ratio sink / naive (this pair): {ratio:.2f}x")

        need = int(args.rate * args.latency_seconds) + 1
        lat_values = values if len(values) >= need else build_messages(need, products)[1]
        lat = measure_latency(svc, products, lat_values, args.rate, args.latency_seconds)
        s = lat.seconds
        pct = np.percentile(s, [50, 90, 99]) if s.size else np.full(3, np.nan)
        mx = float(s.max()) if s.size else math.nan
        print(
            f"latency at {lat.offered_rate:,.0f} ticks/s offered ({lat.achieved_rate:,.0f} achieved) for "
            f"{args.latency_seconds:.0f} s: {lat.committed:,} of {lat.sent:,} committed; "
            f"p50 {pct[0]:.3f} s, p90 {pct[1]:.3f} s, p99 {pct[2]:.3f} s, max {mx:.3f} s"
        )

    def med(xs: list[float]) -> float:
        return float(np.median(xs))

    rate = med([r.rate for r, _ in pairs])
    naive_rate = med([q.rate for _, q in pairs])
    ratio = med([r.rate / q.rate if q.rate else math.inf for r, q in pairs])
    sink_us = med([r.sink_us() for r, _ in pairs])
    naive_us = med([q.sink_us() for _, q in pairs])
    rows_ok = all(r.rows == n and q.rows == n for r, q in pairs)
    of = f" (median of {len(pairs)})" if len(pairs) > 1 else ""
    rows = [
        (
            "sink throughput" + of,
            f"{rate:,.0f} ticks/s",
            f">= {THROUGHPUT_TARGET:,.0f} ticks/s",
            rate >= THROUGHPUT_TARGET,
        ),
        (
            "sink CPU per tick" + of,
            f"{sink_us:.2f} us",
            f"<= {SINK_CPU_TARGET_US:.1f} us",
            sink_us <= SINK_CPU_TARGET_US,
        ),
        ("naive sink throughput" + of, f"{naive_rate:,.0f} ticks/s", "(baseline)", None),
        ("naive sink CPU per tick" + of, f"{naive_us:.2f} us", "", None),
        ("sink / naive" + of, f"{ratio:.2f}x", f">= {RATIO_TARGET}x", ratio >= RATIO_TARGET),
        ("rows in raw_ticks, every run", "all" if rows_ok else "MISSING", f"= {n:,}", rows_ok),
        ("latency p50", f"{pct[0]:.3f} s", "", None),
        ("latency p90", f"{pct[1]:.3f} s", "", None),
        (
            f"latency p99 @ {lat.offered_rate:,.0f}/s",
            f"{pct[2]:.3f} s",
            f"<= {P99_TARGET_S:.2f} s",
            bool(pct[2] <= P99_TARGET_S) and lat.committed == lat.sent,
        ),
        ("latency max", f"{mx:.3f} s", "", None),
        ("produce rate (set-up)", f"{produce_rate:,.0f} msgs/s", "", None),
        ("load avg at first sink run", f"{pairs[0][0].load_before:.2f}", f"({os.cpu_count()} CPUs)", None),
    ]
    print()
    print(f"{'summary':<40} {'measured':>18}  {'target':<22} result")
    for name, measured, target, ok in rows:
        print(f"{name:<40} {measured:>18}  {target:<22} {'' if ok is None else verdict(ok)}")


if __name__ == "__main__":
    main()
