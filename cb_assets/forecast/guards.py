"""When not to forecast, and the reason to count instead (pure).

- `not_warm`: some product's window has a second the model may not read (the training rule: warm and finite).
- `stale`: a product's newest tick is older than the limit at the anchor: its row is skipped, the others go on.
- `inputs_mismatch`: the champion was trained on other products or features than the configured ones.
- `input_out_of_range`: a standardised input of the newest second lies beyond +-8, outside anything the model
  saw in training (its inputs are clipped at 10 inside the network, so it would answer, but from nowhere).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cb_assets.series.indicators import FEATURE_NAMES

INPUT_LIMIT = 8.0

NOT_WARM = "not_warm"
STALE = "stale"
INPUTS_MISMATCH = "inputs_mismatch"
INPUT_OUT_OF_RANGE = "input_out_of_range"
NO_CHAMPION = "no_champion"
NO_TICKS = "no_ticks"  # nothing arrived for longer than the staleness limit (broker or feed down)


def expected_feature_names(products: Sequence[str]) -> tuple[str, ...]:
    return tuple(f"{p}:{f}" for p in products for f in FEATURE_NAMES)


def inputs_mismatch(model_feature_names: Sequence[str] | None, products: Sequence[str]) -> str | None:
    """Why the model cannot take this platform's inputs, or None."""
    if model_feature_names is None:
        return "the model does not name its input columns"
    expected = expected_feature_names(products)
    if tuple(model_feature_names) == expected:
        return None
    model_products = list(dict.fromkeys(n.split(":")[0] for n in model_feature_names))
    return f"the champion takes {model_products}, CB_PRODUCTS is {list(products)}"


def out_of_range(
    newest: np.ndarray, mean: np.ndarray, std: np.ndarray, names: Sequence[str], limit: float = INPUT_LIMIT
) -> str | None:
    """The first input of the newest second whose standardised value lies beyond +-limit, or None."""
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (np.asarray(newest, np.float64) - mean) / np.where(std > 0, std, 1.0)
    bad = np.flatnonzero(~(np.abs(z) <= limit))
    if bad.size == 0:
        return None
    i = int(bad[np.argmax(np.abs(np.nan_to_num(z[bad], nan=np.inf)))])
    return f"{names[i]} z={z[i]:+.1f}"
