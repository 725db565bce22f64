"""The linear model of the composite forecaster: a ridge regression on lagged values of the window (numpy).

Why lags: the anchor row alone (the old baseline) sees returns over fixed lookbacks ending now, so a
leader's move 10-60 s ago enters it only blurred into a 30 s or 60 s return. Each product's 1 s returns at
lags 1-9 s and 5 s returns at lags 10-85 s (block sums over 90 s) let a linear model rebuild any lead-lag
of up to ~85 s, and the anchor row keeps everything else. On the planted markets this gets most of the
way to the oracle that the network alone reached only with luck (bench/model.py).

Fitting: closed form from per-hour sufficient statistics (Gram matrix of the standardised taps with an
intercept column), so that
- the penalty is chosen PER OUTPUT by blocked cross-validation over contiguous groups of hours (outputs
  with nothing to predict pick the strongest penalty, i.e. ~ the training mean);
- out-of-fold forecasts of every training window come cheaply, which is what the gate's ridge-vs-
  persistence test uses (gate.py): many more independent labels than one held-out tail;
- a fine-tune adds the new hours' statistics to the stored ones (decayed) instead of refitting on a few.

The same taps and weights run inside the Keras model (layers.LinearPath); test_model_gate checks that the
two give the same forecasts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from cb_assets.model.baselines import merged_stats, select_windows
from cb_assets.series.windows import WindowSet

# Penalties per training window on standardised taps; the last (1e4) shrinks every weight to ~0.
LAMBDAS: tuple[float, ...] = (1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e4)
CV_FOLDS = 4
SHORT_LAGS_S: tuple[int, ...] = tuple(range(1, 10))  # of each product's 1 s return
BLOCK_LAGS_S: tuple[int, ...] = tuple(range(10, 90, 5))  # of each product's 5 s return (ends of blocks)
CLIP = 10.0


def lag_taps(feature_names: Sequence[str], window: int) -> tuple[tuple[int, int], ...]:
    """(lag in seconds, column) of every input: the whole anchor row, then each product's lagged returns
    (those that fit in the window: the network's input is all the linear path inside it can read)."""
    names = list(feature_names)
    taps = [(0, c) for c in range(len(names))]
    products = list(dict.fromkeys(n.split(":")[0] for n in names))
    for p in products:
        one, five = f"{p}:ret_1s", f"{p}:ret_5s"
        if one in names:
            taps += [(lag, names.index(one)) for lag in SHORT_LAGS_S if lag < window]
        if five in names:
            taps += [(lag, names.index(five)) for lag in BLOCK_LAGS_S if lag < window]
    return tuple(taps)


@dataclass(frozen=True)
class Stats:
    """Sufficient statistics of a regression on [1, z]: X'X, X'Y, Y'Y (per output) and the window count."""

    xx: np.ndarray  # (p + 1, p + 1), intercept first
    xy: np.ndarray  # (p + 1, n_outputs)
    yy: np.ndarray  # (n_outputs,)
    n: float

    def __add__(self, other: Stats) -> Stats:
        return Stats(self.xx + other.xx, self.xy + other.xy, self.yy + other.yy, self.n + other.n)

    def __sub__(self, other: Stats) -> Stats:
        return Stats(self.xx - other.xx, self.xy - other.xy, self.yy - other.yy, self.n - other.n)

    def scaled(self, factor: float) -> Stats:
        return Stats(self.xx * factor, self.xy * factor, self.yy * factor, self.n * factor)


@dataclass(frozen=True)
class LinearModel:
    """y = intercept + z @ weights, z the standardised, clipped taps (non-finite -> 0, the mean)."""

    taps: tuple[tuple[int, int], ...]
    tap_mean: np.ndarray  # (n_taps,)
    tap_std: np.ndarray  # (n_taps,)
    weights: np.ndarray  # (n_taps, n_outputs)
    intercept: np.ndarray  # (n_outputs,)
    lambdas: np.ndarray  # (n_outputs,) penalty chosen per output
    stats: Stats  # what the weights were solved from (a fine-tune adds to it)

    @property
    def max_lag(self) -> int:
        return max(lag for lag, _ in self.taps)

    def design(self, ws: WindowSet, idx: np.ndarray) -> np.ndarray:
        return design(ws, idx, self.taps, self.tap_mean, self.tap_std)

    def predict(self, ws: WindowSet, idx: np.ndarray | None = None) -> np.ndarray:
        """Forecasts (len(idx), n_outputs) in raw log returns; every window of `ws` when idx is None."""
        idx = np.arange(len(ws)) if idx is None else np.asarray(idx)
        return forecast(ws, idx, self.taps, self.tap_mean, self.tap_std, self.weights, self.intercept)


def forecast(
    ws: WindowSet,
    idx: np.ndarray,
    taps: Sequence[tuple[int, int]],
    mean: np.ndarray,
    std: np.ndarray,
    weights: np.ndarray,
    intercept: np.ndarray,
) -> np.ndarray:
    """(len(idx), n_outputs) float32 forecasts of the windows `idx` of `ws`, a few thousand at a time (the
    design matrix of a whole hour would be ~3600 x 800 float64)."""
    out = np.empty((len(idx), weights.shape[1]), np.float32)
    for i in range(0, len(idx), 4096):
        out[i : i + 4096] = design(ws, idx[i : i + 4096], taps, mean, std) @ weights + intercept
    return out


def design(
    ws: WindowSet, idx: np.ndarray, taps: Sequence[tuple[int, int]], mean: np.ndarray, std: np.ndarray
) -> np.ndarray:
    lags, cols = _lags_cols(taps)
    rows = ws.anchors[np.asarray(idx, np.int64)][:, None] - lags[None, :]
    if len(idx) and rows.min() < 0:
        raise ValueError("a tap reaches before the first feature row")
    return standardise(ws.features[rows, cols[None, :]], mean, std)


def window_design(
    windows: np.ndarray, taps: Sequence[tuple[int, int]], mean: np.ndarray, std: np.ndarray
) -> np.ndarray:
    """`design` of raw windows (n, window, n_features) whose last row is the anchor (what the live
    forecaster holds): the same taps, read from each window instead of a WindowSet's feature matrix."""
    lags, cols = _lags_cols(taps)
    w = np.asarray(windows)
    if len(lags) and int(lags.max()) >= w.shape[1]:
        raise ValueError("a tap reaches before the first row of the window")
    return standardise(w[:, w.shape[1] - 1 - lags, cols], mean, std)


def standardise(values: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Tap values -> the model's inputs: standardised, non-finite -> 0 (the training mean), clipped.
    layers.LinearPath does the same inside the Keras model."""
    z = (np.asarray(values, np.float64) - mean) / std
    return np.clip(np.where(np.isfinite(z), z, 0.0), -CLIP, CLIP)


def _lags_cols(taps: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([t[0] for t in taps], np.int64), np.array([t[1] for t in taps], np.int64)


def tap_stats(sets: Sequence[WindowSet], taps: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each tap's column over the training sets (a lag does not change a column's scale)."""
    fs, _ = merged_stats(sets)
    cols = np.array([c for _, c in taps], np.int64)
    return np.asarray(fs.mean, np.float64)[cols], np.asarray(fs.std, np.float64)[cols]


def set_stats(ws: WindowSet, idx: np.ndarray, taps, mean, std) -> Stats:  # type: ignore[no-untyped-def]
    x = design(ws, idx, taps, mean, std)
    x = np.concatenate([np.ones((len(x), 1)), x], axis=1)
    y = np.asarray(ws.labels[idx], np.float64)
    return Stats(x.T @ x, x.T @ y, np.einsum("ij,ij->j", y, y), float(len(idx)))


def solve(stats: Stats, lam: float) -> np.ndarray:
    """(p + 1, n_outputs) coefficients for one penalty, the intercept unpenalised."""
    p = stats.xx.shape[0]
    pen = np.full(p, lam * max(stats.n, 1.0))
    pen[0] = 0.0
    a = stats.xx + np.diag(pen)
    try:
        return np.linalg.solve(a, stats.xy)
    except np.linalg.LinAlgError:  # lam ~ 0 with a constant tap: singular, take the minimum-norm solution
        return np.linalg.lstsq(a, stats.xy, rcond=None)[0]


def _sse(stats: Stats, coef: np.ndarray) -> np.ndarray:
    """Per output sum of squared errors of `coef` on the data behind `stats`."""
    return (
        stats.yy
        - 2.0 * np.einsum("ij,ij->j", coef, stats.xy)
        + np.einsum("ij,ik,kj->j", coef, stats.xx, coef)
    )


def solve_per_output(stats: Stats, lambdas: np.ndarray) -> np.ndarray:
    coef = np.empty(stats.xy.shape)
    for lam in np.unique(lambdas):
        cols = lambdas == lam
        coef[:, cols] = solve(stats, float(lam))[:, cols]
    return coef


def _model(taps, mean, std, coef, lambdas, stats) -> LinearModel:  # type: ignore[no-untyped-def]
    return LinearModel(tuple(taps), mean, std, coef[1:], coef[0], np.asarray(lambdas, np.float64), stats)


def fold_of(n_sets: int, folds: int = CV_FOLDS) -> np.ndarray:
    """Contiguous groups of sets (hours) as folds: neighbouring windows share most of their history."""
    k = max(1, min(folds, n_sets))
    return np.arange(n_sets) * k // max(n_sets, 1)


@dataclass(frozen=True)
class Fit:
    model: LinearModel
    # Out-of-fold forecasts of each set's valid windows (in valid order); None with a single fold (one set),
    # where the only forecasts would be in-sample and no evidence at all.
    oof: list[np.ndarray] | None


def fit(
    sets: Sequence[WindowSet], *, stride: int = 1, folds: int = CV_FOLDS, lambdas: Sequence[float] = LAMBDAS
) -> Fit:
    """Fit on the valid windows (every `stride`-th) of `sets`, one penalty per output by blocked CV.

    Returns the model fitted on all sets and, for each set, the forecasts of its valid windows by the model
    fitted without its fold (at that output's chosen penalty).
    """
    sets = [s for s in sets if s.valid.any()]
    if not sets:
        raise ValueError("no valid windows for the linear model")
    taps = lag_taps(sets[0].feature_names, sets[0].window)
    mean, std = tap_stats(sets, taps)
    per_set = [set_stats(s, select_windows(s, stride), taps, mean, std) for s in sets]
    total = per_set[0]
    for st in per_set[1:]:
        total = total + st
    fold = fold_of(len(sets), folds)
    n_folds = int(fold.max()) + 1
    lam = np.asarray(lambdas, np.float64)
    if n_folds < 2:
        chosen = np.full(total.xy.shape[1], lam[len(lam) // 2])
        coefs_by_fold: dict[int, np.ndarray] = {}
    else:
        fold_stats = []
        for k in range(n_folds):
            st = per_set[int(np.flatnonzero(fold == k)[0])]
            for i in np.flatnonzero(fold == k)[1:]:
                st = st + per_set[int(i)]
            fold_stats.append(st)
        cv = np.zeros((len(lam), total.xy.shape[1]))
        for held in fold_stats:
            rest = total - held
            for a, value in enumerate(lam):
                cv[a] += _sse(held, solve(rest, float(value)))
        chosen = lam[np.argmin(cv, axis=0)]
        coefs_by_fold = {k: solve_per_output(total - fold_stats[k], chosen) for k in range(n_folds)}
    model = _model(taps, mean, std, solve_per_output(total, chosen), chosen, total)
    if not coefs_by_fold:
        return Fit(model, None)
    oof = []
    for i, s in enumerate(sets):
        x = model.design(s, np.flatnonzero(s.valid))
        coef = coefs_by_fold[int(fold[i])]
        oof.append((x @ coef[1:] + coef[0]).astype(np.float32))
    return Fit(model, oof)


def update(
    model: LinearModel, sets: Sequence[WindowSet], *, decay: float = 1.0, stride: int = 1
) -> LinearModel:
    """The model refitted on its stored statistics (times `decay`) plus those of `sets`, same taps,
    normalisation and penalties: a fine-tune learns from every hour seen so far, not from the few at hand."""
    stats = model.stats.scaled(decay)
    for s in sets:
        if s.valid.any():
            stats = stats + set_stats(s, select_windows(s, stride), model.taps, model.tap_mean, model.tap_std)
    coef = solve_per_output(stats, model.lambdas)
    return replace(model, weights=coef[1:], intercept=coef[0], stats=stats)
