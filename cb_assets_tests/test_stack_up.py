"""`cb-assets up` runs services, migrations and a real `dagster dev`; Ctrl-C stops every child."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

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


@pytest.mark.slow
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
