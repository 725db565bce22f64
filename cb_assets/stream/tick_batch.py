"""A batch of Kafka ticker messages -> columns of accepted ticks plus rejections, agreeing with `parse_tick`.

`parse_tick` (one message at a time) is the definition of what the sink accepts and why it refuses; this is
its fast form for whole batches. The batch path only *decides* a message when it can be sure of giving
`parse_tick`'s answer, and hands every other message to `parse_tick` itself:

- decoding: msgspec into a Struct of exactly the contract's fields (docs/contracts.md), numbers parsed from
  their strings by msgspec's lax mode. Anything msgspec refuses or that does not have that shape (a missing
  or null field, a field that is not a string, an unknown field, invalid JSON) goes to `parse_tick`, which
  words the reason. Unknown fields are refused because msgspec skips them with less checking than orjson
  (it accepts 1e400 or invalid UTF-8 there, where orjson and so `parse_tick` call the message invalid JSON).
- numbers: msgspec reads numeric strings exactly as float() does except "-0" (it gives +0.0), so ticks
  holding a zero anywhere go to `parse_tick`; zeros are rare (and a zero price is refused anyway).
- time: canonical RFC 3339 UTC ("YYYY-MM-DDTHH:MM:SS[.1-9 digits]Z") is parsed for the whole batch with
  numpy, fractions floored to the microsecond as datetime.fromisoformat does; any other spelling, an
  impossible date, or a time over MAX_FUTURE ahead goes to `parse_tick`.
- unknown products, present-but-NaN book prices go to `parse_tick`.
- validation: `series.tick_rules.violations` (the array form the raw_ticks checks use) on the whole batch;
  only rows it flags get a reason, from the scalar `tick_rules.problem`, exactly as `parse_tick` would.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import repeat
from operator import attrgetter

import msgspec
import numpy as np

from cb_assets.series import tick_rules
from cb_assets.series.schema import SERIES_COLUMNS
from cb_assets.stream.tick_columns import TickColumns, datetime_to_us, us_to_datetime
from cb_assets.stream.ticks import MAX_FUTURE, Rejection, TickRow, parse_tick

# The message schema of docs/contracts.md, field for field (field order is irrelevant to decoding).
_Ticker = msgspec.defstruct(
    "_Ticker",
    [
        ("product_id", str),
        *[(c, float) for c in SERIES_COLUMNS],
        ("time", str),
        ("best_bid", float | None, None),
        ("best_ask", float | None, None),
        # Read but unused; typed so that msgspec checks them as strictly as orjson would (a float refuses
        # an integer too large for a double, as orjson does; an int would not).
        ("sequence_num", float | str | None, None),
        ("source", str | None, None),
        ("connection_id", str | None, None),
    ],
    forbid_unknown_fields=True,
    gc=False,  # no reference cycles possible: spares the GC tracking ~10,000 objects per batch
)
_DECODE = msgspec.json.Decoder(_Ticker, strict=False).decode  # strict=False: "60000.5" -> float
# A message that fails to decode costs its chunk a second, per-message decode: small chunks bound that.
_CHUNK = 512

_NUMBER_FIELDS = [attrgetter(c) for c in SERIES_COLUMNS]
_PRODUCT = attrgetter("product_id")
_TIME = attrgetter("time")
_BID = attrgetter("best_bid")
_ASK = attrgetter("best_ask")
_SOURCE = attrgetter("source")
_MAX_FUTURE_US = MAX_FUTURE // timedelta(microseconds=1)


@dataclass(frozen=True)
class DecodedBatch:
    ticks: TickColumns
    rejections: list[tuple[int, Rejection]]  # (index of the message in the batch, why)
    fallback: int  # messages the batch path handed to parse_tick (a figure for tests and profiling)


def clean_text(text: str) -> str:
    return text.replace("\x00", "\\x00")  # PostgreSQL text cannot hold NUL


# -- time ------------------------------------------------------------------------------------------------

_MIN_LEN, _MAX_LEN = 20, 30  # "YYYY-MM-DDTHH:MM:SSZ" .. "YYYY-MM-DDTHH:MM:SS.123456789Z"
_DATE_DIGITS = (0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18)
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


def _pattern(length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(digit positions, literal positions, literal bytes, digit weights -> Y, M, D, h, m, s, us)."""
    frac = list(range(20, length - 1)) if length > _MIN_LEN else []
    digits = np.array([*_DATE_DIGITS, *frac])
    literals = {4: "-", 7: "-", 10: "T", 13: ":", 16: ":", length - 1: "Z"}
    if frac:
        literals[19] = "."
    weights = np.zeros((len(digits), 7), np.int64)
    for field, (a, b) in enumerate(((0, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 14))):
        for k in range(a, b):
            weights[k, field] = 10 ** (b - 1 - k)
    for k in range(min(6, len(frac))):  # digits past the sixth are dropped: floored, as fromisoformat
        weights[14 + k, 6] = 10 ** (5 - k)
    lit_pos = np.array(sorted(literals))
    return digits, lit_pos, np.array([ord(literals[p]) for p in lit_pos], np.uint8), weights


_PATTERNS = {n: _pattern(n) for n in range(_MIN_LEN, _MAX_LEN + 1) if n != 21}  # "SS.Z": fromisoformat's


def _parse_fixed(times: Sequence[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(times)
    try:
        raw = "".join(times).encode("ascii")
    except UnicodeEncodeError:
        ascii_ok = np.fromiter(map(str.isascii, times), bool, n)
        us, ok = _parse_fixed(
            [t if a else "0" * length for t, a in zip(times, ascii_ok, strict=True)], length
        )
        return us, ok & ascii_ok
    b = np.frombuffer(raw, np.uint8).reshape(n, length)
    digit_pos, lit_pos, lit, weights = _PATTERNS[length]
    dig = b[:, digit_pos] - np.uint8(ord("0"))  # wraps below "0": one comparison tests both ends
    ok = (dig <= 9).all(axis=1) & (b[:, lit_pos] == lit).all(axis=1)
    year, month, day, hour, minute, second, micro = (dig.astype(np.int64) @ weights).T
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    ok &= (year >= 1) & (month >= 1) & (month <= 12) & (hour <= 23) & (minute <= 59) & (second <= 59)
    ok &= (day >= 1) & (day <= _DAYS_IN_MONTH[np.clip(month, 0, 12)] + ((month == 2) & leap))
    # Days from the civil date (Howard Hinnant's algorithm, as in feed.timestamps), integers only.
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + np.where(month > 2, -3, 9)) + 2) // 5 + day - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    us = (days * 86400 + hour * 3600 + minute * 60 + second) * 1_000_000 + micro
    return np.where(ok, us, 0), ok


def parse_times_us(times: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(microseconds since the epoch, parsed) for canonical RFC 3339 UTC strings; others parsed=False.

    Gives what datetime.fromisoformat gives for these strings (the fraction floored to the microsecond).
    Rows are parsed together per string length: a batch from one feed has one or two lengths.
    """
    n = len(times)
    lens = np.fromiter(map(len, times), np.int64, n)
    us, ok = np.zeros(n, np.int64), np.zeros(n, bool)
    for length in np.unique(lens).tolist():
        if length not in _PATTERNS:
            continue
        rows = np.flatnonzero(lens == length)
        if len(rows) == n:
            return _parse_fixed(times, length)
        us[rows], ok[rows] = _parse_fixed([times[i] for i in rows.tolist()], length)
    return us, ok


# -- the batch -------------------------------------------------------------------------------------------


def _decode_all(values: Sequence[bytes | None]) -> tuple[list, list[int] | None]:
    """Decoded messages and their indexes (None: all of them, in order); failures are left out."""
    decoded: list = []
    kept: list[int] | None = None
    for start in range(0, len(values), _CHUNK):
        chunk = values[start : start + _CHUNK]
        try:
            part = list(map(_DECODE, chunk))  # type: ignore[arg-type]
        except (msgspec.DecodeError, TypeError):  # (ValidationError is a DecodeError; None is a TypeError)
            if kept is None:
                kept = list(range(start))
            for i, v in enumerate(chunk, start):
                try:
                    decoded.append(_DECODE(v))  # type: ignore[arg-type]
                except (msgspec.DecodeError, TypeError):
                    continue
                kept.append(i)
            continue
        decoded.extend(part)
        if kept is not None:
            kept.extend(range(start, start + len(chunk)))
    return decoded, kept


def _book(col: list[float | None]) -> tuple[np.ndarray, np.ndarray]:
    """(prices with NaN where absent, rows that sent NaN itself): the array rules read NaN as absent."""
    n = len(col)
    if col.count(None) == n:
        return np.full(n, np.nan), np.zeros(n, bool)
    arr = np.array(col, dtype=np.float64)  # None -> NaN
    nan = np.isnan(arr)
    if not nan.any():
        return arr, nan
    sent = np.fromiter((v is not None for v in col), bool, n)
    return arr, nan & sent


def decode_batch(
    values: Sequence[bytes | None],
    partitions: Sequence[int],
    offsets: Sequence[int],
    *,
    products: Collection[str],
    now: datetime,
    default_source: str = "unknown",
) -> DecodedBatch:
    """Every message becomes an accepted row of `ticks` or one entry of `rejections`, as `parse_tick` says."""
    decoded, kept = _decode_all(values)
    m = len(decoded)
    msg_idx = np.arange(m, dtype=np.int64) if kept is None else np.asarray(kept, dtype=np.int64)

    product_names = tuple(sorted(products))
    index = {p: i for i, p in enumerate(product_names)}
    product = np.fromiter(map(index.get, map(_PRODUCT, decoded), repeat(-1)), np.int32, m)
    time_us, time_ok = parse_times_us(list(map(_TIME, decoded)))
    nums = np.empty((m, len(SERIES_COLUMNS)), np.float64)
    for j, get in enumerate(_NUMBER_FIELDS):
        nums[:, j] = np.fromiter(map(get, decoded), np.float64, m)
    bid, bid_nan = _book(list(map(_BID, decoded)))
    ask, ask_nan = _book(list(map(_ASK, decoded)))
    raw_sources = list(map(_SOURCE, decoded))
    source_index = {s: i for i, s in enumerate(dict.fromkeys(raw_sources))}
    sources = tuple(clean_text(s) if s else default_source for s in source_index)
    source = np.fromiter(map(source_index.__getitem__, raw_sources), np.int32, m)

    now_us = datetime_to_us(now)
    with np.errstate(invalid="ignore"):
        zero = (nums == 0).any(axis=1) | (bid == 0) | (ask == 0)
    decided = time_ok & (time_us - now_us <= _MAX_FUTURE_US) & (product >= 0) & ~zero & ~bid_nan & ~ask_nan

    fast = np.flatnonzero(decided)
    broken = tick_rules.any_broken(tick_rules.violations(nums[fast], bid[fast], ask[fast]))
    rejections: list[tuple[int, Rejection]] = []
    for k in fast[broken].tolist():
        reason = tick_rules.problem(
            tuple(nums[k].tolist()),
            None if np.isnan(bid[k]) else float(bid[k]),
            None if np.isnan(ask[k]) else float(ask[k]),
        )
        if reason is None:  # the two forms of the rules disagree (the tests say they do not): parse_tick's
            decided[k] = False
            continue
        rejections.append(
            (int(msg_idx[k]), Rejection(reason, product_names[product[k]], us_to_datetime(int(time_us[k]))))
        )
    keep = fast[~broken]

    # Messages the batch path leaves to parse_tick: those msgspec refused, and the undecided.
    undecided = np.ones(len(values), bool)
    undecided[msg_idx[decided]] = False
    parts = np.asarray(partitions, dtype=np.int32)
    offs = np.asarray(offsets, dtype=np.int64)
    mi = msg_idx[keep]
    ticks = TickColumns(
        product_names,
        product[keep],
        time_us[keep],
        nums[keep],
        bid[keep],
        ask[keep],
        sources,
        source[keep],
        parts[mi],
        offs[mi],
        mi,
    )

    slow = np.flatnonzero(undecided).tolist()
    if not slow:
        return DecodedBatch(ticks, rejections, 0)
    rows: list[TickRow] = []
    row_msgs: list[int] = []
    for i in slow:
        res = parse_tick(
            values[i],
            products=products,
            partition=int(parts[i]),
            offset=int(offs[i]),
            now=now,
            default_source=default_source,
        )
        if isinstance(res, Rejection):
            rejections.append((i, res))
        else:
            if "\x00" in res[11]:
                res = (*res[:11], clean_text(res[11]), *res[12:])  # type: ignore[assignment]
            rows.append(res)
            row_msgs.append(i)
    rejections.sort(key=lambda r: r[0])
    return DecodedBatch(
        TickColumns.concat([ticks, TickColumns.from_rows(rows, row_msgs)]), rejections, len(slow)
    )
