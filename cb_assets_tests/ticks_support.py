"""Test helpers shared by the sink and feed tests: ticker messages as the feed writes them to Kafka, and a
poll that waits for an outcome of a real service."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

T = TypeVar("T")


def ticker_message(product: str, at: datetime, i: int, **overrides: object) -> dict:
    """A valid ticker message for `product` at `at` (with nanosecond digits, as Coinbase sends them), its
    price stepping by a cent per `i`; `overrides` replace or add fields."""
    price = 100.0 + i * 0.01
    msg: dict = {
        "product_id": product,
        "price": f"{price:.2f}",
        "volume_24_h": "1234.5",
        "low_24_h": f"{price - 5:.2f}",
        "high_24_h": f"{price + 5:.2f}",
        "low_52_w": "10",
        "high_52_w": "1000",
        "price_percent_chg_24_h": "-1.25",
        "best_bid": None,
        "best_ask": None,
        "time": at.strftime("%Y-%m-%dT%H:%M:%S.%f") + "789Z",
        "sequence_num": i,
        "source": "simulated",
        "connection_id": "test",
    }
    msg.update(overrides)
    return msg


def wait_until(what: Callable[[], T], timeout_s: float, message: str, every_s: float = 0.5) -> T:
    """Poll `what` until it returns something truthy and return that; fail with `message` at the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"{message} (within {timeout_s:.0f} s)")
