"""Training windows as views over one aligned feature matrix (no window is ever copied out one by one).

A day of 1000-second windows over ~400 features would be tens of GB if materialised; here a partition
stores one matrix of consecutive seconds and the windows are strided views into it.

Partition rule: a window belongs to the one hour partition that contains its LAST label time
``t + max(horizons)``. Hour ``H`` therefore holds the anchors ``H - max(h) <= t < H + 1 h - max(h)``
(3600 windows), reads feature rows from ``H - max(h) - window + 1`` (the previous hour's indicators) and
observed prices up to ``H + 1 h - 1 s`` (its own hour), so it can be built as soon as hour H has landed
and no window is ever counted twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cb_assets.series.indicators import FEATURE_NAMES
from cb_assets.series.model_input import assemble
from cb_assets.series.resample import grid_index
from cb_assets.series.schema import HORIZONS_S, HOUR_S, SECOND_NS, WINDOW_S


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

    def row_times_ns(self) -> np.ndarray:
        """Time (ns since the epoch) of every row of `features`: rows are consecutive seconds."""
        if not len(self):
            raise ValueError("an empty WindowSet has no clock")
        first = int(self.anchor_times_ns[0]) - int(self.anchors[0]) * SECOND_NS
        return first + np.arange(self.features.shape[0], dtype=np.int64) * SECOND_NS


def _utc_ns(ts: pd.Timestamp) -> int:
    t = pd.Timestamp(ts)
    t = t.tz_localize("UTC") if t.tz is None else t.tz_convert("UTC")
    ns = int(t.as_unit("ns").value)
    if ns % SECOND_NS:
        raise ValueError(f"hour_start {ts} is not on a whole second")
    return ns


def _last_log_price(series: pd.Series | None, query_ns: np.ndarray, until_ns: int) -> np.ndarray:
    """log of the last observed price at or before each query time (NaN before the first one).

    Only ticks at or before `until_ns` are read, so a partition's labels never depend on later hours.
    """
    if series is None or series.empty:
        return np.full(query_ns.shape, np.nan)
    times = series.index.as_unit("ns").asi8
    vals = series.to_numpy(dtype=np.float64)
    keep = np.isfinite(vals) & (vals > 0) & (times <= until_ns)
    times, vals = times[keep], vals[keep]
    if times.size > 1 and np.any(np.diff(times) < 0):
        order = np.argsort(times, kind="stable")
        times, vals = times[order], vals[order]
    pos = np.searchsorted(times, query_ns, side="right") - 1
    return np.where(pos >= 0, np.log(vals[np.maximum(pos, 0)]) if vals.size else np.nan, np.nan)


def build_window_set(
    features_by_product: Mapping[str, pd.DataFrame],
    observed_price_by_product: Mapping[str, pd.Series],
    products: Sequence[str],
    hour_start: pd.Timestamp,
    window: int = WINDOW_S,
    horizons: Sequence[int] = HORIZONS_S,
    feature_columns: Sequence[str] = FEATURE_NAMES,
) -> WindowSet:
    """The windows of hour partition `hour_start` (see the module docstring for the rule).

    Args:
        features_by_product: indicator frames (``compute_indicators`` output incl. ``warm``) indexed by
            UTC seconds, covering at least the previous and this hour (concatenate the two hours' frames).
            A missing or empty frame gives NaN columns and makes every window invalid.
        observed_price_by_product: observed prices (NaN = no tick), on the grid or at tick times; the
            value at or before a time is the price known then. Prices after the hour are ignored.
        products: column order (product-major).

    Returns:
        A WindowSet whose float32 matrix has one row per second from the first needed feature row to the
        last anchor, columns ``f"{product}:{feature}"``; labels ``f"{product}:r{h}s"`` =
        ``log(last observed price at t + h) - log(last observed price at t)``. ``valid[i]``: every row of
        window i is warm and finite for every product and every label is finite.

        ``feature_stats`` covers the distinct rows that lie inside at least one valid window AND are anchor
        rows of this partition. Every second is an anchor row of exactly one partition, so merging the
        stats of consecutive partitions counts each second at most once (counting the whole covered
        history instead would weight the 999 rows shared by neighbours twice).
        ``label_stats`` covers the labels of valid windows.
    """
    if window < 1 or not horizons or min(horizons) < 1:
        raise ValueError("window and horizons must be positive")
    hour_ns = _utc_ns(hour_start)
    h_max = max(horizons)
    first_anchor_ns = hour_ns - h_max * SECOND_NS
    n_rows = HOUR_S + window - 1
    rows = grid_index(first_anchor_ns - (window - 1) * SECOND_NS, n_rows)

    features, row_ok = assemble(features_by_product, rows, products, feature_columns)

    anchors = np.arange(window - 1, n_rows, dtype=np.int64)
    anchor_times_ns = first_anchor_ns + np.arange(HOUR_S, dtype=np.int64) * SECOND_NS
    bad_before = np.concatenate([[0], np.cumsum(~row_ok)])
    windows_ok = bad_before[anchors + 1] - bad_before[anchors + 1 - window] == 0

    last_label_ns = hour_ns + (HOUR_S - 1) * SECOND_NS
    labels = np.empty((HOUR_S, len(products) * len(horizons)), dtype=np.float32)
    for j, product in enumerate(products):
        series = observed_price_by_product.get(product)
        base = _last_log_price(series, anchor_times_ns, last_label_ns)
        for k, h in enumerate(horizons):
            ahead = _last_log_price(series, anchor_times_ns + h * SECOND_NS, last_label_ns)
            labels[:, j * len(horizons) + k] = ahead - base
    valid = windows_ok & np.isfinite(labels).all(axis=1)

    # Rows inside at least one valid window: +1 where a window starts, -1 after it ends.
    edges = np.zeros(n_rows + 1, dtype=np.int64)
    np.add.at(edges, anchors[valid] - window + 1, 1)
    np.add.at(edges, anchors[valid] + 1, -1)
    covered = np.cumsum(edges[:-1]) > 0
    covered[: window - 1] = False  # history rows belong to the previous partition's statistics

    return WindowSet(
        features=features,
        labels=labels,
        anchors=anchors,
        anchor_times_ns=anchor_times_ns,
        valid=valid,
        feature_names=tuple(f"{p}:{f}" for p in products for f in feature_columns),
        output_names=tuple(f"{p}:r{h}s" for p in products for h in horizons),
        window=window,
        feature_stats=ColumnStats.of(features[covered]),
        label_stats=ColumnStats.of(labels[valid]),
    )


_ARRAYS = ("features", "labels", "anchors", "anchor_times_ns", "valid")
_FORMAT = 1


def _save_npy(path: Path, array: np.ndarray) -> None:
    # Write then rename, so a reader never memory-maps a half-written file.
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        np.save(fh, np.ascontiguousarray(array))
    os.replace(tmp, path)


def save_window_set(ws: WindowSet, directory: str | os.PathLike[str]) -> Path:
    """Store `ws` as one .npy per array plus `meta.json` (written last: its presence marks completion)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "meta.json").unlink(missing_ok=True)
    for name in _ARRAYS:
        _save_npy(d / f"{name}.npy", getattr(ws, name))
    for name in ("feature_stats", "label_stats"):
        stats: ColumnStats | None = getattr(ws, name)
        if stats is not None:
            _save_npy(d / f"{name}.npy", np.stack([stats.count, stats.total, stats.total_sq]))
    meta = {
        "format": _FORMAT,
        "window": ws.window,
        "n_windows": len(ws),
        "n_valid": int(np.count_nonzero(ws.valid)),
        "feature_names": list(ws.feature_names),
        "output_names": list(ws.output_names),
        "stats": [n for n in ("feature_stats", "label_stats") if getattr(ws, n) is not None],
    }
    tmp = d / "meta.json.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, d / "meta.json")
    return d


def load_window_set(directory: str | os.PathLike[str], mmap: bool = True) -> WindowSet:
    """Load a stored WindowSet; with `mmap` the feature matrix and labels stay on disk (read-only)."""
    d = Path(directory)
    meta = json.loads((d / "meta.json").read_text())
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{d}: unknown window-set format {meta.get('format')!r}")
    mode = "r" if mmap else None
    arrays = {
        n: np.load(d / f"{n}.npy", mmap_mode=mode if n in ("features", "labels") else None) for n in _ARRAYS
    }
    stats = {}
    for name in meta["stats"]:
        count, total, total_sq = np.load(d / f"{name}.npy")
        stats[name] = ColumnStats(count, total, total_sq)
    ws = WindowSet(
        **arrays,
        feature_names=tuple(meta["feature_names"]),
        output_names=tuple(meta["output_names"]),
        window=int(meta["window"]),
        **stats,
    )
    if ws.features.shape[1] != len(ws.feature_names) or ws.labels.shape != (len(ws), len(ws.output_names)):
        raise ValueError(f"{d}: arrays do not match meta.json")
    return ws
