"""Initial training and fine-tuning with honest, prequential evaluation (no Dagster here).

Test, then train: before a model learns an hour, it is scored on that hour. The promotion gate compares the
champion and the fine-tuned challenger on the same held-out windows: the last third of the newest hour, which
the challenger does not train on, separated from its training windows by an embargo of the longest horizon
(a training label at t reaches t + 200 s; without the gap it would overlap the held-out windows' targets).
Baselines (persistence, a ridge regression on the same features) are scored on the same windows.

Both trainings set the newest part of their own training windows aside to calibrate the model's per-output
shrinkage (train.split_calibration): never the held-out tail, which stays the gate's alone. A fine-tune
recalibrates on its own slice of the new hours.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cb_assets.model.baselines import RidgeBaseline
from cb_assets.model.evaluate import EvaluationReport, compare, evaluate
from cb_assets.series.schema import HORIZONS_S, SECOND_NS
from cb_assets.series.windows import ColumnStats, WindowSet

log = logging.getLogger(__name__)

HOLDOUT_FRACTION = 1 / 3
MIN_HOLDOUT_WINDOWS = 100


class NotEnoughData(ValueError):
    """Too few valid windows to train or to judge a model honestly."""


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 1
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 2e-4
    replay_fraction: float = 0.25
    # None: train.auto_stride (stride 2 for an hour, about WINDOWS_PER_EPOCH windows from a day of hours)
    stride: int | None = None
    batch_size: int = 16
    seed: int = 0
    weight_decay: float = 1e-4  # AdamW's decoupled weight decay
    # newest share of the training windows that fits the calibration (train.CALIBRATION_FRACTION); 0: none
    calibration_fraction: float = 0.2
    network: dict = field(default_factory=dict)  # NetworkConfig overrides (sizes)

    def stride_for(self, n_windows: int) -> int:
        """The stride to train `n_windows` valid windows with: the fixed one, or auto_stride's."""
        from cb_assets.model.train import auto_stride

        return self.stride if self.stride is not None else auto_stride(n_windows)


@dataclass
class Outcome:
    model: object  # keras.Model
    train_result: object  # TrainResult
    promote: bool
    reason: str
    holdout: dict[str, EvaluationReport]  # challenger, champion (if any), ridge, persistence
    prequential: dict[str, EvaluationReport]  # champion scored on each new hour before training on it
    n_train_windows: int  # valid windows the optimiser could draw from (calibration slice excluded)
    n_holdout_windows: int
    n_calibration_windows: int = 0  # valid windows of the calibration slice (0: uncalibrated)


def products_of(ws: WindowSet) -> list[str]:
    seen: dict[str, None] = {}
    for name in ws.output_names:
        seen.setdefault(name.split(":")[0], None)
    return list(seen)


def split_holdout(ws: WindowSet, fraction: float = HOLDOUT_FRACTION) -> tuple[WindowSet, WindowSet]:
    """(training head, held-out tail) of one hour's windows, with an embargo of max(horizon) between them."""
    t = ws.anchor_times_ns
    cut = t[0] + int((t[-1] - t[0]) * (1 - fraction))
    embargo = max(HORIZONS_S) * SECOND_NS
    head_valid = ws.valid & (t < cut - embargo)
    # The hour's stored statistics cover all of it, the held-out tail included: the head gets its own, so the
    # model's normalisation never sees the windows that judge it.
    head = dataclasses.replace(
        ws,
        valid=head_valid,
        feature_stats=ColumnStats.of(np.asarray(ws.features[ws.anchors[head_valid]], np.float64)),
        label_stats=ColumnStats.of(np.asarray(ws.labels[head_valid], np.float64)),
    )
    tail = dataclasses.replace(ws, valid=ws.valid & (t >= cut))
    return head, tail


def _n_valid(sets: Sequence[WindowSet]) -> int:
    return int(sum(int(np.count_nonzero(s.valid)) for s in sets))


def score(model: object, ws: WindowSet) -> EvaluationReport:
    """Forecasts of `model` on the valid windows of `ws`, scored against their labels."""
    from cb_assets.model.network import predict_returns

    idx = np.flatnonzero(ws.valid)
    views = ws.views()
    preds = np.empty((len(idx), ws.labels.shape[1]), dtype=np.float32)
    for i in range(0, len(idx), 256):  # one chunk of windows copied out of the views at a time
        preds[i : i + 256] = predict_returns(model, views[idx[i : i + 256]])
    return evaluate(np.asarray(ws.labels[idx], np.float64), preds, products_of(ws))


def _baselines(train_sets: Sequence[WindowSet], tail: WindowSet) -> dict[str, EvaluationReport]:
    idx = np.flatnonzero(tail.valid)
    y = np.asarray(tail.labels[idx], np.float64)
    products = products_of(tail)
    out = {"persistence": evaluate(y, np.zeros_like(y), products)}
    ridge = RidgeBaseline.fit(train_sets)
    out["ridge"] = evaluate(y, ridge.predict(dataclasses.replace(tail, valid=tail.valid))[idx], products)
    return out


def _network_config(ws: WindowSet, overrides: dict):
    from cb_assets.model.network import NetworkConfig

    return NetworkConfig(
        **{
            **overrides,
            "window": ws.window,
            "n_features": ws.features.shape[1],
            "n_outputs": ws.labels.shape[1],
        }
    )


def train_initial(older: Sequence[WindowSet], newest: WindowSet, settings: TrainSettings) -> Outcome:
    """A new model on the older hours plus the head of the newest; judged on the newest hour's tail."""
    from cb_assets.model.train import new_model, split_calibration, train_model

    head, tail = split_holdout(newest)
    train_sets = [s for s in (*older, head) if s.valid.any()]
    n_hold = int(tail.valid.sum())
    if not train_sets:
        raise NotEnoughData(
            "no valid training windows in the given hours (cold start, gaps or missing products)"
        )
    if n_hold < MIN_HOLDOUT_WINDOWS:
        raise NotEnoughData(f"only {n_hold} held-out windows in the newest hour (need {MIN_HOLDOUT_WINDOWS})")
    fit_sets, calibration_sets = split_calibration(train_sets, settings.calibration_fraction)
    n_train = _n_valid(fit_sets)
    model = new_model(_network_config(newest, settings.network), fit_sets, seed=settings.seed)
    result = train_model(
        model,
        fit_sets,
        epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        batch_size=settings.batch_size,
        stride=settings.stride_for(n_train),
        seed=settings.seed,
        weight_decay=settings.weight_decay,
        calibration_sets=calibration_sets,
    )
    # The ridge baseline may fit on the calibration slice too: it is training data, only not the network's.
    holdout = {"challenger": score(model, tail), **_baselines(train_sets, tail)}
    promote, reason = compare(holdout["challenger"], None)
    return Outcome(model, result, promote, reason, holdout, {}, n_train, n_hold, _n_valid(calibration_sets))


def fine_tune_champion(
    champion: object,
    new_hours: Sequence[tuple[str, WindowSet]],
    replay: Sequence[WindowSet],
    settings: TrainSettings,
) -> Outcome:
    """Score the champion on every new hour (it has never seen them), fine-tune a copy on the new hours (minus
    the newest hour's held-out tail) with a replay sample, and decide on the held-out tail."""
    from cb_assets.model.train import fine_tune, split_calibration

    prequential = {key: score(champion, ws) for key, ws in new_hours if ws.valid.any()}
    *earlier, (_, newest) = new_hours
    head, tail = split_holdout(newest)
    train_sets = [s for s in (*(ws for _, ws in earlier), head) if s.valid.any()]
    n_hold = int(tail.valid.sum())
    if not train_sets:
        raise NotEnoughData("no valid windows in the new hours to fine-tune on")
    if n_hold < MIN_HOLDOUT_WINDOWS:
        raise NotEnoughData(f"only {n_hold} held-out windows in the newest hour (need {MIN_HOLDOUT_WINDOWS})")
    # The slice comes from the new hours only: the replay hours were the champion's training data.
    fit_sets, calibration_sets = split_calibration(train_sets, settings.calibration_fraction)
    n_train = _n_valid(fit_sets)
    challenger, result = fine_tune(
        champion,
        fit_sets,
        [s for s in replay if s.valid.any()],
        learning_rate=settings.fine_tune_learning_rate,
        replay_fraction=settings.replay_fraction,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        stride=settings.stride_for(n_train),
        seed=settings.seed,
        weight_decay=settings.weight_decay,
        calibration_sets=calibration_sets,
    )
    holdout = {
        "challenger": score(challenger, tail),
        "champion": score(champion, tail),
        **_baselines([*train_sets, *replay], tail),
    }
    promote, reason = compare(holdout["challenger"], holdout["champion"])
    return Outcome(
        challenger, result, promote, reason, holdout, prequential, n_train, n_hold, _n_valid(calibration_sets)
    )
