"""Live scores from the forecast ledger (pure): the metrics the held-out evaluation uses, on real outcomes.

Per model version, product and horizon: n, skill against persistence (1 - MSE / MSE of forecasting no
change), hit rate, information coefficient (Spearman) and mean absolute error in basis points, computed by
`model.evaluate` exactly as for held-out windows. `loss_differential_t` is the Diebold-Mariano statistic of
the squared-error differential against persistence, with a Newey-West variance: forecasts a few seconds
apart share most of their horizon, so their errors are far from independent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cb_assets.model.evaluate import evaluate

SCORE_COLUMNS = ("version_id", "product_id", "horizon_s", "n", "skill", "hit_rate", "ic", "mae_bp", "mse",
                 "mse_persistence")  # fmt: skip


def score_rows(ledger: pd.DataFrame) -> pd.DataFrame:
    """Scores of scored ledger rows (outcome_return finite), one row per version, product and horizon."""
    rows = ledger[np.isfinite(ledger["outcome_return"].to_numpy(dtype=float))]
    out = []
    for (version, product, horizon), g in rows.groupby(["version_id", "product_id", "horizon_s"], sort=True):
        y = g["outcome_return"].to_numpy(dtype=float)[:, None]
        p = g["forecast_return"].to_numpy(dtype=float)[:, None]
        r = evaluate(y, p, [str(product)], horizons=[int(horizon)]).rows[0]
        out.append(
            {
                "version_id": int(version),
                "product_id": str(product),
                "horizon_s": int(horizon),
                "n": int(r.n),
                "skill": r.skill,
                "hit_rate": r.hit_rate,
                "ic": r.ic,
                "mae_bp": r.mae * 1e4,
                "mse": r.rmse**2,
                "mse_persistence": float(np.mean(y * y)),
            }
        )
    frame = pd.DataFrame(out, columns=list(SCORE_COLUMNS))
    return frame.astype({"version_id": "int64", "horizon_s": "int64", "n": "int64"})


def pooled_skill(scores: pd.DataFrame) -> float:
    """1 - sum(n MSE) / sum(n MSE(persistence)) over the rows given (NaN when nothing moved)."""
    den = float((scores["mse_persistence"] * scores["n"]).sum())
    return 1.0 - float((scores["mse"] * scores["n"]).sum()) / den if den > 0 else float("nan")


@dataclass(frozen=True)
class LossDifferential:
    n_anchors: int
    mean: float  # mean over anchors of (model squared error - persistence squared error), all outputs pooled
    t: float  # > 0: the model is worse than persistence; Newey-West standard error


def loss_differential_t(ledger: pd.DataFrame, max_lag: int = 40) -> LossDifferential:
    """Diebold-Mariano on the per-anchor mean of squared-error differentials (model minus persistence).

    Squared errors are divided by each output's persistence MSE first, so that volatile products and long
    horizons do not drown the others (skill weighs them the same way). `max_lag` anchors of autocorrelation
    are allowed for (40: a 200 s horizon at one anchor per 5 s).
    """
    rows = ledger[np.isfinite(ledger["outcome_return"].to_numpy(dtype=float))].copy()
    if rows.empty:
        return LossDifferential(0, float("nan"), float("nan"))
    y = rows["outcome_return"].to_numpy(dtype=float)
    f = rows["forecast_return"].to_numpy(dtype=float)
    scale = rows.groupby(["product_id", "horizon_s"])["outcome_return"].transform(
        lambda s: float(np.mean(s**2))
    )
    scale = np.where(scale.to_numpy() > 0, scale.to_numpy(), np.nan)
    rows["d"] = ((f - y) ** 2 - y**2) / scale
    series = rows.dropna(subset=["d"]).groupby("anchor")["d"].mean().sort_index().to_numpy()
    n = series.shape[0]
    if n < 2:
        return LossDifferential(n, float(series.mean()) if n else float("nan"), float("nan"))
    dev = series - series.mean()
    lag = min(max_lag, n - 1)
    var = float(dev @ dev) / n
    for k in range(1, lag + 1):
        var += 2.0 * (1.0 - k / (lag + 1)) * float(dev[k:] @ dev[:-k]) / n
    se = math.sqrt(var / n) if var > 0 else float("nan")
    return LossDifferential(
        n, float(series.mean()), float(series.mean()) / se if se == se and se > 0 else float("nan")
    )
