"""The model registry in PostgreSQL: versions, the `champion` alias and its history, prequential
evaluations, and the operators' fine-tuning switch (sql/003, sql/004).

Plain psycopg, no TensorFlow: the sensor, the CLI and the UI-facing code can read it cheaply.

Which hours count as learned (`fine_tuned_hours`): only those of a version that was PROMOTED, by the gate
or by an operator. A challenger the gate rejects has not taught the serving model anything, so its hours
stay pending (`pending_hours`) and the next fine-tune trains on them together with its own new hour; the
champion's replay pool (`trained_hours`) includes them either way. Nothing an hour held is dropped because
one challenger lost.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

CHAMPION = "champion"
FAMILIES = ("network", "linear", "composite")

_COLUMNS = (
    "id",
    "parent_id",
    "created_at",
    "kind",
    "family",
    "partitions",
    "replay_partitions",
    "gate_partitions",
    "target_hour",
    "metrics",
    "gate",
    "artifact_path",
    "code_version",
    "status",
    "decision_reason",
    "dagster_run_id",
)


@dataclass(frozen=True)
class ModelVersion:
    id: int
    parent_id: int | None
    created_at: datetime
    kind: str
    family: str
    partitions: list[str]
    replay_partitions: list[str]
    gate_partitions: list[str]
    target_hour: str | None
    metrics: dict
    gate: dict
    artifact_path: str
    code_version: str
    status: str
    decision_reason: str
    dagster_run_id: str | None


def _select(prefix: str | None = None) -> sql.Composed:
    cols = [sql.Identifier(prefix, c) if prefix else sql.Identifier(c) for c in _COLUMNS]
    return sql.SQL("SELECT {} ").format(sql.SQL(", ").join(cols))


def code_version() -> str:
    """Package version plus a hash of the model code: two versions trained by different code never look alike."""
    try:
        version = importlib.metadata.version("cb-assets")
    except importlib.metadata.PackageNotFoundError:
        version = "0+unknown"
    digest = hashlib.sha256()
    model_dir = Path(__file__).parent.parent / "model"
    for name in ("network.py", "layers.py", "train.py", "linear.py", "gate.py", "pipeline.py"):
        digest.update((model_dir / name).read_bytes())
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
    family: str = "composite",
    gate: dict | None = None,
    gate_partitions: Sequence[str] = (),
) -> int:
    row = conn.execute(
        """INSERT INTO model_versions (parent_id, kind, family, partitions, replay_partitions, gate_partitions,
                                       target_hour, metrics, gate, artifact_path, code_version, status,
                                       decision_reason, dagster_run_id)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
        (
            parent_id,
            kind,
            family,
            list(partitions),
            list(replay_partitions),
            list(gate_partitions),
            target_hour,
            Jsonb(metrics),
            Jsonb(gate or {}),
            artifact_path,
            code or code_version(),
            status,
            decision_reason,
            dagster_run_id,
        ),
    ).fetchone()
    assert row is not None
    return int(row[0])


def set_artifact_path(conn: psycopg.Connection, version_id: int, path: str) -> None:
    conn.execute("UPDATE model_versions SET artifact_path = %s WHERE id = %s", (path, version_id))


def set_alias(
    conn: psycopg.Connection, version_id: int, reason: str, alias: str = CHAMPION, action: str = "gate"
) -> None:
    previous = conn.execute(
        "SELECT version_id FROM model_aliases WHERE alias = %s FOR UPDATE", (alias,)
    ).fetchone()
    conn.execute(
        """INSERT INTO model_aliases (alias, version_id) VALUES (%s, %s)
           ON CONFLICT (alias) DO UPDATE SET version_id = EXCLUDED.version_id, updated_at = now()""",
        (alias, version_id),
    )
    conn.execute(
        """INSERT INTO model_alias_history (alias, version_id, previous_version_id, reason, action)
           VALUES (%s, %s, %s, %s, %s)""",
        (alias, version_id, previous[0] if previous else None, reason, action),
    )


def get_version(conn: psycopg.Connection, version_id: int) -> ModelVersion | None:
    q = _select() + sql.SQL("FROM model_versions WHERE id = %s")
    row = conn.execute(q, (version_id,)).fetchone()
    return ModelVersion(*row) if row else None


def alias(conn: psycopg.Connection, name: str = CHAMPION) -> ModelVersion | None:
    q = _select("v") + sql.SQL(
        "FROM model_aliases a JOIN model_versions v ON v.id = a.version_id WHERE a.alias = %s"
    )
    row = conn.execute(q, (name,)).fetchone()
    return ModelVersion(*row) if row else None


def versions(conn: psycopg.Connection, limit: int = 50) -> list[ModelVersion]:
    q = _select() + sql.SQL("FROM model_versions ORDER BY id DESC LIMIT %s")
    return [ModelVersion(*r) for r in conn.execute(q, (limit,)).fetchall()]


def trained_hours(conn: psycopg.Connection) -> set[str]:
    """Every hour some version was trained on (the pool replay samples are drawn from)."""
    rows = conn.execute("SELECT DISTINCT unnest(partitions) FROM model_versions").fetchall()
    return {r[0] for r in rows}


def fine_tuned_hours(conn: psycopg.Connection) -> set[str]:
    """Hours a promoted version trained on (see the module docstring): never fine-tuned on again."""
    rows = conn.execute(
        """SELECT DISTINCT unnest(v.partitions) FROM model_versions v
           WHERE v.status = 'promoted'
              OR v.id IN (SELECT version_id FROM model_alias_history)"""
    ).fetchall()
    return {r[0] for r in rows}


def fine_tune_targets(conn: psycopg.Connection, family: str = "composite") -> set[str]:
    """Target hours of the family's fine-tunes, promoted or not: each is requested once (unique index)."""
    rows = conn.execute(
        "SELECT target_hour FROM model_versions WHERE kind = 'fine_tune' AND family = %s", (family,)
    ).fetchall()
    return {r[0] for r in rows}


def held_hours(conn: psycopg.Connection, family: str = "composite") -> set[str]:
    """Hours a fine-tune of `family` refuses as nothing new: learned by a promoted version, or the target of
    an earlier fine-tune. price_model trains only on hours outside it and the sensor requests none inside."""
    return fine_tuned_hours(conn) | fine_tune_targets(conn, family)


def pending_hours(conn: psycopg.Connection) -> list[str]:
    """Hours that only rejected fine-tunes trained on, oldest first: the next fine-tune takes them too."""
    rows = conn.execute(
        "SELECT DISTINCT unnest(partitions) FROM model_versions WHERE kind = 'fine_tune' AND status = 'rejected'"
    ).fetchall()
    return sorted({r[0] for r in rows} - fine_tuned_hours(conn))


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


@dataclass(frozen=True)
class AliasChange:
    changed_at: datetime
    version_id: int
    previous_version_id: int | None
    action: str
    reason: str


def alias_history(conn: psycopg.Connection, name: str = CHAMPION, limit: int = 20) -> list[AliasChange]:
    rows = conn.execute(
        """SELECT changed_at, version_id, previous_version_id, action, reason FROM model_alias_history
           WHERE alias = %s ORDER BY id DESC LIMIT %s""",
        (name, limit),
    ).fetchall()
    return [AliasChange(*r) for r in rows]


def promote(conn: psycopg.Connection, version_id: int, reason: str) -> ModelVersion:
    """Make `version_id` the champion by an operator's decision (recorded with the reason)."""
    if not reason.strip():
        raise ValueError("a promotion needs a reason")
    version = get_version(conn, version_id)
    if version is None:
        raise LookupError(f"no model version {version_id}")
    if not version.artifact_path:
        raise ValueError(f"version {version_id} has no artifact")
    set_alias(conn, version_id, reason, action="promote")
    return version


def rollback(conn: psycopg.Connection, reason: str) -> ModelVersion:
    """Return the champion alias to the version it named before the current one."""
    if not reason.strip():
        raise ValueError("a rollback needs a reason")
    history = alias_history(conn, limit=1)
    if not history or history[0].previous_version_id is None:
        raise LookupError("no earlier champion to roll back to")
    target = history[0].previous_version_id
    set_alias(conn, target, reason, action="rollback")
    version = get_version(conn, target)
    assert version is not None
    return version


def fine_tuning_paused(conn: psycopg.Connection) -> tuple[bool, str]:
    """(paused, reason) of sensor-triggered fine-tuning; (False, "") before migration 004's row exists."""
    row = conn.execute("SELECT fine_tuning_paused, reason FROM model_control WHERE id").fetchone()
    return (bool(row[0]), str(row[1])) if row else (False, "")


def set_fine_tuning_paused(conn: psycopg.Connection, paused: bool, reason: str) -> None:
    conn.execute(
        """INSERT INTO model_control (id, fine_tuning_paused, reason, updated_at) VALUES (true, %s, %s, now())
           ON CONFLICT (id) DO UPDATE SET fine_tuning_paused = EXCLUDED.fine_tuning_paused,
               reason = EXCLUDED.reason, updated_at = now()""",
        (paused, reason),
    )
