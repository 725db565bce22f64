"""Reading hours of the time-keyed tables into pandas, and replacing an hour's slice atomically.

Every hourly partition reads and writes whole [start, end) time ranges of raw_ticks, filled_series and
indicators; the indexes in sql/ are designed around these reads and writes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import psycopg
from psycopg import sql

from cb_assets.series.fill import FILLED_COLUMNS, FilledHour
from cb_assets.series.indicators import FEATURE_NAMES

_BOOL_COLUMNS = frozenset({"observed", "causal", "warm"})
_TEXT_COLUMNS = frozenset({"product_id", "source"})
_TIME_COLUMNS = frozenset({"time", "received_at"})


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

    Read through `COPY ... TO STDOUT (FORMAT CSV)` and pandas' C parser: several times faster than fetching
    Python tuples for the ~43,000 wide rows of an hour. PostgreSQL prints float8 in the shortest form that
    reads back exactly, and `float_precision="round_trip"` parses it exactly, so values survive bit for bit.
    NULL comes back as NaN.
    """
    query = sql.SQL(
        "COPY (SELECT {cols} FROM {table} WHERE time >= {s} AND time < {e} {extra} ORDER BY product_id, time) "
        "TO STDOUT (FORMAT CSV)"
    ).format(
        cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
        table=sql.Identifier(table),
        s=sql.Literal(start),
        e=sql.Literal(end),
        extra=sql.SQL("AND product_id = ANY({})").format(sql.Literal(list(products)))
        if products is not None
        else sql.SQL(""),
    )
    buf = io.BytesIO()
    with conn.cursor() as cur:
        cur.execute("SET TimeZone = 'UTC'")  # timestamps print as +00, parsed uniformly below
        with cur.copy(query) as copy:
            for chunk in copy:
                buf.write(chunk)
    buf.seek(0)
    dtypes: dict[str, object] = {}
    for c in columns:
        if c in _TEXT_COLUMNS or c in _TIME_COLUMNS or c in _BOOL_COLUMNS:
            dtypes[c] = str
        else:
            dtypes[c] = np.float64
    if buf.getbuffer().nbytes == 0:
        frame = pd.DataFrame(
            {c: pd.Series(dtype=dtypes[c] if dtypes[c] is np.float64 else object) for c in columns}
        )
    else:
        frame = pd.read_csv(
            buf,
            header=None,
            names=list(columns),
            dtype=dtypes,
            float_precision="round_trip",
            keep_default_na=False,
            na_values={c: [""] for c in columns if dtypes[c] is np.float64},
        )
    for c in columns:
        if c in _TIME_COLUMNS:
            frame[c] = pd.to_datetime(frame[c], utc=True, format="ISO8601").astype(
                pd.DatetimeTZDtype(unit="ns", tz="UTC")
            )
        elif c in _BOOL_COLUMNS:
            frame[c] = frame[c].map({"t": True, "f": False}).astype(bool)
    return frame


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

    Readers see the old hour or the new one, never a mix. NaN is written as NULL. `types` maps each
    column (in COPY order) to its PostgreSQL type, as binary COPY needs.
    """
    columns = list(types)
    values = frame[columns].to_numpy(dtype=object)
    values[pd.isna(frame[columns]).to_numpy()] = None
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            sql.SQL("DELETE FROM {} WHERE time >= %s AND time < %s").format(sql.Identifier(table)),
            (start, end),
        )
        copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        with cur.copy(copy_sql) as copy:
            copy.set_types([types[c] for c in columns])
            for row in values:
                copy.write_row(row)
    return len(values)


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
