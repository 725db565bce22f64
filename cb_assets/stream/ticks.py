"""One Kafka ticker message -> a raw_ticks row, or a rejection with a reason a person can act on.

Parsing is this module's; whether the numbers make a valid tick is `series.tick_rules`' (the same rules the
raw_ticks asset checks). `parse_tick` is the definition of what the sink accepts and of the reasons it gives:
the sink's batch path (`tick_batch.decode_batch`) decides the messages it can decide identically and hands
every other one to `parse_tick` (the tests hold the two to agreement); the naive sink calls it for every
message. orjson, one orjson call for the seven numbers, and datetime.fromisoformat (which keeps microseconds
and drops the remaining nanosecond digits: the documented flooring of envelope times to PostgreSQL's
resolution).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson

from cb_assets.series import tick_rules
from cb_assets.series.schema import SERIES_COLUMNS

REQUIRED_FIELDS: tuple[str, ...] = ("product_id", *SERIES_COLUMNS, "time")
OPTIONAL_NUMERIC: tuple[str, ...] = ("best_bid", "best_ask")
# Envelope times come from Coinbase's clock (or a replay's); beyond this much in the future it is garbage.
MAX_FUTURE = timedelta(minutes=10)

# (product_id, time, price, volume_24_h, low_24_h, high_24_h, low_52_w, high_52_w, price_percent_chg_24_h,
#  best_bid, best_ask, source, kafka_partition, kafka_offset) -- the column order of raw_ticks' staging table.
TickRow = tuple[
    str, datetime, float, float, float, float, float, float, float, float | None, float | None, str, int, int
]


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    product_id: str | None = None
    tick_time: datetime | None = None


def _number(obj: dict, name: str) -> float | str:
    """The float value of a field (inf and nan included: finiteness is a tick rule), or a reason string."""
    raw = obj.get(name)
    if raw is None:
        return f"{name} is null"
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        return f"{name} is not a number: {raw!r}"
    try:
        value = float(raw)
    except ValueError:
        return f"{name} is not a number: {raw!r}"
    return value


def parse_tick(
    value: bytes | None,
    *,
    products: Collection[str],
    partition: int,
    offset: int,
    now: datetime,
    default_source: str = "unknown",
) -> TickRow | Rejection:
    """Validate one message value. `now` is passed in (tz-aware UTC) so a batch shares one clock."""
    if not value:
        return Rejection("empty message")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return Rejection(f"invalid JSON: {exc}")
    if not isinstance(obj, dict):
        return Rejection(f"payload is a JSON {type(obj).__name__}, not an object")

    product = obj.get("product_id")
    product_id = product if isinstance(product, str) else None
    missing = [f for f in REQUIRED_FIELDS if obj.get(f) is None]
    if missing:
        return Rejection(f"missing fields: {', '.join(missing)}", product_id)

    raw_time = obj["time"]
    try:
        if not isinstance(raw_time, str):
            raise ValueError
        tick_time = datetime.fromisoformat(raw_time)
        if tick_time.tzinfo is None:
            raise ValueError
    except ValueError:
        return Rejection(f"unparseable time {raw_time!r}: expected RFC 3339 with a zone", product_id)
    if tick_time - now > MAX_FUTURE:
        return Rejection(
            f"time {raw_time} is {(tick_time - now).total_seconds():.0f} s in the future",
            product_id,
            tick_time,
        )
    if product_id not in products:
        return Rejection(f"unknown product {product!r} (not in CB_PRODUCTS)", product_id, tick_time)

    nums = _series_numbers(obj)
    if isinstance(nums, str):
        return Rejection(nums, product_id, tick_time)
    book: list[float | None] = []
    for name in OPTIONAL_NUMERIC:
        if obj.get(name) in (None, ""):
            book.append(None)
            continue
        v = _number(obj, name)
        if isinstance(v, str):
            return Rejection(v, product_id, tick_time)
        book.append(v)
    broken = tick_rules.problem(nums, book[0], book[1])
    if broken is not None:
        return Rejection(broken, product_id, tick_time)

    source = obj.get("source")
    return (
        product_id,
        tick_time,
        *nums,
        book[0],
        book[1],
        source if isinstance(source, str) and source else default_source,
        partition,
        offset,
    )  # type: ignore[return-value]


def _series_numbers(obj: dict) -> tuple[float, ...] | str:
    """The SERIES_COLUMNS numbers of a message, or the reason one of them is not a number.

    One orjson call on "[price,volume_24_h,...]" instead of seven float() calls (those were about a third of
    the sink's per-tick Python time in a profile). orjson rounds JSON numbers exactly as float() does;
    whatever it cannot read as seven floats ("nan", "1e400", "1_000", ".5", a comma inside a field,
    integers, whose "-0" float() reads as -0.0) goes through float() field by field, which also words the
    reason.
    """
    try:
        nums = orjson.loads("[" + ",".join(str(obj[c]) for c in SERIES_COLUMNS) + "]")
        if len(nums) == len(SERIES_COLUMNS) and all(type(v) is float for v in nums):
            return tuple(nums)
    except orjson.JSONDecodeError:
        pass
    out = []
    for name in SERIES_COLUMNS:
        v = _number(obj, name)
        if isinstance(v, str):
            return v
        out.append(v)
    return tuple(out)
