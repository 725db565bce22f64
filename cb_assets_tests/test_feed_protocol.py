"""Frame parsing: exact nanosecond timestamps, every frame kind, and clear errors on malformed input."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import pytest

from cb_assets.feed.protocol import (
    ErrorFrame,
    HeartbeatFrame,
    SubscriptionsFrame,
    TickerBatchFrame,
    UnknownFrame,
    build_envelope,
    parse_frame,
    subscribe_message,
    subscribe_messages,
    tickers,
)
from cb_assets.feed.sequence import SequenceTracker
from cb_assets.feed.timestamps import ProtocolError, format_rfc3339_ns, parse_rfc3339_ns

# 2023-02-09T20:30:37Z in whole seconds, worked out by datetime (which is exact to the second).
_BASE_S = int(datetime(2023, 2, 9, 20, 30, 37, tzinfo=UTC).timestamp())


def _ticker(pid: str = "BTC-USD", **extra: str) -> dict[str, str]:
    t = {
        "type": "ticker",
        "product_id": pid,
        "price": "21932.98",
        "volume_24_h": "16038.28770938",
        "low_24_h": "21835.29",
        "high_24_h": "23011.18",
        "low_52_w": "15460",
        "high_52_w": "48240",
        "price_percent_chg_24_h": "-4.15775596190603",
    }
    t.update(extra)
    return t


def _frame(events: list, *, channel: str = "ticker_batch", seq: int = 0, client_id: bool = True) -> str:
    obj: dict = {"channel": channel}
    if client_id:
        obj["client_id"] = ""
    obj.update({"timestamp": "2023-02-09T20:30:37.167359596Z", "sequence_num": seq, "events": events})
    return json.dumps(obj)


def test_timestamp_keeps_every_nanosecond() -> None:
    assert parse_rfc3339_ns("2023-02-09T20:30:37.167359596Z") == _BASE_S * 10**9 + 167_359_596
    # One nanosecond apart stays one nanosecond apart (a float of seconds could not tell).
    a = parse_rfc3339_ns("2023-02-09T20:30:37.167359596Z")
    b = parse_rfc3339_ns("2023-02-09T20:30:37.167359597Z")
    assert b - a == 1


@pytest.mark.parametrize(
    ("text", "nanos"),
    [
        ("2023-02-09T20:30:37Z", 0),
        ("2023-02-09T20:30:37.1Z", 100_000_000),
        ("2023-02-09T20:30:37.167359Z", 167_359_000),
        ("2023-02-09T20:30:37.000000001z", 1),
        ("2023-02-09 20:30:37.5Z", 500_000_000),
    ],
)
def test_timestamp_with_fewer_digits(text: str, nanos: int) -> None:
    assert parse_rfc3339_ns(text) == _BASE_S * 10**9 + nanos


@pytest.mark.parametrize(
    ("text", "shift_s"),
    [
        ("2023-02-09T22:30:37.167359596+02:00", 0),
        ("2023-02-09T15:00:37.167359596-05:30", 0),
        ("2023-02-09T20:30:37.167359596+00:00", 0),
        ("2023-02-10T00:30:37.167359596+0400", 0),
        ("2023-02-09T20:30:37.167359596+01:00", -3600),
    ],
)
def test_timestamp_offsets(text: str, shift_s: int) -> None:
    assert parse_rfc3339_ns(text) == (_BASE_S + shift_s) * 10**9 + 167_359_596


def test_format_and_parse_are_inverse() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        ns = rng.randrange(-(10**18), 4 * 10**18)
        assert parse_rfc3339_ns(format_rfc3339_ns(ns)) == ns
    assert format_rfc3339_ns(_BASE_S * 10**9 + 167_359_596) == "2023-02-09T20:30:37.167359596Z"
    # Leap day and the epoch itself.
    assert (
        parse_rfc3339_ns("2024-02-29T00:00:00Z") == int(datetime(2024, 2, 29, tzinfo=UTC).timestamp()) * 10**9
    )
    assert format_rfc3339_ns(0) == "1970-01-01T00:00:00.000000000Z"


@pytest.mark.parametrize(
    "bad",
    [
        "2023-02-09T20:30:37.167359596",  # no zone
        "2023-02-30T20:30:37Z",  # no such day
        "2023-13-09T20:30:37Z",
        "2023-02-09T24:00:00Z",
        "2023-02-09T20:30:37.1234567891Z",  # 10 fractional digits
        "2023-02-09T20:30:37.Z",
        "yesterday",
        "",
        12345,
    ],
)
def test_bad_timestamps_raise(bad: object) -> None:
    with pytest.raises(ProtocolError):
        parse_rfc3339_ns(bad)  # type: ignore[arg-type]


def test_ticker_batch_to_kafka_messages() -> None:
    text = _frame(
        [
            {
                "type": "update",
                "tickers": [_ticker(), _ticker("ETH-USD", best_bid="1600.1", best_ask="1600.2")],
            }
        ],
        seq=12,
        client_id=False,
    )
    frame = parse_frame(text)
    assert isinstance(frame, TickerBatchFrame)
    assert frame.client_id is None and frame.sequence_num == 12
    assert frame.time_ns == _BASE_S * 10**9 + 167_359_596
    msgs = tickers(frame, source="replay", connection_id="rec-1")
    assert msgs[0] == {
        "product_id": "BTC-USD",
        "price": "21932.98",
        "volume_24_h": "16038.28770938",
        "low_24_h": "21835.29",
        "high_24_h": "23011.18",
        "low_52_w": "15460",
        "high_52_w": "48240",
        "price_percent_chg_24_h": "-4.15775596190603",
        "best_bid": None,
        "best_ask": None,
        "time": "2023-02-09T20:30:37.167359596Z",
        "sequence_num": 12,
        "source": "replay",
        "connection_id": "rec-1",
    }
    assert (msgs[1]["best_bid"], msgs[1]["best_ask"]) == ("1600.1", "1600.2")
    assert list(msgs[0]) == list(msgs[1])  # the contract's key order


def test_snapshot_and_unknown_event_types() -> None:
    text = _frame([{"type": "snapshot", "tickers": [_ticker()]}, {"type": "new_kind", "tickers": []}])
    frame = parse_frame(text)
    assert isinstance(frame, TickerBatchFrame)
    assert frame.is_snapshot and frame.ignored_events == 1 and len(frame.tickers) == 1


def test_one_bad_ticker_does_not_cost_the_batch() -> None:
    broken = _ticker("ETH-USD", price="abc")
    missing = _ticker("SOL-USD")
    del missing["low_52_w"]
    frame = parse_frame(_frame([{"type": "update", "tickers": [_ticker(), broken, missing]}]))
    assert isinstance(frame, TickerBatchFrame)
    assert [t.product_id for t in frame.tickers] == ["BTC-USD"]
    assert len(frame.rejected) == 2
    assert "ETH-USD" in frame.rejected[0] and "price" in frame.rejected[0]
    assert "low_52_w" in frame.rejected[1]


@pytest.mark.parametrize("counter", [3049, "3049"])
def test_heartbeat_counter_int_or_string(counter: object) -> None:
    go_time = "2023-02-09 20:30:37.167359596 +0000 UTC m=+91717.525857101"
    frame = parse_frame(
        _frame([{"current_time": go_time, "heartbeat_counter": counter}], channel="heartbeats")
    )
    assert isinstance(frame, HeartbeatFrame)
    assert frame.counter == 3049
    assert frame.current_time == go_time  # kept as text, not parsed as RFC 3339


def test_bad_heartbeat_counter() -> None:
    with pytest.raises(ProtocolError, match="heartbeat_counter"):
        parse_frame(_frame([{"current_time": "x", "heartbeat_counter": "many"}], channel="heartbeats"))


def test_subscriptions_ack() -> None:
    events = [{"subscriptions": {"ticker_batch": ["BTC-USD", "ETH-USD"], "heartbeats": ["heartbeats"]}}]
    frame = parse_frame(_frame(events, channel="subscriptions"))
    assert isinstance(frame, SubscriptionsFrame)
    assert frame.subscriptions["ticker_batch"] == ("BTC-USD", "ETH-USD")
    assert tickers(frame) == []


def test_error_and_unknown_frames() -> None:
    err = parse_frame('{"type": "error", "message": "failure to subscribe"}')
    assert isinstance(err, ErrorFrame) and err.message == "failure to subscribe"
    unknown = parse_frame(_frame([], channel="status", seq=5))
    assert isinstance(unknown, UnknownFrame) and unknown.kind == "status" and unknown.sequence_num == 5
    other = parse_frame('{"type": "something_new"}')
    assert isinstance(other, UnknownFrame) and other.sequence_num is None
    assert tickers(err) == [] and tickers(unknown) == []


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not json", "JSON"),
        ("[1, 2]", "object"),
        ('{"hello": 1}', "neither"),
        ('{"channel": 5}', "channel"),
        ('{"channel": "ticker_batch", "sequence_num": 1, "events": []}', "timestamp"),
        ('{"channel": "ticker_batch", "timestamp": "2023-02-09T20:30:37Z", "events": []}', "sequence_num"),
        (
            '{"channel": "heartbeats", "timestamp": "2023-02-09T20:30:37Z", "sequence_num": true, "events": []}',
            "sequence",
        ),
        (
            '{"channel": "ticker_batch", "timestamp": "2023-02-09T20:30:37Z", "sequence_num": 1, "events": {}}',
            "events",
        ),
        ('{"channel": "ticker_batch", "timestamp": "soon", "sequence_num": 1, "events": []}', "RFC 3339"),
        (
            '{"channel": "ticker_batch", "timestamp": "2023-02-09T20:30:37Z", "sequence_num": 1, "events": [{"type": "update"}]}',
            "tickers",
        ),
    ],
)
def test_malformed_frames_raise_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        parse_frame(text)


def test_subscribe_builders_one_channel_per_message() -> None:
    ticker_msg, heartbeat_msg = (json.loads(m) for m in subscribe_messages(["BTC-USD", "ETH-USD"]))
    assert ticker_msg == {
        "type": "subscribe",
        "product_ids": ["BTC-USD", "ETH-USD"],
        "channel": "ticker_batch",
    }
    assert heartbeat_msg == {"type": "subscribe", "channel": "heartbeats"}
    unsub = json.loads(subscribe_message("ticker_batch", ["BTC-USD"], unsubscribe=True))
    assert unsub["type"] == "unsubscribe"
    with pytest.raises(ValueError):
        subscribe_messages([])


def test_envelope_builder_round_trips() -> None:
    text = build_envelope(
        "ticker_batch", "2023-02-09T20:30:37.1Z", 3, [{"type": "update", "tickers": [_ticker()]}]
    )
    frame = parse_frame(text)
    assert isinstance(frame, TickerBatchFrame) and frame.client_id == "" and frame.sequence_num == 3
    no_client = parse_frame(
        build_envelope("heartbeats", "2023-02-09T20:30:37Z", 0, [{"heartbeat_counter": 1}], client_id=None)
    )
    assert isinstance(no_client, HeartbeatFrame) and no_client.client_id is None


def test_sequence_tracker_gaps_duplicates_and_reset() -> None:
    tr = SequenceTracker()
    assert tr.observe("a", 0, 10, 0) is None
    assert tr.observe("a", 1, 11, 0) is None
    gap = tr.observe("a", 4, 14, 99)
    assert gap is not None and (gap.from_seq, gap.to_seq, gap.missed) == (1, 4, 2)
    assert (gap.from_time_ns, gap.to_time_ns, gap.wall_time_ns) == (11, 14, 99)
    assert tr.observe("a", 3, 13, 0) is None and tr.duplicates == 1  # lower: out of order
    assert tr.observe("a", 5, 15, 0) is None  # the high-water mark was kept at 4
    assert tr.observe("b", 0, 20, 0) is None  # new connection: restart, not a duplicate
    assert tr.observe("b", 1, 21, 0) is None
    assert (tr.gaps, tr.missed, tr.duplicates) == (1, 2, 1)
