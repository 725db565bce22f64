"""The feed loop: a frame source -> (optional recording) -> parse -> Kafka producer.

The CLI (`cb-assets feed`) builds a source (live, replay or simulated) and a `TickProducer` and awaits
`run_feed`; gap records go to `on_gap` (the CLI wires that into PostgreSQL's feed_gaps table).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from cb_assets.feed.protocol import AnyFrame, TickerBatchFrame, parse_frame, tickers
from cb_assets.feed.recording import FrameRecorder
from cb_assets.feed.sequence import GapRecord
from cb_assets.feed.source import FrameSource
from cb_assets.feed.timestamps import ProtocolError

log = logging.getLogger(__name__)


class MessageSink(Protocol):
    """What the runner needs from a producer (`cb_assets.stream.producer.TickProducer` fits)."""

    async def produce_async(self, message: Mapping[str, Any]) -> None: ...

    async def produce_rejected_async(self, payload: str | bytes, reason: str) -> None: ...

    def poll(self, timeout_s: float = 0.0) -> int: ...


@dataclass
class RunnerCounters:
    frames: int = 0
    ticker_frames: int = 0
    produced: int = 0  # messages handed to the producer
    parse_errors: int = 0
    ignored: int = 0  # heartbeats, acks, errors, unknown frames: nothing to produce
    recorded: int = 0
    dead_lettered: int = 0  # frames handed to the dead-letter path (unparseable, or with bad tickers)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _stats_line(counters: RunnerCounters, source: object, producer: object | None) -> str:
    parts = [f"runner={counters.as_dict()}"]
    src = getattr(source, "counters", None)
    if src is not None and hasattr(src, "as_dict"):
        parts.append(f"source={src.as_dict()}")
    prod = getattr(producer, "counters", None)
    if prod is not None and hasattr(prod, "as_dict"):
        parts.append(f"producer={prod.as_dict()}")
    return " ".join(parts)


async def run_feed(
    source: FrameSource,
    producer: MessageSink | None,
    *,
    record_path: str | Path | None = None,
    stats_interval_s: float = 60.0,
    on_gap: Callable[[GapRecord], None] | None = None,
    max_frames: int | None = None,
) -> RunnerCounters:
    """Consume `source` until it ends (or `max_frames`), producing every ticker; returns the counters.

    - `record_path`: every frame text is appended, as received, before anything can reject it.
    - `on_gap`: installed on the source, which tracks the sequence numbers of each connection.
    - Messages carry the source's kind (`source`) and the `connection_id` of the frame just yielded.
    - Counters of the runner, the source and the producer are logged every `stats_interval_s`, and the
      producer's delivery reports are served at least once a second even while no frame arrives.
    The producer is not closed here: its owner closes it (which flushes) after this returns.
    """
    counters = RunnerCounters()
    if on_gap is not None:
        source.on_gap = on_gap
    kind = source.source
    recorder = FrameRecorder(record_path) if record_path is not None else None

    async def housekeeping() -> None:
        last_stats = time.monotonic()
        while True:
            await asyncio.sleep(min(1.0, stats_interval_s))
            if producer is not None:
                producer.poll(0)
            if time.monotonic() - last_stats >= stats_interval_s:
                last_stats = time.monotonic()
                if recorder is not None:
                    recorder.flush()
                log.info("feed stats: %s", _stats_line(counters, source, producer))

    keeper = asyncio.create_task(housekeeping(), name="feed-housekeeping")
    try:
        async for text in source:
            counters.frames += 1
            if recorder is not None:
                recorder.write(text)
                counters.recorded += 1
            last = source.last_parsed
            frame: AnyFrame | None
            parse_error = ""
            if last is not None and last[0] is text:
                frame = last[1]  # the source parsed it already
            else:
                try:
                    frame = parse_frame(text)
                except ProtocolError as e:
                    log.debug("unparseable frame: %s", e)
                    parse_error = str(e)
                    frame = None
            if frame is None and not parse_error:
                try:  # the source could not parse it either: get the reason for the dead-letter row
                    parse_frame(text)
                except ProtocolError as e:
                    parse_error = str(e)
            if frame is None:
                counters.parse_errors += 1
                if producer is not None:
                    await producer.produce_rejected_async(text, f"unparseable frame: {parse_error}")
                    counters.dead_lettered += 1
            else:
                conn = source.connection_id
                if isinstance(frame, TickerBatchFrame):
                    counters.ticker_frames += 1
                    if producer is not None:
                        for msg in tickers(frame, source=kind, connection_id=conn):
                            await producer.produce_async(msg)
                            counters.produced += 1
                        if frame.rejected:  # the good tickers went on; the frame is kept for the bad ones
                            reasons = "; ".join(frame.rejected)
                            await producer.produce_rejected_async(
                                text, f"{len(frame.rejected)} bad tickers: {reasons}"
                            )
                            counters.dead_lettered += 1
                else:
                    counters.ignored += 1
            if max_frames is not None and counters.frames >= max_frames:
                break
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
        if recorder is not None:
            recorder.close()
        if producer is not None:
            producer.poll(0)
        log.info("feed finished: %s", _stats_line(counters, source, producer))
    return counters
