"""What every frame source shares: counters, per-connection sequence tracking and the gap callback.

A source is an async iterator of raw frame texts (docs/contracts.md). Besides yielding, it exposes
`source` ("live" | "replay" | "simulated"), the `connection_id` of the frame it yielded last, its
`counters`, an assignable `on_gap` callback, and `last_parsed` (the text it yielded last with its parsed
frame) so the runner does not parse every frame twice.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass

from cb_assets.feed.protocol import (
    AnyFrame,
    ErrorFrame,
    HeartbeatFrame,
    SubscriptionsFrame,
    TickerBatchFrame,
    UnknownFrame,
    frame_sequence,
    parse_frame,
)
from cb_assets.feed.sequence import GapRecord, SequenceTracker
from cb_assets.feed.timestamps import ProtocolError

log = logging.getLogger(__name__)

GapCallback = Callable[[GapRecord], None]


@dataclass
class FeedCounters:
    frames: int = 0
    ticker_frames: int = 0
    tickers: int = 0
    heartbeats: int = 0
    gaps: int = 0
    missed_frames: int = 0  # sum over gaps of the sequence numbers skipped
    duplicates: int = 0  # lower (or equal) sequence number without a reconnect
    reconnects: int = 0
    connect_failures: int = 0
    watchdog_timeouts: int = 0
    errors: int = 0  # error frames from the server
    protocol_errors: int = 0  # frames that could not be parsed (still yielded, for the recording)
    rejected_tickers: int = 0  # single tickers dropped for a bad field
    unknown: int = 0  # frames of channels/types this client ignores
    queue_full: int = 0  # times the receive queue was full (the consumer lagged)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class FrameSource:
    """Base of the live client and the replay: parse, count and track sequences for each yielded frame."""

    source: str = "live"

    def __init__(self, on_gap: GapCallback | None = None) -> None:
        self.on_gap: GapCallback | None = on_gap
        self.counters = FeedCounters()
        self.connection_id: str = ""
        self.last_parsed: tuple[str, AnyFrame | None] | None = None
        self.recent_errors: deque[str] = deque(maxlen=20)
        self._tracker = SequenceTracker()

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:  # pragma: no cover - subclasses implement
        raise NotImplementedError

    def _account(self, text: str, connection_id: str) -> AnyFrame | None:
        """Parse, count and sequence-check one frame; never raises for bad input (it is counted instead)."""
        try:
            frame = parse_frame(text)
        except ProtocolError as e:
            self.counters.frames += 1
            self.counters.protocol_errors += 1
            self.connection_id = connection_id
            log.warning("unparseable frame on %s (%s): %.200s", connection_id, e, text)
            self.last_parsed = (text, None)
            return None
        return self._account_parsed(text, frame, connection_id)

    def _account_parsed(self, text: str, frame: AnyFrame, connection_id: str) -> AnyFrame:
        c = self.counters
        c.frames += 1
        self.connection_id = connection_id
        self.last_parsed = (text, frame)
        if isinstance(frame, TickerBatchFrame):
            c.ticker_frames += 1
            c.tickers += len(frame.tickers)
            if frame.rejected:
                c.rejected_tickers += len(frame.rejected)
                log.warning(
                    "dropped %d bad tickers on %s: %s", len(frame.rejected), connection_id, frame.rejected[:3]
                )
        elif isinstance(frame, HeartbeatFrame):
            c.heartbeats += 1
        elif isinstance(frame, SubscriptionsFrame):
            self._on_subscriptions(frame)
        elif isinstance(frame, ErrorFrame):
            c.errors += 1
            self.recent_errors.append(frame.message)
            # E.g. a delisted product: reported and counted, never fatal; the rest of the feed goes on.
            log.warning("server error frame on %s: %s", connection_id, frame.message)
        elif isinstance(frame, UnknownFrame):
            c.unknown += 1
        seq = frame_sequence(frame)
        if seq is not None:
            time_ns = getattr(frame, "time_ns", None)
            gap = self._tracker.observe(connection_id, seq, time_ns, time.time_ns())
            c.duplicates = self._tracker.duplicates
            if gap is not None:
                c.gaps += 1
                c.missed_frames += gap.missed
                log.warning(
                    "sequence gap on %s: %d -> %d (%d frames missed)",
                    connection_id,
                    gap.from_seq,
                    gap.to_seq,
                    gap.missed,
                )
                if self.on_gap is not None:
                    self.on_gap(gap)
        return frame

    def _on_subscriptions(self, frame: SubscriptionsFrame) -> None:
        log.info("subscriptions on %s: %s", self.connection_id, dict(frame.subscriptions))
