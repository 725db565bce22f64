"""`price_model`: the forecaster, trained from scratch or fine-tuned from the champion, one version per run.

Every materialisation registers a model version in PostgreSQL (promoted or not, and why), writes its .keras
artifact under CB_ARTIFACTS_DIR and reports held-out metrics as metadata, so the UI charts skill across versions.
TensorFlow is imported inside the function only: this module is loaded by the code server that also evaluates
sensors, which must stay light.
"""

import math

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from cb_assets.defs.code_versions import CODE_VERSIONS
from cb_assets.defs.plots import as_markdown
from cb_assets.defs.resources import ArtifactStore, PostgresResource, WindowStoreResource
from cb_assets.defs.retries import RETRY_POLICY, deterministic_failures
from cb_assets.defs.schemas import ModelMetricsModel, column_schema, describe_failures, validate
from cb_assets.defs.training_windows import TRAINING_WINDOWS
from cb_assets.model import registry
from cb_assets.model.evaluate import EvaluationReport, loss_curve_png, metrics_markdown
from cb_assets.series.schema import HORIZONS_S

PRICE_MODEL = dg.AssetKey("price_model")


class PriceModelConfig(dg.Config):
    """How to train. The sensor's fine-tune runs set `hours`; the defaults suit 2 CPU cores."""

    mode: str = "auto"  # auto (fine_tune when a champion exists, else initial) | initial | fine_tune
    # partition keys: the new hours (fine_tune) or the training range (initial); empty = the newest stored
    hours: list[str] = Field(default_factory=list)
    # Initial training without `hours`: the newest stored hours (fewer if fewer exist). A day rather than a
    # few hours: on 6 hours the network memorised them and its held-out skill was strongly negative.
    initial_hours: int = 24
    replay_hours: int = 6  # fine-tune: how many earlier trained hours the replay sample is drawn from
    epochs: int = 1
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 2e-4
    replay_fraction: float = 0.25
    # None: adapt to the amount of data (2 for an hour, about 24,000 windows per epoch from a day)
    stride: int | None = None
    batch_size: int = 16
    seed: int = 0
    weight_decay: float = 1e-4
    # newest share of the training windows kept from the optimiser to fit the per-output calibration
    calibration_fraction: float = 0.2
    conv_filters: list[int] = Field(default_factory=lambda: [64, 64])
    d_model: int = 64
    heads: int = 4
    ff_dim: int = 128
    head_units: int = 64
    dropout: float = 0.1


def _json_safe(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _metrics_frame(reports: dict[str, EvaluationReport]) -> pd.DataFrame:
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
    frame = pd.DataFrame(rows)
    return frame.astype({"horizon_s": "int64", "n": "int64"})


def _resolve_hours(config: PriceModelConfig, available: list[str], done: set[str], mode: str) -> list[str]:
    if config.hours:
        missing = [h for h in config.hours if h not in available]
        if missing:
            raise dg.Failure(f"no training_windows stored for {missing}: materialise them first")
        hours = sorted(config.hours)
    elif mode == "initial":
        hours = available[-config.initial_hours :]
    else:
        hours = [h for h in available if h not in done][-1:]
    if mode == "fine_tune":
        hours = [h for h in hours if h not in done]  # never fine-tune twice on the same hour
    return hours


@dg.asset(
    deps=[TRAINING_WINDOWS],
    check_specs=[
        dg.AssetCheckSpec(
            "finite_forecasts",
            asset=PRICE_MODEL,
            blocking=True,
            description="the trained model's held-out forecasts and metrics are all finite",
        ),
        dg.AssetCheckSpec(
            "skill_not_below_persistence",
            asset=PRICE_MODEL,
            description="held-out skill >= 0: at least as good as forecasting no change",
        ),
    ],
    pool="training",
    retry_policy=RETRY_POLICY,
    code_version=CODE_VERSIONS["price_model"],
    group_name="market",
    kinds={"tensorflow", "keras"},
    metadata={"dagster/column_schema": column_schema(ModelMetricsModel)},
)
@deterministic_failures
def price_model(
    context: dg.AssetExecutionContext,
    config: PriceModelConfig,
    postgres: PostgresResource,
    artifacts: ArtifactStore,
    windows: WindowStoreResource,
) -> dg.MaterializeResult:
    """A Conv1D + Transformer network forecasting log returns of every product at 10/20/100/200 s from 1000 s
    windows. A fine-tune warm-starts from the champion at a lower learning rate with a replay sample of older
    hours; the challenger replaces the champion only if its held-out score is not worse."""
    from cb_assets.model.network import load_model, save_model
    from cb_assets.model.pipeline import NotEnoughData, TrainSettings, fine_tune_champion, train_initial

    store = windows.store
    available = store.keys()
    with postgres.connection() as conn:
        champion = registry.alias(conn)
        done = registry.fine_tuned_hours(conn)
        trained = registry.trained_hours(conn)
    mode = config.mode if config.mode != "auto" else ("fine_tune" if champion else "initial")
    if mode == "fine_tune" and champion is None:
        raise dg.Failure("mode fine_tune needs a champion; run with mode initial (or auto) first")
    hours = _resolve_hours(config, available, done, mode)
    if not hours:
        raise dg.Failure(
            f"nothing to train on: stored hours {available[-3:]}..., already fine-tuned on {sorted(done)[-3:]}"
        )
    settings = TrainSettings(
        epochs=config.epochs,
        learning_rate=config.learning_rate,
        fine_tune_learning_rate=config.fine_tune_learning_rate,
        replay_fraction=config.replay_fraction,
        stride=config.stride,
        batch_size=config.batch_size,
        seed=config.seed,
        weight_decay=config.weight_decay,
        calibration_fraction=config.calibration_fraction,
        network={
            "conv_filters": tuple(config.conv_filters),
            "d_model": config.d_model,
            "heads": config.heads,
            "ff_dim": config.ff_dim,
            "head_units": config.head_units,
            "dropout": config.dropout,
        },
    )
    sets = [(h, store.load(h)) for h in hours]
    replay_keys: list[str] = []
    try:
        if mode == "initial":
            outcome = train_initial([ws for _, ws in sets[:-1]], sets[-1][1], settings)
        else:
            replay_keys = sorted(h for h in trained if h in available and h not in hours)[
                -config.replay_hours :
            ]
            champ_model = load_model(champion.artifact_path)
            outcome = fine_tune_champion(champ_model, sets, [store.load(h) for h in replay_keys], settings)
    except NotEnoughData as exc:
        raise dg.Failure(description=f"{mode} on {hours}: {exc}") from exc

    metrics = {
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
    # Everything that could still fail comes before the version is registered.
    tr = outcome.train_result
    per_epoch = max(1, tr.steps // max(1, len(tr.epoch_losses)))
    loss_plot = as_markdown(
        loss_curve_png(
            tr.step_losses,
            epoch_steps=[per_epoch * (k + 1) for k in range(len(tr.epoch_losses))],
            title=f"{mode} on {hours[-1]}: training loss",
        ),
        "loss curve",
    )
    holdout_md = dg.MetadataValue.md(
        "\n\n".join(
            f"**{role}**\n\n{metrics_markdown(rep, per_output=role == 'challenger')}"
            for role, rep in outcome.holdout.items()
        )
    )
    with postgres.connection() as conn, conn.transaction():
        version_id = registry.register(
            conn,
            kind=mode,
            parent_id=champion.id if (champion and mode == "fine_tune") else None,
            partitions=hours,
            replay_partitions=replay_keys,
            target_hour=hours[-1] if mode == "fine_tune" else None,
            metrics=_json_safe(metrics),
            artifact_path="",
            status="promoted" if outcome.promote else "rejected",
            decision_reason=outcome.reason,
            dagster_run_id=context.run_id,
        )
        path = save_model(outcome.model, artifacts.path("models", f"price_model_v{version_id}.keras"))
        registry.set_artifact_path(conn, version_id, str(path))
        if outcome.promote:
            registry.set_alias(conn, version_id, outcome.reason)
        for key, rep in outcome.prequential.items():
            registry.record_evaluation(
                conn,
                version_id=champion.id if champion else None,
                partition_key=key,
                role="champion",
                scope="full_hour",
                score=_json_safe(rep.score),
                metrics=_json_safe({"rows": rep.to_records()}),
            )
        for role, rep in outcome.holdout.items():
            registry.record_evaluation(
                conn,
                version_id=version_id
                if role == "challenger"
                else (champion.id if role == "champion" and champion else None),
                partition_key=hours[-1],
                role=role,
                scope="holdout",
                score=_json_safe(rep.score),
                metrics=_json_safe({"rows": rep.to_records()}),
            )

    frame = _metrics_frame(outcome.holdout)
    errors = validate(ModelMetricsModel, frame)
    if errors is not None:
        context.log.warning("metrics frame fails its schema: %s", describe_failures(errors))
    challenger = outcome.holdout["challenger"]
    meta: dict[str, object] = {
        "version_id": version_id,
        "parent_version_id": champion.id if (champion and mode == "fine_tune") else -1,
        "mode": mode,
        "promoted": outcome.promote,
        "decision": outcome.reason,
        "champion_version_id": version_id if outcome.promote else (champion.id if champion else -1),
        "trained_hours": dg.MetadataValue.json(hours),
        "replay_hours": dg.MetadataValue.json(replay_keys),
        "train_windows": outcome.n_train_windows,
        "holdout_windows": outcome.n_holdout_windows,
        "train_seconds": float(tr.seconds),
        "windows_per_second": float(tr.windows_seen / max(tr.seconds, 1e-9)),
        "final_loss": float(tr.epoch_losses[-1]) if tr.epoch_losses else float("nan"),
        "artifact": dg.MetadataValue.path(str(path)),
        "dagster/row_count": len(frame),
        "holdout_metrics": holdout_md,
        "loss_curve": loss_plot,
    }
    for role, rep in outcome.holdout.items():
        meta[f"{role}_score"] = float(rep.score) if math.isfinite(rep.score) else float("nan")
    for r in challenger.aggregates:
        if r.horizon_s in HORIZONS_S:
            meta[f"skill_{r.horizon_s}s"] = float(r.skill)
    for key, rep in outcome.prequential.items():
        meta["champion_prequential_score"] = float(rep.score)
        meta["prequential_hour"] = key
    overall = (
        challenger.row("ALL", None)
        if any(r.product == "ALL" and r.horizon_s is None for r in challenger.aggregates)
        else None
    )
    skill = overall.skill if overall else challenger.score
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
                passed=bool(np.isfinite(skill) and skill >= 0),
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"skill": float(skill) if np.isfinite(skill) else 0.0},
            ),
        ],
    )
