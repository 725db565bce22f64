"""The feed loop: record, parse, produce, gaps, for real sources and bare iterators."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cb_assets.feed.protocol import build_envelope
from cb_assets.feed.recording import iter_lines
from cb_assets.feed.replay import ReplaySource
from cb_assets.feed.runner import run_feed
from cb_assets.feed.sequence import GapRecord
from cb_assets.feed.simulate import SimulatedSource
from cb_assets.feed.source import FrameSource
from cb_assets.feed.timestamps import parse_rfc3339_ns

START = parse_rfc3339_ns("2024-05-01T10:00:00Z")
PRODUCTS = ("BTC-USD", "ETH-USD", "SOL-ETH")


class ListProducer:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.polls = 0

        self.rejected: list[tuple[str, str]] = []

    async def produce_async(self, message: Mapping[str, Any]) -> None:
        self.messages.append(dict(message))

    async def produce_rejected_async(self, payload: str | bytes, reason: str) -> None:
        self.rejected.append((payload if isinstance(payload, str) else payload.decode(), reason))

    def poll(self, timeout_s: float = 0.0) -> int:
        self.polls += 1
        return 0


def test_simulated_feed_is_recorded_and_produced_and_replays_identically(tmp_path: Path) -> None:
    rec = tmp_path / "sim.jsonl.gz"
    gaps: list[GapRecord] = []
    sim = SimulatedSource(PRODUCTS, seed=4, start_ns=START, duration_s=300, speed=0, gap_prob=0.01)
    live_out = ListProducer()
    counters = asyncio.run(
        run_feed(sim, live_out, record_path=rec, stats_interval_s=0.01, on_gap=gaps.append)
    )

    assert counters.frames == sim.counters.frames == counters.recorded
    assert counters.produced == sim.counters.tickers == len(live_out.messages)
    assert counters.ticker_frames == sim.counters.ticker_frames
    assert counters.parse_errors == 0
    assert {m["source"] for m in live_out.messages} == {"simulated"}
    assert {m["connection_id"] for m in live_out.messages} == {"simulated-4"}
    assert {m["product_id"] for m in live_out.messages} == set(PRODUCTS)
    # The gap callback was installed on the source, which found every planted gap.
    assert sim.dropped_frames > 0 and sum(g.missed for g in gaps) == sim.dropped_frames

    # The recording holds exactly the frames that went through, and replaying it gives the same ticks.
    assert sum(1 for _ in iter_lines(rec)) == counters.frames
    replay_out = ListProducer()
    asyncio.run(run_feed(ReplaySource(rec, speed=0), replay_out))
    strip = ("source", "connection_id")
    assert [{k: v for k, v in m.items() if k not in strip} for m in replay_out.messages] == [
        {k: v for k, v in m.items() if k not in strip} for m in live_out.messages
    ]
    assert {m["source"] for m in replay_out.messages} == {"replay"}
    assert {m["connection_id"] for m in replay_out.messages} == {"sim"}


def _ticker(price: str) -> dict[str, str]:
    return {
        "type": "ticker",
        "product_id": "BTC-USD",
        "price": price,
        "volume_24_h": "1",
        "low_24_h": "1",
        "high_24_h": "9e9",
        "low_52_w": "1",
        "high_52_w": "9e9",
        "price_percent_chg_24_h": "0",
    }


class ListSource(FrameSource):
    """Frames from a list, accounted for like a replay's (parse, count, sequence checks)."""

    source = "replay"

    def __init__(self, frames: list[str], connection_id: str) -> None:
        super().__init__()
        self._frames = iter(frames)
        self._conn = connection_id

    async def __anext__(self) -> str:
        try:
            text = next(self._frames)
        except StopIteration:
            raise StopAsyncIteration from None
        self._account(text, self._conn)
        return text


def _frames_with_a_gap() -> list[str]:
    out = [
        build_envelope(
            "ticker_batch",
            f"2024-05-01T10:00:0{seq}.000000001Z",
            seq,
            [{"type": "update", "tickers": [_ticker(p)]}],
        )
        for seq, p in [(0, "1.5"), (1, "2.5"), (4, "3.5")]
    ]
    return [*out, "garbage", '{"type": "error", "message": "nope"}']


def test_sequence_gaps_and_bad_frames_are_reported_and_the_rest_goes_on() -> None:
    gaps: list[GapRecord] = []
    out = ListProducer()
    counters = asyncio.run(run_feed(ListSource(_frames_with_a_gap(), "file-a"), out, on_gap=gaps.append))
    assert [m["price"] for m in out.messages] == ["1.5", "2.5", "3.5"]
    assert {(m["source"], m["connection_id"]) for m in out.messages} == {("replay", "file-a")}
    assert out.messages[0]["time"] == "2024-05-01T10:00:00.000000001Z"
    assert [(g.from_seq, g.to_seq) for g in gaps] == [(1, 4)]
    assert (counters.frames, counters.parse_errors, counters.ignored) == (5, 1, 1)
    # The unparseable frame is dead-lettered with its reason and original text, not dropped.
    assert counters.dead_lettered == 1
    assert out.rejected[0][0] == "garbage" and "unparseable frame" in out.rejected[0][1]


def test_a_bad_ticker_is_dead_lettered_and_the_good_ones_go_on() -> None:
    bad = dict(_ticker("2.0"), price="abc")
    frame = build_envelope(
        "ticker_batch", "2024-05-01T10:00:00Z", 0, [{"type": "update", "tickers": [_ticker("1.0"), bad]}]
    )
    out = ListProducer()
    counters = asyncio.run(run_feed(ListSource([frame], "f"), out))
    assert [m["price"] for m in out.messages] == ["1.0"]
    assert counters.dead_lettered == 1 and "price='abc'" in out.rejected[0][1]


def test_max_frames_and_no_producer(tmp_path: Path) -> None:
    sim = SimulatedSource(PRODUCTS, seed=1, start_ns=START, duration_s=600, speed=0)
    counters = asyncio.run(run_feed(sim, None, record_path=tmp_path / "r.jsonl", max_frames=50))
    assert counters.frames == 50 and counters.produced == 0
    assert len(list(iter_lines(tmp_path / "r.jsonl"))) == 50
