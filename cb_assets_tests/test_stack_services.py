"""`cb-assets services up|status|down` with the embedded PostgreSQL and the bundled broker, for real."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from cb_assets.db.connection import connect
from cb_assets.stack.procs import free_port


def _cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cb_assets.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _ours(home: Path, broker_port: int) -> list[psutil.Process]:
    """Processes started for this CB_HOME: postgres with its data dir there, or the broker on our port."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if str(home) in cmd or ("tansu" in cmd and f":{broker_port}" in cmd):
            found.append(proc)
    return found


@pytest.fixture
def embedded_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CB_DATABASE_URL", "CB_KAFKA_BOOTSTRAP")}
    env.update(CB_HOME=str(tmp_path / "home"), CB_PG_PORT=str(free_port()), CB_BROKER_PORT=str(free_port()))
    return env


def test_services_lifecycle_with_embedded_postgres_and_bundled_broker(embedded_env: dict[str, str]) -> None:
    home = Path(embedded_env["CB_HOME"])
    pg_port, broker_port = int(embedded_env["CB_PG_PORT"]), int(embedded_env["CB_BROKER_PORT"])
    try:
        up = _cli(embedded_env, "services", "up")
        assert up.returncode == 0, up.stderr
        assert "MEMORY storage" in up.stdout and "embedded" in up.stdout

        status = _cli(embedded_env, "services", "status")
        assert status.returncode == 0
        lines = {line.split()[0]: line for line in status.stdout.splitlines()}
        assert "running" in lines["postgres"] and "running" in lines["kafka"]

        # Running `up` again is harmless: same processes.
        assert _cli(embedded_env, "services", "up").returncode == 0

        migrated = _cli(embedded_env, "db", "migrate")
        assert migrated.returncode == 0, migrated.stderr
        url = f"postgresql://postgres@127.0.0.1:{pg_port}/cb_assets"
        with connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] >= 1

        # One message through the bundled broker with confluent-kafka.
        bootstrap = f"127.0.0.1:{broker_port}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic("smoke", 1, 1)])["smoke"].result(10)
        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
        producer.produce("smoke", key=b"BTC-USD", value=b'{"price": "1"}')
        assert producer.flush(10) == 0
        consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "smoke", "auto.offset.reset": "earliest"}
        )
        consumer.assign([TopicPartition("smoke", 0, 0)])
        msg = None
        deadline = time.monotonic() + 15
        while msg is None and time.monotonic() < deadline:
            msg = consumer.poll(1)
        consumer.close()
        assert msg is not None and msg.error() is None
        assert (msg.key(), msg.value()) == (b"BTC-USD", b'{"price": "1"}')
    finally:
        down = _cli(embedded_env, "services", "down")
    assert down.returncode == 0, down.stderr
    time.sleep(0.5)
    assert _ours(home, broker_port) == []
    status = _cli(embedded_env, "services", "status")
    assert all("stopped" in line for line in status.stdout.splitlines())

    # Data survives a restart of the embedded server.
    try:
        assert _cli(embedded_env, "services", "up").returncode == 0
        with connect(f"postgresql://postgres@127.0.0.1:{pg_port}/cb_assets") as conn:
            assert conn.execute("SELECT to_regclass('raw_ticks') IS NOT NULL").fetchone()[0]
    finally:
        _cli(embedded_env, "services", "down")
    assert _ours(home, broker_port) == []


def test_stale_pid_file_does_not_block_start(embedded_env: dict[str, str]) -> None:
    home = Path(embedded_env["CB_HOME"])
    (home / "run").mkdir(parents=True)
    # A pid that certainly is not our broker (this test process).
    (home / "run" / "broker.pid").write_text(f"{os.getpid()}\n")
    env = dict(embedded_env, CB_DATABASE_URL="postgresql://postgres@127.0.0.1:1/unused")
    try:
        status = _cli(env, "services", "status")
        assert "stopped" in next(ln for ln in status.stdout.splitlines() if ln.startswith("kafka"))
        up = _cli(env, "services", "up")
        # postgres is "external" here and unreachable on port 1, but the broker must start regardless.
        assert "kafka       running" in up.stdout, up.stdout + up.stderr
    finally:
        _cli(env, "services", "down")
    assert not (home / "run" / "broker.pid").exists()
