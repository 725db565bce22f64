"""Training and fine-tuning over WindowSets, one batch in memory at a time.

A day of windows materialised would be tens of GB, so the input pipeline is index-based: `tf.data` carries
(set, window) index pairs, and a `tf.numpy_function` copies one batch out of the sets' strided views.
Only valid windows are ever indexed; a stride keeps every k-th one (neighbouring windows share 999 of
their 1000 seconds, so skipping some loses little and saves most of the time).

Normalisation statistics: an initial training takes them from its training sets only (merged
ColumnStats, never evaluation data). A fine-tune keeps the champion's: every weight of the first layers
was learned against inputs scaled by those numbers, so re-scaling the inputs under them would shift what
the network sees and undo what it learned, with no gradient step to account for it.

Calibration (the per-output shrinkage fitted on a slice the optimiser never sees) lives in calibration.py.

Stride: `settings.auto_stride` spreads a fixed budget of windows per epoch over however many hours are given, so
an initial training on a day of hours sees many distinct stretches of market rather than one stretch many
times (neighbouring windows share 999 of their 1000 seconds, and memorising a few hours was what made the
network's held-out skill negative).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from cb_assets.model.baselines import merged_stats, select_windows
from cb_assets.model.batches import WindowBatcher, index_pairs
from cb_assets.model.calibration import calibrated
from cb_assets.model.linear import LinearModel
from cb_assets.model.network import (
    build_model,
    column_names_of,
    has_linear,
    input_shape_of,
    label_stats_of,
    load_model,
    set_gates,
    standardised_head,
)
from cb_assets.model.settings import (
    CLIPNORM,
    DEFAULT_BATCH,
    DEFAULT_STRIDE,
    FINE_TUNE_LEARNING_RATE,
    LEARNING_RATE,
    REPLAY_FRACTION,
    WEIGHT_DECAY,
    NetworkConfig,
)
from cb_assets.series.windows import WindowSet

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What one training or fine-tuning run did."""

    step_losses: list[float]  # loss on standardised labels, one per optimiser step
    epoch_losses: list[float]  # mean step loss per epoch
    windows_seen: int  # windows fed to the optimiser, over all epochs (replay included)
    steps: int
    seconds: float
    learning_rate: float
    replay_windows: int = 0  # of windows_seen, how many came from replay sets
    extra: dict[str, Any] = field(default_factory=dict)


def _check_sets(model: keras.Model, sets: Sequence[WindowSet]) -> None:
    window, n_features = input_shape_of(model)
    n_outputs = int(model.outputs[0].shape[-1])
    feature_names, output_names = column_names_of(model)
    for ws in sets:
        if ws.window != window or ws.features.shape[1] != n_features or ws.labels.shape[1] != n_outputs:
            raise ValueError(
                f"window set has window {ws.window}, {ws.features.shape[1]} features, {ws.labels.shape[1]} "
                f"outputs; the model takes {window}, {n_features}, {n_outputs}"
            )
        if feature_names is not None and tuple(ws.feature_names) != feature_names:
            raise ValueError("window set feature columns differ from the ones the model was built for")
        if output_names is not None and tuple(ws.output_names) != output_names:
            raise ValueError("window set outputs differ from the ones the model was built for")


def _seed_everything(seed: int, deterministic: bool) -> None:
    keras.utils.set_random_seed(seed)
    if deterministic:
        # Process-wide and cheap on CPU; without it parallel reductions may differ in the last bits
        # between runs, and a fine-tune could not be reproduced from its seed.
        tf.config.experimental.enable_op_determinism()


def lr_schedule(total_steps: int, peak: float) -> np.ndarray:
    """Per-step learning rates: a short linear warm-up, then cosine decay from `peak` to 10% of it.

    The warm-up tames a fresh optimiser's first Adam steps, which are large whatever the gradient. Set
    from Python each step rather than as a Keras schedule: the schedule's graph doubled the tracing
    time of every (short) fine-tune.
    """
    warmup = min(50, max(1, total_steps // 10))
    steps = np.arange(total_steps, dtype=np.float64)
    rise = peak * (0.1 + 0.9 * (steps + 1) / warmup)
    frac = np.clip((steps - warmup) / max(1, total_steps - warmup - 1), 0.0, 1.0)
    fall = peak * (0.1 + 0.9 * 0.5 * (1.0 + np.cos(np.pi * frac)))
    return np.where(steps < warmup, rise, fall)


def _fit(
    model: keras.Model,
    sets: Sequence[WindowSet],
    epoch_pairs: Callable[[int], tuple[np.ndarray, int]],
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    weight_decay: float,
    clipnorm: float,
    loss: str,
) -> TrainResult:
    """The loop shared by training and fine-tuning: `epoch_pairs(e)` gives (pairs, n_replay) for epoch e."""
    label_mean, label_std = label_stats_of(model)
    batcher = WindowBatcher(sets, label_mean, label_std)
    plans = [epoch_pairs(e) for e in range(epochs)]
    total_steps = sum(-(-len(p) // batch_size) for p, _ in plans)
    if total_steps == 0:
        raise ValueError("no valid windows to train on")

    rates = lr_schedule(total_steps, learning_rate)
    optimizer = keras.optimizers.AdamW(
        learning_rate=float(rates[0]), weight_decay=weight_decay, clipnorm=clipnorm
    )
    head = standardised_head(model)
    optimizer.build(head.trainable_variables)
    if loss == "mse":
        loss_fn: Any = keras.losses.MeanSquaredError()
    elif loss == "huber":
        loss_fn = keras.losses.Huber(delta=2.0)  # standardised units: only beyond 2 sigma turns linear
    else:
        raise ValueError(f"unknown loss {loss!r} (mse or huber)")

    window, n_features = input_shape_of(model)

    @tf.function(
        input_signature=[
            tf.TensorSpec((None, window, n_features), tf.float32),
            tf.TensorSpec((None, head.outputs[0].shape[-1]), tf.float32),
        ]
    )
    def step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            value = loss_fn(y, head(x, training=True))
        grads = tape.gradient(value, head.trainable_variables)
        optimizer.apply_gradients(zip(grads, head.trainable_variables, strict=True))
        return value

    step_losses: list[float] = []
    epoch_losses: list[float] = []
    seen = replayed = 0
    start = time.perf_counter()
    first_step_seconds = 0.0
    for e, (pairs, n_replay) in enumerate(plans):
        first = len(step_losses)
        for x, y in batcher.dataset(pairs, batch_size):
            optimizer.learning_rate = float(rates[len(step_losses)])
            step_losses.append(float(step(x, y)))
            if len(step_losses) == 1:
                first_step_seconds = time.perf_counter() - start
        epoch_losses.append(float(np.mean(step_losses[first:])))
        seen += len(pairs)
        replayed += n_replay
        log.info("epoch %d: %d windows, mean loss %.4f", e, len(pairs), epoch_losses[-1])
    seconds = time.perf_counter() - start
    if not np.all(np.isfinite(step_losses)):
        log.warning("training produced non-finite losses")
    return TrainResult(
        step_losses=step_losses,
        epoch_losses=epoch_losses,
        windows_seen=seen,
        steps=len(step_losses),
        seconds=seconds,
        learning_rate=learning_rate,
        replay_windows=replayed,
        # The first step includes tracing the graph: kept apart so throughput figures can leave it out.
        extra={"first_step_seconds": first_step_seconds},
    )


def train_model(
    model: keras.Model,
    train_sets: Sequence[WindowSet],
    *,
    epochs: int = 1,
    learning_rate: float = LEARNING_RATE,
    batch_size: int = DEFAULT_BATCH,
    stride: int = DEFAULT_STRIDE,
    seed: int = 0,
    weight_decay: float = WEIGHT_DECAY,
    clipnorm: float = CLIPNORM,
    loss: str = "mse",
    deterministic: bool = True,
    calibration_sets: Sequence[WindowSet] = (),
) -> TrainResult:
    """Train `model` in place on every `stride`-th valid window of `train_sets`, shuffled per epoch, then
    fit its calibration factors on `calibration_sets` (windows it took no step on; none: factors stay 1).

    The model must already hold its normalisation statistics (see `new_model`); the loss is on
    standardised labels. Each epoch draws a new stride offset and order from `seed`.
    """
    _check_sets(model, [*train_sets, *calibration_sets])  # before training: a mismatch would waste it
    _seed_everything(seed, deterministic)
    rng = np.random.default_rng(seed)

    def plan(_: int) -> tuple[np.ndarray, int]:
        offset = int(rng.integers(stride))
        pairs = np.concatenate(
            [index_pairs(s, select_windows(ws, stride, offset)) for s, ws in enumerate(train_sets)], axis=0
        )
        return pairs[rng.permutation(len(pairs))], 0

    result = _fit(
        model,
        train_sets,
        plan,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        weight_decay=weight_decay,
        clipnorm=clipnorm,
        loss=loss,
    )
    return calibrated(model, result, calibration_sets)


def new_model(
    cfg: NetworkConfig, train_sets: Sequence[WindowSet], *, seed: int = 0, linear: LinearModel | None = None
) -> keras.Model:
    """A fresh model whose statistics come from `train_sets` only (merged ColumnStats); with `linear`, the
    composite (its network then learns the residual: pass sets whose labels are the residuals)."""
    fs, ls = merged_stats(train_sets)
    keras.utils.set_random_seed(seed)  # the initial weights (and dropout seeds) follow the seed
    first = train_sets[0]
    return build_model(
        cfg,
        fs,
        ls,
        feature_names=tuple(first.feature_names),
        output_names=tuple(first.output_names),
        linear=linear,
    )


def _warm_start(champion: str | Path | keras.Model) -> keras.Model:
    if isinstance(champion, keras.Model):
        # A copy: the champion stays untouched in memory (it is still serving, and may win the comparison).
        model = keras.models.clone_model(champion)
        model.set_weights(champion.get_weights())
    else:
        model = load_model(champion)
    if has_linear(model):
        # The residual network alone until the gate decides again: calibration must see its own output.
        n = int(model.outputs[0].shape[-1])
        set_gates(model, np.zeros(n), np.ones(n))
    return model


def fine_tune(
    champion: str | Path | keras.Model,
    new_sets: Sequence[WindowSet],
    replay_sets: Sequence[WindowSet] = (),
    *,
    learning_rate: float = FINE_TUNE_LEARNING_RATE,
    replay_fraction: float = REPLAY_FRACTION,
    epochs: int = 1,
    batch_size: int = DEFAULT_BATCH,
    stride: int = DEFAULT_STRIDE,
    seed: int = 0,
    weight_decay: float = WEIGHT_DECAY,
    clipnorm: float = CLIPNORM,
    loss: str = "mse",
    deterministic: bool = True,
    calibration_sets: Sequence[WindowSet] = (),
) -> tuple[keras.Model, TrainResult]:
    """Warm-start a copy of the champion and train it on new windows mixed with a replay sample.

    Keeps the champion's feature and label statistics (see the module docstring). The learning rate is
    ~10x below an initial training's so the new hour adjusts the weights rather than overwriting them,
    and `replay_fraction` of the windows seen per epoch are drawn (without replacement, fresh each
    epoch) from `replay_sets`, older data that limits forgetting. The copy is then recalibrated on
    `calibration_sets` (new windows it took no step on); without them it keeps the champion's factors.
    Returns (new model, result).
    """
    if not 0.0 <= replay_fraction < 1.0:
        raise ValueError(f"replay_fraction must be in [0, 1), got {replay_fraction}")
    _seed_everything(seed, deterministic)
    model = _warm_start(champion)
    sets = [*new_sets, *replay_sets]
    _check_sets(model, [*sets, *calibration_sets])
    rng = np.random.default_rng(seed)
    n_new = len(new_sets)
    replay_pool = (
        np.concatenate([index_pairs(n_new + s, np.flatnonzero(ws.valid)) for s, ws in enumerate(replay_sets)])
        if replay_sets
        else np.empty((0, 2), np.int64)
    )

    def plan(_: int) -> tuple[np.ndarray, int]:
        offset = int(rng.integers(stride))
        fresh = np.concatenate(
            [index_pairs(s, select_windows(ws, stride, offset)) for s, ws in enumerate(new_sets)], axis=0
        )
        want = round(len(fresh) * replay_fraction / (1.0 - replay_fraction))
        n_replay = min(want, len(replay_pool))
        if n_replay < want:
            log.info("replay pool has %d windows, %d wanted", len(replay_pool), want)
        replay = replay_pool[rng.choice(len(replay_pool), size=n_replay, replace=False)]
        pairs = np.concatenate([fresh, replay], axis=0)
        return pairs[rng.permutation(len(pairs))], n_replay

    result = _fit(
        model,
        sets,
        plan,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        weight_decay=weight_decay,
        clipnorm=clipnorm,
        loss=loss,
    )
    return model, calibrated(model, result, calibration_sets)
