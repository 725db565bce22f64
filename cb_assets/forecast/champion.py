"""The champion as the forecaster holds it: the model, the inputs it was trained on, and their statistics.

A new champion is loaded (and its forecast function compiled) beside the old one (service.py swaps them
when ready), so loading must not touch the forecaster's state; TensorFlow's thread pools are bounded before
the first model loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cb_assets.forecast import guards


@dataclass
class Champion:
    version_id: int
    model: Any  # keras.Model
    products: tuple[str, ...]
    feature_names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    mismatch: str | None


def load_champion(version_id: int, path: str, products: Sequence[str]) -> Champion:
    from cb_assets.model.network import (
        column_names_of,
        feature_stats_of,
        input_shape_of,
        load_model,
        predict_returns,
    )

    model = load_model(path)
    # Where the network serves, the forecast function compiles on its first call (~1-2 s): here, beside
    # the serving champion, rather than in the second after the swap.
    predict_returns(model, np.zeros(input_shape_of(model), np.float32))
    names, _ = column_names_of(model)
    mean, std = feature_stats_of(model)
    return Champion(
        version_id=version_id,
        model=model,
        products=tuple(products),
        feature_names=tuple(names or ()),
        mean=np.asarray(mean, np.float64),
        std=np.asarray(std, np.float64),
        mismatch=guards.inputs_mismatch(names, products),
    )


def limit_tensorflow_threads(threads: int) -> None:
    """Bound TensorFlow's thread pools before it starts, so the sink and Dagster keep their share."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised (tests that trained a model in this process)
        pass
