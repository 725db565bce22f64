"""`price_model`: the composite forecaster, trained from scratch or fine-tuned from the champion, one version
per run.

Every materialisation registers a model version in PostgreSQL (promoted or not, and why, with the gate's
per-output decisions), writes its .keras artifact under CB_ARTIFACTS_DIR and reports held-out metrics as
metadata, so the UI charts skill across versions. TensorFlow is imported inside the function only: this module
is loaded by the code server that also evaluates sensors, which must stay light.
"""

import dagster as dg
from pydantic import Field

from cb_assets.defs import price_model_meta as meta
from cb_assets.defs.code_versions import CODE_VERSIONS
from cb_assets.defs.resources import ArtifactStore, PostgresResource, WindowStoreResource
from cb_assets.defs.retries import RETRY_POLICY, deterministic_failures
from cb_assets.defs.schemas import ModelMetricsModel, column_schema
from cb_assets.defs.training_windows import TRAINING_WINDOWS
from cb_assets.model.priority import TRAINING_NICE, training_priority
from cb_assets.model.settings import NETWORK_DEFAULTS as NET
from cb_assets.model.settings import TRAIN_DEFAULTS as TRAIN
from cb_assets.model.settings import TrainSettings

PRICE_MODEL = dg.AssetKey("price_model")


class PriceModelConfig(dg.Config):
    """How to train. The sensor's fine-tune runs set `hours`; every default comes from model/settings.py."""

    mode: str = (
        "auto"  # auto (fine_tune when a composite champion exists, else initial) | initial | fine_tune
    )
    # partition keys: the new hours (fine_tune) or the training range (initial); empty = the newest stored
    hours: list[str] = Field(default_factory=list)
    # Initial training without `hours`: the newest stored hours (fewer if fewer exist). A day rather than a
    # few hours: on 6 hours the network memorised them and its held-out skill was strongly negative.
    initial_hours: int = 24
    replay_hours: int = 6  # fine-tune: how many earlier trained hours the replay sample is drawn from
    family: str = "composite"  # composite (linear + residual network + gate) | linear (no network trained)
    epochs: int = TRAIN.epochs
    learning_rate: float = TRAIN.learning_rate
    fine_tune_learning_rate: float = TRAIN.fine_tune_learning_rate
    replay_fraction: float = TRAIN.replay_fraction
    stride: int | None = TRAIN.stride  # None: adapt to the amount of data (settings.auto_stride)
    batch_size: int = TRAIN.batch_size
    seed: int = TRAIN.seed
    weight_decay: float = TRAIN.weight_decay
    calibration_fraction: float = TRAIN.calibration_fraction
    gate_hours: int = TRAIN.gate_hours
    gate_t: float = TRAIN.gate_t
    gate_network_alpha: float = TRAIN.gate_network_alpha
    conv_filters: list[int] = Field(default_factory=lambda: list(NET.conv_filters))
    d_model: int = NET.d_model
    heads: int = NET.heads
    ff_dim: int = NET.ff_dim
    head_units: int = NET.head_units
    dropout: float = NET.dropout
    # CPU priority while training (0-19; higher yields more): beside a fine-tune on two cores the live
    # forecaster's p99 was 412 ms at nice 0, 136 ms at nice 10 (bench/forecast.py).
    nice: int = Field(default=TRAINING_NICE, ge=0, le=19)

    def settings(self) -> TrainSettings:
        fields = TrainSettings.__dataclass_fields__
        network = {k: getattr(self, k) for k in ("d_model", "heads", "ff_dim", "head_units", "dropout")}
        return TrainSettings(
            **{k: v for k, v in self.model_dump().items() if k in fields and k != "network"},
            train_network=self.family == "composite",
            network={**network, "conv_filters": tuple(self.conv_filters)},
        )


@dg.asset(
    deps=[TRAINING_WINDOWS],
    check_specs=[
        dg.AssetCheckSpec(
            "finite_forecasts",
            asset=PRICE_MODEL,
            blocking=True,
            description="held-out forecasts and metrics are finite",
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
    """A linear model on lagged window values plus a Conv1D + Transformer network on its residuals; per output
    a gate serves persistence, the linear model or both, whichever the held-out evidence supports. A fine-tune
    updates both from the champion; the challenger replaces the champion only if its held-out score is not
    worse."""
    from cb_assets.model.network import load_model, save_model
    from cb_assets.model.pipeline import NotEnoughData, fine_tune_champion, train_initial

    store, settings = windows.store, config.settings()
    with postgres.connection() as conn:
        state = meta.RegistryState.read(conn, config.family)
    mode = state.mode_for(config.mode)
    p = meta.plan(
        mode=mode,
        requested=config.hours,
        available=store.keys(),
        state=state,
        initial_hours=config.initial_hours,
        replay_hours=config.replay_hours,
        gate_hours=settings.gate_hours,
    )
    with training_priority(config.nice):
        try:
            if mode == "initial":
                sets = [store.load(h) for h in p.hours]
                outcome = train_initial(sets[:-1], sets[-1], settings)
            else:
                new = [(h, store.load(h)) for h in p.hours]
                replay, history = [store.load(h) for h in p.replay], [store.load(h) for h in p.gate_history]
                outcome = fine_tune_champion(
                    load_model(state.champion.artifact_path), new, replay, settings, history
                )  # type: ignore[union-attr]
        except NotEnoughData as exc:
            raise dg.Failure(description=f"{mode} on {p.hours}: {exc}") from exc

    def save(version_id: int) -> str:
        return str(save_model(outcome.model, artifacts.path("models", f"price_model_v{version_id}.keras")))

    with postgres.connection() as conn, conn.transaction():
        version_id, path = meta.record(
            conn, outcome, p, family=config.family, champion=state.champion, run_id=context.run_id, save=save
        )
    return meta.result(
        context,
        outcome,
        p,
        family=config.family,
        version_id=version_id,
        path=path,
        champion=state.champion,
        paused=state.paused,
    )
