"""Where each partition of the ticks topic stands, so that no second closes before its ticks are in.

Ticks of one data second are spread over partitions (keyed by product), and partitions deliver at their own
pace: a newer second showing on one partition says nothing about the others. Two rules decide when a second
may close (`settled`), whichever allows more:

- every partition that has delivered ticks has delivered a newer second (within a partition ticks come in
  order, so it can add nothing older);
- the second's first tick was seen `linger` ago, and so was every earlier second's. In real time (a frame
  every few seconds) this is the wait for the rest of a frame; in a fast replay it gives a partition that
  runs a little behind the same grace, where closing on the first newer second would drop its ticks as late.

While the forecaster catches up on a backlog (after a start, a pause of the process, a replay faster than real
time), librdkafka hands over each partition's fetched messages as one block, so one partition's ticks can run
minutes of data ahead of another's. Then a second also waits (`closable`) until every partition that still has
unread messages (its consumed position below the high watermark the broker last reported) has delivered ticks
past it. A partition that is caught up holds nothing back, so a quiet product never stalls the others. A
partition that reports unread messages but delivers nothing newer for `max_hold_s` stops holding (a slow but
moving catch-up keeps its hold, however long it takes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaException, TopicPartition

log = logging.getLogger(__name__)

OFFSET_BEGINNING = -2


@dataclass
class PartitionProgress:
    max_hold_s: float = 5.0
    newest_s: dict[int, int] = field(default_factory=dict)  # newest data second seen per partition
    start: dict[int, int] = field(default_factory=dict)  # offset each partition was assigned at
    first_seen: dict[int, float] = field(default_factory=dict)  # open data second -> when its first tick came
    _waiting_since: dict[int, float] = field(default_factory=dict)  # lagging, and nothing newer since
    _gave_way: set[int] = field(default_factory=set)

    def assigned(self, partitions: Iterable[tuple[int, int]]) -> None:
        for partition, offset in partitions:
            self.start[partition] = offset
            self.newest_s.pop(partition, None)
            self._waiting_since.pop(partition, None)
            self._gave_way.discard(partition)

    def seen(self, partition: int, second: int, now: float | None = None) -> None:
        if second not in self.first_seen:
            self.first_seen[second] = time.monotonic() if now is None else now
        if second > self.newest_s.get(partition, second - 1):
            self.newest_s[partition] = second
            if partition in self._waiting_since:
                self._waiting_since[partition] = time.monotonic()
            self._gave_way.discard(partition)

    def settled(self, floor: int, linger_s: float, now: float | None = None) -> int:
        """The newest second after `floor` (the newest closed one) that no partition should add ticks to
        any more, by delivery order or by `linger_s`; `floor` when there is none."""
        now = time.monotonic() if now is None else now
        for second in [s for s in self.first_seen if s <= floor]:
            del self.first_seen[second]
        delivered = min(self.newest_s.values(), default=floor + 1) - 1
        upto = max(floor, delivered)
        for second in sorted(self.first_seen):
            if second > delivered and now - self.first_seen[second] < linger_s:
                break
            upto = max(upto, second)
        return upto

    def closable(self, upto: int, unread: dict[int, int], floor: int) -> int:
        """The newest second up to `upto` that may close, given each partition's unread-message count.

        `floor` is the newest second already closed: a lagging partition that has shown nothing yet holds
        everything after it.
        """
        now = time.monotonic()
        held = []
        for p, n in unread.items():
            if n <= 0:
                self._waiting_since.pop(p, None)
                continue
            if now - self._waiting_since.setdefault(p, now) > self.max_hold_s:
                if p not in self._gave_way:
                    self._gave_way.add(p)
                    log.warning(
                        "partition %d reports %d unread messages that do not arrive; not waiting", p, n
                    )
                continue
            held.append(self.newest_s.get(p, floor + 1) - 1)
        bound = min(held, default=upto)
        return upto if bound >= upto else max(bound, floor)


def unread_messages(consumer: Consumer, progress: PartitionProgress) -> dict[int, int]:
    """Per assigned partition, messages between the consumed position and the last reported high watermark.

    Both come from the client's cache (no broker round trip); a partition whose watermark is not known yet
    is left out.
    """
    try:
        positions = consumer.position(consumer.assignment())
    except KafkaException:
        return {}
    unread: dict[int, int] = {}
    for tp in positions:
        low, high = consumer.get_watermark_offsets(tp, cached=True)
        if high < 0:
            continue
        position = tp.offset
        if position < 0:  # nothing consumed yet: from where it was assigned
            start = progress.start.get(tp.partition, OFFSET_BEGINNING)
            position = start if start >= 0 else low
        unread[tp.partition] = max(0, high - position)
    return unread


def log_end(consumer: Consumer, tp: TopicPartition) -> int:
    """The partition's end offset as it is now (the logical end offset would be resolved only when fetching
    starts, skipping whatever a producer writes in between); the beginning when the broker cannot say."""
    try:
        return int(consumer.get_watermark_offsets(tp, timeout=10)[1])
    except Exception as exc:  # a re-read is harmless: the ledger keeps first writes
        log.warning("log end of partition %d unknown (%s); reading it from its start", tp.partition, exc)
        return OFFSET_BEGINNING
