"""The code version of every asset: the UI marks partitions computed by older code, so bump an asset's version
whenever what it computes changes.

`SOURCES` names the modules each asset's numbers come from and `DIGESTS` their fingerprint at the current
version; test_code_versions fails when those sources change and the digest was not updated together with a
bumped version (or an explicit note that the change does not alter results, by updating the digest alone).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]

CODE_VERSIONS: dict[str, str] = {
    "raw_ticks": "2",
    "filled_series": "2",
    "indicators": "2",
    "training_windows": "2",
    "price_model": "4",
    "forecast_scores": "1",
}

SOURCES: dict[str, tuple[str, ...]] = {
    "raw_ticks": ("series/tick_rules.py", "series/hourly.py"),
    "filled_series": (
        "series/tick_rules.py",
        "series/hourly.py",
        "series/fill.py",
        "series/kalman.py",
        "series/kalman_kernels.py",
        "series/resample.py",
    ),
    "indicators": (
        "series/tick_rules.py",
        "series/hourly.py",
        "series/indicators.py",
        "series/indicator_kernels.py",
    ),
    "training_windows": ("series/windows.py", "series/model_input.py"),
    "price_model": (
        "model/network.py",
        "model/layers.py",
        "model/train.py",
        "model/pipeline.py",
        "model/settings.py",
        "model/linear.py",
        "model/gate.py",
        "model/calibration.py",
    ),
    "forecast_scores": ("forecast/scoring.py", "model/evaluate.py"),
}

DIGESTS: dict[str, str] = {
    "raw_ticks": "46dcebe67867161c",
    "filled_series": "718e6bbb8e7dea45",
    "indicators": "2fd37ee83187dc85",
    "training_windows": "efe38d8da5bbdb97",
    "price_model": "d63b6f55f6e3f55a",
    "forecast_scores": "2aeebad87f9db29d",
}


def source_digest(asset: str) -> str:
    h = hashlib.sha256()
    for rel in SOURCES[asset]:
        h.update(rel.encode())
        h.update((PACKAGE / rel).read_bytes())
    return h.hexdigest()[:16]
