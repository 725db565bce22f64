"""Initial training and fine-tuning with honest, prequential evaluation (no Dagster here).

Test, then train: before a model learns an hour, it is scored on that hour. The promotion gate compares the
champion and the fine-tuned challenger on the same held-out windows: the last third of the newest hour, which
the challenger does not train on, separated from its training windows by an embargo of the longest horizon
(a training label at t reaches t + 200 s; without the gap it would overlap the held-out windows' targets).
Baselines (persistence, a ridge regression on the same features) are scored on the same windows.
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
from cb_assets.series.windows import WindowSet

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
    stride: int = 2
    batch_size: int = 16
    seed: int = 0
    network: dict = field(default_factory=dict)  # NetworkConfig overrides (sizes)


@dataclass
class Outcome:
    model: object  # keras.Model
    train_result: object  # TrainResult
    promote: bool
    reason: str
    holdout: dict[str, EvaluationReport]  # challenger, champion (if any), ridge, persistence
    prequential: dict[str, EvaluationReport]  # champion scored on each new hour before training on it
    n_train_windows: int
    n_holdout_windows: int


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
    head = dataclasses.replace(ws, valid=ws.valid & (t < cut - embargo))
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
    from cb_assets.model.train import new_model, train_model

    head, tail = split_holdout(newest)
    train_sets = [s for s in (*older, head) if s.valid.any()]
    n_train, n_hold = _n_valid(train_sets), int(tail.valid.sum())
    if n_train == 0:
        raise NotEnoughData(
            "no valid training windows in the given hours (cold start, gaps or missing products)"
        )
    if n_hold < MIN_HOLDOUT_WINDOWS:
        raise NotEnoughData(f"only {n_hold} held-out windows in the newest hour (need {MIN_HOLDOUT_WINDOWS})")
    model = new_model(_network_config(newest, settings.network), train_sets, seed=settings.seed)
    result = train_model(
        model,
        train_sets,
        epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        batch_size=settings.batch_size,
        stride=settings.stride,
        seed=settings.seed,
    )
    holdout = {"challenger": score(model, tail), **_baselines(train_sets, tail)}
    promote, reason = compare(holdout["challenger"], None)
    return Outcome(model, result, promote, reason, holdout, {}, n_train, n_hold)


def fine_tune_champion(
    champion: object,
    new_hours: Sequence[tuple[str, WindowSet]],
    replay: Sequence[WindowSet],
    settings: TrainSettings,
) -> Outcome:
    """Score the champion on every new hour (it has never seen them), fine-tune a copy on the new hours (minus
    the newest hour's held-out tail) with a replay sample, and decide on the held-out tail."""
    from cb_assets.model.train import fine_tune

    prequential = {key: score(champion, ws) for key, ws in new_hours if ws.valid.any()}
    *earlier, (_, newest) = new_hours
    head, tail = split_holdout(newest)
    train_sets = [s for s in (*(ws for _, ws in earlier), head) if s.valid.any()]
    n_train, n_hold = _n_valid(train_sets), int(tail.valid.sum())
    if n_train == 0:
        raise NotEnoughData("no valid windows in the new hours to fine-tune on")
    if n_hold < MIN_HOLDOUT_WINDOWS:
        raise NotEnoughData(f"only {n_hold} held-out windows in the newest hour (need {MIN_HOLDOUT_WINDOWS})")
    challenger, result = fine_tune(
        champion,
        train_sets,
        [s for s in replay if s.valid.any()],
        learning_rate=settings.fine_tune_learning_rate,
        replay_fraction=settings.replay_fraction,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        stride=settings.stride,
        seed=settings.seed,
    )
    holdout = {
        "challenger": score(challenger, tail),
        "champion": score(champion, tail),
        **_baselines([*train_sets, *replay], tail),
    }
    promote, reason = compare(holdout["challenger"], holdout["champion"])
    return Outcome(challenger, result, promote, reason, holdout, prequential, n_train, n_hold)
