"""Training windows as views over one aligned feature matrix (no window is ever copied out one by one).

A day of 1000-second windows over ~400 features would be tens of GB if materialised; here a partition
stores one matrix of consecutive seconds and the windows are strided views into it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cb_assets.series.schema import WINDOW_S


@dataclass(frozen=True)
class ColumnStats:
    """Mergeable sufficient statistics (count, sum, sum of squares) per column.

    Stored with every partition so that a trainer can combine exactly the partitions it trains on:
    normalisation statistics then never see evaluation data.
    """

    count: np.ndarray  # (n_columns,) float64: finite values seen per column
    total: np.ndarray  # (n_columns,) float64
    total_sq: np.ndarray  # (n_columns,) float64

    @classmethod
    def of(cls, values: np.ndarray) -> ColumnStats:
        v = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(v)
        z = np.where(finite, v, 0.0)
        return cls(finite.sum(axis=0).astype(np.float64), z.sum(axis=0), (z * z).sum(axis=0))

    def merge(self, other: ColumnStats) -> ColumnStats:
        return ColumnStats(self.count + other.count, self.total + other.total, self.total_sq + other.total_sq)

    @property
    def mean(self) -> np.ndarray:
        return self.total / np.maximum(self.count, 1.0)

    @property
    def std(self) -> np.ndarray:
        var = self.total_sq / np.maximum(self.count, 1.0) - self.mean**2
        # A constant column gets std 1 so that standardising leaves it at 0 instead of dividing by 0.
        return np.where(var > 1e-24, np.sqrt(np.maximum(var, 0.0)), 1.0)


@dataclass
class WindowSet:
    """The windows of one partition (or any contiguous stretch) as views over `features`.

    Window i is `features[anchors[i] - window + 1 : anchors[i] + 1]`: the `window` seconds ending at the
    anchor time t_i (inclusive). `labels[i]` are the log returns from the last observed price at t_i to
    the price at t_i + h, ordered product-major: (product_0, h_0), (product_0, h_1), ...
    """

    features: np.ndarray  # (n_rows, n_features) float32, one row per consecutive second
    labels: np.ndarray  # (n_windows, n_outputs) float32, NaN where unknown
    anchors: np.ndarray  # (n_windows,) int64 row index of each window's last row
    anchor_times_ns: np.ndarray  # (n_windows,) int64
    valid: np.ndarray  # (n_windows,) bool: full, warm history and every label finite
    feature_names: tuple[str, ...]
    output_names: tuple[str, ...]
    window: int = WINDOW_S
    feature_stats: ColumnStats | None = field(default=None)
    label_stats: ColumnStats | None = field(default=None)

    def __len__(self) -> int:
        return int(self.anchors.shape[0])

    def views(self) -> np.ndarray:
        """All windows as one read-only (n_windows, window, n_features) strided view (no copy)."""
        n_rows, n_feat = self.features.shape
        starts = self.anchors - (self.window - 1)
        if len(self) and (starts.min() < 0 or self.anchors.max() >= n_rows):
            raise ValueError("a window reaches outside the feature matrix")
        # Anchors are consecutive in every partition (one per second), so one strided view covers them.
        if len(self) and not np.all(np.diff(self.anchors) == 1):
            raise ValueError("views() needs consecutive anchors; index windows one by one with window()")
        base = self.features[int(starts[0]) if len(self) else 0 :]
        s0, s1 = base.strides
        view = np.lib.stride_tricks.as_strided(
            base, shape=(len(self), self.window, n_feat), strides=(s0, s0, s1), writeable=False
        )
        return view

    def window_at(self, i: int) -> np.ndarray:
        a = int(self.anchors[i])
        return self.features[a - self.window + 1 : a + 1]
