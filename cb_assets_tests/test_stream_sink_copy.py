"""The sink's batch path against a real PostgreSQL and broker: the numpy-built binary COPY stores exactly
what it is given, the batch sink and the per-message (naive) sink store the same rows and the same
rejections for the same messages, duplicates inside a batch keep the first, and a row PostgreSQL refuses is
dead-lettered with its original bytes."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime

import orjson
import psycopg
import pytest

from cb_assets.db.connection import connect
from cb_assets.stream.pg_writer import TickWriter
from cb_assets.stream.sink import Sink, SinkConfig
from cb_assets.stream.tick_columns import TickColumns
from cb_assets.stream.ticks import TickRow
from cb_assets_tests.test_stream_sink import count, produce, run_sink_until
from cb_assets_tests.test_stream_tick_batch import PRODUCTS, mixed_batch, tick

ROW_SQL = (
    "SELECT product_id, time, price, volume_24_h, low_24_h, high_24_h, low_52_w, high_52_w,"
    " price_percent_chg_24_h, best_bid, best_ask, source, kafka_partition, kafka_offset FROM raw_ticks"
)
REJECTED_SQL = (
    "SELECT source, reason, payload, product_id, tick_time, kafka_topic, kafka_partition, kafka_offset"
    " FROM raw_ticks_rejected"
)


@pytest.fixture
def db(make_database: Callable[..., str]) -> str:
    return make_database()


def bits(row: tuple) -> tuple:
    """Floats compared bit for bit (-0.0 is not 0.0), bytes as bytes."""
    return tuple(
        v.hex() if isinstance(v, float) else bytes(v) if isinstance(v, memoryview) else v for v in row
    )


def stored(url: str, sql: str) -> list[tuple]:
    with connect(url) as conn:
        return sorted((bits(r) for r in conn.execute(sql).fetchall()), key=repr)


def clockless(rejected: list[tuple]) -> list[tuple]:
    """Reasons without "N s in the future": two runs a few seconds apart give different N."""
    return [(r[0], re.sub(r"is \d+ s in the future", "is N s in the future", r[1]), *r[2:]) for r in rejected]


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


EDGE_ROWS: list[TickRow] = [
    ("BTC-USD", at(2024, 3, 1, 12, 0, 0, 123456), 1.5, -0.0, 5e-324, 1.7976931348623157e308, 1.0, 2.0, -0.0, None, None, "live", 0, 0),
    ("ETH-USD", at(1, 1, 1), 2.0, 0.0, 1.0, 2.0, 3.0, 4.0, 1e-300, 1.25, None, "", 5, 2**62),
    ("ÉTH-€", at(9999, 12, 31, 23, 59, 59, 999999), 3.0, 1.0, 1.0, 2.0, 3.0, 4.0, 5.0, None, 7.5, "réplay", 1, 1),
    ("SOL-USD", at(1999, 12, 31, 23, 59, 59, 999999), 4.0, 1.0, 1.0, 2.0, 3.0, 4.0, -5.0, 0.5, 0.75, "live", 2, 3),
    ("BTC-USD", at(2000, 1, 1), 5.0, 1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 1.0, 2.0, "live", 0, 4),
]  # fmt: skip


def test_binary_copy_stores_exactly_the_rows_it_is_given(db: str) -> None:
    with connect(db) as conn:
        writer = TickWriter(conn)
        r = writer.write(TickColumns.from_rows(EDGE_ROWS))
        assert (r.staged, r.inserted) == (len(EDGE_ROWS), len(EDGE_ROWS))
        # Row tuples (feed.seed's way in) go through the same encoder; a repeat inserts nothing.
        again = writer.write(EDGE_ROWS)
        assert (again.staged, again.inserted, again.duplicates) == (len(EDGE_ROWS), 0, len(EDGE_ROWS))
    assert stored(db, ROW_SQL) == sorted((bits(r) for r in EDGE_ROWS), key=repr)


def test_duplicates_inside_a_batch_keep_the_first(db: str) -> None:
    first: TickRow = ("BTC-USD", at(2024, 3, 1), 1.0, 1.0, 1.0, 2.0, 3.0, 4.0, 5.0, None, None, "a", 0, 0)
    other_source = (*first[:11], "b", 0, 1)  # same (product, time), different layout group
    later = (first[0], at(2024, 3, 1, 0, 0, 1), *first[2:12], 0, 2)
    repeat = (*first[:2], 9.0, *first[3:12], 0, 3)
    with connect(db) as conn:
        writer = TickWriter(conn)
        r = writer.write([other_source, later, repeat])  # other_source is this batch's first
        assert (r.staged, r.inserted, r.duplicates) == (3, 2, 1)
        r = writer.write([first, later])  # redelivery-like: already stored
        assert (r.inserted, r.duplicates) == (0, 2)
    assert stored(db, ROW_SQL) == sorted([bits(other_source), bits(later)], key=repr)


def _sink_cfg(bootstrap: str, topic: str, url: str, **kw: object) -> SinkConfig:
    return SinkConfig(
        bootstrap=bootstrap, topic=topic, database_url=url, products=PRODUCTS, stats_interval_s=5, **kw
    )


def test_batch_sink_and_per_message_sink_store_the_same(
    kafka_bootstrap: str, topic_name: str, make_database: Callable[..., str]
) -> None:
    values = mixed_batch()
    # One partition: which of two messages with the same (product, time) is stored ("first wins") follows
    # the consumption order, and only one partition makes that order the same for both sinks.
    produce(kafka_bootstrap, topic_name, [(b"k%d" % (i % 7), v) for i, v in enumerate(values)], partitions=1)
    results = []
    for naive in (False, True):
        url = make_database()
        sink = Sink(_sink_cfg(kafka_bootstrap, topic_name, url, naive=naive, group_id=f"g-{naive}"))
        run_sink_until(sink, lambda s=sink: s.stats.consumed >= len(values))
        rows, rejected = stored(url, ROW_SQL), stored(url, REJECTED_SQL)
        # Every message is a row, a rejection, or a repeat of a stored (product, time): two in this batch,
        # "…00.1234567891Z" and "…00.123456999Z" (the same microsecond), "13:00:00+01:00" and "12:00:00Z".
        assert len(rows) + len(rejected) + sink.stats.duplicates == len(values)
        assert sink.stats.duplicates == 2
        assert sink.stats.inserted == len(rows) and sink.stats.rejected == len(rejected)
        results.append((rows, rejected))
    (rows, rejected), (naive_rows, naive_rejected) = results
    assert rows == naive_rows
    assert clockless(rejected) == clockless(naive_rejected)
    # The original bytes of every refused message are kept.
    assert {r[2] for r in rejected} <= {v or b"" for v in values}


@pytest.mark.parametrize("naive", [False, True], ids=["batch", "naive"])
def test_a_row_postgres_refuses_is_dead_lettered_with_its_original_bytes(
    kafka_bootstrap: str, topic_name: str, db: str, naive: bool
) -> None:
    with connect(
        db, autocommit=True
    ) as conn:  # a rule the tick rules do not know, so only PostgreSQL refuses
        conn.execute("ALTER TABLE raw_ticks ADD CONSTRAINT test_price_cap CHECK (price < 1000000)")
    good = [orjson.dumps(tick(i, product=PRODUCTS[i % 3])) for i in range(60)]
    refused = orjson.dumps(tick(1000, price="2000000", high_24_h="2000005", high_52_w="3000000"))
    produce(kafka_bootstrap, topic_name, [(b"k", v) for v in [*good[:30], refused, *good[30:]]], partitions=1)
    sink = Sink(_sink_cfg(kafka_bootstrap, topic_name, db, naive=naive))
    run_sink_until(sink, lambda: sink.stats.consumed >= 61 and sink.stats.batches >= 1)
    assert count(db) == 60
    with connect(db) as conn:
        (reason, payload, offset), *more = conn.execute(
            "SELECT reason, payload, kafka_offset FROM raw_ticks_rejected"
        ).fetchall()
    assert not more
    assert "database refused the row" in reason and "test_price_cap" in reason
    assert bytes(payload) == refused and offset == 30


def test_writer_refuses_nul_in_text_rather_than_dropping_it(db: str) -> None:
    # numpy's bytes fields would strip a trailing NUL when read back; the encoder must send it (PostgreSQL
    # refuses it, and the sink dead-letters the row) rather than store a different string.
    row: TickRow = ("BTC-USD", at(2024, 3, 1), 1.0, 1.0, 1.0, 2.0, 3.0, 4.0, 5.0, None, None, "x\x00", 0, 0)
    with connect(db) as conn, pytest.raises(psycopg.DataError):
        TickWriter(conn).write([row])
