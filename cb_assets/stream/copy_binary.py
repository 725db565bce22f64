"""raw_ticks rows of a batch as PostgreSQL binary COPY data, built by `db.binary_copy` from the columns.

psycopg's `write_row` formats every field of every row in Python (a third of the sink's writer time in a
profile); the compiled encoder writes the whole batch at once. Rows go in grouped by product and in time
order, so PostgreSQL's inserts into the (product_id, time) key land on neighbouring index pages.
"""

from __future__ import annotations

import numpy as np

from cb_assets.db import binary_copy
from cb_assets.series.schema import SERIES_COLUMNS
from cb_assets.stream.tick_columns import TickColumns

SIGNATURE = binary_copy.HEADER
TRAILER = b"\xff\xff"
# pg_writer.RAW_COLUMNS: product_id, time, the series values, best_bid, best_ask, source, partition, offset
RAW_TYPES = ("text", "timestamptz_us", *["float8"] * (len(SERIES_COLUMNS) + 2), "text", "int4", "int8")
_N_VALUES = len(SERIES_COLUMNS)


def copy_order(cols: TickColumns) -> np.ndarray:
    """The row order of the COPY: by product, then time (neighbouring index pages for the key's inserts)."""
    return np.lexsort((cols.time_us, cols.product))


def encode(cols: TickColumns) -> bytes:
    """The complete COPY ... FROM STDIN (FORMAT BINARY) data of the rows, signature and trailer included."""
    c = cols.take(copy_order(cols))
    return bytes(
        binary_copy.encode(
            RAW_TYPES,
            [
                binary_copy.Categorical(c.product, c.products),
                c.time_us,
                *(c.values[:, j] for j in range(_N_VALUES)),
                c.bid,
                c.ask,
                binary_copy.Categorical(c.source, c.sources),
                c.partition,
                c.offset,
            ],
        )
    )
