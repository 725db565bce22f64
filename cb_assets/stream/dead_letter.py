"""The dead-letter message: how the feed hands input it cannot use to the sink, which records it in
raw_ticks_rejected with the reason and the original text (one place where every rejection ends up)."""

from __future__ import annotations

import orjson

# Kafka key of dead-letter messages (never a product id: those are BASE-QUOTE).
DEAD_LETTER_KEY = b"__rejected__"


def decode_dead_letter(value: bytes | None) -> tuple[str, bytes]:
    """(reason, original payload) of a dead-letter message; tolerant of a damaged envelope."""
    try:
        obj = orjson.loads(value or b"")
        return f"{obj.get('rejected_by', 'feed')}: {obj['reason']}", str(obj["payload"]).encode()
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return "dead-letter message with a damaged envelope", value or b""
