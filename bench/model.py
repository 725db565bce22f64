"""Speed of the forecaster: fine-tuning on one hour of windows, and inference per window.

Run: `python bench/model.py` (about 1-2 minutes on 2 cores). Targets on 2 CPU cores: a fine-tune on one
hour (3600 anchors) at the default stride with the default replay mix <= 120 s; inference <= 20 ms per
window, in batches and one window at a time.

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
from cb_assets.model.train import DEFAULT_STRIDE, WindowBatcher, fine_tune, new_model, select_windows
from cb_assets.series.schema import HOUR_S, SECOND_NS, WINDOW_S
from cb_assets.series.windows import WindowSet

N_PRODUCTS, N_FEATURES_PER_PRODUCT, N_HORIZONS = 12, 35, 4
FINE_TUNE_TARGET_S = 120.0
INFERENCE_TARGET_MS = 20.0


def hour_of_windows(seed: int, n_anchors: int = HOUR_S) -> WindowSet:
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
        anchor_times_ns=(1_700_000_000 + anchors) * SECOND_NS,
        valid=np.ones(n_anchors, dtype=bool),
        feature_names=tuple(f"P{p}:f{f}" for p in range(N_PRODUCTS) for f in range(N_FEATURES_PER_PRODUCT)),
        output_names=tuple(f"P{p}:r{h}s" for p in range(N_PRODUCTS) for h in range(N_HORIZONS)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stride", type=int, default=DEFAULT_STRIDE)
    parser.add_argument("--replay-fraction", type=float, default=0.25)
    args = parser.parse_args()

    cfg = NetworkConfig(n_features=N_PRODUCTS * N_FEATURES_PER_PRODUCT, n_outputs=N_PRODUCTS * N_HORIZONS)
    previous, hour = hour_of_windows(1), hour_of_windows(2)
    print(
        f"shapes: window {cfg.window} x {cfg.n_features} features, {cfg.n_outputs} outputs; "
        f"{len(hour)} anchors per hour; stride {args.stride}; replay fraction {args.replay_fraction}"
    )
    print(f"cpu cores visible: {os.cpu_count()}; load average {os.getloadavg()[0]:.2f}")

    with tempfile.TemporaryDirectory() as tmp:
        champion = new_model(cfg, [previous], seed=0)
        print(f"model: {champion.count_params():,} parameters")
        path = save_model(champion, Path(tmp) / "champion.keras")

        # The input pipeline alone over the same number of windows: the copying share of a fine-tune.
        n_fresh = len(select_windows(hour, args.stride))
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
            path, [hour], [previous], stride=args.stride, replay_fraction=args.replay_fraction, seed=0
        )
        wall = time.perf_counter() - t0
        first = float(result.extra["first_step_seconds"])
        rate = (result.windows_seen - 16) / max(result.seconds - first, 1e-9)
        print(
            f"fine-tune one hour: {wall:.1f} s wall (load + train; target <= {FINE_TUNE_TARGET_S:.0f} s, "
            f"ratio {wall / FINE_TUNE_TARGET_S:.2f}); {result.windows_seen} windows "
            f"({result.replay_windows} replay) in {result.steps} steps; first step incl. tracing {first:.1f} s; "
            f"{rate:.0f} windows/s after it"
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


if __name__ == "__main__":
    main()
