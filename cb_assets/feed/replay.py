"""Replay a recording (JSONL of frames as received, `.gz` accepted) as a frame source.

Pacing follows the envelope timestamps: `speed` N plays N x real time, 0 as fast as possible. With
`rebase_now` every envelope timestamp is shifted by one offset so that the recording ends now; the
`timestamp` field is rewritten in the text itself with exact integer-nanosecond arithmetic, so the
differences between frames survive to the nanosecond and the rest of each line stays byte for byte.
(Heartbeat `current_time` strings are informational Go times and are left as recorded.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

from cb_assets.feed.protocol import AnyFrame, Frame, frame_sequence, parse_frame
from cb_assets.feed.recording import iter_lines
from cb_assets.feed.source import FrameSource, GapCallback
from cb_assets.feed.timestamps import ProtocolError, format_rfc3339_ns, parse_rfc3339_ns

log = logging.getLogger(__name__)

_TIMESTAMP_FIELD = re.compile(r'"timestamp"\s*:\s*"([^"\\]*)"')
_LOGGED_BAD_LINES = 20  # individually; later ones only in the summary


def recording_name(path: str | Path) -> str:
    name = Path(path).name
    for suffix in (".gz", ".jsonl", ".json", ".ndjson"):
        name = name.removesuffix(suffix)
    return name


def last_timestamp_ns(path: str | Path) -> int | None:
    """The latest envelope timestamp in a recording (None if it has none); reads the whole file once."""
    latest: int | None = None
    for line in iter_lines(path):
        m = _TIMESTAMP_FIELD.search(line)
        if m is None:
            continue
        try:
            t = parse_rfc3339_ns(m.group(1))
        except ProtocolError:
            continue
        if latest is None or t > latest:
            latest = t
    return latest


def _rewrite_timestamp(line: str, old: str, new: str) -> str:
    # The first "timestamp" whose value is the envelope's: Coinbase writes the envelope keys before
    # `events`, so this is the top-level field and nothing inside the events is touched.
    for m in _TIMESTAMP_FIELD.finditer(line):
        if m.group(1) == old:
            return line[: m.start(1)] + new + line[m.end(1) :]
    raise ProtocolError("timestamp field not found in the text")


class ReplaySource(FrameSource):
    """Frames of a recording. `connection_id` is the recording's name; a recorded reconnect (the
    sequence restarting at 0) starts a new segment `name#k`, so sequence checks restart as they did live.
    """

    source = "replay"

    def __init__(
        self,
        path: str | Path,
        *,
        speed: float = 1.0,
        rebase_now: bool = False,
        now_ns: int | None = None,
        on_gap: GapCallback | None = None,
    ) -> None:
        super().__init__(on_gap)
        if speed < 0:
            raise ValueError("speed must be >= 0 (0 = as fast as possible)")
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(self.path)
        self.speed = speed
        self.rebase_now = rebase_now
        self.now_ns = now_ns
        self.name = recording_name(self.path)
        self.offset_ns = 0
        self.bad_lines = 0
        self._gen: AsyncIterator[str] | None = None

    async def __anext__(self) -> str:
        if self._gen is None:
            self._gen = self._frames()
        return await self._gen.__anext__()

    def _bad(self, line_no: int, reason: str, line: str) -> None:
        self.bad_lines += 1
        self.counters.protocol_errors += 1
        if self.bad_lines <= _LOGGED_BAD_LINES:
            log.warning("%s line %d is not a valid frame (%s): %.120s", self.path.name, line_no, reason, line)
        elif self.bad_lines == _LOGGED_BAD_LINES + 1:
            log.warning("%s: more invalid lines; only counting them from now on", self.path.name)

    async def _frames(self) -> AsyncIterator[str]:
        if self.rebase_now:
            last = last_timestamp_ns(self.path)
            now = self.now_ns if self.now_ns is not None else time.time_ns()
            self.offset_ns = 0 if last is None else now - last
        segment = 0
        seen_any = False
        first_time: int | None = None
        wall0 = 0.0
        for line_no, line in enumerate(iter_lines(self.path), start=1):
            if not line.strip():
                continue
            try:
                frame: AnyFrame = parse_frame(line)
                if self.offset_ns and isinstance(frame, Frame):
                    new_ns = frame.time_ns + self.offset_ns
                    new_ts = format_rfc3339_ns(new_ns)
                    line = _rewrite_timestamp(line, frame.timestamp, new_ts)
                    frame = dataclasses.replace(frame, timestamp=new_ts, time_ns=new_ns)
            except ProtocolError as e:
                # Handed on as it is, like a live socket would: the runner dead-letters it with the reason.
                self._bad(line_no, str(e), line)
                yield line
                continue
            if frame_sequence(frame) == 0 and seen_any:
                segment += 1
            seen_any = True
            if isinstance(frame, Frame) and self.speed > 0:
                if first_time is None:
                    first_time, wall0 = frame.time_ns, time.monotonic()
                due = wall0 + (frame.time_ns - first_time) / 1e9 / self.speed
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif line_no % 256 == 0:
                await asyncio.sleep(0)  # as fast as possible, but let the rest of the loop run
            conn_id = self.name if segment == 0 else f"{self.name}#{segment}"
            self._account_parsed(line, frame, conn_id)
            yield line
        if self.bad_lines:
            log.warning(
                "%s: %d invalid lines (handed on to be dead-lettered)", self.path.name, self.bad_lines
            )
