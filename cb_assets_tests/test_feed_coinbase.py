"""The live client against a local fake Coinbase server: subscribes, reconnects, watchdog, gaps, errors."""

from __future__ import annotations

import asyncio
import json
import random
from collections import defaultdict

from cb_assets.feed.coinbase import CoinbaseFeed, ReconnectPolicy, probe_async
from cb_assets.feed.sequence import GapRecord
from cb_assets_tests.fake_coinbase import (
    FakeCoinbase,
    error_frame,
    heartbeat_frame,
    ticker,
    ticker_frame,
)

PRODUCTS = ["BTC-USD", "ETH-USD", "FOO-USD"]


def _scripts() -> list[list[tuple]]:
    btc, eth = ticker("BTC-USD", "60000.01"), ticker("ETH-USD", "3000.5")
    first = [
        ("wait_subscribes", 2),
        ("ack",),
        ("send", ticker_frame(1, 1, "snapshot", [btc, eth])),
        ("send", heartbeat_frame(2, 2, 10)),
        ("send", ticker_frame(3, 5, "update", [btc], client_id=False)),
        ("send", error_frame("failure to subscribe: FOO-USD is not a valid product")),
        ("send", heartbeat_frame(4, 6, 11, as_string=True)),
        ("send", ticker_frame(7, 10, "update", [eth])),  # 5 and 6 never arrive: a gap
        ("send", json.dumps({"channel": "status", "timestamp": "x", "sequence_num": 8, "events": []})),
        ("close", 1001, "going away"),  # a deploy: clean close, the client must come back anyway
    ]
    second = [
        ("wait_subscribes", 2),
        ("ack",),
        ("send", ticker_frame(1, 11, "snapshot", [btc, eth])),
        ("send", ticker_frame(2, 16, "update", [btc])),
        ("silence",),  # open socket, no frames: only the watchdog can notice
    ]
    third = [
        ("wait_subscribes", 2),
        ("ack",),
        ("send", ticker_frame(1, 20, "snapshot", [btc, eth], client_id=False)),
        ("send", ticker_frame(2, 25, "update", [eth])),
        ("send", ticker_frame(2, 25, "update", [eth])),  # the same number again: a duplicate
        ("send", ticker_frame(3, 30, "update", [btc])),
        ("heartbeats", 4, 0.05),
    ]
    return [first, second, third]


async def _run_client() -> tuple[FakeCoinbase, CoinbaseFeed, list[tuple[str, str]], list[GapRecord]]:
    gaps: list[GapRecord] = []
    async with FakeCoinbase(_scripts(), acked_products=["BTC-USD", "ETH-USD"]) as fake:
        feed = CoinbaseFeed(
            PRODUCTS,
            url=fake.url,
            idle_timeout_s=1.0,
            reconnect=ReconnectPolicy(initial_s=0.05, max_s=0.2, healthy_after_s=0.1),
            on_gap=gaps.append,
            proxy=None,
            seed=1,
        )
        received: list[tuple[str, str]] = []

        async def consume() -> None:
            async for text in feed:
                received.append((feed.connection_id, text))
                # Done once the third connection delivered its last ticker frame and a heartbeat after it.
                if len(fake.connections) >= 3 and '"heartbeat_counter": 5' in text:
                    return

        try:
            await asyncio.wait_for(consume(), timeout=20)
        finally:
            await feed.aclose()
    return fake, feed, received, gaps


def test_live_client_survives_closes_silence_gaps_and_errors() -> None:
    fake, feed, received, gaps = asyncio.run(_run_client())

    assert len(fake.connections) == 3
    for conn in fake.connections:
        # One channel per subscribe message, ticker_batch with the products, heartbeats without any.
        assert [s["channel"] for _, s in conn.subscribes] == ["ticker_batch", "heartbeats"]
        assert conn.subscribes[0][1]["product_ids"] == PRODUCTS
        assert "product_ids" not in conn.subscribes[1][1]
        assert all(s["type"] == "subscribe" and "channels" not in s for _, s in conn.subscribes)
        assert conn.subscribes[1][0] < 5.0

    # Every ticker frame the server sent on each connection was yielded exactly once, in order.
    by_conn: dict[str, list[str]] = defaultdict(list)
    for conn_id, text in received:
        if text.startswith('{"channel": "ticker_batch"'):
            by_conn[conn_id].append(text)
    assert len(by_conn) == 3, "each connection gets its own connection_id"
    assert list(by_conn.values()) == [c.sent_tickers for c in fake.connections]
    # Every frame of any kind arrives too (the recording needs them all), in the server's order.
    first_conn = next(iter(by_conn))
    assert [t for c, t in received if c == first_conn] == fake.connections[0].sent

    c = feed.counters
    assert c.reconnects == 2  # after the 1001 close and after the silence
    assert c.watchdog_timeouts == 1
    assert c.gaps == 1 and c.missed_frames == 2
    assert len(gaps) == 1
    assert (gaps[0].connection_id, gaps[0].from_seq, gaps[0].to_seq) == (first_conn, 4, 7)
    assert gaps[0].to_time_ns is not None and gaps[0].from_time_ns is not None
    assert gaps[0].to_time_ns > gaps[0].from_time_ns
    assert c.duplicates == 1
    assert c.errors == 1 and "FOO-USD" in feed.recent_errors[0]
    assert feed.rejected_products == {"FOO-USD"}
    assert c.unknown == 1
    assert c.protocol_errors == 0
    assert c.ticker_frames == sum(len(v) for v in by_conn.values())


def test_backoff_is_capped_and_jittered() -> None:
    policy = ReconnectPolicy(initial_s=1.0, max_s=60.0, multiplier=2.0, jitter=0.5)
    rng = random.Random(3)
    for attempt in range(12):
        base = min(60.0, 2.0**attempt)
        delays = [policy.delay(attempt, rng) for _ in range(50)]
        assert all(base * 0.5 <= d <= base for d in delays)
        assert len(set(delays)) > 1  # jittered, so clients cut off together do not return together
    assert policy.delay(10_000, rng) <= 60.0


async def _probe_pair() -> tuple[object, object]:
    async with FakeCoinbase([[("wait_subscribes", 1), ("ack",), ("heartbeats", 1, 0.05)]]) as fake:
        ok = await probe_async(fake.url, 3.0, proxy=None)
        url = fake.url
    # The server is gone now: the same URL must give a reason, not raise.
    down = await probe_async(url, 1.0, proxy=None)
    return ok, down


def test_probe_reports_true_or_a_reason() -> None:
    ok, down = asyncio.run(_probe_pair())
    assert ok is True
    assert isinstance(down, str) and down
