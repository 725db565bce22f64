"""Whole-chain experiments in memory: ticks -> filled series -> indicators -> training windows -> an initial
training -> a held-out report. No database and no Dagster, so tests and benchmarks can run the chain on
simulated or recorded ticks in seconds.

Every step is the function the corresponding asset calls (`series.hourly`, the shared per-hour core):
- `filled_series`: `fill_product_hour` (ticks of the hour and the one before);
- `indicators`: `indicators_of_hour` on the filled rows of the previous and the current hour;
- `training_windows`: `build_window_set` on the indicator and observed-price rows of two hours;
- training and evaluation: `pipeline.train_initial` and `pipeline.valid_forecasts`.

Products are handled one at a time up to the windows, and a product's series can be kept in a cache keyed
by its ticks, so two markets that differ in one product only (e.g. with and without a planted signal) fill
the others once.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cb_assets.model.baselines import RidgeBaseline
from cb_assets.model.evaluate import ALL, EvaluationReport, evaluate, metrics_markdown
from cb_assets.model.linear import CV_FOLDS, fold_of
from cb_assets.model.pipeline import (
    Outcome,
    products_of,
    split_gate,
    split_holdout,
    train_initial,
    valid_forecasts,
)
from cb_assets.model.settings import TrainSettings
from cb_assets.series.fill import fill_product_hour
from cb_assets.series.hourly import HOUR_NS, indicators_of_hour
from cb_assets.series.schema import HORIZONS_S, SECOND_NS
from cb_assets.series.windows import WindowSet, build_window_set

Ticks = tuple[np.ndarray, np.ndarray]  # (times_ns (n,) int64, values (n, len(SERIES_COLUMNS)))


@dataclass(frozen=True)
class ProductSeries:
    """One product's derived rows over consecutive hours (all frames indexed by UTC seconds)."""

    product: str
    hours_ns: tuple[int, ...]
    filled: pd.DataFrame  # fill_product_hour frames of every hour, concatenated
    indicators: pd.DataFrame  # compute_indicators output (features + warm) of every hour

    @property
    def observed_price(self) -> pd.Series:
        """The observed price per second (NaN where no tick): what labels are computed from."""
        return self.filled["price"]


def _digest(product: str, times_ns: np.ndarray, values: np.ndarray, hours_ns: Sequence[int]) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(product.encode())
    h.update(np.asarray(hours_ns, np.int64).tobytes())
    h.update(np.ascontiguousarray(times_ns, np.int64).tobytes())
    h.update(np.ascontiguousarray(values, np.float64).tobytes())
    return h.hexdigest()


def product_series(
    product: str, times_ns: np.ndarray, values: np.ndarray, hours_ns: Sequence[int]
) -> ProductSeries:
    """Fill and compute the indicators of `product` for each hour start in `hours_ns` (consecutive).

    Hour H's indicators use the filled rows of H - 1 h and H (like the asset); for the first hour the
    previous one is absent, as in a database where it was never materialised, so its rows are not warm.
    """
    hours = tuple(int(h) for h in hours_ns)
    if any(b - a != HOUR_NS for a, b in itertools.pairwise(hours)):
        raise ValueError("hours_ns must be consecutive hour starts")
    filled = [fill_product_hour(product, times_ns, values, h).frame for h in hours]
    parts = [indicators_of_hour(filled[k - 1] if k else None, filled[k], h) for k, h in enumerate(hours)]
    return ProductSeries(product, hours, pd.concat(filled), pd.concat(parts))


def series_for(
    ticks: Mapping[str, Ticks],
    products: Sequence[str],
    hours_ns: Sequence[int],
    cache: MutableMapping[str, ProductSeries] | None = None,
) -> dict[str, ProductSeries]:
    """`product_series` of every product, reusing `cache` entries computed from identical ticks."""
    out = {}
    for p in products:
        times_ns, values = ticks[p]
        key = _digest(p, times_ns, values, hours_ns)
        if cache is not None and key in cache:
            out[p] = cache[key]
            continue
        out[p] = product_series(p, times_ns, values, hours_ns)
        if cache is not None:
            cache[key] = out[p]
    return out


def window_sets(
    series: Mapping[str, ProductSeries], products: Sequence[str], hours_ns: Sequence[int]
) -> list[WindowSet]:
    """The training_windows partition of each hour in `hours_ns` (each needs the series of the hour before)."""
    out = []
    for h in hours_ns:
        start = pd.Timestamp(int(h) - HOUR_NS, unit="ns", tz="UTC")
        end = pd.Timestamp(int(h) + HOUR_NS, unit="ns", tz="UTC")
        feats = {p: series[p].indicators.loc[start : end - pd.Timedelta(1, "s")] for p in products}
        prices = {p: series[p].observed_price.loc[start : end - pd.Timedelta(1, "s")] for p in products}
        out.append(build_window_set(feats, prices, list(products), pd.Timestamp(int(h), unit="ns", tz="UTC")))
    return out


def last_value_at(series: pd.Series, query_ns: np.ndarray) -> np.ndarray:
    """The last finite value of `series` at or before each query time (NaN before the first)."""
    s = series[np.isfinite(series.to_numpy(dtype=np.float64))]
    times = s.index.as_unit("ns").asi8
    pos = np.searchsorted(times, np.asarray(query_ns, np.int64), side="right") - 1
    vals = s.to_numpy(dtype=np.float64)
    return np.where(pos >= 0, vals[np.maximum(pos, 0)] if vals.size else np.nan, np.nan)


def lead_lag_forecast(
    leader_price: pd.Series, anchor_times_ns: np.ndarray, horizon_s: int, beta: float
) -> np.ndarray:
    """beta x the leader's OBSERVED log return over the last `horizon_s` seconds, at each anchor: the
    planted rule applied to what the model can see, in the units of the labels (last observed prices)."""
    now = np.log(last_value_at(leader_price, anchor_times_ns))
    before = np.log(last_value_at(leader_price, np.asarray(anchor_times_ns) - horizon_s * SECOND_NS))
    return beta * (now - before)


@dataclass
class Pooled:
    """Valid windows of several sets pooled: their labels, anchor times and (per model) forecasts."""

    labels: np.ndarray  # (n, n_outputs) float64
    anchor_times_ns: np.ndarray  # (n,)
    products: list[str]


def pool(sets: Sequence[WindowSet]) -> Pooled:
    labels = np.concatenate([np.asarray(s.labels[s.valid], np.float64) for s in sets])
    times = np.concatenate([s.anchor_times_ns[s.valid] for s in sets])
    return Pooled(labels, times, products_of(sets[0]))


def forecasts(model: object, sets: Sequence[WindowSet]) -> np.ndarray:
    """The model's forecasts on the valid windows of `sets`, in `pool` order (batches copied from views)."""
    return valid_forecasts(model, sets)


def residual_forecasts(model: object, sets: Sequence[WindowSet]) -> np.ndarray:
    """The composite's network part alone (its residual over the linear model) on the valid windows."""
    from cb_assets.model.network import gates_of, set_gates

    gates = gates_of(model)
    if gates is None:
        return forecasts(model, sets)
    set_gates(model, np.zeros_like(gates[0]), np.ones_like(gates[1]))
    try:
        return forecasts(model, sets)
    finally:
        set_gates(model, *gates)


@dataclass
class ExperimentResult:
    outcome: Outcome  # train_initial's own result (its holdout = the gate's tails)
    # challenger (the gated composite), network (linear + residual), linear, ridge (anchor row) and
    # persistence on the pooled held-out windows
    reports: dict[str, EvaluationReport]
    heldout: Pooled
    predictions: dict[str, np.ndarray]  # every model's forecasts on `heldout`
    n_train_windows: int
    n_heldout_windows: int


def run_initial(
    train_sets: Sequence[WindowSet], later_sets: Sequence[WindowSet], settings: TrainSettings
) -> ExperimentResult:
    """`train_initial` on `train_sets` (in time order; the gate holds out the tails of the newest
    `settings.gate_hours`), then every model scored on the newest hour's tail plus every set of
    `later_sets` (hours after it that nothing was trained on)."""
    from cb_assets.model.network import linear_of

    *older, newest = train_sets
    outcome = train_initial(older, newest, settings)
    parts, _ = split_gate(train_sets, settings.gate_hours)
    _, tail = split_holdout(newest)
    heldout_sets = [s for s in (tail, *later_sets) if s.valid.any()]
    held = pool(heldout_sets)
    lm = linear_of(outcome.model)
    lin = np.concatenate([lm.predict(s, np.flatnonzero(s.valid)) for s in heldout_sets])
    ridge = RidgeBaseline.fit([s for s in parts if s.valid.any()])
    preds = {
        "challenger": forecasts(outcome.model, heldout_sets),
        "network": lin + residual_forecasts(outcome.model, heldout_sets),
        "linear": lin,
        "ridge": np.concatenate([ridge.predict(s)[s.valid] for s in heldout_sets]).astype(np.float32),
        "persistence": np.zeros_like(held.labels, dtype=np.float32),
    }
    reports = {name: evaluate(held.labels, p, held.products) for name, p in preds.items()}
    return ExperimentResult(
        outcome=outcome,
        reports=reports,
        heldout=held,
        predictions=preds,
        n_train_windows=outcome.n_train_windows,
        n_heldout_windows=len(held.labels),
    )


def ridge_cv_skill(train_sets: Sequence[WindowSet], folds: int = CV_FOLDS) -> np.ndarray:
    """Per output, the anchor-row ridge baseline's skill by blocked cross-validation over the training
    hours (contiguous groups of hours, as `linear.fit` chooses its penalties): each group forecast by the
    ridge fitted on the others, squared errors pooled over all groups.

    Why: a baseline's skill on the two scored hours can be luck (two hours hold ~36 independent 200 s
    labels). Its skill across the training hours says whether the market gave it anything to learn,
    which is all a gate that only sees training data can act on."""
    sets = [s for s in train_sets if s.valid.any()]
    fold = fold_of(len(sets), folds)
    sse = np.zeros(sets[0].labels.shape[1])
    if len(np.unique(fold)) < 2:
        return np.full_like(sse, np.nan)  # one group: nothing to hold out
    sst = np.zeros_like(sse)
    for k in np.unique(fold):
        ridge = RidgeBaseline.fit([s for s, f in zip(sets, fold, strict=True) if f != k])
        for s in (s for s, f in zip(sets, fold, strict=True) if f == k):
            y = np.asarray(s.labels[s.valid], np.float64)
            sse += ((y - ridge.predict(s)[s.valid]) ** 2).sum(axis=0)
            sst += (y**2).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 - sse / sst


def skill_table(reports: Mapping[str, EvaluationReport], horizons: Sequence[int] = HORIZONS_S) -> str:
    """Skill of each model side by side, per product and horizon, then the per-horizon and overall means."""
    names = list(reports)
    first = next(iter(reports.values()))
    keys = [(r.product, r.horizon_s) for r in first.rows] + [(ALL, h) for h in horizons] + [(ALL, None)]
    lines = [
        "| product | horizon | "
        + " | ".join(f"skill {n}" for n in names)
        + " | IC "
        + " | IC ".join(names)
        + " |",
        "|---|---:|" + "---:|" * (2 * len(names)),
    ]
    for product, h in keys:
        rows = [reports[n].row(product, h) for n in names]
        cells = [f"{r.skill:.4f}" for r in rows] + [f"{r.ic:.3f}" for r in rows]
        lines.append(f"| {product} | {'all' if h is None else f'{h} s'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_markdown(result: ExperimentResult, title: str = "held-out evaluation") -> str:
    """The comparison table, then the full metrics of every model (errors in basis points)."""
    t = result.heldout.anchor_times_ns
    when = f"{pd.Timestamp(int(t.min()), unit='ns', tz='UTC')} .. {pd.Timestamp(int(t.max()), unit='ns', tz='UTC')}"
    parts = [
        f"## {title}",
        f"{result.n_train_windows} training windows; {result.n_heldout_windows} held-out windows ({when})",
        "",
        skill_table(result.reports),
    ]
    for name, rep in result.reports.items():
        parts += ["", f"### {name}", metrics_markdown(rep)]
    return "\n".join(parts)
