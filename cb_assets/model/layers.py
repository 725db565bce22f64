"""The network's custom Keras layers, registered under the package name `cb_assets` so `.keras` files load.

They live apart from the model builder (network.py) because they are the serialised contract of every saved
model version: a change here changes what old artefacts mean, so it should be a deliberate, reviewed one.
The statistics layers hold the TRAINING feature and label statistics as non-trainable weights (see
network.py's docstring for why the model carries its own normalisation).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers, ops


class _StoredStats(layers.Layer):
    """Per-column (mean, std) held as non-trainable weights: they travel inside the `.keras` file and
    never move during training or fine-tuning. Column names (optional) travel in the config."""

    def __init__(
        self, n_columns: int, column_names: list[str] | tuple[str, ...] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.n_columns = int(n_columns)
        self.column_names = _names(column_names, self.n_columns)
        shape = (self.n_columns,)
        self.mean = self.add_weight(shape=shape, initializer="zeros", trainable=False, name="mean")
        self.std = self.add_weight(shape=shape, initializer="ones", trainable=False, name="std")

    def set_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean.assign(_checked(mean, self.n_columns, "mean"))
        self.std.assign(_checked(std, self.n_columns, "std", positive=True))

    def get_config(self) -> dict[str, Any]:
        names = None if self.column_names is None else list(self.column_names)
        return {**super().get_config(), "n_columns": self.n_columns, "column_names": names}


@keras.saving.register_keras_serializable(package="cb_assets")
class Standardize(_StoredStats):
    """(x - mean) / std with the training feature statistics; non-finite values become 0 (the mean)."""

    def __init__(self, n_columns: int, clip: float | None = None, **kwargs: Any) -> None:
        super().__init__(n_columns, **kwargs)
        self.clip = None if clip is None else float(clip)

    def call(self, x: Any) -> Any:
        z = (x - self.mean) / self.std
        z = ops.where(ops.isfinite(z), z, ops.zeros_like(z))
        return z if self.clip is None else ops.clip(z, -self.clip, self.clip)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "clip": self.clip}


@keras.saving.register_keras_serializable(package="cb_assets")
class Destandardize(_StoredStats):
    """(z * std + mean) * scale: standardised head -> raw log returns, with the training label statistics
    and a per-output calibration factor (1 until `set_scale`; see the module docstring)."""

    def __init__(
        self, n_columns: int, column_names: list[str] | tuple[str, ...] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(n_columns, column_names, **kwargs)
        self.scale = self.add_weight(
            shape=(self.n_columns,), initializer="ones", trainable=False, name="scale"
        )

    def set_scale(self, scale: np.ndarray) -> None:
        v = _checked(scale, self.n_columns, "scale")
        if np.any(v < 0):
            raise ValueError("scale must be >= 0 (a factor that flips a forecast is no calibration)")
        self.scale.assign(v)

    def call(self, z: Any) -> Any:
        return (z * self.std + self.mean) * self.scale

    def load_own_variables(self, store: Any) -> None:
        # Models saved before calibration existed hold (mean, std) only; they load with scale 1, i.e.
        # exactly the forecasts they were saved with, so an older champion keeps serving and can be
        # fine-tuned (its challenger is calibrated as usual).
        if len(store.keys()) == 2:
            self.mean.assign(store["0"])
            self.std.assign(store["1"])
            return
        super().load_own_variables(store)


@keras.saving.register_keras_serializable(package="cb_assets")
class PositionEmbedding(layers.Layer):
    """A learned vector per token position: attention alone cannot tell recent summaries from old ones."""

    def __init__(self, length: int, dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.length = int(length)
        self.dim = int(dim)
        self.embedding = self.add_weight(
            shape=(self.length, self.dim),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            trainable=True,
            name="embedding",
        )

    def call(self, x: Any) -> Any:
        return x + self.embedding

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "length": self.length, "dim": self.dim}


@keras.saving.register_keras_serializable(package="cb_assets")
class LastStep(layers.Layer):
    """The newest time step of a sequence (a layer rather than a Lambda, so loading needs no unsafe mode)."""

    def call(self, x: Any) -> Any:
        return x[:, -1, :]

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (input_shape[0], input_shape[-1])


@keras.saving.register_keras_serializable(package="cb_assets")
class TransformerBlock(layers.Layer):
    """Pre-norm Transformer encoder block (attention + feed-forward, each with a residual).

    Pre-norm rather than the post-norm of the original paper: it trains stably without a warm-up schedule,
    which matters for short fine-tunes that start with a fresh optimiser.
    """

    def __init__(self, d_model: int, heads: int, ff_dim: int, dropout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.d_model = int(d_model)
        self.heads = int(heads)
        self.ff_dim = int(ff_dim)
        self.dropout_rate = float(dropout)
        self.norm1 = layers.LayerNormalization(epsilon=1e-6, name="norm1")
        self.attention = layers.MultiHeadAttention(
            num_heads=self.heads, key_dim=self.d_model // self.heads, dropout=self.dropout_rate, name="mha"
        )
        self.drop1 = layers.Dropout(self.dropout_rate)
        self.norm2 = layers.LayerNormalization(epsilon=1e-6, name="norm2")
        self.ff1 = layers.Dense(self.ff_dim, activation="gelu", name="ff1")
        self.drop2 = layers.Dropout(self.dropout_rate)
        self.ff2 = layers.Dense(self.d_model, name="ff2")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        # Built explicitly so a loaded model has every weight in place before its weights are restored.
        self.norm1.build(input_shape)
        self.attention.build(input_shape, input_shape)
        self.norm2.build(input_shape)
        self.ff1.build(input_shape)
        self.ff2.build((*input_shape[:-1], self.ff_dim))

    def call(self, x: Any, training: bool | None = None) -> Any:
        h = self.norm1(x)
        h = self.attention(h, h, training=training)
        x = x + self.drop1(h, training=training)
        h = self.ff2(self.drop2(self.ff1(self.norm2(x)), training=training))
        return x + h

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "d_model": self.d_model,
            "heads": self.heads,
            "ff_dim": self.ff_dim,
            "dropout": self.dropout_rate,
        }


@keras.saving.register_keras_serializable(package="cb_assets")
class LinearPath(layers.Layer):
    """The linear model (linear.LinearModel) inside the network: raw window -> raw log returns.

    Each tap is one (lag, column) value of the window, standardised with the linear model's own statistics
    (non-finite -> 0, clipped as in linear.design); everything is a non-trainable weight set from the
    closed-form fit, so the optimiser never moves it and the `.keras` file carries it.
    """

    def __init__(
        self,
        taps: list[list[int]] | tuple[tuple[int, int], ...],
        window: int,
        n_features: int,
        n_outputs: int,
        clip: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.taps = tuple((int(lag), int(col)) for lag, col in taps)
        self.window, self.n_features, self.n_outputs = int(window), int(n_features), int(n_outputs)
        self.clip = float(clip)
        n = len(self.taps)
        self.flat_index = np.array([(self.window - 1 - lag) * self.n_features + c for lag, c in self.taps])
        self.mean = self.add_weight(shape=(n,), initializer="zeros", trainable=False, name="mean")
        self.std = self.add_weight(shape=(n,), initializer="ones", trainable=False, name="std")
        self.kernel = self.add_weight(
            shape=(n, self.n_outputs), initializer="zeros", trainable=False, name="kernel"
        )
        self.bias = self.add_weight(
            shape=(self.n_outputs,), initializer="zeros", trainable=False, name="bias"
        )
        # The sufficient statistics the weights were solved from (float64: sums over ~10^5 windows) and the
        # per-output penalties, so a fine-tune can add an hour to everything seen before (linear.update).
        p1, f64 = n + 1, "float64"
        self.stats_xx = self.add_weight(
            shape=(p1, p1), initializer="zeros", trainable=False, name="xx", dtype=f64
        )
        self.stats_xy = self.add_weight(
            shape=(p1, self.n_outputs), initializer="zeros", trainable=False, name="xy", dtype=f64
        )
        self.stats_yy = self.add_weight(
            shape=(self.n_outputs,), initializer="zeros", trainable=False, name="yy", dtype=f64
        )
        self.stats_n = self.add_weight(shape=(1,), initializer="zeros", trainable=False, name="n", dtype=f64)
        self.lambdas = self.add_weight(
            shape=(self.n_outputs,), initializer="ones", trainable=False, name="lambdas", dtype=f64
        )

    def set_linear(self, mean: np.ndarray, std: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> None:
        n = len(self.taps)
        self.mean.assign(_checked(mean, n, "tap mean"))
        self.std.assign(_checked(std, n, "tap std", positive=True))
        self.kernel.assign(np.asarray(kernel, np.float32).reshape(n, self.n_outputs))
        self.bias.assign(_checked(bias, self.n_outputs, "bias"))

    def set_stats(
        self, xx: np.ndarray, xy: np.ndarray, yy: np.ndarray, n: float, lambdas: np.ndarray
    ) -> None:
        self.stats_xx.assign(np.asarray(xx, np.float64))
        self.stats_xy.assign(np.asarray(xy, np.float64))
        self.stats_yy.assign(np.asarray(yy, np.float64).reshape(-1))
        self.stats_n.assign(np.array([float(n)]))
        self.lambdas.assign(np.asarray(lambdas, np.float64).reshape(-1))

    def call(self, x: Any) -> Any:
        flat = ops.reshape(x, (-1, self.window * self.n_features))
        v = ops.take(flat, self.flat_index, axis=1)
        z = (v - self.mean) / self.std
        z = ops.clip(ops.where(ops.isfinite(z), z, ops.zeros_like(z)), -self.clip, self.clip)
        return ops.matmul(z, self.kernel) + self.bias

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (input_shape[0], self.n_outputs)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "taps": [list(t) for t in self.taps],
            "window": self.window,
            "n_features": self.n_features,
            "n_outputs": self.n_outputs,
            "clip": self.clip,
        }


@keras.saving.register_keras_serializable(package="cb_assets")
class Blend(layers.Layer):
    """linear_gate * linear + residual_gate * residual, per output: the gate's decisions (gate.py) as
    weights. 0/0 serves persistence, 1/0 the linear model, 1/1 the network (a residual over the linear
    model). Until the gate has decided: 0/1, so training and calibration see the residual network alone."""

    def __init__(self, n_outputs: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_outputs = int(n_outputs)
        shape = (self.n_outputs,)
        self.linear_gate = self.add_weight(
            shape=shape, initializer="zeros", trainable=False, name="linear_gate"
        )
        self.residual_gate = self.add_weight(
            shape=shape, initializer="ones", trainable=False, name="residual_gate"
        )

    def set_gates(self, linear: np.ndarray, residual: np.ndarray) -> None:
        self.linear_gate.assign(_checked(linear, self.n_outputs, "linear gate"))
        self.residual_gate.assign(_checked(residual, self.n_outputs, "residual gate"))

    def call(self, inputs: Any) -> Any:
        linear, residual = inputs
        return self.linear_gate * linear + self.residual_gate * residual

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, ...]:
        return tuple(input_shape[0])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "n_outputs": self.n_outputs}


def _names(names: list[str] | tuple[str, ...] | None, n: int) -> tuple[str, ...] | None:
    # The column names travel with the statistics so a fine-tune can refuse data whose columns mean
    # something else (a product added to the config reorders every column after it).
    if names is None:
        return None
    out = tuple(str(x) for x in names)
    if len(out) != n:
        raise ValueError(f"{len(out)} column names for {n} columns")
    return out


def _checked(values: np.ndarray, n: int, what: str, positive: bool = False) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32).reshape(-1)
    if v.shape[0] != n:
        raise ValueError(f"{what} has {v.shape[0]} columns, the layer expects {n}")
    if not np.all(np.isfinite(v)) or (positive and np.any(v <= 0)):
        raise ValueError(f"{what} must be finite{' and positive' if positive else ''}")
    return v
