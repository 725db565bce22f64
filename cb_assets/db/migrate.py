"""Schema migrations: `sql/NNN_name.sql` applied in order, each once, recorded in `schema_migrations`.

Safe to run twice and from several processes at once: a session-level advisory lock serialises runners, and
each file is applied in its own transaction together with its version row, so a crash leaves either the whole
file applied and recorded or nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cb_assets.db.connection import connect

log = logging.getLogger(__name__)

# Any fixed 64-bit number works; it only has to be the same for every runner.
_MIGRATION_LOCK_KEY = 0x63625F6D69677261  # "cb_migra"
_FILE_RE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


class MigrationError(RuntimeError):
    pass


def default_sql_dir() -> Path:
    """`sql/` at the top of the checkout (overridable with CB_SQL_DIR for installs outside a checkout)."""
    override = os.environ.get("CB_SQL_DIR")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "sql"


def discover(sql_dir: Path | None = None) -> list[Migration]:
    sql_dir = sql_dir or default_sql_dir()
    if not sql_dir.is_dir():
        raise MigrationError(f"migrations directory {sql_dir} not found (set CB_SQL_DIR)")
    found: list[Migration] = []
    for path in sorted(sql_dir.iterdir()):
        if path.suffix != ".sql":
            continue
        m = _FILE_RE.match(path.name)
        if not m:
            raise MigrationError(f"{path.name}: migration files are named NNN_lowercase_name.sql")
        found.append(Migration(int(m.group(1)), m.group(2), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version number in {sql_dir}")
    return found


_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def migrate(database_url: str, sql_dir: Path | None = None) -> list[Migration]:
    """Apply pending migrations; return the ones this call applied (empty when up to date)."""
    migrations = discover(sql_dir)
    applied_now: list[Migration] = []
    with connect(database_url, autocommit=True, application_name="cb-assets migrate") as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK_KEY,))
        try:
            conn.execute(_BOOKKEEPING)
            done = {
                row[0]: row[1]
                for row in conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
            }
            for mig in migrations:
                if mig.version in done:
                    if done[mig.version] != mig.checksum:
                        # Editing an applied migration would leave databases that differ silently.
                        log.warning(
                            "migration %03d_%s changed after it was applied; add a new migration instead",
                            mig.version,
                            mig.name,
                        )
                    continue
                log.info("applying migration %03d_%s", mig.version, mig.name)
                with conn.transaction():
                    conn.execute(mig.path.read_text())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        (mig.version, mig.name, mig.checksum),
                    )
                applied_now.append(mig)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK_KEY,))
    return applied_now


def applied_versions(database_url: str) -> list[int]:
    with connect(database_url, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return []
        return [
            r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        ]
