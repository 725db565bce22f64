"""The Coinbase Advanced Trade WebSocket protocol as pure functions: frame text in, typed frames out.

Nothing here does I/O, so every source (live client, replay, simulator) and every test shares one parser.
Facts this relies on (Coinbase's Advanced Trade WebSocket documentation): every frame is an envelope
with `channel`, an optional `client_id`, an RFC 3339 `timestamp` with nanoseconds, a `sequence_num` and
`events`; ticker fields are decimal strings; error frames have no envelope at all; new message types may
appear at any time and must be ignored, never fatal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from cb_assets.feed.timestamps import ProtocolError, parse_rfc3339_ns
from cb_assets.series.schema import SERIES_COLUMNS

KNOWN_CHANNELS = ("ticker_batch", "heartbeats", "subscriptions")
TICKER_EVENT_TYPES = ("snapshot", "update")
OPTIONAL_TICKER_FIELDS = ("best_bid", "best_ask")
SOURCES = ("live", "replay", "simulated")


# -------------------------------------------------------------------------------------------- frames


@dataclass(frozen=True, slots=True)
class Ticker:
    """One product's ticker from a ticker_batch event; numbers stay the exact strings the server sent."""

    product_id: str
    price: str
    volume_24_h: str
    low_24_h: str
    high_24_h: str
    low_52_w: str
    high_52_w: str
    price_percent_chg_24_h: str
    best_bid: str | None
    best_ask: str | None
    event_type: str  # "snapshot" or "update"


@dataclass(frozen=True, slots=True)
class Frame:
    """A parsed envelope of a known channel. Subclasses carry the channel's events."""

    channel: str
    client_id: str | None
    timestamp: str  # the original text, forwarded unchanged into the Kafka message
    time_ns: int
    sequence_num: int


@dataclass(frozen=True, slots=True)
class TickerBatchFrame(Frame):
    tickers: tuple[Ticker, ...] = ()
    # Tickers dropped for a bad field, with the reason: one broken ticker must not cost the whole batch.
    rejected: tuple[str, ...] = ()
    ignored_events: int = 0  # events of a type other than snapshot/update (future protocol additions)

    @property
    def is_snapshot(self) -> bool:
        return any(t.event_type == "snapshot" for t in self.tickers)


@dataclass(frozen=True, slots=True)
class HeartbeatFrame(Frame):
    counter: int = 0
    current_time: str = ""  # a Go time string, kept as text: it is not RFC 3339 and nothing needs it parsed


@dataclass(frozen=True, slots=True)
class SubscriptionsFrame(Frame):
    subscriptions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """`{"type": "error", "message": ...}`: the server refused something (e.g. an unknown product)."""

    message: str
    raw: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class UnknownFrame:
    """A channel or message type this client does not know; callers ignore it.

    `sequence_num` is kept when present because the counter is (probably) shared by all channels of a
    connection, so even an ignored frame advances it and must not look like a gap.
    """

    kind: str
    sequence_num: int | None
    raw: Mapping[str, Any]


AnyFrame = Frame | ErrorFrame | UnknownFrame

# A decimal number as Coinbase writes it; scientific notation is accepted because other feeds use it.
_DECIMAL_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def _loads(text: str | bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(f"frame is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"frame is a JSON {type(obj).__name__}, expected an object")
    return obj


def _seq(obj: Mapping[str, Any]) -> int:
    seq = obj.get("sequence_num")
    # bool is an int subclass in Python; `true` is not a sequence number.
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ProtocolError(f"sequence_num must be a non-negative integer, got {seq!r}")
    return seq


def _ticker(raw: Any, event_type: str) -> Ticker:
    if not isinstance(raw, dict):
        raise ProtocolError(f"ticker is a {type(raw).__name__}, expected an object")
    pid = raw.get("product_id")
    if not isinstance(pid, str) or not pid:
        raise ProtocolError(f"ticker without a product_id: {raw!r:.120}")
    values: list[str] = []
    for name in SERIES_COLUMNS:
        v = raw.get(name)
        if not isinstance(v, str) or _DECIMAL_RE.fullmatch(v) is None:
            raise ProtocolError(f"{pid}: field {name}={v!r} is not a decimal string")
        values.append(v)
    optional: list[str | None] = []
    for name in OPTIONAL_TICKER_FIELDS:
        v = raw.get(name)
        # ticker_batch omits these in production; an empty string means the same as absent.
        if v is None or v == "":
            optional.append(None)
        elif isinstance(v, str) and _DECIMAL_RE.fullmatch(v):
            optional.append(v)
        else:
            raise ProtocolError(f"{pid}: field {name}={v!r} is not a decimal string")
    price, volume, low24, high24, low52, high52, pct = values
    return Ticker(pid, price, volume, low24, high24, low52, high52, pct, optional[0], optional[1], event_type)


def _ticker_batch(envelope: tuple[str, str | None, str, int, int], events: list[Any]) -> TickerBatchFrame:
    tickers: list[Ticker] = []
    rejected: list[str] = []
    ignored = 0
    for ev in events:
        if not isinstance(ev, dict):
            raise ProtocolError(f"ticker_batch event is a {type(ev).__name__}, expected an object")
        etype = ev.get("type")
        if etype not in TICKER_EVENT_TYPES:
            ignored += 1
            continue
        raw_tickers = ev.get("tickers")
        if not isinstance(raw_tickers, list):
            raise ProtocolError(f"ticker_batch {etype} event without a tickers list")
        for raw in raw_tickers:
            if isinstance(raw, dict) and raw.get("type", "ticker") != "ticker":
                continue  # another kind of entry in the list: ignore like any unknown type
            try:
                tickers.append(_ticker(raw, etype))
            except ProtocolError as e:
                rejected.append(str(e))
    return TickerBatchFrame(
        *envelope, tickers=tuple(tickers), rejected=tuple(rejected), ignored_events=ignored
    )


def _heartbeat(envelope: tuple[str, str | None, str, int, int], events: list[Any]) -> HeartbeatFrame:
    if not events or not isinstance(events[0], dict):
        raise ProtocolError("heartbeats frame without an event object")
    ev = events[0]
    raw_counter = ev.get("heartbeat_counter")
    # Production sends an int, older docs a string: accept both, nothing else.
    if isinstance(raw_counter, int) and not isinstance(raw_counter, bool):
        counter = raw_counter
    elif isinstance(raw_counter, str) and raw_counter.strip().lstrip("+-").isdigit():
        counter = int(raw_counter)
    else:
        raise ProtocolError(f"heartbeat_counter {raw_counter!r} is neither an integer nor a digit string")
    current_time = ev.get("current_time", "")
    return HeartbeatFrame(*envelope, counter=counter, current_time=str(current_time))


def _subscriptions(envelope: tuple[str, str | None, str, int, int], events: list[Any]) -> SubscriptionsFrame:
    merged: dict[str, tuple[str, ...]] = {}
    for ev in events:
        subs = ev.get("subscriptions") if isinstance(ev, dict) else None
        if not isinstance(subs, dict):
            raise ProtocolError("subscriptions event without a subscriptions object")
        for channel, ids in subs.items():
            merged[str(channel)] = tuple(str(i) for i in ids) if isinstance(ids, list) else ()
    return SubscriptionsFrame(*envelope, subscriptions=merged)


def parse_frame(text: str | bytes) -> AnyFrame:
    """Parse one frame exactly as received. Raises `ProtocolError` (with the reason) on malformed input."""
    obj = _loads(text)
    channel = obj.get("channel")
    if channel is None:
        mtype = obj.get("type")
        if mtype == "error":
            return ErrorFrame(message=str(obj.get("message", "")), raw=obj)
        if isinstance(mtype, str):
            return UnknownFrame(kind=f"type:{mtype}", sequence_num=None, raw=obj)
        raise ProtocolError("frame has neither a channel nor a type")
    if not isinstance(channel, str):
        raise ProtocolError(f"channel must be a string, got {channel!r}")
    if channel not in KNOWN_CHANNELS:
        seq = obj.get("sequence_num")
        ok_seq = isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0
        return UnknownFrame(kind=channel, sequence_num=seq if ok_seq else None, raw=obj)
    client_id = obj.get("client_id")
    if client_id is not None and not isinstance(client_id, str):
        raise ProtocolError(f"client_id must be a string, got {client_id!r}")
    timestamp = obj.get("timestamp")
    if not isinstance(timestamp, str):
        raise ProtocolError(f"{channel} frame without a timestamp string")
    envelope = (channel, client_id, timestamp, parse_rfc3339_ns(timestamp), _seq(obj))
    events = obj.get("events")
    if not isinstance(events, list):
        raise ProtocolError(f"{channel} frame without an events list")
    if channel == "ticker_batch":
        return _ticker_batch(envelope, events)
    if channel == "heartbeats":
        return _heartbeat(envelope, events)
    return _subscriptions(envelope, events)


def frame_sequence(frame: AnyFrame) -> int | None:
    """The envelope's sequence number, if the frame had one."""
    if isinstance(frame, Frame):
        return frame.sequence_num
    if isinstance(frame, UnknownFrame):
        return frame.sequence_num
    return None


def tickers(frame: AnyFrame, *, source: str = "live", connection_id: str = "") -> list[dict[str, Any]]:
    """The Kafka message dicts (docs/contracts.md) of a frame's tickers; [] for any other frame.

    `time` is the envelope's original timestamp text: the ticker has no clock of its own.
    """
    if not isinstance(frame, TickerBatchFrame):
        return []
    return [
        {
            "product_id": t.product_id,
            "price": t.price,
            "volume_24_h": t.volume_24_h,
            "low_24_h": t.low_24_h,
            "high_24_h": t.high_24_h,
            "low_52_w": t.low_52_w,
            "high_52_w": t.high_52_w,
            "price_percent_chg_24_h": t.price_percent_chg_24_h,
            "best_bid": t.best_bid,
            "best_ask": t.best_ask,
            "time": frame.timestamp,
            "sequence_num": frame.sequence_num,
            "source": source,
            "connection_id": connection_id,
        }
        for t in frame.tickers
    ]


# ---------------------------------------------------------------------------------------- subscribe


def subscribe_message(
    channel: str,
    product_ids: Sequence[str] | None = None,
    *,
    jwt: str | None = None,
    unsubscribe: bool = False,
) -> str:
    """One (un)subscribe message for ONE channel: the server takes a single `channel` per message."""
    msg: dict[str, Any] = {"type": "unsubscribe" if unsubscribe else "subscribe"}
    if product_ids:
        msg["product_ids"] = list(product_ids)
    msg["channel"] = channel
    if jwt:
        msg["jwt"] = jwt
    return orjson.dumps(msg).decode()


def subscribe_messages(product_ids: Sequence[str], *, heartbeats: bool = True) -> list[str]:
    """`ticker_batch` for the products, then `heartbeats` (no product ids), which keeps quiet pairs open."""
    if not product_ids:
        raise ValueError("at least one product id is needed")
    msgs = [subscribe_message("ticker_batch", product_ids)]
    if heartbeats:
        msgs.append(subscribe_message("heartbeats"))
    return msgs


def build_envelope(
    channel: str,
    timestamp: str,
    sequence_num: int,
    events: Iterable[Mapping[str, Any]],
    *,
    client_id: str | None = "",
) -> str:
    """A frame text in the server's key order, for the simulator and recordings (None omits client_id)."""
    obj: dict[str, Any] = {"channel": channel}
    if client_id is not None:
        obj["client_id"] = client_id
    obj["timestamp"] = timestamp
    obj["sequence_num"] = sequence_num
    obj["events"] = list(events)
    return orjson.dumps(obj).decode()
