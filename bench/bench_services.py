"""PostgreSQL and Kafka for the benchmarks: the configured servers when set, else throwaway local ones.

A benchmark must not touch the data of the platform it runs beside: on a configured server it works in fresh
databases (dropped at the end) and fresh topics; otherwise it starts an embedded PostgreSQL and the bundled
broker in temporary directories on free ports and removes them at the end. Imported by the scripts in this
folder (`python bench/<name>.py` puts the folder on sys.path).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from cb_assets.db.connection import drop_database, ensure_database, wait_for_postgres, with_database
from cb_assets.db.migrate import migrate
from cb_assets.stack.broker import broker_binary, broker_command
from cb_assets.stack.postgres import EmbeddedPostgres
from cb_assets.stack.procs import free_port, terminate_tree, wait_for_port


@dataclass
class PostgresServer:
    server_url: str  # …/postgres on the server where the bench creates its databases
    postmaster: psutil.Process | None = None  # the embedded server's, to account its CPU time
    databases: list[str] = field(default_factory=list)

    def fresh_database(self, *, migrated: bool = True) -> str:
        url = with_database(self.server_url, f"cb_bench_{uuid.uuid4().hex[:10]}")
        ensure_database(url)
        self.databases.append(url)
        if migrated:
            migrate(url)
        return url

    def cpu_seconds(self) -> float | None:
        """CPU time used so far by the embedded server (None for a configured one: not ours to measure)."""
        if self.postmaster is None:
            return None
        with contextlib.suppress(psutil.Error):
            # Backends that exited are in the postmaster's children_* times, live ones are counted here.
            t = self.postmaster.cpu_times()
            total = t.user + t.system + t.children_user + t.children_system
            for child in self.postmaster.children():
                with contextlib.suppress(psutil.Error):
                    c = child.cpu_times()
                    total += c.user + c.system
            return total
        return None


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """CB_DATABASE_URL's server, or an embedded one; every database made through it is dropped at the end."""
    with contextlib.ExitStack() as stack:
        postmaster: psutil.Process | None = None
        external = os.environ.get("CB_DATABASE_URL", "").strip()
        if external:
            server_url = with_database(external, "postgres")
            print("PostgreSQL: CB_DATABASE_URL (fresh databases on that server)")
        else:
            tmp = Path(tempfile.mkdtemp(prefix="cb-bench-pg-"))
            stack.callback(shutil.rmtree, tmp, ignore_errors=True)
            server = EmbeddedPostgres(tmp / "data", free_port(), tmp / "postgres.log")
            server.start()
            stack.callback(server.stop)
            server_url = server.url_base + "/postgres"
            print(f"PostgreSQL: embedded, started here on port {server.port}")
            with contextlib.suppress(OSError, ValueError, IndexError, psutil.Error):
                postmaster = psutil.Process(int((tmp / "data" / "postmaster.pid").read_text().split()[0]))
        wait_for_postgres(server_url, timeout_s=30)
        pg = PostgresServer(server_url, postmaster)
        try:
            yield pg
        finally:
            for url in pg.databases:
                with contextlib.suppress(Exception):
                    drop_database(url)


@contextlib.contextmanager
def kafka_bootstrap() -> Iterator[str]:
    """CB_KAFKA_BOOTSTRAP, or the bundled broker (memory storage) started here and stopped at the end."""
    bootstrap = os.environ.get("CB_KAFKA_BOOTSTRAP", "").strip()
    if bootstrap:
        print(f"Kafka: CB_KAFKA_BOOTSTRAP={bootstrap}")
        yield bootstrap
        return
    port = free_port()
    with tempfile.NamedTemporaryFile(prefix="cb-bench-broker-", suffix=".log") as broker_log:
        proc = subprocess.Popen(
            broker_command(broker_binary(), "127.0.0.1", port),
            stdout=broker_log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_for_port("127.0.0.1", port, 20)
            print(f"Kafka: bundled broker, started here on port {port}")
            yield f"127.0.0.1:{port}"
        finally:
            terminate_tree(proc.pid)
