"""Small PNG plots for materialisation metadata, embedded as markdown images.

They are stored in Dagster's event log with every materialisation, so they are kept to a few kilobytes:
small figures, low dpi, few points (long series are thinned before plotting).
"""

from __future__ import annotations

import base64
import io
from types import ModuleType
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

_MAX_POINTS = 600


def _pyplot() -> ModuleType:
    """matplotlib on first use: the code server that evaluates sensors never draws, and it costs ~0.3 s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def _png(fig: Any) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=72)
    plt.close(fig)
    return buf.getvalue()


def as_markdown(png: bytes, alt: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def _thin(frame: pd.DataFrame) -> pd.DataFrame:
    step = max(1, len(frame) // _MAX_POINTS)
    return frame.iloc[::step]


def observed_vs_filled(frame: pd.DataFrame, product_id: str, last_s: int = 900) -> bytes:
    """Observed ticks against the causal filter and the smoother for one product, over the hour's last
    `last_s` seconds: long enough to see gaps being filled, short enough to see the lines apart."""
    fig, ax = _pyplot().subplots(figsize=(6, 2.6))
    frame = frame.iloc[-last_s:]
    obs = frame[frame["observed"]]
    thin = _thin(frame)
    ax.plot(thin.index, thin["price_filtered"], lw=1.0, label="filtered (causal)")
    ax.plot(thin.index, thin["price_smoothed"], lw=1.0, ls="--", label="smoothed")
    ax.scatter(obs.index, obs["price"], s=4, c="k", label="observed", zorder=3)
    ax.set_title(f"{product_id} price, last {last_s // 60} minutes of the hour", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="best")
    return _png(fig)


def indicator_snapshot(frame: pd.DataFrame, product_id: str, columns: list[str]) -> bytes:
    """A few indicators of one product over the hour, one small panel each."""
    fig, axes = _pyplot().subplots(len(columns), 1, figsize=(6, 0.9 * len(columns) + 0.6), sharex=True)
    thin = _thin(frame)
    for ax, col in zip(np.atleast_1d(axes), columns, strict=True):
        ax.plot(thin.index, thin[col], lw=0.9)
        ax.set_ylabel(col, fontsize=7)
        ax.tick_params(labelsize=6)
    np.atleast_1d(axes)[0].set_title(f"{product_id} indicators", fontsize=9)
    return _png(fig)


def bars(labels: list[str], values: list[float], title: str) -> bytes:
    fig, ax = _pyplot().subplots(figsize=(6, 2.2))
    ax.bar(range(len(values)), values)
    ax.set_xticks(range(len(values)), labels, rotation=45, ha="right", fontsize=6)
    ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=9)
    return _png(fig)


def skill_lines(scores: pd.DataFrame, title: str) -> bytes:
    """Live skill per hour, one line per horizon (pooled over products, weighted by scored forecasts)."""
    fig, ax = _pyplot().subplots(figsize=(6, 2.4))
    for h, g in scores.groupby("horizon_s"):
        per_hour = g.groupby("hour").apply(
            lambda x: 1.0 - (x["mse"] * x["n"]).sum() / max((x["mse_persistence"] * x["n"]).sum(), 1e-300),
            include_groups=False,
        )
        ax.plot(per_hour.index, per_hour.to_numpy(), marker="o", ms=3, lw=1.0, label=f"{int(h)} s")
    ax.axhline(0.0, color="k", lw=0.6)
    ax.set_ylabel("skill vs persistence", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="best")
    return _png(fig)
