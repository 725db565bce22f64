"""Reading hours of the time-keyed tables into pandas, and replacing an hour's slice atomically.

Every hourly partition reads and writes whole [start, end) time ranges of raw_ticks, filled_series and
indicators; the indexes in sql/ are designed around these reads and writes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import psycopg
from psycopg import sql
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg.pq import Format

from cb_assets.db import binary_copy
from cb_assets.series.fill import FILLED_COLUMNS, FilledHour
from cb_assets.series.indicators import FEATURE_NAMES

_BOOL_COLUMNS = frozenset({"observed", "causal", "warm"})
_TEXT_COLUMNS = frozenset({"product_id", "source"})
_TIME_COLUMNS = frozenset({"time", "received_at"})


def column_types(columns: Sequence[str]) -> list[str]:
    """PostgreSQL types of the time-keyed tables' columns (their families are named consistently)."""
    return [
        "bool" if c in _BOOL_COLUMNS else "text" if c in _TEXT_COLUMNS else "timestamptz" if c in _TIME_COLUMNS
        else "float8"
        for c in columns
    ]  # fmt: skip


def read_frame(
    conn: psycopg.Connection,
    table: str,
    columns: Sequence[str],
    start: datetime,
    end: datetime,
    *,
    products: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Rows of `table` with start <= time < end, ordered by product and time; times as UTC pandas timestamps.

    Floats arrive bit for bit, NULL as NaN. The wide derived tables are read one array per product and column
    (`array_agg`, decoded by numpy: a dozen rows instead of 86,400 per two hours, which the per-row COPY
    protocol spent most of its time on); anything else (the raw table's text columns) as binary COPY.
    """
    types = column_types(columns)
    where = sql.SQL("time >= {s} AND time < {e}{extra}").format(
        s=sql.Literal(start),
        e=sql.Literal(end),
        extra=sql.SQL(" AND product_id = ANY({})").format(sql.Literal(list(products)))
        if products is not None
        else sql.SQL(""),
    )
    if columns and columns[0] == "product_id" and "text" not in types[1:]:
        return _read_arrays(conn, table, columns, types, where)
    query = sql.SQL(
        "COPY (SELECT {cols} FROM {table} WHERE {where} ORDER BY product_id, time) TO STDOUT (FORMAT BINARY)"
    ).format(cols=sql.SQL(", ").join(map(sql.Identifier, columns)), table=sql.Identifier(table), where=where)
    chunks: list[bytes] = []
    with conn.cursor() as cur, cur.copy(query) as copy:
        while data := copy.read():
            chunks.append(bytes(data))
    values = binary_copy.decode(b"".join(chunks), types)
    frame = pd.DataFrame(dict(zip(columns, values, strict=True)))
    for c, t in zip(columns, types, strict=True):
        if t == "timestamptz":
            frame[c] = pd.to_datetime(frame[c]).dt.tz_localize("UTC")
    return frame


def _read_arrays(
    conn: psycopg.Connection, table: str, columns: Sequence[str], types: list[str], where: sql.Composable
) -> pd.DataFrame:
    aggs = []
    for c, t in zip(columns[1:], types[1:], strict=True):
        col = sql.Identifier(c)
        if t == "timestamptz":  # microseconds since the epoch, exactly (numeric arithmetic)
            expr = sql.SQL("(extract(epoch FROM {}) * 1000000)::int8").format(col)
        elif t == "float8":
            expr = sql.SQL("coalesce({}, 'NaN'::float8)").format(col)
        else:
            expr = col
        aggs.append(sql.SQL("array_agg({} ORDER BY time)").format(expr))
    query = sql.SQL(
        "SELECT product_id, {aggs} FROM {table} WHERE {where} GROUP BY product_id ORDER BY product_id"
    ).format(aggs=sql.SQL(", ").join(aggs), table=sql.Identifier(table), where=where)
    with conn.cursor(binary=True) as cur:
        for oid, loader in ((1022, _Float8Array), (1016, _Int8Array), (1000, _BoolArray)):
            cur.adapters.register_loader(oid, loader)
        rows = cur.execute(query).fetchall()
    data: dict[str, object] = {}
    counts = [len(r[1]) for r in rows] if rows and len(columns) > 1 else []
    data["product_id"] = (
        np.repeat(np.array([r[0] for r in rows], dtype=object), counts)
        if rows
        else np.array([], dtype=object)
    )
    for j, (c, t) in enumerate(zip(columns[1:], types[1:], strict=True), start=1):
        parts = [r[j] for r in rows]
        arr = (
            np.concatenate(parts)
            if parts
            else np.array([], dtype={"float8": np.float64, "bool": bool}.get(t, np.int64))
        )
        if t == "timestamptz":
            data[c] = pd.to_datetime(arr * 1000, utc=True).astype(pd.DatetimeTZDtype(unit="ns", tz="UTC"))
        else:
            data[c] = arr
    return pd.DataFrame(data, columns=list(columns))


class _NumpyArray(Loader):
    """A one-dimensional array in PostgreSQL's binary format, without NULLs, as a numpy array."""

    format = Format.BINARY
    element: str = ""

    def load(self, data: Buffer) -> np.ndarray:
        buf = memoryview(data)
        ndim, has_null = struct.unpack(">ii", buf[:8])
        if ndim == 0:
            return np.empty(0, dtype=self.element.lstrip(">"))
        if has_null:
            raise ValueError("array with NULL elements: the query must coalesce them")
        (n,) = struct.unpack(">i", buf[12:16])
        rec = np.frombuffer(buf, dtype=[("len", ">i4"), ("v", self.element)], count=n, offset=12 + 8 * ndim)
        return rec["v"].astype(self.element.lstrip(">").replace("?", "bool"))


class _Float8Array(_NumpyArray):
    element = ">f8"


class _Int8Array(_NumpyArray):
    element = ">i8"


class _BoolArray(_NumpyArray):
    element = "?"


def has_rows(conn: psycopg.Connection, table: str, start: datetime, end: datetime) -> bool:
    """Whether `table` holds any row with start <= time < end (an index probe)."""
    query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE time >= %s AND time < %s)").format(
        sql.Identifier(table)
    )
    return bool(conn.execute(query, (start, end)).fetchone()[0])


def replace_slice(
    conn: psycopg.Connection,
    table: str,
    start: datetime,
    end: datetime,
    frame: pd.DataFrame,
    types: dict[str, str],
) -> int:
    """Replace every row of `table` with start <= time < end by `frame`, in one transaction.

    Readers see the old hour or the new one, never a mix. NaN is written as NULL. `types` maps each column (in
    COPY order) to its PostgreSQL type; the rows go in as one binary COPY buffer built from the columns.
    """
    columns = list(types)
    values = [
        pd.DatetimeIndex(frame[c]).as_unit("ns").asi8 if types[c] == "timestamptz" else frame[c].to_numpy()
        for c in columns
    ]
    data = binary_copy.encode([types[c] for c in columns], values)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            sql.SQL("DELETE FROM {} WHERE time >= %s AND time < %s").format(sql.Identifier(table)),
            (start, end),
        )
        copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        with cur.copy(copy_sql) as copy:
            copy.write(data)
    return len(frame)


def replace_hour_rows(
    conn: psycopg.Connection,
    table: str,
    hour_column: str,
    hours: Sequence[datetime],
    rows: Sequence[tuple],
    columns: Sequence[str],
) -> None:
    """Small per-hour bookkeeping tables (e.g. kalman_params): delete those hours, insert the rows."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            sql.SQL("DELETE FROM {} WHERE {} = ANY(%s)").format(
                sql.Identifier(table), sql.Identifier(hour_column)
            ),
            (list(hours),),
        )
        if rows:
            cur.executemany(
                sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                    sql.Identifier(table),
                    sql.SQL(", ").join(map(sql.Identifier, columns)),
                    sql.SQL(", ").join([sql.Placeholder()] * len(columns)),
                ),
                rows,
            )


FILLED_TYPES: dict[str, str] = {
    "product_id": "text",
    "time": "timestamptz",
    "observed": "bool",
    "causal": "bool",
    **dict.fromkeys(FILLED_COLUMNS, "float8"),
}
INDICATOR_TYPES: dict[str, str] = {
    "product_id": "text",
    "time": "timestamptz",
    "warm": "bool",
    **dict.fromkeys(FEATURE_NAMES, "float8"),
}
_KALMAN_PARAMS = ("hour", "product_id", "field", "q", "r", "em_iterations", "converged", "fitted_on")


def write_filled_hour(
    conn: psycopg.Connection, hour: datetime, frame: pd.DataFrame, filled: Sequence[FilledHour]
) -> None:
    """Replace the hour's filled_series rows and the Kalman parameters it was filtered with."""
    end = hour + timedelta(hours=1)
    replace_slice(conn, "filled_series", hour, end, frame, FILLED_TYPES)
    rows = [
        (hour, fh.product_id, p.field, p.q, p.r, p.em_iterations, p.converged, p.fitted_on)
        for fh in filled
        for p in fh.params
    ]
    replace_hour_rows(conn, "kalman_params", "hour", [hour], rows, _KALMAN_PARAMS)


def write_indicators_hour(conn: psycopg.Connection, hour: datetime, frame: pd.DataFrame) -> None:
    replace_slice(conn, "indicators", hour, hour + timedelta(hours=1), frame, INDICATOR_TYPES)


def filled_hours_count(conn: psycopg.Connection) -> int:
    """How many hours have been filled (one kalman_params set per hour)."""
    return int(conn.execute("SELECT count(DISTINCT hour) FROM kalman_params").fetchone()[0])


def newest_anchor_warm_for_all(conn: psycopg.Connection, n_products: int) -> datetime | None:
    """The newest second at which all `n_products` products have warm indicators."""
    row = conn.execute(
        "SELECT time FROM indicators WHERE warm GROUP BY time HAVING count(*) = %s ORDER BY time DESC LIMIT 1",
        (n_products,),
    ).fetchone()
    return row[0] if row else None


def delete_before(conn: psycopg.Connection, table: str, cutoff: datetime) -> int:
    """Delete the rows of a time-keyed table older than `cutoff`, an hour per transaction (short locks, and a
    stop half-way leaves whole hours)."""
    deleted = 0
    oldest = conn.execute(sql.SQL("SELECT min(time) FROM {}").format(sql.Identifier(table))).fetchone()[0]
    if oldest is None:
        return 0
    hour = oldest.replace(minute=0, second=0, microsecond=0)
    while hour < cutoff:
        end = min(hour + timedelta(hours=1), cutoff)
        with conn.transaction():
            cur = conn.execute(
                sql.SQL("DELETE FROM {} WHERE time >= %s AND time < %s").format(sql.Identifier(table)),
                (hour, end),
            )
            deleted += cur.rowcount
        hour = end
    return deleted
