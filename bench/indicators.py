"""Speed of the series numerics for 12 products x 2 hours: grid, indicators, window set, storage.

Goal: an hourly partition's indicators and windows for 12 products in well under a second. Prints the
figures and same-run ratios (against pandas' own resampling, and against the 1 s budget) so results from
different machines can be compared. Synthetic data only; run with `python bench/indicators.py`.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from cb_assets.series.indicators import compute_indicators
from cb_assets.series.resample import grid_index, last_observed, to_grid
from cb_assets.series.schema import SECOND_NS, SERIES_COLUMNS
from cb_assets.series.windows import build_window_set, load_window_set, save_window_set

N_PRODUCTS = 12
N_SECONDS = 2 * 3600
TICKS_PER_S = 3.0
START = pd.Timestamp("2024-03-01 10:00", tz="UTC")
REPEATS = 5


def best_of(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    fn()  # JIT compilation and caches are not what is being measured
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def synthetic_product(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n_ticks = int(N_SECONDS * TICKS_PER_S)
    times = np.sort(START.value + rng.integers(0, N_SECONDS * SECOND_NS, n_ticks)).astype(np.int64)
    price = 100.0 * np.exp(np.cumsum(rng.normal(0, 1e-4, n_ticks)))
    values = np.column_stack(
        [price, np.full(n_ticks, 1e5), price * 0.9, price * 1.1, price * 0.5, price * 2, np.ones(n_ticks)]
    )
    return times, values


def main() -> None:
    rng = np.random.default_rng(0)
    ticks = [synthetic_product(rng) for _ in range(N_PRODUCTS)]
    products = [f"P{i:02d}-USD" for i in range(N_PRODUCTS)]

    def grid_all() -> list[tuple[np.ndarray, np.ndarray]]:
        return [to_grid(t, v, START.value, N_SECONDS) for t, v in ticks]

    def pandas_grid_all() -> list[pd.DataFrame]:
        out = []
        for t, v in ticks:
            frame = pd.DataFrame(v, index=pd.to_datetime(t, utc=True))
            out.append(frame.resample("1s", closed="right", label="right").last())
        return out

    t_grid = best_of(grid_all)
    t_pandas = best_of(pandas_grid_all)
    grids = grid_all()

    index = grid_index(START.value, N_SECONDS)
    inputs = []
    for grid, _ in grids:
        carried = last_observed(grid)
        filtered = pd.DataFrame(carried, index=index, columns=list(SERIES_COLUMNS)).ewm(alpha=0.3).mean()
        inputs.append((filtered, pd.Series(grid[:, 0], index=index)))

    def indicators_all() -> dict[str, pd.DataFrame]:
        return {p: compute_indicators(f, o) for p, (f, o) in zip(products, inputs, strict=True)}

    t_ind = best_of(indicators_all)
    features = indicators_all()
    observed = {p: o for p, (_, o) in zip(products, inputs, strict=True)}
    hour = START + pd.Timedelta(hours=1)
    t_win = best_of(lambda: build_window_set(features, observed, products, hour))
    ws = build_window_set(features, observed, products, hour)

    with tempfile.TemporaryDirectory() as tmp:
        t_save = best_of(lambda: save_window_set(ws, Path(tmp) / "ws"), repeats=3)
        t_load = best_of(lambda: load_window_set(Path(tmp) / "ws"), repeats=3)

    n_ticks = sum(t.size for t, _ in ticks)
    matrix_mb = ws.features.nbytes / 1e6
    windows_gb = len(ws) * ws.window * ws.features.shape[1] * 4 / 1e9
    print(f"products x seconds: {N_PRODUCTS} x {N_SECONDS} ({n_ticks} ticks)")
    print(f"to_grid, all products:             {t_grid * 1e3:8.1f} ms")
    print(
        f"pandas resample(last), same data:  {t_pandas * 1e3:8.1f} ms  (to_grid is {t_pandas / t_grid:.1f}x faster)"
    )
    print(
        f"compute_indicators, all products:  {t_ind * 1e3:8.1f} ms  ({t_ind / N_PRODUCTS * 1e3:.1f} ms per product)"
    )
    print(
        f"build_window_set, one hour:        {t_win * 1e3:8.1f} ms  ({len(ws)} windows, {ws.valid.sum()} valid)"
    )
    print(f"save / load (mmap):                {t_save * 1e3:8.1f} / {t_load * 1e3:.1f} ms")
    print(f"indicators + windows vs 1 s budget: {(t_ind + t_win) / 1.0:.3f}")
    print(f"feature matrix {matrix_mb:.1f} MB; the same windows materialised would be {windows_gb:.1f} GB")


if __name__ == "__main__":
    main()
