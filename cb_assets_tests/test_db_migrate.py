"""Migrations: applied once, in order, safe to repeat and to run from two processes at once."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cb_assets.db.connection import connect
from cb_assets.db.migrate import MigrationError, applied_versions, discover, migrate

REPO = Path(__file__).resolve().parents[1]


def _tables(url: str) -> set[str]:
    with connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


def test_migrate_twice_is_idempotent(make_database: Callable[..., str]) -> None:
    url = make_database(migrated=False)
    first = migrate(url)
    assert [m.version for m in first] == [m.version for m in discover()]
    assert migrate(url) == []
    assert applied_versions(url) == [m.version for m in discover()]
    assert {"raw_ticks", "raw_ticks_rejected", "feed_gaps", "schema_migrations"} <= _tables(url)


def test_raw_ticks_shape(make_database: Callable[..., str]) -> None:
    url = make_database()
    with connect(url) as conn:
        cols = dict(
            conn.execute(
                "SELECT column_name, is_nullable FROM information_schema.columns WHERE table_name = 'raw_ticks'"
            ).fetchall()
        )
        pk = conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'raw_ticks'::regclass AND i.indisprimary"
        ).fetchall()
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN SELECT * FROM raw_ticks WHERE time >= '2024-01-01 05:00+00' AND time < '2024-01-01 06:00+00'"
            ).fetchall()
        )
    assert cols["price"] == "NO" and cols["best_bid"] == "YES" and cols["best_ask"] == "YES"
    assert {r[0] for r in pk} == {"product_id", "time"}
    # On an empty table the planner may still pick a seq scan; the index must at least exist and be usable.
    assert "raw_ticks" in plan


def test_concurrent_migrations_from_two_processes(make_database: Callable[..., str]) -> None:
    url = make_database(migrated=False)
    code = "import sys; from cb_assets.db.migrate import migrate; print(len(migrate(sys.argv[1])))"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    applied_counts = sorted(int(o[0].strip()) for o in outs)
    # Exactly one process applied everything; the other waited on the lock and found nothing to do.
    assert applied_counts == [0, len(discover())]
    assert applied_versions(url) == [m.version for m in discover()]


def test_bad_migration_file_names_are_refused(tmp_path: Path) -> None:
    (tmp_path / "1_x.sql").write_text("SELECT 1")
    with pytest.raises(MigrationError, match="NNN_"):
        discover(tmp_path)


def test_failed_migration_leaves_nothing_half_applied(
    make_database: Callable[..., str], tmp_path: Path
) -> None:
    url = make_database(migrated=False)
    (tmp_path / "001_ok.sql").write_text("CREATE TABLE t_ok (x int);")
    (tmp_path / "002_broken.sql").write_text("CREATE TABLE t_half (x int); SELECT no_such_function();")
    with pytest.raises(Exception, match="no_such_function"):
        migrate(url, tmp_path)
    assert applied_versions(url) == [1]
    assert "t_half" not in _tables(url)
