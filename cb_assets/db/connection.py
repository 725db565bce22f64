"""PostgreSQL connections: one way to open them, wait for a server, and create a database."""

from __future__ import annotations

import time
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

APPLICATION_NAME = "cb-assets"


def connect(
    url: str, *, autocommit: bool = False, timeout_s: float = 10.0, **kwargs: object
) -> psycopg.Connection:
    """Open a connection tagged with our application name (so `pg_stat_activity` tells whose it is)."""
    return psycopg.connect(
        url,
        autocommit=autocommit,
        connect_timeout=max(1, int(timeout_s)),
        application_name=kwargs.pop("application_name", APPLICATION_NAME),
        **kwargs,
    )


def wait_for_postgres(url: str, timeout_s: float = 30.0) -> None:
    """Block until the server accepts connections; raise with the last error after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with connect(url, autocommit=True, timeout_s=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as exc:
            last = exc
            time.sleep(0.2)
    raise TimeoutError(f"PostgreSQL at {_host_of(url)} did not answer within {timeout_s:.0f} s: {last}")


def with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def ensure_database(url: str) -> bool:
    """Create the database named in `url` if it is missing (connecting to `postgres` to do so).

    Returns True when it was created. Needs the CREATEDB privilege; managed servers usually have the database
    created up front, in which case nothing is attempted.
    """
    name = database_name(url)
    try:
        with connect(url, autocommit=True, timeout_s=5):
            return False
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
    with connect(with_database(url, "postgres"), autocommit=True) as conn:
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:
            return False  # another process won the race
    return True


def drop_database(url: str) -> None:
    name = database_name(url)
    with connect(with_database(url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _host_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 5432}/{parts.path.lstrip('/')}"
