"""The Dagster instance directory and the `.env` that lets plain `dagster` commands find it.

The checkout's `dagster.yaml` holds the instance settings (concurrency, retries, telemetry) but no storage, so
that Dagster commands run in a fresh checkout without any service. The platform's instance lives in
`$CB_HOME/dagster`: its `dagster.yaml` is the checkout's plus PostgreSQL storage whose URL Dagster reads from
CB_DAGSTER_DATABASE_URL. For the embedded defaults `services up` also writes a `.env` in the working directory
(Dagster loads it before it builds the instance) naming that directory and every CB_* value the resources
read, so `dagster dev` from the checkout uses the same instance and data. Nothing secret is written: external
URLs (which may hold passwords) are never put in the file.
"""

from __future__ import annotations

from pathlib import Path

from cb_assets.config import Settings, export_env

REPO_ROOT = Path(__file__).resolve().parents[2]
_MARKER = "# written by `cb-assets services up`"
_POSTGRES_STORAGE = """
# Added by cb-assets: runs, the event log and schedule/sensor state in PostgreSQL (dagster-postgres).
storage:
  postgres:
    postgres_url:
      env: CB_DAGSTER_DATABASE_URL
"""


def instance_yaml() -> str:
    """The platform instance's dagster.yaml: the checkout's settings plus PostgreSQL storage."""
    return (REPO_ROOT / "dagster.yaml").read_text() + _POSTGRES_STORAGE


def write_instance_yaml(home: Path) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "dagster.yaml"
    path.write_text(instance_yaml())
    return path


def prepare_dagster_home(settings: Settings) -> Path:
    write_instance_yaml(settings.dagster_home)
    return settings.dagster_home


def dagster_env(settings: Settings) -> dict[str, str]:
    """Variables a Dagster process of this platform needs (values resolved from the settings)."""
    env = export_env(settings, {})
    env["DAGSTER_HOME"] = str(settings.dagster_home)
    return env


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
        *(f"{k}={v}" for k, v in sorted(dagster_env(settings).items())),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path
