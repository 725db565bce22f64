"""The Dagster instance directory and the `.env` that lets plain `dagster` commands find it.

Dagster reads `dagster.yaml` from DAGSTER_HOME (or the working directory) and loads a `.env` file from the
working directory before it builds the instance. `services up` therefore prepares `$CB_HOME/dagster` with a
copy of the checkout's `dagster.yaml` and, for the embedded defaults only, writes a `.env` naming it and the
storage URL, so `dagster dev` and `dagster definitions validate` work from the checkout without exports.
Nothing secret is written: external URLs (which may hold passwords) are never put in the file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cb_assets.config import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
_MARKER = "# written by `cb-assets services up`"


def instance_yaml_source() -> Path:
    return REPO_ROOT / "dagster.yaml"


def prepare_dagster_home(settings: Settings) -> Path:
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(instance_yaml_source(), home / "dagster.yaml")
    return home


def dagster_env(settings: Settings) -> dict[str, str]:
    """Variables a Dagster process of this platform needs (values resolved from the settings)."""
    return {
        "DAGSTER_HOME": str(settings.dagster_home),
        "CB_DAGSTER_DATABASE_URL": settings.dagster_database_url,
    }


def write_dotenv(settings: Settings, directory: Path | None = None) -> Path | None:
    """Write `.env` for the embedded defaults; leave a user's own `.env` alone."""
    path = (directory or Path.cwd()) / ".env"
    if path.exists() and not path.read_text().startswith(_MARKER):
        return None
    if not settings.database_embedded:
        # External databases are configured by the user's own environment; don't shadow it with a stale file.
        path.unlink(missing_ok=True)
        return None
    lines = [
        _MARKER + " for the embedded local stack; delete it freely.",
        "# Dagster loads it from the working directory, so plain `dagster dev` finds the same instance.",
        *(f"{k}={v}" for k, v in dagster_env(settings).items()),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path
