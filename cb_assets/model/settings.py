"""Every training default, once: the network's sizes and the training settings (no TensorFlow, no Dagster).

`PriceModelConfig` (defs/price_model.py) takes its field defaults from here, the pipeline takes a
`TrainSettings`, and the train functions' keyword defaults read the same constants, so a default changed
here changes everywhere (they had drifted: fine_tune's own learning rate was 1e-4 against the config's
2e-4).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from cb_assets.series.schema import HORIZONS_S, WINDOW_S

# Every 2nd valid anchor: one hour is then 1800 windows (+600 replay); neighbouring windows share 999 of
# 1000 seconds, so stride 1 adds little. bench/model.py measures the fine-tune.
DEFAULT_STRIDE = 2
DEFAULT_BATCH = 16
# `auto_stride`'s budget: windows per epoch when many hours are given. Measured on the simulated market of
# test_model_learning_e2e (network alone, 24 h, one epoch): ~11,000 windows left the planted output at 0.17
# skill, ~22,000 reached 0.23, ~33,000 (near-duplicate neighbours) fell back to 0.16.
WINDOWS_PER_EPOCH = 24_000
LEARNING_RATE = 1e-3
# ~5x below an initial training's, so a new hour adjusts the weights rather than overwriting them.
FINE_TUNE_LEARNING_RATE = 2e-4
REPLAY_FRACTION = 0.25
WEIGHT_DECAY = 1e-4  # AdamW's decoupled weight decay
CLIPNORM = 1.0
# The newest share of the training windows set aside to fit the calibration factors (calibration.py).
CALIBRATION_FRACTION = 0.2
# The gate's held-out windows: the tails of the newest GATE_HOURS hours (gate.py, pipeline.py).
GATE_HOURS = 3
HOLDOUT_FRACTION = 1 / 3
GATE_T = 2.0  # Diebold-Mariano t the linear model must reach to replace persistence
# Family-wise level of the network's admission over all outputs (Holm, gate.py).
GATE_NETWORK_ALPHA = 0.05
# Held-out and prequential windows are scored every SCORE_STRIDE seconds (pipeline.thin): the network's
# inference is most of a fine-tune otherwise (bench/model.py: 61 s with every window, 29 s with every 4th,
# target 30 s).
SCORE_STRIDE = 5
# A fine-tune keeps the linear model's statistics of earlier hours at this weight per fine-tune (~a day's
# half-life), so it follows a slowly changing market without forgetting what one hour cannot show.
LINEAR_DECAY = 0.97


@dataclass(frozen=True)
class NetworkConfig:
    """Sizes of the network. The defaults were chosen to train at a useful speed on 2 CPU cores.

    With 1000 x 420 inputs the first convolution (kernel 10, stride 5) is most of the work; the second
    (kernel 4, stride 4) brings 1000 seconds down to 49 tokens, which one attention block handles cheaply.
    """

    window: int = WINDOW_S
    n_features: int = 12 * 35
    n_outputs: int = 12 * len(HORIZONS_S)
    conv_filters: tuple[int, ...] = (64, 64)
    conv_kernels: tuple[int, ...] = (10, 4)
    conv_strides: tuple[int, ...] = (5, 4)
    d_model: int = 64
    heads: int = 4
    ff_dim: int = 128
    n_blocks: int = 1
    dropout: float = 0.1
    head_units: int = 64
    # A dense path from the anchor row (the newest second) straight to the head: for horizons of 10-200 s
    # the latest values carry most of the information, and this keeps them from being averaged away.
    anchor_skip: bool = True
    # Standardised inputs are clipped: one extreme value (a 52-week-high reset, a volume burst) would
    # otherwise dominate the activations of a whole window.
    clip: float = 10.0
    # Channels of a per-second projection of the standardised columns before the first convolution
    # (0: none, as in models saved before it). That convolution over all 12 x 43 columns was most of the
    # arithmetic of a forecast: projecting to 32 first took one window from ~8.6 to ~5.4 ms on 2 cores,
    # and the network only ever learns a residual over the linear model, which reads the raw columns.
    input_projection: int = 32

    def __post_init__(self) -> None:
        n = len(self.conv_filters)
        if not (len(self.conv_kernels) == len(self.conv_strides) == n):
            raise ValueError("conv_filters, conv_kernels and conv_strides must have the same length")
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by heads {self.heads}")
        if self.sequence_length() < 1:
            raise ValueError(f"the convolutions leave no time steps of a {self.window}-second window")

    def sequence_length(self) -> int:
        """Tokens left after the convolutional front (after the start-crops, see network._crop_for)."""
        length = self.window
        for k, s in zip(self.conv_kernels, self.conv_strides, strict=True):
            if length < k:
                return 0
            length = (length - k) // s + 1
        return length

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetworkConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in fields}
        return cls(**kw)


NETWORK_DEFAULTS = NetworkConfig()


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 1
    learning_rate: float = LEARNING_RATE
    fine_tune_learning_rate: float = FINE_TUNE_LEARNING_RATE
    replay_fraction: float = REPLAY_FRACTION
    # None: train.auto_stride (stride 2 for an hour, about WINDOWS_PER_EPOCH windows from a day of hours)
    stride: int | None = None
    batch_size: int = DEFAULT_BATCH
    seed: int = 0
    weight_decay: float = WEIGHT_DECAY
    # newest share of the training windows that fits the calibration; 0: none
    calibration_fraction: float = CALIBRATION_FRACTION
    gate_hours: int = GATE_HOURS
    gate_t: float = GATE_T
    gate_network_alpha: float = GATE_NETWORK_ALPHA
    score_stride: int = SCORE_STRIDE
    linear_decay: float = LINEAR_DECAY
    # False: a linear-only version (no network is trained; the gate picks linear or persistence)
    train_network: bool = True
    network: dict = field(default_factory=dict)  # NetworkConfig overrides (sizes)

    def stride_for(self, n_windows: int) -> int:
        """The stride to train `n_windows` valid windows with: the fixed one, or auto_stride's."""
        return self.stride if self.stride is not None else auto_stride(n_windows)

    def step_options(self, n_windows: int) -> dict:
        """The optimiser options that training from scratch and fine-tuning share, for `n_windows` windows."""
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "stride": self.stride_for(n_windows),
            "seed": self.seed,
            "weight_decay": self.weight_decay,
        }


TRAIN_DEFAULTS = TrainSettings()


def auto_stride(
    n_windows: int, windows_per_epoch: int = WINDOWS_PER_EPOCH, min_stride: int = DEFAULT_STRIDE
) -> int:
    """The stride that keeps about `windows_per_epoch` of `n_windows` valid windows (never below
    `min_stride`): few hours train as before, many hours are thinned evenly instead of seen whole."""
    return max(int(min_stride), -(-int(n_windows) // max(1, int(windows_per_epoch))))
