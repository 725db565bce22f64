"""Replaying recordings: .gz, as fast as possible, rebased to now with exact ns, bad lines handed on."""

from __future__ import annotations

import asyncio
from itertools import pairwise
from pathlib import Path

import pytest

from cb_assets.feed.protocol import build_envelope, parse_frame
from cb_assets.feed.recording import FrameRecorder, iter_lines
from cb_assets.feed.replay import ReplaySource, last_timestamp_ns
from cb_assets.feed.sequence import GapRecord
from cb_assets.feed.timestamps import format_rfc3339_ns, parse_rfc3339_ns

T0 = parse_rfc3339_ns("2024-03-01T12:00:00.123456789Z")


def _ticker(pid: str, price: str) -> dict[str, str]:
    return {
        "type": "ticker",
        "product_id": pid,
        "price": price,
        "volume_24_h": "10",
        "low_24_h": "1",
        "high_24_h": "99999",
        "low_52_w": "1",
        "high_52_w": "99999",
        "price_percent_chg_24_h": "0.5",
    }


def _frames() -> list[str]:
    """Ten frames with odd nanosecond spacing, a recorded reconnect and a gap on the second connection."""
    out = []
    seqs = [0, 1, 2, 3, 4, 0, 1, 2, 5, 6]  # a reconnect before the 6th frame; 3 and 4 missing after it
    for i, seq in enumerate(seqs):
        t = T0 + i * 5_000_000_000 + i * 7  # 5 s plus i*7 ns: differences only exact arithmetic keeps
        event = {
            "type": "snapshot" if seq == 0 else "update",
            "tickers": [_ticker("BTC-USD", f"{60000 + i}.5")],
        }
        out.append(build_envelope("ticker_batch", format_rfc3339_ns(t), seq, [event]))
    return out


def _write(path: Path, lines: list[str]) -> None:
    with FrameRecorder(path) as rec:
        for line in lines:
            rec.write(line)


async def _collect(src: ReplaySource) -> list[tuple[str, str]]:
    return [(src.connection_id, text) async for text in src]


def test_gz_replay_as_fast_as_possible_hands_on_bad_lines(tmp_path: Path) -> None:
    frames = _frames()
    lines = [*frames[:3], "this is not json", "", '{"channel": "ticker_batch"}', *frames[3:]]
    path = tmp_path / "rec-2024.jsonl.gz"
    _write(path, lines)
    assert path.read_bytes()[:2] == b"\x1f\x8b"  # really gzip
    gaps: list[GapRecord] = []
    src = ReplaySource(path, speed=0, on_gap=gaps.append)
    got = asyncio.run(_collect(src))
    bad = ["this is not json", '{"channel": "ticker_batch"}']
    # Byte for byte, in order; the invalid lines are yielded too (the runner dead-letters them), blank lines not.
    assert [t for _, t in got] == [*frames[:3], *bad, *frames[3:]]
    assert src.bad_lines == 2  # the blank line is not a frame, not an error
    valid = [(c, t) for c, t in got if t not in bad]
    # The recorded reconnect starts a new segment, so its sequence numbers are not duplicates...
    assert [c for c, _ in valid] == ["rec-2024"] * 5 + ["rec-2024#1"] * 5
    assert src.counters.duplicates == 0
    # ...and the jump 2 -> 5 on the second connection is a gap.
    assert [(g.connection_id, g.from_seq, g.to_seq) for g in gaps] == [("rec-2024#1", 2, 5)]


def test_rebase_now_shifts_exactly(tmp_path: Path) -> None:
    frames = _frames()
    heartbeat = build_envelope(
        "heartbeats",
        format_rfc3339_ns(T0 + 1),
        9,
        [{"current_time": "2024-03-01 12:00:00 +0000 UTC", "heartbeat_counter": 3}],
    )
    path = tmp_path / "plain.jsonl"
    _write(path, [*frames, '{"type": "error", "message": "x"}', heartbeat])
    now = 1_900_000_000_123_456_789
    src = ReplaySource(path, speed=0, rebase_now=True, now_ns=now)
    got = [t for _, t in asyncio.run(_collect(src))]
    assert len(got) == len(frames) + 2
    orig_t = [parse_rfc3339_ns(f.split('"timestamp":"')[1].split('"')[0]) for f in frames]
    new_frames = [parse_frame(t) for t in got[: len(frames)]]
    new_t = [f.time_ns for f in new_frames]  # type: ignore[union-attr]
    assert max(new_t) == now  # the recording ends now
    assert [b - a for a, b in pairwise(orig_t)] == [b - a for a, b in pairwise(new_t)]
    # Only the timestamp changed: putting the old one back gives the original line.
    for old, new, t_old in zip(frames, got, orig_t, strict=False):
        assert new.replace(format_rfc3339_ns(t_old + (now - max(orig_t))), format_rfc3339_ns(t_old)) == old
    assert got[len(frames)] == '{"type": "error", "message": "x"}'  # no timestamp: untouched
    assert "2024-03-01 12:00:00 +0000 UTC" in got[-1]  # heartbeat current_time left as recorded
    assert last_timestamp_ns(path) == max(orig_t)


def test_missing_file_and_bad_speed(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ReplaySource(tmp_path / "nope.jsonl")
    path = tmp_path / "x.jsonl"
    _write(path, _frames()[:1])
    with pytest.raises(ValueError):
        ReplaySource(path, speed=-1)
    assert list(iter_lines(path)) == _frames()[:1]


def test_recorder_keeps_one_frame_per_line(tmp_path: Path) -> None:
    path = tmp_path / "multi.jsonl"
    pretty = '{\n  "type": "error",\n  "message": "x"\n}'
    _write(path, [pretty, _frames()[0]])
    lines = list(iter_lines(path))
    assert len(lines) == 2
    assert parse_frame(lines[0]) == parse_frame(pretty)  # same meaning, still one line
