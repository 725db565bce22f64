"""One Kafka ticker message -> a raw_ticks row, or a rejection with a reason a person can act on.

Pure and fast: the sink calls this for every message (hundreds of thousands per second), so it avoids
anything heavier than orjson, float() and datetime.fromisoformat (which keeps microseconds and drops the
remaining nanosecond digits: the documented flooring of envelope times to PostgreSQL's resolution).
A well-formed message takes a fast path that makes the same checks without building reasons; whatever it is
not sure about goes through the full validation, which alone decides rejections and their reason texts.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson

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
    """The float value of a field, or a reason string."""
    raw = obj.get(name)
    if raw is None:
        return f"{name} is null"
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        return f"{name} is not a number: {raw!r}"
    try:
        value = float(raw)
    except ValueError:
        return f"{name} is not a number: {raw!r}"
    if not math.isfinite(value):
        return f"{name} is not finite: {raw!r}"
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
    row = _fast_row(obj, products, partition, offset, now, default_source)
    if row is not None:
        return row
    return _validate(obj, products, partition, offset, now, default_source)


def _fast_row(
    obj: dict, products: Collection[str], partition: int, offset: int, now: datetime, default_source: str
) -> TickRow | None:
    """The row of a message that passes every check of `_validate`, or None to let `_validate` decide.

    The seven numbers are parsed by one orjson call on "[price,volume_24_h,...]" instead of seven float()
    calls (those were about a third of the sink's per-tick Python time in a profile). orjson rounds JSON numbers exactly as float() does;
    anything float() would read differently or reject is sent to `_validate`: text that is not a JSON number
    ("nan", "1e400", "1_000", ".5") fails to parse, a field holding a comma or brackets changes the count or
    yields a non-float, and integers ("-0" is 0 in JSON but -0.0 to float()) are not floats. A number sent as
    a JSON float rather than a string prints back exactly (repr round-trips), so it parses to the same value.
    """
    try:
        product_id = obj["product_id"]
        raw_time = obj["time"]
        nums = orjson.loads(
            f"[{obj['price']},{obj['volume_24_h']},{obj['low_24_h']},{obj['high_24_h']},"
            f"{obj['low_52_w']},{obj['high_52_w']},{obj['price_percent_chg_24_h']}]"
        )
    except (KeyError, orjson.JSONDecodeError):
        return None
    if type(product_id) is not str or product_id not in products or type(raw_time) is not str:
        return None
    if len(nums) != 7:
        return None
    price, volume, low24, high24, low52, high52, pct = nums
    if not (
        type(price) is float
        and type(volume) is float
        and type(low24) is float
        and type(high24) is float
        and type(low52) is float
        and type(high52) is float
        and type(pct) is float
        and price > 0
        and volume >= 0
        and low24 <= high24
        and low52 <= high52
        # orjson has no NaN and refuses overflowing exponents, so this holds; it is cheap to make sure.
        and math.isfinite(price + volume + low24 + high24 + low52 + high52 + pct)
    ):
        return None
    try:
        tick_time = datetime.fromisoformat(raw_time)
    except ValueError:
        return None
    if tick_time.tzinfo is None or tick_time - now > MAX_FUTURE:
        return None
    bid, ask = obj.get("best_bid"), obj.get("best_ask")
    if bid is not None or ask is not None:  # ticker_batch frames carry no book: usually both are None
        book: list[float | None] = []
        for b in (bid, ask):
            if b is None or b == "":
                book.append(None)
            elif type(b) is str:
                try:
                    v = float(b)
                except ValueError:
                    return None
                if not math.isfinite(v):
                    return None
                book.append(v)
            else:
                return None
        bid, ask = book
    source = obj.get("source")
    return (
        product_id,
        tick_time,
        price,
        volume,
        low24,
        high24,
        low52,
        high52,
        pct,
        bid,
        ask,
        source if isinstance(source, str) and source else default_source,
        partition,
        offset,
    )


def _validate(
    obj: dict, products: Collection[str], partition: int, offset: int, now: datetime, default_source: str
) -> TickRow | Rejection:
    """Every check in order, with the reason of the first that fails."""
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

    nums: list[float] = []
    for name in SERIES_COLUMNS:
        v = _number(obj, name)
        if isinstance(v, str):
            return Rejection(v, product_id, tick_time)
        nums.append(v)
    price, volume, low24, high24, low52, high52, _pct = nums
    if price <= 0:
        return Rejection(f"price must be > 0, got {obj['price']!r}", product_id, tick_time)
    if volume < 0:
        return Rejection(f"volume_24_h must be >= 0, got {obj['volume_24_h']!r}", product_id, tick_time)
    if low24 > high24:
        return Rejection(f"low_24_h {obj['low_24_h']} > high_24_h {obj['high_24_h']}", product_id, tick_time)
    if low52 > high52:
        return Rejection(f"low_52_w {obj['low_52_w']} > high_52_w {obj['high_52_w']}", product_id, tick_time)

    book: list[float | None] = []
    for name in OPTIONAL_NUMERIC:
        if obj.get(name) in (None, ""):
            book.append(None)
            continue
        v = _number(obj, name)
        if isinstance(v, str):
            return Rejection(v, product_id, tick_time)
        book.append(v)

    source = obj.get("source")
    return (
        product_id,
        tick_time,
        price,
        volume,
        low24,
        high24,
        low52,
        high52,
        nums[6],
        book[0],
        book[1],
        source if isinstance(source, str) and source else default_source,
        partition,
        offset,
    )
