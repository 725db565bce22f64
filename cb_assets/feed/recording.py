"""Recordings: JSONL of frames exactly as received (one envelope per line, gzip when the name ends .gz).

Also builds ticker_batch recordings out of trade files, since no public recording of the Coinbase
`ticker_batch` channel exists: the real trades give tests and benchmarks real prices on the real clock.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import IO

from cb_assets.feed.protocol import build_envelope
from cb_assets.feed.timestamps import ProtocolError, format_rfc3339_ns, parse_rfc3339_ns
from cb_assets.series.schema import SECOND_NS

log = logging.getLogger(__name__)

_EIGHT_PLACES = Decimal("0.00000001")


def open_text(path: str | Path, mode: str = "r") -> IO[str]:
    """Open a recording for text reading ("r") or writing ("w"/"a"), gzip if the name ends .gz.

    Written gzip headers carry no file name and mtime 0, so equal content gives equal bytes.
    """
    p = Path(path)
    if p.suffix != ".gz":
        return open(p, mode, encoding="utf-8", newline="\n")
    raw = open(p, mode + "b")  # noqa: SIM115 - the returned wrapper owns it
    gz = gzip.GzipFile(filename="", mode=mode + "b", fileobj=raw, mtime=0)
    text = io.TextIOWrapper(gz, encoding="utf-8", newline="\n")
    # Closing the wrapper closes the GzipFile but not a fileobj it was given; close that too.
    original_close = text.close

    def close() -> None:
        try:
            original_close()
        finally:
            raw.close()

    text.close = close  # type: ignore[method-assign]
    return text


def iter_lines(path: str | Path) -> Iterator[str]:
    """The lines of a recording without their line ends (blank lines included, for line numbers)."""
    with open_text(path, "r") as f:
        for line in f:
            yield line.rstrip("\r\n")


class FrameRecorder:
    """Appends frame texts to a JSONL recording (the `--record` tee).

    A frame containing a raw line break (only possible as insignificant whitespace, since JSON strings
    cannot hold one) would split its line, so line breaks are written as spaces: the JSON stays
    identical in meaning, and the frames Coinbase actually sends are compact and kept byte for byte.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open_text(self.path, "a")
        self.frames = 0

    def write(self, text: str) -> None:
        if "\n" in text or "\r" in text:
            text = text.replace("\r", " ").replace("\n", " ")
        self._f.write(text)
        self._f.write("\n")
        self.frames += 1

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> FrameRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plain(d: Decimal) -> str:
    return format(d.quantize(_EIGHT_PLACES), "f")


def from_trades(
    csv_path: str | Path,
    out_path: str | Path,
    *,
    product_id: str = "BTC-USD",
    interval_s: int = 5,
) -> int:
    """Turn a trades CSV (columns symbol, side, price, amount, timestamp) into ticker_batch frames.

    One frame per `interval_s` bucket that holds at least one trade (a quiet bucket sends nothing, as the
    real channel only sends products whose ticker changed); buckets are right-closed on the epoch grid,
    so the frame stamped T covers trades with T - interval < time <= T. The first frame is a snapshot.
    Returns the number of frames written. Output is deterministic (same input -> same bytes).

    How the fields are filled from what the file holds (a file has no 24 h or 52 w of history):
    - price: the last trade's price, as the exact string in the file;
    - low_24_h / high_24_h: running min / max over all trades so far (the exact strings);
    - volume_24_h: running sum of `amount` so far, 8 decimals;
    - price_percent_chg_24_h: 100 * (price / first trade's price - 1), 8 decimals;
    - low_52_w / high_52_w: the same running extremes (the file is far shorter than 52 weeks);
    - best_bid / best_ask: omitted, as in production ticker_batch frames.
    Rows of other symbols are skipped; rows with an unparseable price, amount or time are logged and
    skipped.
    """
    if interval_s <= 0:
        raise ValueError("interval_s must be positive")
    step = interval_s * SECOND_NS
    trades: list[tuple[int, int, str, Decimal, Decimal]] = []
    with open_text(csv_path, "r") as f:
        for row_no, row in enumerate(csv.DictReader(f), start=2):
            if row.get("symbol", product_id) != product_id:
                continue
            try:
                t = parse_rfc3339_ns(row["timestamp"])
                price_text = row["price"].strip()
                price, amount = Decimal(price_text), Decimal(row["amount"].strip())
            except (KeyError, ArithmeticError, ProtocolError, AttributeError) as e:
                log.warning("%s line %d skipped: %s", csv_path, row_no, e)
                continue
            if not price.is_finite() or price <= 0 or not amount.is_finite():
                log.warning("%s line %d skipped: price %s amount %s", csv_path, row_no, price, amount)
                continue
            trades.append((t, row_no, price_text, price, amount))
    trades.sort(key=lambda x: (x[0], x[1]))  # stable on equal times: file order decides

    written = 0
    first_price: Decimal | None = None
    low = high = None
    low_text = high_text = ""
    volume = Decimal(0)
    with open_text(out_path, "w") as out:
        i = 0
        while i < len(trades):
            bucket_end = -(-trades[i][0] // step) * step  # ceil: right-closed buckets
            while i < len(trades) and trades[i][0] <= bucket_end:
                _, _, text, price, amount = trades[i]
                if first_price is None:
                    first_price = price
                if low is None or price < low:
                    low, low_text = price, text
                if high is None or price > high:
                    high, high_text = price, text
                volume += amount
                last_text, last_price = text, price
                i += 1
            assert first_price is not None
            pct = (last_price / first_price - 1) * 100
            ticker = {
                "type": "ticker",
                "product_id": product_id,
                "price": last_text,
                "volume_24_h": _plain(volume),
                "low_24_h": low_text,
                "high_24_h": high_text,
                "low_52_w": low_text,
                "high_52_w": high_text,
                "price_percent_chg_24_h": _plain(pct),
            }
            event = {"type": "snapshot" if written == 0 else "update", "tickers": [ticker]}
            out.write(build_envelope("ticker_batch", format_rfc3339_ns(bucket_end), written, [event]))
            out.write("\n")
            written += 1
    return written
