"""What the model sees: all products' features side by side, and which seconds of it may be used.

One rule for training and serving: a second is usable when the product's indicators are warm there and every
feature is finite after the cast to float32 (a float64 value beyond float32's range would become inf in the
network); a window is valid when all its seconds are usable for every product. `build_window_set` (training
windows), `cb-assets predict` and the live forecaster all assemble their inputs here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cb_assets.series.indicators import FEATURE_NAMES
from cb_assets.series.resample import grid_index
from cb_assets.series.schema import SECOND_NS, WINDOW_S


def usable_rows(block: np.ndarray, warm: np.ndarray) -> np.ndarray:
    """Seconds of one product's float32 feature block the model may read."""
    return np.asarray(warm, dtype=bool) & np.isfinite(block).all(axis=1)


def feature_block(
    frame: pd.DataFrame | None, rows: pd.DatetimeIndex, columns: Sequence[str] = FEATURE_NAMES
) -> tuple[np.ndarray, np.ndarray]:
    """One product's features (float32) on `rows` from its indicator frame, and the usable rows.

    A missing or empty frame gives NaN and no usable row.
    """
    if frame is None or frame.empty:
        return np.full((len(rows), len(columns)), np.nan, dtype=np.float32), np.zeros(len(rows), dtype=bool)
    missing = [c for c in (*columns, "warm") if c not in frame.columns]
    if missing:
        raise ValueError(f"indicator frame lacks columns {missing[:5]}")
    if not frame.index.is_unique:
        raise ValueError("indicator frame has duplicate times")
    block = frame.loc[:, list(columns)].reindex(rows).to_numpy(dtype=np.float32)
    warm = frame["warm"].reindex(rows, fill_value=False).to_numpy(dtype=bool)
    return block, usable_rows(block, warm)


def stack_products(blocks: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(features, usable) per product, in product order -> the product-major matrix and the rows usable for
    every product."""
    matrix = np.concatenate([b for b, _ in blocks], axis=1).astype(np.float32, copy=False)
    ok = np.logical_and.reduce([u for _, u in blocks]) if blocks else np.zeros(0, dtype=bool)
    return matrix, ok


def assemble(
    frames: Mapping[str, pd.DataFrame | None],
    rows: pd.DatetimeIndex,
    products: Sequence[str],
    columns: Sequence[str] = FEATURE_NAMES,
) -> tuple[np.ndarray, np.ndarray]:
    """The (len(rows), products x columns) float32 matrix and its usable rows, from indicator frames."""
    return stack_products([feature_block(frames.get(p), rows, columns) for p in products])


@dataclass(frozen=True)
class ModelInput:
    """One window ending at `anchor_ns`: what a forecast is made from, or why none can be."""

    anchor_ns: int
    matrix: np.ndarray  # (window, n_products x n_features) float32
    valid: bool
    not_usable: tuple[str, ...]  # products with a second the model may not read

    @property
    def reason(self) -> str | None:
        if self.valid:
            return None
        return f"not warm or not finite in the last {self.matrix.shape[0]} s: {', '.join(self.not_usable)}"


def model_input(
    blocks: Mapping[str, tuple[np.ndarray, np.ndarray]],
    anchor_ns: int,
    products: Sequence[str],
) -> ModelInput:
    """The window from per-product (features, usable) blocks that end at `anchor_ns`."""
    ordered = [blocks[p] for p in products]
    matrix, _ = stack_products(ordered)
    bad = tuple(p for p, (_, ok) in zip(products, ordered, strict=True) if not ok.all())
    return ModelInput(int(anchor_ns), matrix, not bad, bad)


def window_from_frames(
    frames: Mapping[str, pd.DataFrame | None],
    anchor_ns: int,
    products: Sequence[str],
    window: int = WINDOW_S,
    columns: Sequence[str] = FEATURE_NAMES,
) -> ModelInput:
    """The window of `window` seconds ending at `anchor_ns` from indicator frames (rows indexed by second)."""
    rows = grid_index(int(anchor_ns) - (window - 1) * SECOND_NS, window)
    return model_input(
        {p: feature_block(frames.get(p), rows, columns) for p in products}, anchor_ns, products
    )
