"""Speed of the forecaster: fine-tuning on one hour of windows, and inference per window.

Run: `python bench/model.py` (about 1-2 minutes on 2 cores). Targets on 2 CPU cores: a fine-tune on one
hour (3600 anchors) at the default stride with the default replay mix <= 120 s; inference <= 20 ms per
window, in batches and one window at a time.

The fine-tune does what the pipeline's does: the newest `calibration_fraction` of the hour's windows is set
aside, the rest trained on at the stride `auto_stride` picks for that many windows (what TrainSettings'
default stride=None resolves to), then the copy is recalibrated on the slice; the time includes that. (The
pipeline also holds the hour's last third out for the promotion gate, so it trains on fewer windows than
here: these figures are an upper bound.) `--initial-hours N` also times an initial training on N hours
at the auto stride (no target; the default config trains on 24).

Shapes are the production ones: windows of 1000 s x 12 products x 35 features (420 columns), 48 outputs
(12 products x 4 horizons), the default NetworkConfig. Values are synthetic (speed does not depend on
them). The champion is saved to and loaded from a `.keras` file, as the fine-tuning asset will do; the
figures include that. Same-run ratios: time against target, and the input pipeline alone against the
whole fine-tune (how much of it is copying windows rather than learning).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from cb_assets.model.network import NetworkConfig, predict_returns, save_model
from cb_assets.model.train import (
    CALIBRATION_FRACTION,
    WindowBatcher,
    auto_stride,
    fine_tune,
    new_model,
    select_windows,
    split_calibration,
    train_model,
)
from cb_assets.series.schema import HOUR_S, SECOND_NS, WINDOW_S
from cb_assets.series.windows import WindowSet

N_PRODUCTS, N_FEATURES_PER_PRODUCT, N_HORIZONS = 12, 35, 4
FINE_TUNE_TARGET_S = 120.0
INFERENCE_TARGET_MS = 20.0


def hour_of_windows(seed: int, n_anchors: int = HOUR_S, hour: int = 0) -> WindowSet:
    rng = np.random.default_rng(seed)
    n_feat = N_PRODUCTS * N_FEATURES_PER_PRODUCT
    n_out = N_PRODUCTS * N_HORIZONS
    rows = WINDOW_S - 1 + n_anchors
    features = (rng.normal(size=(rows, n_feat)) * rng.uniform(0.1, 100, n_feat)).astype(np.float32)
    features[rng.random(features.shape) < 0.001] = np.nan  # a few gaps, as real indicators have
    anchors = np.arange(WINDOW_S - 1, rows, dtype=np.int64)
    return WindowSet(
        features=features,
        labels=(rng.normal(size=(n_anchors, n_out)) * 1e-4).astype(np.float32),
        anchors=anchors,
        anchor_times_ns=(1_700_000_000 + hour * HOUR_S + anchors) * SECOND_NS,
        valid=np.ones(n_anchors, dtype=bool),
        feature_names=tuple(f"P{p}:f{f}" for p in range(N_PRODUCTS) for f in range(N_FEATURES_PER_PRODUCT)),
        output_names=tuple(f"P{p}:r{h}s" for p in range(N_PRODUCTS) for h in range(N_HORIZONS)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stride", type=int, default=None, help="default: auto_stride's for the hour")
    parser.add_argument("--replay-fraction", type=float, default=0.25)
    parser.add_argument("--calibration-fraction", type=float, default=CALIBRATION_FRACTION)
    parser.add_argument("--initial-hours", type=int, default=0, help="also time an initial training")
    args = parser.parse_args()

    cfg = NetworkConfig(n_features=N_PRODUCTS * N_FEATURES_PER_PRODUCT, n_outputs=N_PRODUCTS * N_HORIZONS)
    previous, hour = hour_of_windows(1, hour=-1), hour_of_windows(2)
    fit, calibration = split_calibration([hour], args.calibration_fraction)
    n_fit = sum(int(s.valid.sum()) for s in fit)
    stride = args.stride if args.stride is not None else auto_stride(n_fit)
    print(
        f"shapes: window {cfg.window} x {cfg.n_features} features, {cfg.n_outputs} outputs; "
        f"{len(hour)} anchors per hour ({n_fit} trained on, "
        f"{sum(int(s.valid.sum()) for s in calibration)} for calibration); stride {stride}; "
        f"replay fraction {args.replay_fraction}"
    )
    print(f"cpu cores visible: {os.cpu_count()}; load average {os.getloadavg()[0]:.2f}")

    with tempfile.TemporaryDirectory() as tmp:
        champion = new_model(cfg, [previous], seed=0)
        print(f"model: {champion.count_params():,} parameters")
        path = save_model(champion, Path(tmp) / "champion.keras")

        # The input pipeline alone over the same number of windows: the copying share of a fine-tune.
        n_fresh = sum(len(select_windows(s, stride)) for s in fit)
        n_total = n_fresh + round(n_fresh * args.replay_fraction / (1 - args.replay_fraction))
        batcher = WindowBatcher([hour, previous], np.zeros(cfg.n_outputs), np.ones(cfg.n_outputs))
        rng = np.random.default_rng(0)
        pairs = np.stack([rng.integers(0, 2, n_total), rng.integers(0, HOUR_S, n_total)], axis=1)
        t0 = time.perf_counter()
        for _ in batcher.dataset(pairs, 16):
            pass
        pipeline_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        tuned, result = fine_tune(
            path,
            fit,
            [previous],
            stride=stride,
            replay_fraction=args.replay_fraction,
            seed=0,
            calibration_sets=calibration,
        )
        wall = time.perf_counter() - t0
        first = float(result.extra["first_step_seconds"])
        rate = (result.windows_seen - 16) / max(result.seconds - first, 1e-9)
        print(
            f"fine-tune one hour: {wall:.1f} s wall (load + train + calibrate; target <= "
            f"{FINE_TUNE_TARGET_S:.0f} s, ratio {wall / FINE_TUNE_TARGET_S:.2f}); "
            f"{result.windows_seen} windows ({result.replay_windows} replay) in {result.steps} steps; "
            f"first step incl. tracing {first:.1f} s; {rate:.0f} windows/s after it; "
            f"calibration on {result.extra['calibration_windows']} windows "
            f"{float(result.extra.get('calibration_seconds', 0.0)):.1f} s"
        )
        print(
            f"input pipeline alone over {n_total} windows: {pipeline_s:.1f} s "
            f"(ratio to the fine-tune {pipeline_s / wall:.2f})"
        )

        windows = np.ascontiguousarray(hour.views()[:512])
        predict_returns(tuned, windows[:64])  # trace once; a served model does this at load
        t0 = time.perf_counter()
        predict_returns(tuned, windows, batch_size=64)
        batch_ms = (time.perf_counter() - t0) / len(windows) * 1e3
        singles = []
        for i in range(50):
            t0 = time.perf_counter()
            predict_returns(tuned, windows[i])
            singles.append(time.perf_counter() - t0)
        single_ms = float(np.median(singles)) * 1e3
        p95_ms = float(np.quantile(singles, 0.95)) * 1e3
        print(
            f"inference, batches of 64: {batch_ms:.2f} ms/window (target <= {INFERENCE_TARGET_MS:.0f}, "
            f"ratio {batch_ms / INFERENCE_TARGET_MS:.2f})"
        )
        print(
            f"inference, one window per call: median {single_ms:.2f} ms, p95 {p95_ms:.2f} ms "
            f"(ratio {single_ms / INFERENCE_TARGET_MS:.2f}; single/batch {single_ms / batch_ms:.1f}x)"
        )

    if args.initial_hours:
        hours = [hour_of_windows(10 + k, hour=k) for k in range(args.initial_hours)]
        fit, calibration = split_calibration(hours, args.calibration_fraction)
        n_fit = sum(int(s.valid.sum()) for s in fit)
        t0 = time.perf_counter()
        model = new_model(cfg, fit, seed=0)
        result = train_model(model, fit, stride=auto_stride(n_fit), seed=0, calibration_sets=calibration)
        wall = time.perf_counter() - t0
        cal_s = float(result.extra["calibration_seconds"])
        print(
            f"initial training on {args.initial_hours} hours: {wall:.1f} s wall; stride {auto_stride(n_fit)}, "
            f"{result.windows_seen} of {n_fit} windows in {result.steps} steps "
            f"({result.windows_seen / max(result.seconds, 1e-9):.0f} windows/s); "
            f"calibration on {result.extra['calibration_windows']} windows {cal_s:.1f} s"
        )


if __name__ == "__main__":
    main()
