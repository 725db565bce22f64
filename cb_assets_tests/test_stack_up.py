"""`cb-assets up` runs services, migrations and a real `dagster dev`; Ctrl-C stops every child."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest

from cb_assets.db.connection import connect
from cb_assets.stack.procs import free_port


def _get(url: str, timeout: float = 2) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


def _graphql(port: int, query: str) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.mark.slow(expected_s=100)
def test_up_runs_dagster_dev_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    dagster_port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("CB_DATABASE_URL", "CB_KAFKA_BOOTSTRAP")}
    env.update(
        CB_HOME=str(tmp_path / "home"),
        CB_PG_PORT=str(free_port()),
        CB_BROKER_PORT=str(free_port()),
        CB_DAGSTER_PORT=str(dagster_port),
    )
    log = (tmp_path / "up.log").open("wb")
    # As a user's terminal would: a session of its own, SIGINT delivered to the supervisor.
    proc = subprocess.Popen(
        [sys.executable, "-m", "cb_assets.cli", "up", "--no-feed", "--no-sink", "--status-interval", "3"],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    descendants: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 150
        info = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                info = json.loads(_get(f"http://127.0.0.1:{dagster_port}/server_info"))
                break
            except OSError:
                time.sleep(1)
        assert info is not None, (tmp_path / "up.log").read_text()
        assert info["dagster_version"].startswith("1.13")
        # The code location loaded into the instance on PostgreSQL.
        loc = _graphql(
            dagster_port,
            "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }",
        )
        entries = loc["data"]["workspaceOrError"]["locationEntries"]
        assert [(e["name"], e["loadStatus"]) for e in entries] == [("cb_assets.definitions", "LOADED")]
        descendants = psutil.Process(proc.pid).children(recursive=True)
        assert descendants, "up should have children"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        finally:
            log.close()
    output = (tmp_path / "up.log").read_text()
    assert proc.returncode == 0, output
    assert "stopped dagster" in output
    time.sleep(1)
    leftovers = [p for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert leftovers == [], [p.cmdline() for p in leftovers]
    home = str(tmp_path / "home")
    strays = [p for p in psutil.process_iter(["cmdline"]) if home in " ".join(p.info["cmdline"] or [])]
    assert strays == []


@pytest.mark.slow(expected_s=395)
def test_demo_up_ingests_completes_hours_and_trains_a_model(tmp_path: Path) -> None:
    """The README's first command in demo mode, for real: feed (simulated: Coinbase is unreachable here),
    sink, dagster dev with its sensor; hours complete on the accelerated clock and a model version appears."""
    env = {k: v for k, v in os.environ.items() if k not in ("CB_DATABASE_URL", "CB_KAFKA_BOOTSTRAP")}
    env.update(
        CB_HOME=str(tmp_path / "home"),
        CB_PG_PORT=str(free_port()),
        CB_BROKER_PORT=str(free_port()),
        CB_DAGSTER_PORT=str(free_port()),
        CB_PRODUCTS="BTC-USD,ETH-USD,SOL-USD",
        CB_DEMO_SPEED="600",  # an hour every 6 s, starting six hours in the past
        CB_COINBASE_WS_URL="ws://127.0.0.1:9/unreachable",  # no internet in tests: the feed falls back
        CB_PARTITIONS_START=(datetime.now(UTC) - timedelta(days=2)).strftime("%Y-%m-%d-00:00"),
    )
    log_path = tmp_path / "up.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cb_assets.cli", "up", "--status-interval", "5"],
        env=env,
        cwd=tmp_path,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"postgresql://postgres@127.0.0.1:{env['CB_PG_PORT']}/cb_assets"
    try:
        deadline = time.monotonic() + 900
        versions = 0
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(5)
            try:
                with connect(url, timeout_s=2) as conn:
                    versions = conn.execute("SELECT count(*) FROM model_versions").fetchone()[0]
            except Exception:
                continue
            if versions:
                break
        assert versions >= 1, log_path.read_text()[-4000:]
        with connect(url) as conn:
            ticks, hours = conn.execute(
                "SELECT count(*), count(DISTINCT date_trunc('hour', time)) FROM raw_ticks"
            ).fetchone()
            filled_hours = conn.execute("SELECT count(DISTINCT hour) FROM kalman_params").fetchone()[0]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    out = log_path.read_text()
    assert proc.returncode == 0, out[-3000:]
    assert "source simulated" in (tmp_path / "home" / "logs" / "feed.log").read_text()
    assert ticks > 1000 and hours >= 3 and filled_hours >= 2
    assert re.search(r"ticks \d+ \(\+\d+/min\)", out) and "champion v" in out.split("stopped; child")[-1]
    assert "stopped dagster" in out and "stopped feed" in out and "stopped sink" in out
