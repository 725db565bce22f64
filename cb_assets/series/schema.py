"""Names shared by the numeric packages: which ticker fields are modelled, the horizons, the window length.

Kept free of Dagster and TensorFlow so every package (feed, series, model, defs) can import it cheaply.
"""

from __future__ import annotations

# The ticker fields the feed always sends (NOT NULL in raw_ticks); each gets its own Kalman model.
SERIES_COLUMNS: tuple[str, ...] = (
    "price",
    "volume_24_h",
    "low_24_h",
    "high_24_h",
    "low_52_w",
    "high_52_w",
    "price_percent_chg_24_h",
)

# Forecast horizons in seconds; labels are log returns from the last observed price at t to t + h.
HORIZONS_S: tuple[int, ...] = (10, 20, 100, 200)

# A training window is the WINDOW_S seconds of features ending at its anchor time t (inclusive).
WINDOW_S: int = 1000

SECOND_NS: int = 1_000_000_000
HOUR_S: int = 3600
