"""ChampionLoader: one load at a time beside the forecaster, a slow load reported with where it is, and a
broken artifact logged without touching the serving champion."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from cb_assets.forecast import champion as champion_module
from cb_assets.forecast.champion import Champion, ChampionLoader


def _champion(version_id: int) -> Champion:
    return Champion(version_id, None, ("BTC-USD",), ("BTC-USD:price",), np.zeros(1), np.ones(1), None)


def _wait_until(cond, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_slow_load_is_reported_once_with_its_stack_then_handed_over(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()

    def stuck_in_compile(version_id: int, path: str, products) -> Champion:
        release.wait(10)
        return _champion(version_id)

    monkeypatch.setattr(champion_module, "load_champion", stuck_in_compile)
    caplog.set_level(logging.INFO, logger="cb_assets.forecast.service")
    served: list[Champion] = []
    loader = ChampionLoader(["BTC-USD"], slow_after_s=0.05)
    assert not loader.busy()
    loader.start(7, "/models/v7.keras", served.append)
    time.sleep(0.1)
    assert loader.busy() and loader.busy()
    slow = [r.getMessage() for r in caplog.records if "has been loading" in r.getMessage()]
    assert len(slow) == 1 and "stuck_in_compile" in slow[0] and "release.wait" in slow[0]
    assert served == []

    release.set()
    _wait_until(lambda: not loader.busy())
    assert [c.version_id for c in served] == [7]
    assert any(r.getMessage().startswith("champion is now v7 (loaded in") for r in caplog.records)


def test_a_broken_artifact_is_logged_and_nothing_is_handed_over(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(version_id: int, path: str, products) -> Champion:
        raise OSError(f"{path}: not a zip file")

    monkeypatch.setattr(champion_module, "load_champion", broken)
    served: list[Champion] = []
    loader = ChampionLoader(["BTC-USD"])
    loader.start(3, "/models/v3.keras", served.append)
    _wait_until(lambda: not loader.busy())
    assert served == []
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "could not load champion v3 from /models/v3.keras: /models/v3.keras: not a zip file"
    ]
