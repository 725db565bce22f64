"""Real services for the tests: a PostgreSQL server and a Kafka broker, never mocks.

- PostgreSQL: CB_DATABASE_URL when set (its server; each test module gets a fresh database on it), else an
  embedded server started here in a temporary directory.
- Kafka: CB_KAFKA_BOOTSTRAP when set, else the bundled Tansu broker (memory storage) on a free port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cb_assets.db.connection import drop_database, ensure_database, wait_for_postgres, with_database
from cb_assets.db.migrate import migrate
from cb_assets.stack.broker import broker_binary, broker_command
from cb_assets.stack.postgres import EmbeddedPostgres
from cb_assets.stack.procs import free_port, terminate_tree, wait_for_port

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Read before any test imports `cb_assets.definitions`, which exports the computed local defaults as CB_*
# variables into this process (what Dagster processes need, but it must not change which servers tests use).
_EXTERNAL_DATABASE_URL = os.environ.get("CB_DATABASE_URL", "").strip()
_EXTERNAL_KAFKA = os.environ.get("CB_KAFKA_BOOTSTRAP", "").strip()
_PLATFORM_ENV = {k: v for k, v in os.environ.items() if k.startswith(("CB_", "DAGSTER_"))}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest test files first, by the `expected_s` of their `slow` marks (scripts/test turns off xdist's own
    reorder, which puts files with the most tests first and so started a one-test 8-15 minute drill last, where
    it alone set the length of the run). Files keep their own order of tests and, at equal cost, their place."""
    cost: dict[Path, float] = {}
    for item in items:
        mark = item.get_closest_marker("slow")
        cost[item.path] = cost.get(item.path, 0.0) + (
            float(mark.kwargs.get("expected_s", 60)) if mark else 0.0
        )
    items.sort(key=lambda item: -cost[item.path])


@pytest.fixture(autouse=True)
def _platform_env_isolated() -> Iterator[None]:
    """Undo CB_*/DAGSTER_* changes a test (or an import) made, so subprocesses of later tests inherit none."""
    yield
    for key in [k for k in os.environ if k.startswith(("CB_", "DAGSTER_"))]:
        if key not in _PLATFORM_ENV:
            del os.environ[key]
    os.environ.update(_PLATFORM_ENV)


def shared_data(relative: str) -> Path:
    """A file of the recorded market data beside the checkout; skip the test with the reason when absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"recorded market data not found at {path} (../shared/data is not beside this checkout)")
    return path


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A server-level URL (…/postgres) on which tests may create databases."""
    external = _EXTERNAL_DATABASE_URL
    if external:
        url = with_database(external, "postgres")
        wait_for_postgres(url, timeout_s=30)
        yield url
        return
    tmp = Path(tempfile.mkdtemp(prefix="cb-test-pg-"))
    server = EmbeddedPostgres(tmp / "data", free_port(), tmp / "postgres.log")
    server.start()
    try:
        url = server.url_base + "/postgres"
        wait_for_postgres(url, timeout_s=30)
        yield url
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def make_database(pg_server: str) -> Iterator[Callable[..., str]]:
    """Factory: a fresh, migrated (by default) database; all are dropped at the end of the session."""
    created: list[str] = []

    def factory(*, migrated: bool = True) -> str:
        url = with_database(pg_server, f"cb_test_{uuid.uuid4().hex[:10]}")
        ensure_database(url)
        created.append(url)
        if migrated:
            migrate(url)
        return url

    yield factory
    for url in created:
        with contextlib.suppress(Exception):
            drop_database(url)


@pytest.fixture(scope="module")
def database_url(make_database: Callable[..., str]) -> str:
    """One migrated database per test module."""
    return make_database()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    external = _EXTERNAL_KAFKA
    if external:
        yield external
        return
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="cb-test-broker-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        broker_command(broker_binary(), "127.0.0.1", port),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_port("127.0.0.1", port, 20)
        yield f"127.0.0.1:{port}"
    finally:
        terminate_tree(proc.pid)
        log.close()
        os.unlink(log.name)


@pytest.fixture
def topic_name() -> str:
    """A topic of its own for each test: the broker is shared by the whole session."""
    return f"cb-test-{uuid.uuid4().hex[:10]}"
