"""Per-output shrinkage calibration of a trained model's forecasts.

`split_calibration` keeps the newest part of the training windows (in time, behind an embargo
of the longest horizon) away from the optimiser; after training, `calibrate` fits one shrinkage factor per
output on it, clip(<forecast, label> / <forecast, forecast>, 0, 1), the least-squares scale of the forecast
limited to "keep it" or "shrink it towards 0". Trained models spread their forecasts even on outputs with
nothing to predict; judged on windows the model never learned from, those outputs get a factor near 0
and forecast persistence, while outputs with real signal keep theirs near 1. The slice is never the
promotion gate's held-out windows (see pipeline.py): it is carved from the training data.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from cb_assets.model.baselines import n_valid, select_windows
from cb_assets.model.batches import WindowBatcher, index_pairs
from cb_assets.model.network import calibration_of, predict_returns, set_calibration
from cb_assets.model.settings import CALIBRATION_FRACTION
from cb_assets.series.schema import HORIZONS_S, SECOND_NS
from cb_assets.series.windows import WindowSet

log = logging.getLogger(__name__)

# Fewer calibration windows than this and the factors would be noise: train on everything instead.
MIN_CALIBRATION_WINDOWS = 60
# More would only cost inference time: neighbouring windows give nearly the same forecast and label.
MAX_CALIBRATION_WINDOWS = 4096


def split_calibration(
    sets: Sequence[WindowSet],
    fraction: float = CALIBRATION_FRACTION,
    embargo_s: int = max(HORIZONS_S),
) -> tuple[list[WindowSet], list[WindowSet]]:
    """(training part, calibration slice) of `sets`: the newest `fraction` of their valid windows (by anchor
    time) for calibration, and only windows more than `embargo_s` older than the slice for training.

    The embargo keeps the training labels (which reach t + max horizon) from overlapping the slice's own
    outcomes: the factors must be judged on outcomes the network never fitted. Returns (sets, []) (no
    calibration) when `fraction` is 0 or either part would be too small to be of use.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"calibration fraction must be in [0, 1), got {fraction}")
    sets = list(sets)
    times = np.sort(np.concatenate([s.anchor_times_ns[s.valid] for s in sets])) if sets else np.empty(0)
    k = int(np.floor(len(times) * (1.0 - fraction)))
    if fraction == 0.0 or len(times) - k < MIN_CALIBRATION_WINDOWS:
        return sets, []
    cut = int(times[k])
    fit = [
        dataclasses.replace(s, valid=s.valid & (s.anchor_times_ns < cut - embargo_s * SECOND_NS))
        for s in sets
    ]
    cal = [dataclasses.replace(s, valid=s.valid & (s.anchor_times_ns >= cut)) for s in sets]
    fit, cal = [s for s in fit if s.valid.any()], [s for s in cal if s.valid.any()]
    if not fit:
        log.warning("too few windows to set a calibration slice aside: training on all, uncalibrated")
        return sets, []
    return fit, cal


def calibration_factors(forecasts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per output, clip(<forecast, label> / <forecast, forecast>, 0, 1): the least-squares scale of the
    forecast, never above 1 (no amplifying on a small slice) nor below 0 (no flipped forecasts). An output
    whose forecasts are all 0 gets 0 (any factor gives the same forecast)."""
    f = np.asarray(forecasts, np.float64)
    y = np.asarray(labels, np.float64)
    num = np.einsum("ij,ij->j", f, y)
    den = np.einsum("ij,ij->j", f, f)
    safe = np.where(den > 0, den, 1.0)
    return np.where(den > 0, np.clip(num / safe, 0.0, 1.0), 0.0)


def calibrate(
    model: keras.Model, sets: Sequence[WindowSet], max_windows: int = MAX_CALIBRATION_WINDOWS
) -> tuple[np.ndarray, int]:
    """Fit and store the model's calibration factors on the valid windows of `sets` (evenly thinned to at
    most `max_windows`); returns (factors, windows used). The factors are fitted to the uncalibrated
    forecasts, so recalibrating a calibrated model (a fine-tune's warm start) does not compound them."""
    n = n_valid(sets)
    if n == 0:
        raise ValueError("no valid windows to calibrate on")
    stride = -(-n // max(1, max_windows))
    pairs = np.concatenate([index_pairs(s, select_windows(ws, stride)) for s, ws in enumerate(sets)], axis=0)
    n_outputs = int(model.outputs[0].shape[-1])
    # Raw labels: the batcher's standardisation with mean 0 and std 1 is the identity.
    batcher = WindowBatcher(sets, np.zeros(n_outputs), np.ones(n_outputs))
    set_calibration(model, np.ones(n_outputs))
    forecasts = np.empty((len(pairs), n_outputs), np.float32)
    labels = np.empty_like(forecasts)
    # One predict batch of windows copied at a time: 64 x 1000 x 420 float32 is ~100 MB (256 would be 4x
    # that, and measured slower to copy than to forecast).
    for i in range(0, len(pairs), 64):
        x, labels[i : i + 64] = batcher.gather(pairs[i : i + 64])
        forecasts[i : i + 64] = predict_returns(model, x)
    factors = calibration_factors(forecasts, labels)
    set_calibration(model, factors)
    log.info("calibrated on %d windows: factors %s", len(pairs), np.round(factors, 3).tolist())
    return factors, len(pairs)


def calibrated(model: keras.Model, result: Any, calibration_sets: Sequence[WindowSet]) -> Any:
    calibration_sets = [s for s in calibration_sets if s.valid.any()]
    if calibration_sets:
        start = time.perf_counter()
        factors, n = calibrate(model, calibration_sets)
        result.extra["calibration_seconds"] = time.perf_counter() - start
    else:
        factors, n = calibration_of(model), 0
    result.extra["calibration"] = [float(v) for v in factors]
    result.extra["calibration_windows"] = n
    return result
