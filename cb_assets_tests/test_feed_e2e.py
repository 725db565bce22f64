"""A real-data recording through the whole ingestion path: `cb-assets feed --source replay` -> Kafka ->
`cb-assets sink` -> raw_ticks, compared row by row with what the recording says."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from cb_assets.db.connection import connect
from cb_assets.feed.protocol import parse_frame, tickers
from cb_assets.feed.recording import from_trades, iter_lines
from cb_assets_tests.conftest import shared_data


def _expected_rows(recording: Path) -> dict[tuple[str, datetime], float]:
    rows = {}
    for line in iter_lines(recording):
        for t in tickers(parse_frame(line), source="replay"):
            ts = t["time"]  # floored to the microsecond, as documented
            when = datetime.fromisoformat(ts[:26] + "+00:00") if "." in ts else datetime.fromisoformat(ts)
            rows[(t["product_id"], when.astimezone(UTC))] = float(Decimal(t["price"]))
    return rows


def test_replay_of_a_real_recording_yields_exactly_the_expected_rows(
    tmp_path: Path, kafka_bootstrap: str, topic_name: str, make_database
) -> None:
    trades = shared_data("questdb_sample-datasets/btc_trades.csv.gz")
    recording = tmp_path / "btc.jsonl.gz"
    frames = from_trades(trades, recording, product_id="BTC-USD")
    expected = _expected_rows(recording)
    assert frames >= 690 and len(expected) == frames

    db = make_database()
    env = dict(
        os.environ,
        CB_DATABASE_URL=db,
        CB_KAFKA_BOOTSTRAP=kafka_bootstrap,
        CB_TOPIC=topic_name,
        CB_PRODUCTS="BTC-USD,ETH-USD",
        CB_HOME=str(tmp_path / "home"),
    )
    cli = [sys.executable, "-m", "cb_assets.cli"]
    sink = subprocess.Popen(
        [*cli, "sink", "--stats-interval", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        feed = subprocess.run(
            [
                *cli,
                "feed",
                "--source",
                "replay",
                "--file",
                str(recording),
                "--speed",
                "0",
                "--record",
                str(tmp_path / "tee.jsonl"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert feed.returncode == 0, feed.stdout + feed.stderr
        assert "source replay" in feed.stdout
        deadline = time.monotonic() + 60
        got: dict = {}
        while time.monotonic() < deadline:
            with connect(db) as conn:
                got = {
                    (p, t): price
                    for p, t, price in conn.execute(
                        "SELECT product_id, time, price FROM raw_ticks WHERE source = 'replay'"
                    )
                }
            if len(got) >= len(expected):
                break
            time.sleep(0.5)
    finally:
        sink.send_signal(signal.SIGTERM)
        out, _ = sink.communicate(timeout=30)
    assert sink.returncode == 0, out.decode()[-2000:]
    assert got == expected
    # --record teed every frame exactly as received.
    assert list(iter_lines(tmp_path / "tee.jsonl")) == list(iter_lines(recording))
