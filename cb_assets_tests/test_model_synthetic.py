"""Synthetic WindowSets with a planted, known signal, shared by the model tests (and checked here).

Each product's log price is a random walk of 1-second returns. Features per product: the 1-second
return, the 10-second return (sum of the last 10), the 60-second return, and noise columns with a large offset and scale (so that standardisation matters). Labels are the true future
returns of the walk (unpredictable from the past) except one planted output: product B's 10-second
label gets `beta` times product A's last 10-second return added, which the features show at the anchor.
The oracle forecast for that output is exactly `beta * A:ret10`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cb_assets.series.schema import HORIZONS_S, SECOND_NS
from cb_assets.series.windows import WindowSet

PRODUCTS = ("A", "B", "C")
FEATURES = ("ret1", "ret10", "ret60", "noise0", "noise1")
SIGMA = 1e-4  # 1-second return std (~1 bp, BTC-like)
PLANTED = ("B", 10)  # (product, horizon) carrying the signal
SOURCE = ("A", "ret10")  # the feature it depends on


@dataclass
class Synthetic:
    ws: WindowSet
    oracle: np.ndarray  # (n_windows, n_outputs): the best forecast given what the features show
    beta: float


def feature_col(product: str, feature: str) -> int:
    return PRODUCTS.index(product) * len(FEATURES) + FEATURES.index(feature)


def output_col(product: str, horizon: int) -> int:
    return PRODUCTS.index(product) * len(HORIZONS_S) + HORIZONS_S.index(horizon)


def synthetic_set(
    n_windows: int,
    *,
    window: int = 32,
    beta: float = 1.0,
    seed: int = 0,
    invalid_every: int = 0,
    nan_every: int = 0,
) -> Synthetic:
    """`n_windows` consecutive windows; every `invalid_every`-th window is marked invalid (its labels
    NaN) and every `nan_every`-th feature row gets a NaN in one column (to exercise missing inputs)."""
    rng = np.random.default_rng(seed)
    h_max = max(HORIZONS_S)
    n_rows = window - 1 + n_windows + h_max
    n_p = len(PRODUCTS)
    ret = rng.normal(0.0, SIGMA, size=(n_rows, n_p))
    level = np.cumsum(ret, axis=0)
    ret10 = level - np.concatenate([np.zeros((10, n_p)), level[:-10]])
    noise = rng.normal(50_000.0, 300.0, size=(n_rows, n_p, 2))
    ret60 = level - np.concatenate([np.zeros((60, n_p)), level[:-60]])
    # Stationary features only: a price level would make train and test stretches incomparable.
    per_product = np.stack([ret, ret10, ret60], axis=2)
    feats = np.concatenate([per_product, noise], axis=2).reshape(n_rows, n_p * len(FEATURES))

    anchors = np.arange(window - 1, window - 1 + n_windows, dtype=np.int64)
    labels = np.empty((n_windows, n_p * len(HORIZONS_S)), dtype=np.float64)
    oracle = np.zeros_like(labels)
    for j in range(n_p):
        for k, h in enumerate(HORIZONS_S):
            labels[:, j * len(HORIZONS_S) + k] = level[anchors + h, j] - level[anchors, j]
    planted = output_col(*PLANTED)
    signal = beta * feats[anchors, feature_col(*SOURCE)]
    labels[:, planted] += signal
    oracle[:, planted] = signal

    valid = np.ones(n_windows, dtype=bool)
    if invalid_every:
        valid[::invalid_every] = False
        labels[~valid, 0] = np.nan
    features = feats[: anchors[-1] + 1].astype(np.float32)  # nothing after the last anchor is visible
    if nan_every:
        features[::nan_every, feature_col("C", "noise0")] = np.nan
    ws = WindowSet(
        features=features,
        labels=labels.astype(np.float32),
        anchors=anchors,
        anchor_times_ns=1_700_000_000 * SECOND_NS + anchors * SECOND_NS,
        valid=valid,
        feature_names=tuple(f"{p}:{f}" for p in PRODUCTS for f in FEATURES),
        output_names=tuple(f"{p}:r{h}s" for p in PRODUCTS for h in HORIZONS_S),
        window=window,
    )
    return Synthetic(ws=ws, oracle=oracle.astype(np.float32), beta=beta)


def test_planted_signal_is_visible_at_the_anchor_and_nowhere_else() -> None:
    s = synthetic_set(4000, beta=1.0, seed=3)
    y, x = s.ws.labels, s.ws.features[s.ws.anchors]
    a_ret10 = x[:, feature_col(*SOURCE)]
    planted = output_col(*PLANTED)
    # The planted output: R^2 of the oracle is beta^2 / (1 + beta^2) = 0.5 for beta = 1.
    r2 = 1.0 - np.mean((y[:, planted] - s.oracle[:, planted]) ** 2) / np.mean(y[:, planted] ** 2)
    assert 0.42 < r2 < 0.58
    # Other outputs are future returns of a random walk: no correlation with the source feature.
    for col in range(y.shape[1]):
        if col != planted:
            assert abs(np.corrcoef(a_ret10, y[:, col])[0, 1]) < 0.15  # ~3 se with overlapping labels


def test_windows_end_at_the_anchor_and_features_stop_there() -> None:
    s = synthetic_set(50, window=16, seed=1)
    v = s.ws.views()
    assert v.shape == (50, 16, len(PRODUCTS) * len(FEATURES))
    np.testing.assert_array_equal(v[7, -1], s.ws.features[s.ws.anchors[7]])
    assert s.ws.features.shape[0] == s.ws.anchors[-1] + 1


def tiny_config(window: int = 32, dropout: float = 0.1, **kw: object) -> object:
    """A network small enough to train in seconds on the synthetic sets (imports TensorFlow lazily)."""
    from cb_assets.model.settings import NetworkConfig

    base: dict[str, object] = dict(
        window=window,
        n_features=len(PRODUCTS) * len(FEATURES),
        n_outputs=len(PRODUCTS) * len(HORIZONS_S),
        conv_filters=(16,),
        conv_kernels=(4,),
        conv_strides=(4,),
        d_model=16,
        heads=2,
        ff_dim=32,
        head_units=32,
        dropout=dropout,
    )
    base.update(kw)
    return NetworkConfig(**base)  # type: ignore[arg-type]
