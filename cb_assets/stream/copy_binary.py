"""PostgreSQL's binary COPY format for raw_ticks rows, built by numpy for a whole batch.

psycopg's `write_row` formats every field of every row in Python (a third of the sink's writer time in a
profile); here a batch is split into groups whose rows share a byte layout (the same product and source
text, the same best_bid/best_ask presence: a dozen groups in a typical batch) and each group is one numpy
structured array with big-endian fields, so a 10,000-row buffer costs a few dozen numpy assignments.

Binary tuple format (https://www.postgresql.org/docs/current/sql-copy.html): int16 field count, then per
field an int32 byte length (-1 for NULL) and the value in network byte order; timestamptz is int64
microseconds since 2000-01-01 UTC.
"""

from __future__ import annotations

import numpy as np

from cb_assets.series.schema import SERIES_COLUMNS
from cb_assets.stream.tick_columns import TickColumns

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"  # + flags, extension
TRAILER = b"\xff\xff"
PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in Unix microseconds
N_FIELDS = 14  # pg_writer.RAW_COLUMNS
_N_VALUES = len(SERIES_COLUMNS)


def _layout(product: bytes, source: bytes, has_bid: bool, has_ask: bool) -> np.ndarray:
    """A one-row template of the group's layout with every constant (lengths, texts) already filled."""
    fields: list[tuple[str, str]] = [("nf", ">i2"), ("lp", ">i4")]
    if product:
        fields.append(("p", f"S{len(product)}"))
    fields += [("lt", ">i4"), ("t", ">i8")]
    for j in range(_N_VALUES):
        fields += [(f"l{j}", ">i4"), (f"v{j}", ">f8")]
    fields.append(("lb", ">i4"))
    if has_bid:
        fields.append(("b", ">f8"))
    fields.append(("la", ">i4"))
    if has_ask:
        fields.append(("a", ">f8"))
    fields.append(("ls", ">i4"))
    if source:
        fields.append(("s", f"S{len(source)}"))
    fields += [("lpa", ">i4"), ("pa", ">i4"), ("lo", ">i4"), ("o", ">i8")]
    tpl = np.zeros(1, dtype=np.dtype(fields))  # packed: no padding between fields, as COPY wants
    tpl["nf"] = N_FIELDS
    tpl["lp"] = len(product)
    if product:
        tpl["p"] = product
    tpl["lt"] = 8
    for j in range(_N_VALUES):
        tpl[f"l{j}"] = 8
    tpl["lb"] = 8 if has_bid else -1
    tpl["la"] = 8 if has_ask else -1
    tpl["ls"] = len(source)
    if source:
        tpl["s"] = source
    tpl["lpa"] = 4
    tpl["lo"] = 8
    return tpl


def copy_order(cols: TickColumns) -> tuple[np.ndarray, np.ndarray]:
    """(row order, group key per ordered row): grouped by layout, by time within a group.

    Time order within a product also makes PostgreSQL's inserts into the (product_id, time) key land on
    neighbouring index pages.
    """
    has_bid = ~np.isnan(cols.bid)
    has_ask = ~np.isnan(cols.ask)
    key = (
        (cols.product.astype(np.int64) * max(1, len(cols.sources)) + cols.source) * 2 + has_bid
    ) * 2 + has_ask
    order = np.lexsort((cols.time_us, key))
    return order, key[order]


def encode(cols: TickColumns) -> bytes:
    """The complete COPY ... FROM STDIN (FORMAT BINARY) data of the rows, signature and trailer included."""
    n = len(cols)
    if n == 0:
        return SIGNATURE + TRAILER
    order, keys = copy_order(cols)
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    ends = np.append(starts[1:], n)
    t_pg = cols.time_us[order] - PG_EPOCH_US
    values = cols.values[order]
    bid, ask = cols.bid[order], cols.ask[order]
    part, off = cols.partition[order], cols.offset[order]
    product, source = cols.product[order], cols.source[order]
    chunks = [SIGNATURE]
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        has_bid, has_ask = not np.isnan(bid[a]), not np.isnan(ask[a])
        tpl = _layout(cols.products[product[a]].encode(), cols.sources[source[a]].encode(), has_bid, has_ask)
        rec = np.repeat(tpl, b - a)
        rec["t"] = t_pg[a:b]
        for j in range(_N_VALUES):
            rec[f"v{j}"] = values[a:b, j]
        if has_bid:
            rec["b"] = bid[a:b]
        if has_ask:
            rec["a"] = ask[a:b]
        rec["pa"] = part[a:b]
        rec["o"] = off[a:b]
        chunks.append(rec.tobytes())
    chunks.append(TRAILER)
    return b"".join(chunks)
