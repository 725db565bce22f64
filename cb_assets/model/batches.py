"""The input pipeline: (set, window) index pairs -> batches copied out of WindowSets' strided views.

A day of windows materialised would be tens of GB; `tf.data` carries only index pairs, and a
`tf.numpy_function` copies one batch at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from cb_assets.series.windows import WindowSet


def index_pairs(set_id: int, idx: np.ndarray) -> np.ndarray:
    return np.stack([np.full(idx.shape, set_id, np.int64), idx.astype(np.int64)], axis=1)


class WindowBatcher:
    """Copies batches of windows out of several WindowSets, given (set, window) index pairs.

    Labels are standardised with the model's label statistics once per set (they are small); feature
    windows are copied per batch from the strided views, so memory stays at one batch plus prefetch.
    """

    def __init__(self, sets: Sequence[WindowSet], label_mean: np.ndarray, label_std: np.ndarray) -> None:
        self.sets = list(sets)
        self.window = self.sets[0].window
        self.n_features = int(self.sets[0].features.shape[1])
        self.sources: list[Any] = []
        for ws in self.sets:
            try:
                self.sources.append(ws.views())
            except ValueError:
                self.sources.append(None)  # non-consecutive anchors: copy window by window
        mean = np.asarray(label_mean, np.float32)
        std = np.asarray(label_std, np.float32)
        self.z_labels = [((ws.labels - mean) / std).astype(np.float32) for ws in self.sets]

    def gather(self, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        n = pairs.shape[0]
        x = np.empty((n, self.window, self.n_features), dtype=np.float32)
        y = np.empty((n, self.z_labels[0].shape[1]), dtype=np.float32)
        for s in np.unique(pairs[:, 0]):
            rows = np.flatnonzero(pairs[:, 0] == s)
            idx = pairs[rows, 1]
            src = self.sources[s]
            if src is not None:
                x[rows] = src[idx]  # fancy indexing on the view: copies just these windows
            else:
                for r, i in zip(rows, idx, strict=True):
                    x[r] = self.sets[s].window_at(int(i))
            y[rows] = self.z_labels[s][idx]
        return x, y

    def dataset(self, pairs: np.ndarray, batch_size: int) -> tf.data.Dataset:
        """Batches of (raw features, standardised labels) in the order of `pairs`."""
        shape_x = (None, self.window, self.n_features)
        shape_y = (None, self.z_labels[0].shape[1])

        def load(batch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            x, y = tf.numpy_function(self.gather, [batch], (tf.float32, tf.float32), stateful=False)
            return tf.ensure_shape(x, shape_x), tf.ensure_shape(y, shape_y)

        ds = tf.data.Dataset.from_tensor_slices(np.asarray(pairs, np.int64).reshape(-1, 2))
        # One loader thread: a batch copy takes ~10 ms against ~200 ms of training per step, and the
        # cores are better spent on the model. Prefetching overlaps the two.
        return ds.batch(batch_size).map(load, num_parallel_calls=1, deterministic=True).prefetch(2)
