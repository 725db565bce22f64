"""One consumed batch of Kafka messages -> what the sink writes in one transaction and the offsets it commits.

Kafka messages are read column by column (`map(Message.value, msgs)`: one C-level pass per attribute rather
than six method calls per message in a Python loop), dead letters from the feed are set aside with their own
reason, and the rest is decoded and validated by `tick_batch.decode_batch`. The naive sink (the benchmark's
baseline) keeps the per-message path: `parse_tick` for every message.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime

from confluent_kafka import KafkaError, Message

from cb_assets.stream.dead_letter import DEAD_LETTER_KEY, decode_dead_letter
from cb_assets.stream.pg_writer import CopyBatch, RejectedMessage
from cb_assets.stream.tick_batch import clean_text, decode_batch
from cb_assets.stream.tick_columns import TickColumns
from cb_assets.stream.ticks import Rejection, TickRow, parse_tick

log = logging.getLogger(__name__)


@dataclass
class SinkBatch:
    ticks: TickColumns | list[TickRow]  # a list for the naive sink
    rejected: list[RejectedMessage]
    # The values of the messages the ticks came from (TickColumns.message / row_messages index them), so a
    # row PostgreSQL refuses is dead-lettered with its original bytes.
    payloads: list[bytes | None]
    offsets: dict[tuple[str, int], int]  # (topic, partition) -> last offset in this batch
    stamps: list[int]  # message timestamps (ms), only when a commit hook wants them
    consumed: int = 0
    kafka_errors: int = 0
    row_messages: list[int] = field(default_factory=list)  # naive sink: message index per row
    copy: CopyBatch | None = None  # the ticks encoded for COPY (not for the naive sink)

    def for_writer(self) -> CopyBatch | TickColumns | list[TickRow]:
        return self.ticks if self.copy is None else self.copy

    def __len__(self) -> int:
        return len(self.ticks)

    def payload_of_row(self, i: int) -> bytes | None:
        if isinstance(self.ticks, TickColumns):
            msg = int(self.ticks.message[i])
        else:
            msg = self.row_messages[i] if i < len(self.row_messages) else -1
        return self.payloads[msg] if 0 <= msg < len(self.payloads) else None


def _without_errors(msgs: list[Message]) -> tuple[list[Message], int]:
    errors = list(map(Message.error, msgs))
    if errors.count(None) == len(msgs):
        return msgs, 0
    kept, counted = [], 0
    for m, err in zip(msgs, errors, strict=True):
        if err is None:
            kept.append(m)
        elif err.code() != KafkaError._PARTITION_EOF:
            counted += 1
            log.warning("kafka error: %s", err)
    return kept, counted


def split_messages(
    msgs: list[Message],
    *,
    topic: str,
    products: Collection[str],
    now: datetime,
    want_stamps: bool,
    per_message: bool = False,
) -> SinkBatch:
    """`now` (tz-aware UTC) is the batch's one clock for the "too far in the future" rule."""
    msgs, kafka_errors = _without_errors(msgs)
    values: list[bytes | None] = list(map(Message.value, msgs))
    parts: list[int] = list(map(Message.partition, msgs))
    offs: list[int] = list(map(Message.offset, msgs))
    # The subscription is one topic: offsets are per partition, last one wins (a partition is in order).
    offsets = {(topic, p): o for p, o in dict(zip(parts, offs, strict=True)).items()}
    stamps = [ts for _, ts in map(Message.timestamp, msgs)] if want_stamps else []
    source = f"kafka:{topic}"
    rejected: list[RejectedMessage] = []

    keys = list(map(Message.key, msgs))
    if DEAD_LETTER_KEY in keys:  # input the feed could not use: record it with the feed's reason
        ticks_at = []
        for i, k in enumerate(keys):
            if k == DEAD_LETTER_KEY:
                reason, payload = decode_dead_letter(values[i])
                rejected.append(
                    RejectedMessage(Rejection(clean_text(reason)), payload, "feed", topic, parts[i], offs[i])
                )
            else:
                ticks_at.append(i)
        values = [values[i] for i in ticks_at]
        parts = [parts[i] for i in ticks_at]
        offs = [offs[i] for i in ticks_at]

    def reject(i: int, r: Rejection) -> None:
        # The product id is whatever the message said ("BTC-USD\x00" included): PostgreSQL text cannot hold
        # NUL, and a rejection must never be refused.
        product_id = None if r.product_id is None else clean_text(r.product_id)
        rejected.append(
            RejectedMessage(
                Rejection(clean_text(r.reason), product_id, r.tick_time),
                values[i] or b"",
                source,
                topic,
                parts[i],
                offs[i],
            )
        )

    batch = SinkBatch([], rejected, values, offsets, stamps, len(msgs), kafka_errors)
    if per_message:
        rows: list[TickRow] = []
        for i, value in enumerate(values):
            res = parse_tick(value, products=products, partition=parts[i], offset=offs[i], now=now)
            if isinstance(res, Rejection):
                reject(i, res)
                continue
            if "\x00" in res[11]:
                res = (*res[:11], clean_text(res[11]), *res[12:])  # type: ignore[assignment]
            rows.append(res)
            batch.row_messages.append(i)
        batch.ticks = rows
        return batch

    decoded = decode_batch(values, parts, offs, products=products, now=now)
    for i, r in decoded.rejections:
        reject(i, r)
    batch.ticks = decoded.ticks
    batch.copy = CopyBatch.of(decoded.ticks)
    return batch
