"""PostgreSQL's binary COPY format to and from numpy columns, without a Python call per row or value.

Moving an hour of the wide derived tables (43,200 rows of 32 or 46 columns) was the backfill's main cost: one
`write_row` per row and a CSV parse per read. Here a whole slice is one buffer: writing builds it with
vectorised numpy (every cell's offset from a cumulative sum of cell sizes), reading walks the row and field
headers once with a compiled loop and then gathers each column with fancy indexing.

Types: `float8` (NaN <-> NULL), `bool`, `timestamptz` (int64 ns since the epoch; PostgreSQL keeps microseconds),
`text` (UTF-8; few distinct values per column, as product ids). Format: PGCOPY header, then per row an int16
field count and per field an int32 length (-1 = NULL) and the bytes, all big-endian; int16 -1 ends the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numba
import numpy as np

HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
# PostgreSQL's epoch is 2000-01-01 UTC; timestamps are int64 microseconds since then.
_PG_EPOCH_US = 946_684_800_000_000


_KIND = {"float8": 0, "bool": 1, "timestamptz": 2, "timestamptz_us": 2, "text": 3, "int4": 4, "int8": 5}


class Categorical(NamedTuple):
    """A text column as codes into a small table of labels (what a batch of ticks has: a dozen products)."""

    codes: np.ndarray
    labels: Sequence[str]


@numba.njit(cache=True)
def _write_be(buf: np.ndarray, pos: int, value: np.int64, width: int) -> None:  # pragma: no cover - compiled
    for b in range(width):
        buf[pos + b] = (value >> (8 * (width - 1 - b))) & 0xFF


@numba.njit(cache=True)
def _encode(
    kinds: np.ndarray,
    float_bits: np.ndarray,
    ints: np.ndarray,
    text_bytes: np.ndarray,
    text_lengths: np.ndarray,
    sizes: np.ndarray,
    total: int,
    header: np.ndarray,
) -> np.ndarray:  # pragma: no cover - compiled
    """The whole buffer, row by row: `float_bits` (float64 bits as int64) and `ints` hold each column's
    values (one of them per kind), text
    columns index `text_bytes` rows (their distinct encoded values) through `ints`."""
    n, k = sizes.shape
    buf = np.empty(total, dtype=np.uint8)
    buf[: header.shape[0]] = header
    pos = header.shape[0]
    for i in range(n):
        _write_be(buf, pos, np.int64(k), 2)
        pos += 2
        for j in range(k):
            size = sizes[i, j]
            _write_be(buf, pos, np.int64(size) & 0xFFFFFFFF, 4)
            pos += 4
            if size < 0:
                continue
            kind = kinds[j]
            if kind == 0:
                _write_be(buf, pos, float_bits[i, j], 8)
            elif kind == 1:
                buf[pos] = 1 if ints[i, j] else 0
            elif kind == 2 or kind == 5:
                _write_be(buf, pos, ints[i, j], 8)
            elif kind == 4:
                _write_be(buf, pos, ints[i, j], 4)
            else:
                code = ints[i, j]
                for b in range(text_lengths[code]):
                    buf[pos + b] = text_bytes[code, b]
            pos += size
    buf[pos] = 0xFF
    buf[pos + 1] = 0xFF
    return buf


def encode(types: Sequence[str], columns: Sequence[np.ndarray | Categorical]) -> memoryview:
    """The binary COPY data (header to trailer) of rows given column by column, as a buffer.

    Types: float8 (NaN is written as NULL), bool, int4, int8, timestamptz (int64 ns since the epoch, or
    datetime64), timestamptz_us (int64 microseconds since the epoch), text (an array of str, or a `Categorical`; meant for few distinct values, as product ids).
    """
    n = len(columns[0].codes if isinstance(columns[0], Categorical) else columns[0]) if columns else 0
    k = len(types)
    kinds = np.array([_KIND[t] for t in types], dtype=np.int64)
    # Column-major: each column is filled with one contiguous write.
    floats = np.zeros((n, k), dtype=np.float64, order="F")
    ints = np.zeros((n, k), dtype=np.int64, order="F")
    sizes = np.empty((n, k), dtype=np.int64, order="F")
    labels: list[bytes] = []  # every text column's distinct values, one table (codes offset per column)
    for j, (t, col) in enumerate(zip(types, columns, strict=True)):
        if t == "float8":
            v = np.asarray(col, dtype=np.float64)
            floats[:, j] = v
            sizes[:, j] = np.where(np.isnan(v), -1, 8)
        elif t == "bool":
            ints[:, j] = np.asarray(col, dtype=bool)
            sizes[:, j] = 1
        elif t in ("int4", "int8"):
            ints[:, j] = np.asarray(col, dtype=np.int64)
            sizes[:, j] = 4 if t == "int4" else 8
        elif t == "timestamptz":
            arr = np.asarray(col)
            ns = (
                arr.astype(np.int64)
                if arr.dtype.kind in "iu"
                else arr.astype("datetime64[ns]").astype(np.int64)
            )
            ints[:, j] = ns // 1000 - _PG_EPOCH_US
            sizes[:, j] = 8
        elif t == "timestamptz_us":  # microseconds: the full range of timestamptz, beyond int64 nanoseconds
            ints[:, j] = np.asarray(col, dtype=np.int64) - _PG_EPOCH_US
            sizes[:, j] = 8
        elif t == "text":
            if isinstance(col, Categorical):
                codes, table = np.asarray(col.codes, dtype=np.int64), [str(x) for x in col.labels]
            else:
                table_arr, codes = np.unique(np.asarray(col, dtype=object).astype(str), return_inverse=True)
                table, codes = [str(x) for x in table_arr], codes.ravel()
            encoded = [x.encode() for x in table]
            ints[:, j] = codes + len(labels)
            sizes[:, j] = np.array([len(e) for e in encoded], dtype=np.int64)[codes] if len(codes) else 0
            labels += encoded
        else:
            raise ValueError(f"binary COPY of type {t} is not supported here")
    text_lengths = np.array([len(e) for e in labels] or [0], dtype=np.int64)
    text_bytes = np.zeros((max(1, len(labels)), max(1, int(text_lengths.max()))), dtype=np.uint8)
    for u, e in enumerate(labels):
        text_bytes[u, : len(e)] = np.frombuffer(e, dtype=np.uint8)
    total = len(HEADER) + int((2 + (4 + np.maximum(sizes, 0)).sum(axis=1)).sum()) + 2
    header = np.frombuffer(HEADER, dtype=np.uint8)
    return memoryview(
        _encode(kinds, floats.view(np.int64), ints, text_bytes, text_lengths, sizes, total, header)
    )


@numba.njit(cache=True)
def _fields(buf: np.ndarray, n_cols: int) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """Offsets and lengths (-1: NULL) of every field, walking the row and field headers once."""
    pos = 19
    n_rows = 0
    while True:  # first pass: count rows
        count = (np.int32(buf[pos]) << 8) | np.int32(buf[pos + 1])
        if count == 0xFFFF:
            break
        pos += 2
        for _ in range(n_cols):
            length = (
                (np.int64(buf[pos]) << 24) | (np.int64(buf[pos + 1]) << 16) | (np.int64(buf[pos + 2]) << 8)
            ) | np.int64(buf[pos + 3])
            pos += 4
            if length != 0xFFFFFFFF:
                pos += length
        n_rows += 1
    offsets = np.empty((n_rows, n_cols), dtype=np.int64)
    lengths = np.empty((n_rows, n_cols), dtype=np.int64)
    pos = 19
    for r in range(n_rows):
        pos += 2
        for j in range(n_cols):
            length = (
                (np.int64(buf[pos]) << 24) | (np.int64(buf[pos + 1]) << 16) | (np.int64(buf[pos + 2]) << 8)
            ) | np.int64(buf[pos + 3])
            pos += 4
            offsets[r, j] = pos
            if length == 0xFFFFFFFF:
                lengths[r, j] = -1
            else:
                lengths[r, j] = length
                pos += length
    return offsets, lengths


def _gather(buf: np.ndarray, offsets: np.ndarray, width: int) -> np.ndarray:
    return buf[offsets[:, None] + np.arange(width)]


def decode(data: bytes, types: Sequence[str]) -> list[np.ndarray]:
    """Columns (float64 with NaN for NULL, bool, datetime64[ns] UTC values, object str) from binary COPY data."""
    buf = np.frombuffer(data, dtype=np.uint8)
    if len(data) < len(HEADER) + 2 or data[:11] != HEADER[:11]:
        raise ValueError("not PostgreSQL binary COPY data")
    offsets, lengths = _fields(buf, len(types))
    out: list[np.ndarray] = []
    for j, t in enumerate(types):
        off, ln = offsets[:, j], lengths[:, j]
        null = ln < 0
        safe = np.where(null, 0, off)  # NULL cells have no bytes: read the first byte harmlessly, then mask
        if t == "float8":
            v = _gather(buf, np.where(null, 0, off), 8).copy().view(">f8").ravel().astype(np.float64)
            v[null] = np.nan
            out.append(v)
        elif t == "bool":
            out.append(buf[safe].astype(bool))
        elif t == "timestamptz":
            us = _gather(buf, safe, 8).copy().view(">i8").ravel().astype(np.int64)
            out.append(((us + _PG_EPOCH_US) * 1000).astype("datetime64[ns]"))
        elif t == "text":
            width = int(max(ln.max(initial=0), 1))
            raw = _gather(np.concatenate([buf, np.zeros(width, np.uint8)]), safe, width)
            raw[np.arange(width)[None, :] >= np.maximum(ln, 0)[:, None]] = 0
            fixed = raw.copy().view(f"S{width}").ravel()
            uniques, inverse = np.unique(fixed, return_inverse=True)
            decoded = np.array([u.decode() for u in uniques], dtype=object)
            col = decoded[inverse.ravel()]
            col[null] = None
            out.append(col)
        else:
            raise ValueError(f"binary COPY of type {t} is not supported here")
    return out
