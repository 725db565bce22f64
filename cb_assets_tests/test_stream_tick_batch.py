"""The sink's batch path agrees with the per-message path (`parse_tick`), row for row and rejection for
rejection, on mixed batches: good ticks, every kind of bad one, and the edge cases the fast path must either
get exactly right or hand to `parse_tick` (no services needed)."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson

from cb_assets.series import tick_rules
from cb_assets.stream import copy_binary
from cb_assets.stream.tick_batch import clean_text, decode_batch, parse_times_us
from cb_assets.stream.tick_columns import TickColumns, datetime_to_us
from cb_assets.stream.ticks import Rejection, TickRow, parse_tick
from cb_assets_tests.ticks_support import ticker_message

PRODUCTS = ("BTC-USD", "ETH-USD", "SOL-USD", "ÉTH-€")
NOW = datetime(2024, 3, 2, 0, 0, tzinfo=UTC)
BASE = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def tick(i: int, product: str = "BTC-USD", **overrides: object) -> dict:
    return ticker_message(product, BASE + timedelta(seconds=i), i, **overrides)


def without(d: dict, *keys: str) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


def literal(i: int, field: str, json_text: bytes) -> bytes:
    """A tick whose `field` is the JSON text given (orjson will not write integers beyond 64 bits)."""
    return orjson.dumps(tick(i, **{field: "@@"})).replace(b'"@@"', json_text)


def mixed_batch() -> list[bytes | None]:
    """Good ticks interleaved with every kind of bad message and the edge cases of the batch path."""
    edge: list[bytes | None] = [
        # -- accepted, decided by the batch path or handed to parse_tick --
        orjson.dumps(tick(1, time="2024-03-01T12:00:00.123456999Z")),  # nanoseconds: floored
        orjson.dumps(tick(2, time="2024-03-01T12:00:00Z")),  # no fraction
        orjson.dumps(tick(3, time="2024-03-01T12:00:00.5Z")),  # short fraction
        orjson.dumps(tick(4, time="2024-03-01T12:00:00.1234567891Z")),  # 10 digits (fromisoformat takes it)
        orjson.dumps(tick(5, time="2024-03-01T13:00:00+01:00")),  # offset: parse_tick's
        orjson.dumps(tick(6, time="2024-03-01 12:00:06Z")),  # space separator: parse_tick's
        orjson.dumps(tick(7, time="2024-02-29T12:00:00Z")),  # leap day
        orjson.dumps(tick(8, time="0001-01-01T00:00:00Z")),  # earliest datetime
        orjson.dumps(tick(9, volume_24_h="-0")),  # -0: float() keeps the sign, msgspec would not
        orjson.dumps(tick(10, volume_24_h="0")),
        orjson.dumps(tick(11, price_percent_chg_24_h="-0.0")),
        orjson.dumps(tick(12, price="1e2", low_24_h="9.5E1", high_24_h="1.05e+2")),  # exponents
        orjson.dumps(tick(13, price=101.25, volume_24_h=7, low_52_w=10.0)),  # JSON numbers
        orjson.dumps(tick(14, price_percent_chg_24_h=-0.0, volume_24_h=-0)),  # JSON -0.0 and -0
        literal(15, "volume_24_h", b"123456789012345678901234567890"),  # integer beyond 64 bits
        literal(15, "sequence_num", b"1" + b"0" * 400),  # orjson: out of range, so invalid JSON
        orjson.dumps(tick(16, price="9007199254740993", high_24_h="9007199254740999")),  # rounding
        orjson.dumps(tick(17, best_bid="100.1", best_ask="100.2")),  # book present
        orjson.dumps(tick(18, best_bid="100.1")),  # one side
        orjson.dumps(without(tick(19), "best_bid", "best_ask")),  # absent
        orjson.dumps(tick(20, best_bid="", best_ask="")),  # empty = absent
        orjson.dumps(tick(21, best_bid=100.5, best_ask=None)),
        orjson.dumps(tick(22, source="")),  # -> default source
        orjson.dumps(without(tick(23), "source")),
        orjson.dumps(tick(24, source="a\x00b")),  # NUL: cleaned for PostgreSQL
        orjson.dumps(tick(25, source=5)),  # not a string -> default source
        orjson.dumps(tick(26, extra="field")),  # unknown field: parse_tick's
        b'{"product_id":"BTC-USD","price":"1","price":"101","volume_24_h":"1","low_24_h":"90",'
        b'"high_24_h":"110","low_52_w":"10","high_52_w":"1000","price_percent_chg_24_h":"0.5",'
        b'"time":"2024-03-01T12:00:27Z"}',  # duplicate key: the last one wins in both
        orjson.dumps(tick(28, product="ÉTH-€")),  # non-ASCII product
        orjson.dumps(tick(29, price="1e-320", low_24_h="1e-321", high_24_h="1e-300")),  # subnormals
        orjson.dumps(tick(30, sequence_num="x", connection_id=None)),
        orjson.dumps(tick(31, time=(NOW + timedelta(minutes=9)).isoformat().replace("+00:00", "Z"))),
        # -- rejected --
        b"{not json",
        b"[1, 2]",
        b"",
        None,
        b"\xef\xbb\xbf" + orjson.dumps(tick(40)),  # BOM
        b'{"product_id": "BTC-USD", "s": "\xff"}',  # invalid UTF-8
        orjson.dumps(without(tick(41), "price")),
        orjson.dumps(tick(42, price=None)),
        orjson.dumps(tick(43, price="abc")),
        orjson.dumps(tick(44, price=True)),
        orjson.dumps(tick(45, price=" 1.5")),  # float() accepts it, msgspec does not: parse_tick's
        orjson.dumps(tick(46, price="1_000")),
        orjson.dumps(tick(47, price="-3")),
        orjson.dumps(tick(48, price="0")),
        orjson.dumps(tick(49, price="-0")),
        orjson.dumps(tick(50, low_24_h="900", high_24_h="800")),
        orjson.dumps(tick(51, low_52_w="2000")),
        orjson.dumps(tick(52, volume_24_h="-1")),
        orjson.dumps(tick(53, low_24_h="-5")),
        orjson.dumps(tick(54, price="NaN")),
        orjson.dumps(tick(55, high_52_w="inf", price_percent_chg_24_h="-Infinity")),
        orjson.dumps(tick(56, price="1e400")),  # float() says inf
        orjson.dumps(tick(57, best_bid="NaN")),  # present NaN is not absent
        orjson.dumps(tick(58, best_ask="0")),
        orjson.dumps(tick(59, best_bid="-1", best_ask="abc")),
        orjson.dumps(tick(60, time="yesterday")),
        orjson.dumps(tick(61, time="2024-03-01T12:00:00")),  # no zone
        orjson.dumps(tick(62, time="2023-02-29T12:00:00Z")),  # no such day
        orjson.dumps(tick(63, time="2024-03-01T24:00:00Z")),
        orjson.dumps(tick(64, time=1709294400)),
        orjson.dumps(tick(65, time="0000-01-01T00:00:00Z")),
        orjson.dumps(tick(66, time="2030-01-01T00:00:00Z")),  # in the future
        orjson.dumps(tick(67, time=(NOW + timedelta(minutes=11)).isoformat().replace("+00:00", "Z"))),
        orjson.dumps(tick(68, product="FOO-USD")),  # unknown product
        orjson.dumps(tick(69, product="BTC-USD\x00")),
        orjson.dumps(tick(70, product=7)),
        b'{"product_id": "BTC-USD", "price": "1", "sequence_num": 1e400}',  # orjson: invalid JSON
        orjson.dumps(tick(71))[:-1] + b', "n": 1e400}',  # a valid tick but for an out-of-range number
        orjson.dumps(tick(72, nested={"a": [1, 2, {"b": None}]})),  # accepted by parse_tick only
    ]
    good = [orjson.dumps(tick(100 + i, product=PRODUCTS[i % 3])) for i in range(300)]
    return good[:150] + edge + good[150:]


def exact(row: TickRow) -> tuple:
    """A row with floats compared bit for bit (-0.0 is not 0.0 here) and the source as the sink stores it."""
    out = [v.hex() if isinstance(v, float) else v for v in row]
    out[11] = clean_text(row[11])
    return tuple(out)


def per_message(values: list[bytes | None]) -> list[TickRow | Rejection]:
    return [
        parse_tick(v, products=PRODUCTS, partition=i % 3, offset=1000 + i, now=NOW)
        for i, v in enumerate(values)
    ]


def batch_results(values: list[bytes | None]) -> list[TickRow | Rejection | None]:
    parts = [i % 3 for i in range(len(values))]
    offs = [1000 + i for i in range(len(values))]
    decoded = decode_batch(values, parts, offs, products=PRODUCTS, now=NOW)
    out: list[TickRow | Rejection | None] = [None] * len(values)
    for msg, row in zip(decoded.ticks.message.tolist(), decoded.ticks.rows(), strict=True):
        assert out[msg] is None, f"message {msg} has two outcomes"
        out[msg] = row
    for msg, rej in decoded.rejections:
        assert out[msg] is None, f"message {msg} has two outcomes"
        out[msg] = rej
    return out


def assert_agree(values: list[bytes | None]) -> None:
    expected = per_message(values)
    got = batch_results(values)
    for i, (e, g) in enumerate(zip(expected, got, strict=True)):
        assert g is not None, f"message {i} ({values[i]!r}) has no outcome"
        if isinstance(e, Rejection):
            assert isinstance(g, Rejection), (i, values[i], e, g)
            assert (g.reason, g.product_id, g.tick_time) == (e.reason, e.product_id, e.tick_time), (
                i,
                values[i],
            )
        else:
            assert not isinstance(g, Rejection), (i, values[i], e, g)
            assert exact(g) == exact(e), (i, values[i])


def test_batch_path_agrees_with_parse_tick_on_a_mixed_batch() -> None:
    values = mixed_batch()
    assert_agree(values)
    decoded = decode_batch(values, [0] * len(values), list(range(len(values))), products=PRODUCTS, now=NOW)
    # The good ticks were decided by the batch path, not handed to parse_tick.
    assert decoded.fallback < 80
    assert len(decoded.ticks) + len(decoded.rejections) == len(values)


def test_reasons_stay_recognisable() -> None:
    values = mixed_batch()
    reasons = " | ".join(r.reason for r in batch_results(values) if isinstance(r, Rejection))
    for text in (
        "invalid JSON",
        "not an object",
        "empty message",
        "missing fields: price",
        "price is not a number",
        "price must be > 0",
        "low_24_h 900 > high_24_h 800",
        "unparseable time",
        "unknown product",
        "not finite",
        "in the future",
        "best_bid must be > 0 when present, got nan",
    ):
        assert text in reasons, text


def test_batch_path_agrees_on_random_numbers_and_times() -> None:
    rng = random.Random(16)
    alphabet = "0123456789.eE+-_ infatyINFATYx"

    def number() -> object:
        r = rng.random()
        if r < 0.35:
            return repr(rng.uniform(0.5, 2) * 10 ** rng.randint(-12, 12))
        if r < 0.55:
            return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 10)))
        if r < 0.7:
            return rng.choice(["-0", "0", "-0.0", "0e0", "-0e-3", "1e308", "1.8e308", "5e-324", "1e-400"])
        if r < 0.85:
            return rng.uniform(-10, 1e6)
        return rng.randint(-(10**6), 10**6)

    def time_text() -> object:
        t = BASE + timedelta(seconds=rng.uniform(-1e9, 1e5))
        s = t.strftime("%Y-%m-%dT%H:%M:%S") + rng.choice(["", ".", ".1", ".123456", ".123456789"]) + "Z"
        if rng.random() < 0.2:
            j = rng.randrange(len(s))
            s = s[:j] + rng.choice("09T:-.Zz +٣") + s[j + 1 :]
        return s

    values: list[bytes | None] = []
    for i in range(3000):
        fields = {c: number() for c in ("price", "volume_24_h", "low_24_h", "high_24_h")} if i % 2 else {}
        if rng.random() < 0.3:
            fields["best_bid"] = rng.choice([None, "", number()])
        values.append(orjson.dumps(tick(i, product=rng.choice(PRODUCTS), time=time_text(), **fields)))
    assert_agree(values)


def test_parse_times_us_is_fromisoformat_on_what_it_accepts() -> None:
    rng = random.Random(3)
    cases = []
    for _ in range(5000):
        t = BASE + timedelta(seconds=rng.uniform(-6e10, 2e11))
        s = (
            t.strftime("%Y-%m-%dT%H:%M:%S")
            + rng.choice(["", ".7", ".123456", ".1234567", ".987654321"])
            + "Z"
        )
        if rng.random() < 0.3:
            j = rng.randrange(len(s))
            s = s[:j] + rng.choice("0129-T:.Zz x٣") + s[j + 1 :]
        cases.append(s)
    cases += ["2023-02-29T00:00:00Z", "2000-02-29T00:00:00Z", "2100-02-29T00:00:00Z", "9999-12-31T23:59:59Z"]
    us, ok = parse_times_us(cases)
    assert ok.sum() > 3000
    for s, u, k in zip(cases, us.tolist(), ok.tolist(), strict=True):
        if k:
            assert u == datetime_to_us(datetime.fromisoformat(s)), s


def test_array_rules_flag_exactly_what_the_scalar_rule_refuses() -> None:
    # The batch path asks the scalar rule for a reason only where the array form flags a row.
    rng = np.random.default_rng(5)
    specials = np.array([0.0, -0.0, -1.0, 1.0, 50.0, 1e-300, np.nan, np.inf, -np.inf])
    values = rng.choice(specials, size=(4000, 7), p=[0.04, 0.04, 0.04, 0.3, 0.3, 0.04, 0.08, 0.08, 0.08])
    bid = rng.choice(np.array([np.nan, 1.0, -1.0, 0.0, np.inf]), size=4000)  # NaN: absent
    broken = tick_rules.any_broken(tick_rules.violations(values, bid, None))
    assert 0 < broken.sum() < 4000
    for i in range(4000):
        b = None if np.isnan(bid[i]) else float(bid[i])
        assert (tick_rules.problem(tuple(values[i].tolist()), b) is not None) == bool(broken[i]), i


def test_copy_buffer_layout_of_one_row() -> None:
    t = datetime(2000, 1, 1, 0, 0, 1, tzinfo=UTC)
    row: TickRow = ("BTC-USD", t, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -0.0, None, 7.5, "src", 3, 9)
    buf = copy_binary.encode(TickColumns.from_rows([row]))
    assert buf.startswith(copy_binary.SIGNATURE) and buf.endswith(copy_binary.TRAILER)
    body = buf[len(copy_binary.SIGNATURE) : -len(copy_binary.TRAILER)]
    expected = (
        (14).to_bytes(2, "big")
        + (7).to_bytes(4, "big")
        + b"BTC-USD"
        + (8).to_bytes(4, "big")
        + (1_000_000).to_bytes(8, "big")
        + b"".join((8).to_bytes(4, "big") + np.float64(v).byteswap().tobytes() for v in row[2:9])
        + (-1).to_bytes(4, "big", signed=True)
        + (8).to_bytes(4, "big")
        + np.float64(7.5).byteswap().tobytes()
        + (3).to_bytes(4, "big")
        + b"src"
        + (4).to_bytes(4, "big")
        + (3).to_bytes(4, "big")
        + (8).to_bytes(4, "big")
        + (9).to_bytes(8, "big")
    )
    assert body == expected
    assert math.copysign(1.0, np.frombuffer(body[2 + 4 + 7 + 12 + 6 * 12 + 4 :][:8], ">f8")[0]) == -1.0
