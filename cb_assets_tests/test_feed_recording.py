"""ticker_batch recordings built from trade files: a small exact case and the real QuestDB hour."""

from __future__ import annotations

import asyncio
import itertools
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest

from cb_assets.feed.protocol import TickerBatchFrame, parse_frame
from cb_assets.feed.recording import from_trades, iter_lines
from cb_assets.feed.replay import ReplaySource
from cb_assets.feed.timestamps import parse_rfc3339_ns

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TRADES = DATA / "questdb_sample-datasets" / "btc_trades.csv.gz"


def _frames(path: Path) -> list[TickerBatchFrame]:
    frames = [parse_frame(line) for line in iter_lines(path)]
    assert all(isinstance(f, TickerBatchFrame) and not f.rejected for f in frames)
    return frames  # type: ignore[return-value]


def test_small_trades_file_exact(tmp_path: Path) -> None:
    csv_path = tmp_path / "trades.csv"
    csv_path.write_text(
        '"symbol","side","price","amount","timestamp"\n'
        '"BTC-USD","sell",100.5,0.5,"2023-09-05T16:00:01.281719Z"\n'
        '"ETH-USD","buy",9.0,1,"2023-09-05T16:00:02.000000Z"\n'
        '"BTC-USD","buy",101.25,3.844E-5,"2023-09-05T16:00:05.000000Z"\n'
        '"BTC-USD","buy",oops,1,"2023-09-05T16:00:06.000000Z"\n'
        '"BTC-USD","sell",99.75,1.5,"2023-09-05T16:00:14.999999Z"\n'
    )
    out = tmp_path / "out.jsonl"
    assert from_trades(csv_path, out, product_id="BTC-USD") == 2
    first, second = _frames(out)
    # 16:00:05 exactly belongs to the bucket that ends at 16:00:05 (right-closed).
    assert first.time_ns == parse_rfc3339_ns("2023-09-05T16:00:05Z")
    assert first.tickers[0].event_type == "snapshot"
    t = first.tickers[0]
    assert (t.price, t.low_24_h, t.high_24_h) == ("101.25", "100.5", "101.25")
    assert Decimal(t.volume_24_h) == Decimal("0.50003844")
    assert Decimal(t.price_percent_chg_24_h) == Decimal("0.74626866")  # 101.25/100.5 - 1, 8 places
    # The 16:00:10 bucket had no trade, so no frame; the next one ends at 16:00:15.
    assert second.time_ns == parse_rfc3339_ns("2023-09-05T16:00:15Z")
    assert second.sequence_num == 1 and second.tickers[0].event_type == "update"
    u = second.tickers[0]
    assert (u.price, u.low_24_h, u.high_24_h, u.low_52_w, u.high_52_w) == (
        "99.75",
        "99.75",
        "101.25",
        "99.75",
        "101.25",
    )
    assert Decimal(u.volume_24_h) == Decimal("2.00003844")


@pytest.fixture(scope="module")
def questdb_recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    if not TRADES.exists():
        pytest.skip(f"real trades file not available at {TRADES} (needs the shared data folder)")
    out = tmp_path_factory.mktemp("rec") / "btc_trades.jsonl.gz"
    return out, from_trades(TRADES, out, product_id="BTC-USD", interval_s=5)


def test_questdb_hour_becomes_about_720_frames(questdb_recording: tuple[Path, int]) -> None:
    out, n = questdb_recording
    frames = _frames(out)
    assert len(frames) == n
    # One hour of trades, the longest gap 8 s: nearly every 5 s bucket has a trade.
    assert 690 <= n <= 721
    times = [f.time_ns for f in frames]
    assert all(b > a for a, b in itertools.pairwise(times))
    assert all(t % 5_000_000_000 == 0 for t in times)

    trades = pd.read_csv(TRADES, dtype={"price": str, "amount": str})
    trades["t"] = pd.to_datetime(trades["timestamp"], utc=True)
    trades["bucket"] = trades["t"].dt.ceil("5s")
    last = trades.groupby("bucket", sort=True)["price"].last()
    assert len(last) == n
    got = {pd.Timestamp(f.time_ns, unit="ns", tz="UTC"): f.tickers[0] for f in frames}
    for bucket, price in last.items():
        assert got[bucket].price == price  # the exact string of the bucket's last trade
    for f in frames:
        t = f.tickers[0]
        assert Decimal(t.low_24_h) <= Decimal(t.price) <= Decimal(t.high_24_h)
    total = sum((Decimal(a) for a in trades["amount"]), Decimal(0))
    assert Decimal(frames[-1].tickers[0].volume_24_h) == total.quantize(Decimal("0.00000001"))


def test_questdb_recording_is_deterministic_and_replays(
    questdb_recording: tuple[Path, int], tmp_path: Path
) -> None:
    out, _n = questdb_recording
    again = tmp_path / "again.jsonl.gz"
    from_trades(TRADES, again, product_id="BTC-USD", interval_s=5)
    assert again.read_bytes() == out.read_bytes()

    async def replay() -> list[str]:
        return [t async for t in ReplaySource(out, speed=0)]

    assert asyncio.run(replay()) == list(iter_lines(out))
