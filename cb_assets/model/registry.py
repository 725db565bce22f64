"""The model registry in PostgreSQL: versions, the `champion` alias and prequential evaluations.

Plain psycopg, no TensorFlow: the sensor, the CLI and the UI-facing code can read it cheaply.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg.types.json import Jsonb

CHAMPION = "champion"


@dataclass(frozen=True)
class ModelVersion:
    id: int
    parent_id: int | None
    created_at: datetime
    kind: str
    partitions: list[str]
    replay_partitions: list[str]
    target_hour: str | None
    metrics: dict
    artifact_path: str
    code_version: str
    status: str
    decision_reason: str
    dagster_run_id: str | None


_COLUMNS = (
    "id, parent_id, created_at, kind, partitions, replay_partitions, target_hour, metrics, artifact_path, "
    "code_version, status, decision_reason, dagster_run_id"
)


def code_version() -> str:
    """Package version plus a hash of the model code: two versions trained by different code never look alike."""
    try:
        version = importlib.metadata.version("cb-assets")
    except importlib.metadata.PackageNotFoundError:
        version = "0+unknown"
    digest = hashlib.sha256()
    here = Path(__file__).parent
    for name in ("network.py", "train.py"):
        digest.update((here / name).read_bytes())
    return f"{version}+{digest.hexdigest()[:10]}"


def register(
    conn: psycopg.Connection,
    *,
    kind: str,
    parent_id: int | None,
    partitions: Sequence[str],
    replay_partitions: Sequence[str] = (),
    target_hour: str | None,
    metrics: dict,
    artifact_path: str,
    status: str,
    decision_reason: str,
    dagster_run_id: str | None = None,
    code: str | None = None,
) -> int:
    row = conn.execute(
        """INSERT INTO model_versions (parent_id, kind, partitions, replay_partitions, target_hour, metrics,
                                       artifact_path, code_version, status, decision_reason, dagster_run_id)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
        (
            parent_id,
            kind,
            list(partitions),
            list(replay_partitions),
            target_hour,
            Jsonb(metrics),
            artifact_path,
            code or code_version(),
            status,
            decision_reason,
            dagster_run_id,
        ),
    ).fetchone()
    return int(row[0])


def set_artifact_path(conn: psycopg.Connection, version_id: int, path: str) -> None:
    conn.execute("UPDATE model_versions SET artifact_path = %s WHERE id = %s", (path, version_id))


def set_alias(conn: psycopg.Connection, version_id: int, reason: str, alias: str = CHAMPION) -> None:
    previous = conn.execute(
        "SELECT version_id FROM model_aliases WHERE alias = %s FOR UPDATE", (alias,)
    ).fetchone()
    conn.execute(
        """INSERT INTO model_aliases (alias, version_id) VALUES (%s, %s)
           ON CONFLICT (alias) DO UPDATE SET version_id = EXCLUDED.version_id, updated_at = now()""",
        (alias, version_id),
    )
    conn.execute(
        "INSERT INTO model_alias_history (alias, version_id, previous_version_id, reason) VALUES (%s, %s, %s, %s)",
        (alias, version_id, previous[0] if previous else None, reason),
    )


def get_version(conn: psycopg.Connection, version_id: int) -> ModelVersion | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM model_versions WHERE id = %s", (version_id,)).fetchone()
    return ModelVersion(*row) if row else None


def alias(conn: psycopg.Connection, name: str = CHAMPION) -> ModelVersion | None:
    row = conn.execute(
        f"SELECT {', '.join('v.' + c.strip() for c in _COLUMNS.split(','))} FROM model_aliases a "
        "JOIN model_versions v ON v.id = a.version_id WHERE a.alias = %s",
        (name,),
    ).fetchone()
    return ModelVersion(*row) if row else None


def versions(conn: psycopg.Connection, limit: int = 50) -> list[ModelVersion]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM model_versions ORDER BY id DESC LIMIT %s", (limit,)
    ).fetchall()
    return [ModelVersion(*r) for r in rows]


def trained_hours(conn: psycopg.Connection) -> set[str]:
    """Every hour some version was trained on (the pool replay samples are drawn from)."""
    rows = conn.execute("SELECT DISTINCT unnest(partitions) FROM model_versions").fetchall()
    return {r[0] for r in rows}


def fine_tuned_hours(conn: psycopg.Connection) -> set[str]:
    """Hours some fine-tune already learned (promoted or not): they are never fine-tuned on again."""
    rows = conn.execute(
        "SELECT DISTINCT unnest(partitions) FROM model_versions WHERE kind = 'fine_tune'"
    ).fetchall()
    return {r[0] for r in rows}


def record_evaluation(
    conn: psycopg.Connection,
    *,
    version_id: int | None,
    partition_key: str,
    role: str,
    scope: str,
    score: float | None,
    metrics: dict,
) -> None:
    conn.execute(
        """INSERT INTO model_evaluations (version_id, partition_key, role, scope, score, metrics)
           VALUES (%s, %s, %s, %s, %s, %s)""",
        (version_id, partition_key, role, scope, score, Jsonb(metrics)),
    )
