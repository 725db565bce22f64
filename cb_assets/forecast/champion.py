"""The champion as the forecaster holds it: the model, the inputs it was trained on, and their statistics.

A new champion is loaded (and its forecast function compiled) beside the old one (service.py swaps them
when ready), so loading must not touch the forecaster's state; TensorFlow's thread pools are bounded before
the first model loads.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cb_assets.forecast import guards

# The forecaster's logger: its champion lines stay where operators already read (and filter) them.
log = logging.getLogger("cb_assets.forecast.service")

# A load (read, compile, one warm-up forecast) takes 2-3 s; one still running after this long is reported
# once with where it is, since the forecaster serves the old champion (or none) until it ends.
SLOW_LOAD_S = 45.0


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


class ChampionLoader:
    """Loads one champion at a time on a thread of its own, so the forecaster keeps its cadence."""

    def __init__(self, products: Sequence[str], slow_after_s: float = SLOW_LOAD_S) -> None:
        self.products = tuple(products)
        self.slow_after_s = slow_after_s
        self._thread: threading.Thread | None = None
        self._since = 0.0
        self._reported = False

    def busy(self) -> bool:
        """True while a load runs; a load past `slow_after_s` is logged once with the loader's stack."""
        if self._thread is None or not self._thread.is_alive():
            return False
        waited = time.monotonic() - self._since
        if not self._reported and waited >= self.slow_after_s:
            self._reported = True
            frame = sys._current_frames().get(self._thread.ident or -1)
            where = "".join(traceback.format_stack(frame)) if frame is not None else "(stack not available)"
            log.warning("the champion has been loading for %.0f s; the loader is at:\n%s", waited, where)
        return True

    def start(self, version_id: int, path: str, ready: Callable[[Champion], None]) -> None:
        """Load version `version_id` from `path` and hand it to `ready`; a broken artifact is logged and
        leaves the serving champion in place."""

        def load() -> None:
            try:
                champ = load_champion(version_id, path, self.products)
            except Exception as exc:
                log.error("could not load champion v%s from %s: %s", version_id, path, exc)
                return
            ready(champ)
            log.info(
                "champion is now v%s (loaded in %.1f s)%s",
                version_id,
                time.monotonic() - self._since,
                f" ({champ.mismatch})" if champ.mismatch else "",
            )

        self._since, self._reported = time.monotonic(), False
        self._thread = threading.Thread(target=load, name="champion-loader", daemon=True)
        self._thread.start()


def limit_tensorflow_threads(threads: int) -> None:
    """Bound TensorFlow's thread pools before it starts, so the sink and Dagster keep their share."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised (tests that trained a model in this process)
        pass
