"""A batch of raw_ticks rows as columns: what the sink's batch path produces and the COPY encoder reads.

Columns rather than row tuples because the sink handles ~100,000 ticks/s: numpy fills the binary COPY
buffer for a whole batch (`stream.copy_binary`) and validates it with the array form of the tick rules, so no
Python object per field is built for a tick that is simply accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from cb_assets.series.schema import SERIES_COLUMNS
from cb_assets.stream.ticks import TickRow

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def datetime_to_us(t: datetime) -> int:
    """Microseconds since the Unix epoch; a naive datetime is taken as UTC."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return (t - EPOCH) // _US


def us_to_datetime(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=int(us))


@dataclass(frozen=True)
class TickColumns:
    """n raw_ticks rows. Text columns are indexes into small name tables (a batch has a dozen products and
    usually one source), which is also what lets the COPY encoder give each group of rows a fixed layout.

    `bid`/`ask` are NaN where absent (the convention of `tick_rules.violations`); a present NaN is refused by
    the tick rules before a row gets here. `message` is the row's index in the batch of Kafka messages it
    came from (-1 when it did not come from one), so a row PostgreSQL refuses can be dead-lettered with its
    original payload.
    """

    products: tuple[str, ...]
    product: np.ndarray  # int32 (n,) index into products
    time_us: np.ndarray  # int64 (n,) microseconds since the Unix epoch, floored
    values: np.ndarray  # float64 (n, len(SERIES_COLUMNS))
    bid: np.ndarray  # float64 (n,)
    ask: np.ndarray  # float64 (n,)
    sources: tuple[str, ...]
    source: np.ndarray  # int32 (n,) index into sources
    partition: np.ndarray  # int32 (n,)
    offset: np.ndarray  # int64 (n,)
    message: np.ndarray  # int64 (n,)

    def __len__(self) -> int:
        return int(self.time_us.shape[0])

    @classmethod
    def empty(cls) -> TickColumns:
        return cls.from_rows([])

    def take(self, idx: np.ndarray | Sequence[int]) -> TickColumns:
        i = np.asarray(idx, dtype=np.int64)
        return TickColumns(
            self.products,
            self.product[i],
            self.time_us[i],
            self.values[i],
            self.bid[i],
            self.ask[i],
            self.sources,
            self.source[i],
            self.partition[i],
            self.offset[i],
            self.message[i],
        )

    @classmethod
    def from_rows(cls, rows: Sequence[TickRow], messages: Sequence[int] | None = None) -> TickColumns:
        """From row tuples (`feed.seed`, the per-message fallback): slow per row, fine for those."""
        n = len(rows)
        products: dict[str, int] = {}
        sources: dict[str, int] = {}
        product = np.fromiter((products.setdefault(r[0], len(products)) for r in rows), np.int32, n)
        source = np.fromiter((sources.setdefault(r[11], len(sources)) for r in rows), np.int32, n)
        values = np.array([r[2:9] for r in rows], dtype=np.float64).reshape(n, len(SERIES_COLUMNS))
        return cls(
            tuple(products),
            product,
            np.fromiter((datetime_to_us(r[1]) for r in rows), np.int64, n),
            values,
            np.array([r[9] for r in rows], dtype=np.float64),  # None -> NaN
            np.array([r[10] for r in rows], dtype=np.float64),
            tuple(sources),
            source,
            np.fromiter((r[12] for r in rows), np.int32, n),
            np.fromiter((r[13] for r in rows), np.int64, n),
            np.full(n, -1, np.int64) if messages is None else np.asarray(messages, dtype=np.int64),
        )

    @classmethod
    def concat(cls, parts: Sequence[TickColumns]) -> TickColumns:
        """One batch of several; name tables are merged and the indexes remapped."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        products: dict[str, int] = {}
        sources: dict[str, int] = {}
        prod_idx, src_idx = [], []
        for p in parts:
            pmap = np.array([products.setdefault(name, len(products)) for name in p.products], np.int32)
            smap = np.array([sources.setdefault(name, len(sources)) for name in p.sources], np.int32)
            prod_idx.append(pmap[p.product] if len(pmap) else p.product)
            src_idx.append(smap[p.source] if len(smap) else p.source)
        return cls(
            tuple(products),
            np.concatenate(prod_idx),
            np.concatenate([p.time_us for p in parts]),
            np.concatenate([p.values for p in parts]),
            np.concatenate([p.bid for p in parts]),
            np.concatenate([p.ask for p in parts]),
            tuple(sources),
            np.concatenate(src_idx),
            np.concatenate([p.partition for p in parts]),
            np.concatenate([p.offset for p in parts]),
            np.concatenate([p.message for p in parts]),
        )

    def rows(self) -> list[TickRow]:
        """As row tuples (tests compare them with `parse_tick`; the isolation path words its reasons)."""
        out: list[TickRow] = []
        for i in range(len(self)):
            bid, ask = float(self.bid[i]), float(self.ask[i])
            out.append(
                (
                    self.products[self.product[i]],
                    us_to_datetime(int(self.time_us[i])),
                    *(float(v) for v in self.values[i]),
                    None if np.isnan(bid) else bid,
                    None if np.isnan(ask) else ask,
                    self.sources[self.source[i]],
                    int(self.partition[i]),
                    int(self.offset[i]),
                )  # type: ignore[arg-type]
            )
        return out
