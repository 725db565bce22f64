"""Sequence numbers of one WebSocket connection: gaps (missed frames) and duplicates.

Every frame carries a `sequence_num` that restarts at 0 on each connection; a jump means frames were lost
in between, and the resampler must treat that stretch as unobserved rather than as a quiet market. Pure
and I/O-free like the parser; feed/gaps.py writes the records.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GapRecord:
    """Frames were missed on one connection: those with `from_seq < sequence_num < to_seq`.

    `from_time_ns`/`to_time_ns` are the envelope times of the frames either side, i.e. the stretch the
    resampler must treat as unobserved; `wall_time_ns` is when the client noticed.
    """

    connection_id: str
    from_seq: int
    to_seq: int
    from_time_ns: int | None
    to_time_ns: int | None
    wall_time_ns: int

    @property
    def missed(self) -> int:
        return self.to_seq - self.from_seq - 1


class SequenceTracker:
    """Gap and duplicate detection over one connection's sequence numbers; a new connection id resets it."""

    def __init__(self) -> None:
        self.connection_id: str | None = None
        self.last_seq: int | None = None
        self.last_time_ns: int | None = None
        self.gaps = 0
        self.missed = 0
        self.duplicates = 0

    def observe(
        self, connection_id: str, seq: int, time_ns: int | None, wall_time_ns: int
    ) -> GapRecord | None:
        if connection_id != self.connection_id:
            # Numbering restarts at 0 on every connection; missing frames across a reconnect are the
            # reconnect's business, not a gap within this connection.
            self.connection_id = connection_id
            self.last_seq, self.last_time_ns = seq, time_ns
            return None
        last = self.last_seq
        if last is None:
            self.last_seq, self.last_time_ns = seq, time_ns
            return None
        if seq <= last:
            self.duplicates += 1  # duplicate or out of order: keep the high-water mark
            return None
        gap = None
        if seq != last + 1:
            gap = GapRecord(connection_id, last, seq, self.last_time_ns, time_ns, wall_time_ns)
            self.gaps += 1
            self.missed += gap.missed
        self.last_seq, self.last_time_ns = seq, time_ns
        return gap
