"""Helpers of the `price_model` asset: which hours to train on, recording a version, and its metadata.

Kept apart from the asset so the asset body stays wiring (read, train, write, report). The registry's
SQL lives in db/model_registry.py; here only its functions are called.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dagster as dg
import numpy as np
import pandas as pd
import psycopg

from cb_assets.db import model_registry as registry
from cb_assets.defs.plots import as_markdown
from cb_assets.defs.schemas import ModelMetricsModel, describe_failures, validate
from cb_assets.model.evaluate import EvaluationReport, loss_curve_png, metrics_markdown
from cb_assets.model.gate import CANDIDATES, summary
from cb_assets.model.pipeline import Outcome
from cb_assets.series.schema import HORIZONS_S


@dataclass(frozen=True)
class Plan:
    mode: str  # initial | fine_tune
    hours: list[str]  # trained on (a fine-tune: pending hours of rejected challengers + the new ones)
    gate_history: list[str]  # hours just before them whose tails the gate also judges on (fine-tune)
    replay: list[str]
    gate: list[str]  # the hours whose tails judge the version


@dataclass(frozen=True)
class RegistryState:
    """What a run needs to know from the registry, read once."""

    champion: registry.ModelVersion | None
    paused: tuple[bool, str]
    done: set[str]  # hours a promoted version learned
    pending: list[str]  # hours only rejected fine-tunes trained on
    trained: set[str]  # every hour some version trained on (the replay pool)
    held: set[str]  # hours a fine-tune refuses (registry.held_hours)

    @classmethod
    def read(cls, conn: psycopg.Connection, family: str) -> RegistryState:
        return cls(
            registry.alias(conn),
            registry.fine_tuning_paused(conn),
            registry.fine_tuned_hours(conn),
            registry.pending_hours(conn),
            registry.trained_hours(conn),
            registry.held_hours(conn, family),
        )

    def mode_for(self, requested: str) -> str:
        """auto: fine-tune a composite champion, else train an initial one (network-only versions predate
        the composite and cannot be fine-tuned into one). Refuses a fine-tune while fine-tuning is paused
        (auto is what the sensor requests; an operator's explicit mode goes through)."""
        usable = self.champion is not None and self.champion.family != "network"
        mode = requested if requested != "auto" else ("fine_tune" if usable else "initial")
        if requested == "auto" and mode == "fine_tune" and self.paused[0]:
            raise dg.Failure(
                f"fine-tuning is paused ({self.paused[1]}); `cb-assets models resume` to continue"
            )
        if mode == "fine_tune" and not usable:
            raise dg.Failure(
                "mode fine_tune needs a composite champion; run with mode initial (or auto) first"
            )
        if mode not in ("initial", "fine_tune"):
            raise dg.Failure(f"unknown mode {requested!r}: auto, initial or fine_tune")
        return mode


def plan(
    *,
    mode: str,
    requested: Sequence[str],
    available: Sequence[str],
    state: RegistryState,
    initial_hours: int,
    replay_hours: int,
    gate_hours: int,
) -> Plan:
    """The hours of one run. A fine-tune never trains twice on a learned hour, and folds in the hours that
    only rejected challengers trained on (the newest `replay_hours` of them; older ones stay in the replay
    pool), so a lost comparison does not drop an hour from learning."""
    done, held, pending, trained = state.done, state.held, state.pending, state.trained
    if requested:
        missing = [h for h in requested if h not in available]
        if missing:
            raise dg.Failure(f"no training_windows stored for {missing}: materialise them first")
        hours = sorted(requested)
    elif mode == "initial":
        hours = list(available)[-initial_hours:]
    else:
        hours = [h for h in available if h not in done][-1:]
    if not hours:
        raise dg.Failure(
            f"nothing to train on: stored hours {list(available)[-3:]}, learned {sorted(done)[-3:]}"
        )
    if mode != "fine_tune":
        return Plan(mode, hours, [], [], hours[-gate_hours:])
    fresh = [h for h in hours if h not in held]
    if not fresh:
        raise dg.Failure(f"nothing to train on: {list(hours)} already learned or fine-tuned on")
    folded = [h for h in pending if h in available and h < fresh[0]][-replay_hours:]
    hours = sorted({*folded, *fresh})
    before = [h for h in available if h < hours[0]]
    history = before[len(before) - max(0, gate_hours - 1) :] if gate_hours > 1 else []
    # History hours may be replayed: the pipeline keeps every training window clear of the gate's tails.
    replay = sorted(h for h in trained if h in available and h not in hours)
    return Plan(mode, hours, history, replay[-replay_hours:], [*history, *hours][-gate_hours:])


def json_safe(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.floating):
        return json_safe(float(value))
    return value


def metrics_frame(reports: dict[str, EvaluationReport]) -> pd.DataFrame:
    rows = [
        {
            "model": role,
            "product_id": r.product,
            "horizon_s": int(r.horizon_s),
            "n": int(r.n),
            "mae": r.mae,
            "rmse": r.rmse,
            "skill": r.skill,
            "mae_ratio": r.mae_ratio,
            "ic": r.ic,
            "hit_rate": r.hit_rate,
        }
        for role, rep in reports.items()
        for r in (*rep.rows, *rep.aggregates)
        if r.horizon_s is not None
    ]
    return pd.DataFrame(rows).astype({"horizon_s": "int64", "n": "int64"})


def _metrics(outcome: Outcome) -> dict:
    return {
        role: {
            "score": rep.score,
            "n_windows": rep.n_windows,
            "per_horizon": [
                {"horizon_s": r.horizon_s, "skill": r.skill, "mae": r.mae, "ic": r.ic}
                for r in rep.aggregates
                if r.horizon_s is not None
            ],
        }
        for role, rep in outcome.holdout.items()
    }


def gate_record(outcome: Outcome) -> dict:
    decisions = outcome.decisions
    return {"outputs": [d.to_dict() for d in decisions], "summary": summary(decisions)}


def record(
    conn: psycopg.Connection,
    outcome: Outcome,
    p: Plan,
    *,
    family: str,
    champion: registry.ModelVersion | None,
    run_id: str,
    save: Callable[[int], str],
) -> tuple[int, str]:
    """Register the version, save its artifact (`save(version_id) -> path`), move the alias if the gate
    promoted it, and record the prequential and held-out evaluations. One transaction: all or nothing."""
    parent = champion.id if (champion and p.mode == "fine_tune") else None
    version_id = registry.register(
        conn,
        kind=p.mode,
        family=family,
        parent_id=parent,
        partitions=p.hours,
        replay_partitions=p.replay,
        gate_partitions=p.gate,
        target_hour=p.hours[-1] if p.mode == "fine_tune" else None,
        metrics=json_safe(_metrics(outcome)),
        gate=json_safe(gate_record(outcome)),
        artifact_path="",
        status="promoted" if outcome.promote else "rejected",
        decision_reason=outcome.reason,
        dagster_run_id=run_id,
    )
    path = save(version_id)
    registry.set_artifact_path(conn, version_id, path)
    if outcome.promote:
        registry.set_alias(conn, version_id, outcome.reason)
    for key, rep in outcome.prequential.items():
        registry.record_evaluation(
            conn,
            version_id=champion.id if champion else None,
            partition_key=key,
            role="champion",
            scope="full_hour",
            score=json_safe(rep.score),
            metrics=json_safe({"rows": rep.to_records()}),
        )
    for role, rep in outcome.holdout.items():
        owner = {"challenger": version_id, "champion": champion.id if champion else None}.get(role)
        registry.record_evaluation(
            conn,
            version_id=owner,
            partition_key=p.hours[-1],
            role=role,
            scope="holdout",
            score=json_safe(rep.score),
            metrics=json_safe({"rows": rep.to_records()}),
        )
    return version_id, path


def gate_markdown(outcome: Outcome) -> str:
    lines = [
        "| output | serves | t linear | t network | skill linear | skill network |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for d in outcome.decisions:
        t_net = "n/a" if not math.isfinite(d.t_network) else f"{d.t_network:.1f}"
        net = d.skill.get("network", float("nan"))
        lines.append(
            f"| {d.output} | {d.choice} | {d.t_linear:.1f} | {t_net} | {d.skill['linear']:.4f} | "
            f"{'n/a' if not math.isfinite(net) else format(net, '.4f')} |"
        )
    return "\n".join(lines)


def result(
    context: dg.AssetExecutionContext,
    outcome: Outcome,
    p: Plan,
    *,
    family: str,
    version_id: int,
    path: str,
    champion: registry.ModelVersion | None,
    paused: tuple[bool, str],
) -> dg.MaterializeResult:
    """The materialisation: version, gate and held-out figures as metadata, plus the asset checks."""
    frame = metrics_frame(outcome.holdout)
    errors = validate(ModelMetricsModel, frame)
    if errors is not None:
        context.log.warning("metrics frame fails its schema: %s", describe_failures(errors))
    challenger: EvaluationReport = outcome.holdout["challenger"]
    chosen = summary(outcome.decisions)
    meta: dict[str, object] = {
        "version_id": version_id,
        "family": family,
        "parent_version_id": champion.id if (champion and p.mode == "fine_tune") else -1,
        "mode": p.mode,
        "promoted": outcome.promote,
        "decision": outcome.reason,
        "champion_version_id": version_id if outcome.promote else (champion.id if champion else -1),
        "trained_hours": dg.MetadataValue.json(p.hours),
        "replay_hours": dg.MetadataValue.json(p.replay),
        "gate_history_hours": dg.MetadataValue.json(p.gate_history),
        "train_windows": outcome.n_train_windows,
        "holdout_windows": outcome.n_holdout_windows,
        "fine_tuning_paused": paused[0],
        "fine_tuning_paused_reason": paused[1],
        "artifact": dg.MetadataValue.path(path),
        "dagster/row_count": len(frame),
        "gate": dg.MetadataValue.md(gate_markdown(outcome)),
        "holdout_metrics": dg.MetadataValue.md(
            "\n\n".join(
                f"**{role}**\n\n{metrics_markdown(rep, per_output=role == 'challenger')}"
                for role, rep in outcome.holdout.items()
            )
        ),
        **{f"outputs_{c}": len(chosen[c]) for c in CANDIDATES},
        **{f"{k}": float(v) for k, v in outcome.timings.items()},
    }
    for role, rep in outcome.holdout.items():
        meta[f"{role}_score"] = float(rep.score) if math.isfinite(rep.score) else float("nan")
    for key, rep in outcome.prequential.items():
        meta["champion_prequential_score"] = float(rep.score)
        meta["prequential_hour"] = key
    for r in challenger.aggregates:
        if r.horizon_s in HORIZONS_S:
            meta[f"skill_{r.horizon_s}s"] = float(r.skill)
    tr = outcome.train_result
    if tr is not None:
        per_epoch = max(1, tr.steps // max(1, len(tr.epoch_losses)))
        png = loss_curve_png(
            tr.step_losses,
            epoch_steps=[per_epoch * (k + 1) for k in range(len(tr.epoch_losses))],
            title=f"{p.mode} on {p.hours[-1]}: training loss (residual)",
        )
        meta["loss_curve"] = as_markdown(png, "loss curve")
        meta["windows_per_second"] = float(tr.windows_seen / max(tr.seconds, 1e-9))
    rows = [r for r in challenger.rows if not r.degenerate]
    worst = min((r.skill for r in rows), default=float("nan"))
    return dg.MaterializeResult(
        metadata=meta,
        check_results=[
            dg.AssetCheckResult(
                check_name="finite_forecasts",
                passed=not challenger.has_nan(),
                severity=dg.AssetCheckSeverity.ERROR,
            ),
            dg.AssetCheckResult(
                check_name="skill_not_below_persistence",
                passed=bool(np.isfinite(challenger.score) and challenger.score >= 0),
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "skill": float(challenger.score) if np.isfinite(challenger.score) else 0.0,
                    "worst_output_skill": float(worst) if np.isfinite(worst) else 0.0,
                },
            ),
        ],
    )
