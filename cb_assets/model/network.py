"""The forecasting network: standardise, strided Conv1D down-sampling, one Transformer block, a small head.

Why this shape: on the 2-core machine attention over all 1000 seconds trained at ~24 windows/s, a strided
convolutional front that shrinks the sequence before attention at ~70/s (architecture notes); the defaults
here (1000 s -> 49 tokens) fine-tune at ~170-200 windows/s (bench/model.py). The convolutions do the local
work and attention relates the few dozen summaries to each other.

The model carries its own normalisation (its layers are in layers.py): a `Standardize` layer holds the TRAINING feature statistics and a
`Destandardize` layer the training label statistics, both as non-trainable weights, so a saved `.keras` file
takes raw features and returns raw log returns with nothing else to ship beside it. Training happens on the
standardised head (`head_z`, see `standardised_head`): raw returns are ~1e-4, and an MSE on them would give
gradients too small for the optimiser to make progress.

`Destandardize` also holds one shrinkage factor per output (`calibration_of` / `set_calibration`), fitted
after training on windows the optimiser never saw (train.calibrate). Most outputs have little or nothing
to predict, and an MSE-trained network still spreads its forecasts there: on held-out data that spread is
pure loss. A factor in [0, 1] per output scales each forecast towards 0 (persistence) by as much as held-out
evidence supports; it is a weight of the model, so it travels in the `.keras` file with everything else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from cb_assets.model.layers import (
    Blend,
    Destandardize,
    LastStep,
    LinearPath,
    PositionEmbedding,
    Standardize,
    TransformerBlock,
)
from cb_assets.model.linear import LinearModel, Stats, window_design
from cb_assets.model.linear import forecast as linear_forecast
from cb_assets.model.settings import NetworkConfig
from cb_assets.series.windows import ColumnStats, WindowSet

HEAD_LAYER = "head_z"
OUTPUT_LAYER = "returns"  # the network's (residual) forecast in raw units, with its calibration factors
LINEAR_LAYER = "linear"
BLEND_LAYER = "forecast"  # the composite's output: gated linear + residual (see layers.Blend)
FEATURE_STATS_LAYER = "standardize"


def _crop_for(length: int, kernel: int, stride: int) -> int:
    """Oldest steps to drop so that the last valid convolution window ends exactly at the newest step.

    With 'valid' padding a stride that does not divide (length - kernel) silently leaves the newest steps
    out; for forecasting those are the ones that matter most, so the oldest are dropped instead.
    """
    return (length - kernel) % stride


def build_model(
    cfg: NetworkConfig,
    feature_stats: ColumnStats | None = None,
    label_stats: ColumnStats | None = None,
    *,
    feature_names: tuple[str, ...] | None = None,
    output_names: tuple[str, ...] | None = None,
    linear: LinearModel | None = None,
) -> keras.Model:
    """The forecaster for `cfg`, with the given training statistics stored inside it.

    With `linear`, the model is the composite: the network's output is a residual over the linear model
    (layers.LinearPath), and a `Blend` layer gates both per output (all residual until the gate decides).

    Input: (batch, window, n_features) raw float32 features (NaN allowed). Output ("returns"): raw log
    returns (batch, n_outputs) product-major like `WindowSet.labels`. Without statistics the layers are
    identities (mean 0, std 1), which is only useful for tests. `feature_names` / `output_names` (the
    WindowSet's) are stored so that later training refuses columns in another order.
    """
    inputs = keras.Input(shape=(cfg.window, cfg.n_features), name="features")
    standardize = Standardize(
        cfg.n_features, clip=cfg.clip, column_names=feature_names, name=FEATURE_STATS_LAYER
    )
    z = standardize(inputs)

    x = z
    if cfg.input_projection:
        x = layers.Dense(cfg.input_projection, name="input_projection")(x)
    length = cfg.window
    for i, (f, k, s) in enumerate(zip(cfg.conv_filters, cfg.conv_kernels, cfg.conv_strides, strict=True)):
        crop = _crop_for(length, k, s)
        if crop:
            x = layers.Cropping1D((crop, 0), name=f"crop{i}")(x)
            length -= crop
        x = layers.Conv1D(f, k, strides=s, padding="valid", activation="gelu", name=f"conv{i}")(x)
        length = (length - k) // s + 1
    x = layers.Dense(cfg.d_model, name="project")(x)
    x = PositionEmbedding(length, cfg.d_model, name="position")(x)
    for b in range(cfg.n_blocks):
        x = TransformerBlock(cfg.d_model, cfg.heads, cfg.ff_dim, cfg.dropout, name=f"block{b}")(x)
    x = layers.LayerNormalization(epsilon=1e-6, name="final_norm")(x)

    # Mean over tokens summarises the whole window; the last token is the newest (see _crop_for).
    parts = [layers.GlobalAveragePooling1D(name="mean_pool")(x), LastStep(name="last_token")(x)]
    if cfg.anchor_skip:
        anchor = LastStep(name="anchor_row")(z)
        parts.append(layers.Dense(cfg.d_model, activation="gelu", name="anchor_dense")(anchor))
    h = layers.Concatenate(name="pooled")(parts)
    h = layers.Dense(cfg.head_units, activation="gelu", name="head_hidden")(h)
    h = layers.Dropout(cfg.dropout, name="head_dropout")(h)
    head = layers.Dense(cfg.n_outputs, name=HEAD_LAYER)(h)
    outputs = Destandardize(cfg.n_outputs, column_names=output_names, name=OUTPUT_LAYER)(head)
    if linear is not None:
        path = LinearPath(
            linear.taps, cfg.window, cfg.n_features, cfg.n_outputs, clip=cfg.clip, name=LINEAR_LAYER
        )
        lin = path(inputs)
        outputs = Blend(cfg.n_outputs, name=BLEND_LAYER)([lin, outputs])

    model = keras.Model(inputs, outputs, name="cb_forecaster")
    if feature_stats is not None:
        standardize.set_stats(feature_stats.mean, feature_stats.std)
    if label_stats is not None:
        model.get_layer(OUTPUT_LAYER).set_stats(label_stats.mean, label_stats.std)
    return model


def has_linear(model: keras.Model) -> bool:
    """True for a composite (linear path + gates); models saved before it are the network alone."""
    return any(layer.name == BLEND_LAYER for layer in model.layers)


def set_linear(model: keras.Model, linear: LinearModel) -> None:
    """Install the linear model's weights (its taps must be the ones the model was built with)."""
    path = model.get_layer(LINEAR_LAYER)
    if tuple(path.taps) != tuple(linear.taps):
        raise ValueError("the linear model's taps differ from the ones the model was built with")
    path.set_linear(linear.tap_mean, linear.tap_std, linear.weights, linear.intercept)
    st = linear.stats
    path.set_stats(st.xx, st.xy, st.yy, st.n, linear.lambdas)


def linear_of(model: keras.Model) -> LinearModel:
    """The linear model stored in a composite, statistics included (what a fine-tune updates)."""
    path = model.get_layer(LINEAR_LAYER)

    def f64(v: Any) -> np.ndarray:
        return np.asarray(v.numpy(), np.float64)

    stats = Stats(f64(path.stats_xx), f64(path.stats_xy), f64(path.stats_yy), float(f64(path.stats_n)[0]))
    return LinearModel(
        tuple(path.taps),
        f64(path.mean),
        f64(path.std),
        f64(path.kernel),
        f64(path.bias),
        f64(path.lambdas),
        stats,
    )


def set_gates(model: keras.Model, linear_gate: np.ndarray, residual_gate: np.ndarray) -> None:
    model.get_layer(BLEND_LAYER).set_gates(linear_gate, residual_gate)


def gates_of(model: keras.Model) -> tuple[np.ndarray, np.ndarray] | None:
    """(linear gate, residual gate) of a composite, None for a network-only model."""
    if not has_linear(model):
        return None
    layer = model.get_layer(BLEND_LAYER)
    return np.asarray(layer.linear_gate.numpy()), np.asarray(layer.residual_gate.numpy())


def standardised_head(model: keras.Model) -> keras.Model:
    """A view of `model` that stops at the standardised head: the one to train (shares all weights)."""
    return keras.Model(model.inputs[0], model.get_layer(HEAD_LAYER).output, name="cb_forecaster_z")


def label_stats_of(model: keras.Model) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of the labels the model was first trained on, as stored in it."""
    layer = model.get_layer(OUTPUT_LAYER)
    return np.asarray(layer.mean.numpy()), np.asarray(layer.std.numpy())


def calibration_of(model: keras.Model) -> np.ndarray:
    """The per-output calibration factors stored in the model (all 1 for an uncalibrated one)."""
    return np.asarray(model.get_layer(OUTPUT_LAYER).scale.numpy())


def set_calibration(model: keras.Model, scale: np.ndarray) -> None:
    """Store per-output calibration factors (>= 0) in `model`; its forecasts are multiplied by them."""
    model.get_layer(OUTPUT_LAYER).set_scale(scale)


def feature_stats_of(model: keras.Model) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of the features the model was first trained on, as stored in it."""
    layer = model.get_layer(FEATURE_STATS_LAYER)
    return np.asarray(layer.mean.numpy()), np.asarray(layer.std.numpy())


def column_names_of(model: keras.Model) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """(feature names, output names) stored at build time, None where they were not given."""
    return model.get_layer(FEATURE_STATS_LAYER).column_names, model.get_layer(OUTPUT_LAYER).column_names


def input_shape_of(model: keras.Model) -> tuple[int, int]:
    """(window, n_features) the model takes."""
    shape = model.inputs[0].shape
    return int(shape[1]), int(shape[2])


def _predict_fn(model: keras.Model, single: bool) -> Any:
    """The traced forecast function of `model`, for one window or for batches.

    One traced function per model, kept on the model: calling a Keras model eagerly re-runs Python for
    every layer, which costs more than the arithmetic for a single window. The live forecaster's one window
    a second is compiled with XLA, which fuses the elementwise work around the convolutions (standardise,
    clip, gates): 20-30% off a window on 2 cores. Batches (scoring, calibration) are not: XLA compiles each
    new model for ~4 s, and a fine-tune scores three (champion, challenger, copies), which cost more than it
    saved.
    """
    fns = model.__dict__.setdefault("_cb_predict_fns", {})
    fn = fns.get(single)
    if fn is None:
        window, n_features = input_shape_of(model)
        spec = [tf.TensorSpec((None, window, n_features), tf.float32)]
        # autograph off: the call has no Python control flow to convert, and converting a lambda warns.
        fn = tf.function(
            lambda x: model(x, training=False), input_signature=spec, jit_compile=single, autograph=False
        )
        fns[single] = fn
    return fn


def _linear_forecasts(model: keras.Model, windows: np.ndarray | WindowSet, gate: np.ndarray) -> np.ndarray:
    """What a composite whose gate serves the network nowhere forecasts: its linear path times `gate` (the
    linear gate), computed in numpy from the path's weights. It reads ~800 taps, not the whole window
    (bench/model.py: 0.76 ms a window, 1.59 ms through the traced path, most of which copied the 1000-second
    window into a tensor), and scoring a WindowSet copies no window at all. test_model_gate checks it
    against the Keras path."""
    path = model.get_layer(LINEAR_LAYER)
    mean, std = np.asarray(path.mean.numpy(), np.float64), np.asarray(path.std.numpy(), np.float64)
    g = np.asarray(gate, np.float64)  # an output the gate gives persistence forecasts 0
    kernel, bias = (
        np.asarray(path.kernel.numpy(), np.float64) * g,
        np.asarray(path.bias.numpy(), np.float64) * g,
    )
    if isinstance(windows, WindowSet):
        return linear_forecast(windows, np.arange(len(windows)), path.taps, mean, std, kernel, bias)
    arr = np.asarray(windows)
    arr = arr[None] if arr.ndim == 2 else arr
    return (window_design(arr, path.taps, mean, std) @ kernel + bias).astype(np.float32)


def predict_returns(model: keras.Model, windows: np.ndarray | WindowSet, batch_size: int = 64) -> np.ndarray:
    """Raw log returns (n, n_outputs) for `windows`: an array (n, window, n_features), one window
    (window, n_features), or every window of a WindowSet (invalid ones included: the caller masks with
    `valid`). Copies one batch at a time out of a WindowSet's views."""
    gates = gates_of(model)
    if gates is not None and not np.any(gates[1]):  # the network serves no output: the linear path alone
        return _linear_forecasts(model, windows, gates[0])
    if isinstance(windows, WindowSet):
        n = len(windows)
        try:
            views: Any = windows.views()
        except ValueError:  # non-consecutive anchors
            views = None

        def batch(i: int, j: int) -> np.ndarray:
            if views is not None:
                return np.ascontiguousarray(views[i:j])
            return np.stack([windows.window_at(k) for k in range(i, j)])
    else:
        arr = np.asarray(windows, dtype=np.float32)
        arr = arr[None] if arr.ndim == 2 else arr
        n = arr.shape[0]

        def batch(i: int, j: int) -> np.ndarray:
            return arr[i:j]

    out = np.empty((n, int(model.outputs[0].shape[-1])), dtype=np.float32)
    fn = _predict_fn(model, single=n == 1)
    for i in range(0, n, batch_size):
        j = min(i + batch_size, n)
        out[i:j] = fn(tf.constant(batch(i, j), dtype=tf.float32)).numpy()
    return out


def save_model(model: keras.Model, path: str | Path) -> Path:
    """Save as `.keras` (the suffix is required by Keras 3)."""
    p = Path(path)
    if p.suffix != ".keras":
        raise ValueError(f"{p} must end with .keras")
    p.parent.mkdir(parents=True, exist_ok=True)
    model.save(p)
    return p


def load_model(path: str | Path) -> keras.Model:
    """Load a `.keras` forecaster; importing this module registered the custom layers it needs."""
    return keras.models.load_model(Path(path), compile=False)
