"""RFC 3339 timestamps as exact integer nanoseconds since the epoch (datetime keeps only microseconds).

Coinbase stamps every envelope with nanoseconds ("2023-02-09T20:30:37.167359596Z"), and that stamp is a
ticker's only clock, so it is parsed with integer arithmetic alone.
"""

from __future__ import annotations

import re

from cb_assets.series.schema import SECOND_NS


class ProtocolError(ValueError):
    """A frame that cannot be understood; the message says why so the caller can log and count it."""


_RFC3339_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):?(\d{2}))"
)
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _is_leap(y: int) -> bool:
    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)


def _days_from_civil(y: int, m: int, d: int) -> int:
    # Howard Hinnant's algorithm: integer-only, so no float ever touches the nanoseconds.
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(z: int) -> tuple[int, int, int]:
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (m <= 2), m, d


def parse_rfc3339_ns(s: str) -> int:
    """Integer nanoseconds since the Unix epoch, exactly (datetime would keep only microseconds).

    Accepts `Z`/`z` or a numeric offset (`+02:00`, also `+0200`), 0 to 9 fractional digits, and a space
    instead of `T`. More than 9 fractional digits is rejected rather than silently rounded.
    """
    if not isinstance(s, str):
        raise ProtocolError(f"timestamp must be a string, got {type(s).__name__}")
    m = _RFC3339_RE.fullmatch(s)
    if m is None:
        raise ProtocolError(f"timestamp {s!r} is not RFC 3339 (YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM))")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    frac, zulu, sign, off_h, off_m = m.group(7, 8, 9, 10, 11)
    if not 1 <= month <= 12:
        raise ProtocolError(f"timestamp {s!r}: month {month} out of range")
    days_in_month = 29 if month == 2 and _is_leap(year) else _DAYS_IN_MONTH[month - 1]
    if not 1 <= day <= days_in_month:
        raise ProtocolError(f"timestamp {s!r}: day {day} out of range")
    # Leap seconds (:60) never occur in Coinbase frames; refusing them keeps the arithmetic honest.
    if hour > 23 or minute > 59 or second > 59:
        raise ProtocolError(f"timestamp {s!r}: time of day out of range")
    if frac is not None and len(frac) > 9:
        raise ProtocolError(f"timestamp {s!r}: more than 9 fractional digits")
    nanos = int(frac.ljust(9, "0")) if frac else 0
    offset_s = 0
    if not zulu:
        oh, om = int(off_h), int(off_m)
        if oh > 23 or om > 59:
            raise ProtocolError(f"timestamp {s!r}: offset out of range")
        offset_s = (oh * 3600 + om * 60) * (1 if sign == "+" else -1)
    seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second - offset_s
    return seconds * SECOND_NS + nanos


def format_rfc3339_ns(ns: int) -> str:
    """The UTC RFC 3339 string with 9 fractional digits that `parse_rfc3339_ns` maps back to `ns`."""
    secs, nanos = divmod(int(ns), SECOND_NS)
    days, sod = divmod(secs, 86400)
    y, mo, d = _civil_from_days(days)
    hh, rem = divmod(sod, 3600)
    mm, ss = divmod(rem, 60)
    return f"{y:04d}-{mo:02d}-{d:02d}T{hh:02d}:{mm:02d}:{ss:02d}.{nanos:09d}Z"


def go_time_string(ns: int, monotonic_s: float | None = None) -> str:
    """A heartbeat `current_time` the way Go prints a time.Time (what Coinbase sends), for emitters."""
    iso = format_rfc3339_ns(ns)
    text = f"{iso[:10]} {iso[11:29]} +0000 UTC"
    return text if monotonic_s is None else f"{text} m=+{monotonic_s:.9f}"
