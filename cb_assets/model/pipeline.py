"""Initial training and fine-tuning of the composite forecaster, judged by the per-output gate (no Dagster).

The composite (one `.keras` file, one registry version): a linear model on lagged window values
(linear.py), a network trained on the linear model's residuals, and a per-output gate (gate.py) that
serves persistence, the linear model or linear + network, whichever is the simplest the held-out
evidence does not reject. The network can then only add to the linear model, and neither can cost skill
where the evidence says there is nothing to predict.

Held-out windows: the last third of each of the newest `gate_hours` hours (the tails), behind an embargo
of the longest horizon on both sides (a training label at t reaches t + 200 s: without the gap before a
tail it would overlap the tail's labels, without the gap after it a training label would start inside
one). No model trains on a tail while it is among the newest `gate_hours` hours; only the gate sees it.
Older tails are ordinary training data again (the replay sample of a fine-tune draws whole hours).

Both trainings set the newest part of their own training windows aside to calibrate the network's
per-output shrinkage (calibration.py): never the tails.

Test, then train: before a fine-tune learns an hour, the champion is scored on it (prequential).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cb_assets.model import gate, linear
from cb_assets.model.baselines import RidgeBaseline, n_valid
from cb_assets.model.evaluate import EvaluationReport, compare, evaluate, output_keys
from cb_assets.model.settings import HOLDOUT_FRACTION, NetworkConfig, TrainSettings
from cb_assets.series.schema import HORIZONS_S, SECOND_NS
from cb_assets.series.windows import ColumnStats, WindowSet

log = logging.getLogger(__name__)

MIN_HOLDOUT_WINDOWS = 100
EMBARGO_NS = max(HORIZONS_S) * SECOND_NS


class NotEnoughData(ValueError):
    """Too few valid windows to train or to judge a model honestly."""


@dataclass
class Outcome:
    model: object  # keras.Model: the composite, gates set
    train_result: object | None  # TrainResult of the network (None: linear-only version)
    promote: bool
    reason: str
    # On the pooled tails: challenger (gated), network (linear + residual), linear, ridge (anchor row),
    # persistence and, for a fine-tune, champion.
    holdout: dict[str, EvaluationReport]
    prequential: dict[str, EvaluationReport]  # champion scored on each new hour before training on it
    decisions: list[gate.Decision]
    n_train_windows: int  # valid windows the network's optimiser could draw from
    n_holdout_windows: int
    n_calibration_windows: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def products_of(ws: WindowSet) -> list[str]:
    seen: dict[str, None] = {}
    for name in ws.output_names:
        seen.setdefault(name.split(":")[0], None)
    return list(seen)


def split_holdout(ws: WindowSet, fraction: float = HOLDOUT_FRACTION) -> tuple[WindowSet, WindowSet]:
    """(training head, held-out tail) of one hour's windows, with an embargo of max(horizon) between them."""
    t = ws.anchor_times_ns
    cut = t[0] + int((t[-1] - t[0]) * (1 - fraction))
    head_valid = ws.valid & (t < cut - EMBARGO_NS)
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


def split_gate(sets: Sequence[WindowSet], n_gate: int) -> tuple[list[WindowSet], list[WindowSet]]:
    """(training part of each set, tails): the newest `n_gate` sets lose their tails to the gate, and every
    window within the embargo after a tail is dropped from training too. The training parts stay aligned
    with `sets` (some may hold no valid window); tails without valid windows are left out."""
    sets = list(sets)
    first_gate = max(0, len(sets) - n_gate)
    train, tails = sets[:first_gate], []
    after_ns: int | None = None  # the end of the previous tail's labels' reach
    for ws in sets[first_gate:]:
        head, tail = split_holdout(ws)
        if after_ns is not None:
            head = dataclasses.replace(head, valid=head.valid & (head.anchor_times_ns > after_ns))
        train.append(head)
        tails.append(tail)
        after_ns = int(ws.anchor_times_ns[-1]) + EMBARGO_NS
    return train, [s for s in tails if s.valid.any()]


def thin(ws: WindowSet, stride: int) -> WindowSet:
    """Only the valid windows anchored on a multiple of `stride` seconds: what is scored. Neighbouring
    windows' labels overlap for 10-200 s, so every 5th second keeps most of the evidence at a fifth of
    the network's inference (~3-4 ms a window on 2 cores, most of a fine-tune's time otherwise)."""
    if stride <= 1:
        return ws
    return dataclasses.replace(ws, valid=ws.valid & ((ws.anchor_times_ns // SECOND_NS) % stride == 0))


def clear_of(sets: Sequence[WindowSet], tails: Sequence[WindowSet]) -> list[WindowSet]:
    """`sets` without any window whose label could overlap a tail's (anchors within the embargo of one)."""
    spans = [(int(t.anchor_times_ns[t.valid].min()), int(t.anchor_times_ns[t.valid].max())) for t in tails]
    out = []
    for s in sets:
        keep = s.valid.copy()
        for lo, hi in spans:
            keep &= (s.anchor_times_ns < lo - EMBARGO_NS) | (s.anchor_times_ns > hi + EMBARGO_NS)
        out.append(dataclasses.replace(s, valid=keep))
    return [s for s in out if s.valid.any()]


def residual_sets(sets: Sequence[WindowSet], lm: linear.LinearModel) -> list[WindowSet]:
    """The sets with labels replaced by what the linear model leaves: what the network learns."""
    out = []
    for s in sets:
        idx = np.flatnonzero(s.valid)  # only valid windows are ever trained on: the rest stay NaN
        res = np.full(s.labels.shape, np.nan, np.float32)
        res[idx] = np.asarray(s.labels[idx], np.float32) - lm.predict(s, idx)
        out.append(dataclasses.replace(s, labels=res, label_stats=None))
    return out


def valid_forecasts(model: object, sets: Sequence[WindowSet]) -> np.ndarray:
    """The model's forecasts on the valid windows of `sets`, pooled in order (one batch copied at a time)."""
    from cb_assets.model.network import predict_returns

    parts = []
    for s in sets:
        idx = np.flatnonzero(s.valid)
        views = s.views()
        out = np.empty((len(idx), s.labels.shape[1]), dtype=np.float32)
        for i in range(0, len(idx), 256):
            out[i : i + 256] = predict_returns(model, np.ascontiguousarray(views[idx[i : i + 256]]))
        parts.append(out)
    return np.concatenate(parts) if parts else np.empty((0, 0), np.float32)


def score(model: object, ws: WindowSet) -> EvaluationReport:
    """Forecasts of `model` on the valid windows of `ws`, scored against their labels."""
    return evaluate(
        np.asarray(ws.labels[ws.valid], np.float64), valid_forecasts(model, [ws]), products_of(ws)
    )


def _labels(sets: Sequence[WindowSet]) -> np.ndarray:
    return np.concatenate([np.asarray(s.labels[s.valid], np.float64) for s in sets])


def _network_config(ws: WindowSet, overrides: dict) -> NetworkConfig:
    return NetworkConfig(
        **{
            **overrides,
            "window": ws.window,
            "n_features": ws.features.shape[1],
            "n_outputs": ws.labels.shape[1],
        }
    )


@dataclass
class _Judged:
    decisions: list[gate.Decision]
    holdout: dict[str, EvaluationReport]


def _judge(
    model: object,
    lm: linear.LinearModel,
    tails: Sequence[WindowSet],
    ridge_sets: Sequence[WindowSet],
    settings: TrainSettings,
    *,
    with_network: bool,
    evidence: tuple[np.ndarray, np.ndarray] | None = None,
    prior: dict[str, str] | None = None,
) -> _Judged:
    """Gate decisions on the pooled tails (already thinned), set into `model`, and every candidate's
    held-out report."""
    from cb_assets.model.network import set_gates

    y = _labels(tails)
    products = products_of(tails[0])
    lin = np.concatenate([lm.predict(s, np.flatnonzero(s.valid)) for s in tails])
    # The model's gates are still 0/1 here: its forecasts are the network's residual alone.
    net = lin + valid_forecasts(model, tails) if with_network else None
    decisions = gate.decide(
        y,
        lin,
        net,
        products,
        t_min=settings.gate_t,
        network_alpha=settings.gate_network_alpha,
        linear_evidence=evidence,
        prior=prior,
        spacing_s=settings.score_stride,
    )
    set_gates(model, *gate.gates_of(decisions))
    ridge = RidgeBaseline.fit(ridge_sets, stride=settings.score_stride)  # a report baseline: thinned
    preds = {
        "challenger": gate.combine(decisions, lin, net),
        **({"network": net} if net is not None else {}),
        "linear": lin,
        "ridge": np.concatenate([ridge.predict(s)[s.valid] for s in tails]),
        "persistence": np.zeros_like(y),
    }
    return _Judged(decisions, {k: evaluate(y, p, products) for k, p in preds.items()})


def _check_tails(tails: Sequence[WindowSet]) -> int:
    n_hold = n_valid(tails)
    if n_hold < MIN_HOLDOUT_WINDOWS:
        raise NotEnoughData(
            f"only {n_hold} held-out windows in the newest hours (need {MIN_HOLDOUT_WINDOWS})"
        )
    return n_hold


def train_initial(older: Sequence[WindowSet], newest: WindowSet, settings: TrainSettings) -> Outcome:
    """A new composite on `older` + `newest` (in time order); the gate decides on the newest hours' tails."""
    from cb_assets.model.calibration import split_calibration
    from cb_assets.model.network import set_linear
    from cb_assets.model.train import new_model, train_model

    parts, tails = split_gate([*older, newest], settings.gate_hours)
    train_sets = [s for s in parts if s.valid.any()]
    if not train_sets:
        raise NotEnoughData(
            "no valid training windows in the given hours (cold start, gaps or missing products)"
        )
    _check_tails(tails)
    tails = [thin(t, settings.score_stride) for t in tails]
    n_hold = n_valid(tails)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    fitted = linear.fit(train_sets)
    lm = fitted.model
    timings["linear_seconds"] = time.perf_counter() - start
    fit_sets, calibration_sets = split_calibration(train_sets, settings.calibration_fraction)
    n_train = n_valid(fit_sets)
    res_fit = residual_sets(fit_sets, lm)
    model = new_model(_network_config(newest, settings.network), res_fit, seed=settings.seed, linear=lm)
    set_linear(model, lm)
    result = None
    if settings.train_network:
        result = train_model(
            model,
            res_fit,
            learning_rate=settings.learning_rate,
            calibration_sets=residual_sets(calibration_sets, lm),
            **settings.step_options(n_train),
        )
        timings["network_seconds"] = result.seconds
    start = time.perf_counter()
    evidence = None
    if fitted.oof is not None:  # the out-of-fold forecasts at the tails' spacing
        keep = np.concatenate([thin(s, settings.score_stride).valid[s.valid] for s in train_sets])
        evidence = (_labels(train_sets)[keep], np.concatenate(fitted.oof)[keep])
    judged = _judge(
        model, lm, tails, train_sets, settings, with_network=settings.train_network, evidence=evidence
    )
    timings["gate_seconds"] = time.perf_counter() - start
    promote, reason = compare(judged.holdout["challenger"], None)
    return Outcome(
        model,
        result,
        promote,
        reason,
        judged.holdout,
        {},
        judged.decisions,
        n_train,
        n_hold,
        n_valid(calibration_sets),
        timings,
    )


def prior_of(model: object, output_names: Sequence[str]) -> dict[str, str] | None:
    """The champion's per-output choices, read from its gates (None for a network-only model)."""
    from cb_assets.model.network import gates_of

    gates = gates_of(model)
    if gates is None:
        return None
    products = list(dict.fromkeys(n.split(":")[0] for n in output_names))
    names = [f"{p}:{h}" for p, h in output_keys(products)]
    choice = np.where(gates[1] > 0, gate.NETWORK, np.where(gates[0] > 0, gate.LINEAR, gate.PERSISTENCE))
    return dict(zip(names, choice.tolist(), strict=True))


def fine_tune_champion(
    champion: object,
    new_hours: Sequence[tuple[str, WindowSet]],
    replay: Sequence[WindowSet],
    settings: TrainSettings,
    gate_history: Sequence[WindowSet] = (),
) -> Outcome:
    """Score the champion on every new hour, update a copy on the new hours (minus the gate's tails): the
    linear model adds their statistics to its own, the network fine-tunes on the residuals with a replay
    sample; then the gate re-decides per output on the tails of the newest `gate_hours` hours (the new
    hours' and those of `gate_history`, the hours just before them, which no version trained on) and the
    challenger is compared with the champion there."""
    from cb_assets.model.calibration import split_calibration
    from cb_assets.model.network import has_linear, linear_of, set_linear
    from cb_assets.model.train import fine_tune

    if not has_linear(champion):
        raise NotEnoughData(
            "the champion is a network-only model from before the composite: train an initial one"
        )
    start = time.perf_counter()
    prequential = {
        key: score(champion, thin(ws, settings.score_stride)) for key, ws in new_hours if ws.valid.any()
    }
    prequential_seconds = time.perf_counter() - start
    new_sets = [ws for _, ws in new_hours]
    n_history = max(0, settings.gate_hours - len(new_sets))
    history = list(gate_history)[len(gate_history) - n_history :] if n_history else []
    parts, tails = split_gate([*history, *new_sets], settings.gate_hours)
    # The history hours' heads were trained on by earlier versions: only their tails serve here.
    train_sets = [s for s in parts[len(history) :] if s.valid.any()]
    if not train_sets:
        raise NotEnoughData("no valid windows in the new hours to fine-tune on")
    _check_tails(tails)
    # Replayed hours may include the history hours' tails. The replay sample is a few hundred windows: every
    # `score_stride`-th of the pool is plenty to draw them from, and spares computing residuals for the rest.
    replay_sets = [thin(s, settings.score_stride) for s in clear_of(replay, tails)]
    tails = [thin(t, settings.score_stride) for t in tails]
    n_hold = n_valid(tails)
    timings: dict[str, float] = {"prequential_seconds": prequential_seconds}
    start = time.perf_counter()
    lm = linear.update(linear_of(champion), train_sets, decay=settings.linear_decay)
    timings["linear_seconds"] = time.perf_counter() - start
    # The slice comes from the new hours only: the replay hours were the champion's training data.
    fit_sets, calibration_sets = split_calibration(train_sets, settings.calibration_fraction)
    n_train = n_valid(fit_sets)
    challenger, result = fine_tune(
        champion,
        residual_sets(fit_sets, lm),
        residual_sets(replay_sets, lm),
        learning_rate=settings.fine_tune_learning_rate,
        replay_fraction=settings.replay_fraction,
        calibration_sets=residual_sets(calibration_sets, lm),
        **settings.step_options(n_train),
    )
    timings["network_seconds"] = result.seconds
    set_linear(challenger, lm)
    start = time.perf_counter()
    prior = prior_of(champion, tails[0].output_names)
    judged = _judge(
        challenger, lm, tails, [*train_sets, *replay_sets], settings, with_network=True, prior=prior
    )
    y = _labels(tails)
    judged.holdout["champion"] = evaluate(y, valid_forecasts(champion, tails), products_of(tails[0]))
    timings["gate_seconds"] = time.perf_counter() - start
    promote, reason = compare(judged.holdout["challenger"], judged.holdout["champion"])
    return Outcome(
        challenger,
        result,
        promote,
        reason,
        judged.holdout,
        prequential,
        judged.decisions,
        n_train,
        n_hold,
        n_valid(calibration_sets),
        timings,
    )
