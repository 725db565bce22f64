"""The code location loads into a Dagster instance whose storage is PostgreSQL (dagster-postgres)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from cb_assets.stack.dagster_home import write_instance_yaml

REPO = Path(__file__).resolve().parents[1]


def _dagster_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    write_instance_yaml(home)
    return home


def test_instance_on_postgres_storage_loads_definitions(
    tmp_path: Path, make_database: Callable[..., str], monkeypatch
) -> None:
    url = make_database(migrated=True)
    home = _dagster_home(tmp_path)
    monkeypatch.setenv("CB_DAGSTER_DATABASE_URL", url)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        storages = {type(instance.run_storage).__name__, type(instance.event_log_storage).__name__}
        assert storages == {"PostgresRunStorage", "PostgresEventLogStorage"}
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        assert instance.run_storage.get_runs() == []

    from cb_assets.definitions import defs

    repo = defs.get_repository_def()
    assert repo.get_top_level_resources()  # resources resolve from the exported CB_* variables


def test_dagster_cli_validates_the_workspace(tmp_path: Path, make_database: Callable[..., str]) -> None:
    url = make_database(migrated=True)
    home = _dagster_home(tmp_path)
    env = dict(os.environ, DAGSTER_HOME=str(home), CB_DAGSTER_DATABASE_URL=url, CB_HOME=str(tmp_path / "cb"))
    # Run outside the checkout so that a developer's `.env` there cannot override this test's environment.
    out = subprocess.run(
        [
            str(Path(sys.executable).with_name("dagster")),
            "definitions",
            "validate",
            "-w",
            str(REPO / "workspace.yaml"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Validation successful" in out.stdout + out.stderr
