"""Baselines scored on the same windows as the network, and the training-statistics helpers (pure numpy).

- Persistence: the price stays put, a log return of 0 for every output. Skill is measured against it.
- Ridge: a closed-form linear regression of the labels on the anchor row's standardised features (the
  newest second of each window), fitted on training windows only. If the network cannot beat this it is
  not using the window's history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cb_assets.series.windows import ColumnStats, WindowSet


def stats_of(ws: WindowSet) -> tuple[ColumnStats, ColumnStats]:
    """(feature, label) statistics of one set: the builder's when present, else computed here.

    The fallbacks use the set's whole feature matrix and its valid labels, i.e. the data a training on
    this set would see.
    """
    fs = ws.feature_stats if ws.feature_stats is not None else ColumnStats.of(ws.features)
    ls = ws.label_stats if ws.label_stats is not None else ColumnStats.of(ws.labels[ws.valid])
    return fs, ls


def merged_stats(sets: Sequence[WindowSet]) -> tuple[ColumnStats, ColumnStats]:
    """Feature and label statistics of exactly these sets (for an initial fit: the training sets)."""
    if not sets:
        raise ValueError("no window sets to take statistics from")
    fs, ls = stats_of(sets[0])
    for ws in sets[1:]:
        f, lab = stats_of(ws)
        fs, ls = fs.merge(f), ls.merge(lab)
    return fs, ls


def n_valid(sets: Sequence[WindowSet]) -> int:
    """Valid windows over all `sets`."""
    return int(sum(int(np.count_nonzero(s.valid)) for s in sets))


def select_windows(ws: WindowSet, stride: int = 1, offset: int = 0) -> np.ndarray:
    """Indices of every `stride`-th valid window of `ws`, starting at the `offset`-th valid one."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    return np.flatnonzero(ws.valid)[offset % stride :: stride].astype(np.int64)


def persistence_predictions(ws_or_n: WindowSet | int, n_outputs: int | None = None) -> np.ndarray:
    """The zero-return forecast for every window of a set (or for `n` windows of `n_outputs`)."""
    if isinstance(ws_or_n, WindowSet):
        return np.zeros((len(ws_or_n), ws_or_n.labels.shape[1]), dtype=np.float32)
    if n_outputs is None:
        raise ValueError("n_outputs is needed when a window count is given")
    return np.zeros((int(ws_or_n), int(n_outputs)), dtype=np.float32)


def anchor_rows(ws: WindowSet) -> np.ndarray:
    """The newest row of every window, (n_windows, n_features) (a copy of n rows, not of n windows)."""
    return ws.features[ws.anchors]


@dataclass(frozen=True)
class RidgeBaseline:
    """y = intercept + z @ weights, z the anchor row standardised with the training statistics.

    `lam` is the penalty per training window on standardised features: for uncorrelated features it
    shrinks each coefficient by about 1 / (1 + lam), independent of how many windows were used.
    """

    feature_mean: np.ndarray  # (n_features,)
    feature_std: np.ndarray  # (n_features,)
    weights: np.ndarray  # (n_features, n_outputs), per standardised feature
    intercept: np.ndarray  # (n_outputs,)
    lam: float
    n_train: int
    clip: float = 10.0

    def standardise(self, rows: np.ndarray) -> np.ndarray:
        # Same treatment as the network's Standardize layer: missing -> the training mean, clipped.
        z = (np.asarray(rows, np.float64) - self.feature_mean) / self.feature_std
        z = np.where(np.isfinite(z), z, 0.0)
        return np.clip(z, -self.clip, self.clip)

    @classmethod
    def fit(
        cls,
        train_sets: Sequence[WindowSet],
        *,
        lam: float = 0.1,
        stride: int = 1,
        feature_stats: ColumnStats | None = None,
        clip: float = 10.0,
    ) -> RidgeBaseline:
        """Fit on the valid windows (every `stride`-th) of the training sets only."""
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        stats = feature_stats if feature_stats is not None else merged_stats(train_sets)[0]
        proto = cls(stats.mean, stats.std, np.empty((0, 0)), np.empty(0), float(lam), 0, clip)
        xs, ys = [], []
        for ws in train_sets:
            idx = select_windows(ws, stride)
            xs.append(proto.standardise(ws.features[ws.anchors[idx]]))
            ys.append(np.asarray(ws.labels[idx], np.float64))
        x, y = np.concatenate(xs), np.concatenate(ys)
        n = x.shape[0]
        if n == 0:
            raise ValueError("no valid training windows for the ridge baseline")
        # Centre both sides so the intercept is not penalised.
        x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
        xc, yc = x - x_mean, y - y_mean
        gram = xc.T @ xc + lam * n * np.eye(x.shape[1])
        # lstsq rather than solve: with lam = 0 and a constant column the Gram matrix is singular.
        weights = np.linalg.lstsq(gram, xc.T @ yc, rcond=None)[0]
        return cls(stats.mean, stats.std, weights, y_mean - x_mean @ weights, float(lam), n, clip)

    def predict_rows(self, rows: np.ndarray) -> np.ndarray:
        return (self.standardise(rows) @ self.weights + self.intercept).astype(np.float32)

    def predict(self, ws: WindowSet) -> np.ndarray:
        """Forecasts (n_windows, n_outputs) in raw log returns for every window of `ws`."""
        return self.predict_rows(anchor_rows(ws))
