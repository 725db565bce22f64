"""Forecast metrics per product and horizon, the promotion rule, and their renderings (pure numpy).

The reference forecast is persistence: the price stays where it is, i.e. a log return of 0. Skill is
1 - MSE(model) / MSE(persistence): 0 means no better than doing nothing, 1 a perfect forecast, negative
worse than doing nothing. The information coefficient (IC) is the SPEARMAN rank correlation between
forecast and outcome: returns are heavy-tailed, and a Pearson IC can be carried by a handful of jumps.

Kept free of TensorFlow (matplotlib is imported only inside `loss_curve_png`) so that cheap callers
(asset checks, the registry) can use it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from cb_assets.series.schema import HORIZONS_S

ALL = "ALL"  # the product name of rows that aggregate over products


@dataclass(frozen=True)
class MetricRow:
    """Metrics of one output (product, horizon), or an aggregate (product ALL and/or horizon None)."""

    product: str
    horizon_s: int | None  # None: over all horizons
    n: int  # windows with a finite label
    mae: float
    rmse: float
    skill: float  # 1 - MSE / MSE(persistence)
    mae_ratio: float  # MAE / MAE(persistence); below 1 is better than persistence
    ic: float  # Spearman rank correlation of forecast and outcome
    hit_rate: float  # direction right on moves above the deadband (a zero forecast counts 1/2)
    n_moves: int  # windows whose |outcome| exceeded the deadband
    degenerate: bool = False  # no label moved (or none was finite): skill is undefined, left out of scores


@dataclass(frozen=True)
class EvaluationReport:
    rows: tuple[MetricRow, ...]  # one per (product, horizon), product-major like the labels
    aggregates: tuple[MetricRow, ...]  # per horizon over products, then the overall row
    score: float  # mean skill over the non-degenerate outputs: what promotion compares
    n_windows: int
    n_nonfinite_predictions: int

    def has_nan(self) -> bool:
        """True when any forecast was non-finite or any defined metric came out NaN.

        Hit rate is left out when no move exceeded the deadband (it is undefined there, not broken), and
        degenerate outputs are left out (nothing to forecast).
        """
        if self.n_nonfinite_predictions or not math.isfinite(self.score):
            return True
        for r in self.rows:
            if r.degenerate:
                continue
            core = (r.mae, r.rmse, r.skill, r.mae_ratio, r.ic)
            if not all(math.isfinite(v) for v in core) or (r.n_moves and not math.isfinite(r.hit_rate)):
                return True
        return False

    def row(self, product: str, horizon_s: int | None) -> MetricRow:
        for r in (*self.rows, *self.aggregates):
            if r.product == product and r.horizon_s == horizon_s:
                return r
        raise KeyError((product, horizon_s))

    def to_records(self) -> list[dict[str, object]]:
        """Rows and aggregates as plain dicts (for JSON / Dagster metadata)."""
        return [asdict(r) for r in (*self.rows, *self.aggregates)]


def rankdata(a: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (as scipy.stats.rankdata 'average')."""
    a = np.asarray(a)
    order = np.argsort(a, kind="mergesort")
    _, inverse, counts = np.unique(a[order], return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average = ends - (counts - 1) / 2.0
    ranks = np.empty(a.shape[0], dtype=np.float64)
    ranks[order] = average[inverse]
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman correlation; 0.0 when either side is constant (a constant forecast ranks nothing, so it
    carries no information, and a NaN there would read as a failure)."""
    if x.shape[0] < 2:
        return float("nan")
    rx, ry = rankdata(x), rankdata(y)
    rx -= rx.mean()
    ry -= ry.mean()
    den = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry) / den if den > 0 else 0.0


def _hit_rate(y: np.ndarray, p: np.ndarray, deadband: float) -> tuple[float, int]:
    moves = np.abs(y) > deadband
    n_moves = int(moves.sum())
    if n_moves == 0:
        return float("nan"), 0
    sp, sy = np.sign(p[moves]), np.sign(y[moves])
    # A zero forecast makes no call: worth a coin flip, so persistence scores the no-skill 0.5.
    hits = np.where(sp == 0, 0.5, (sp == sy).astype(np.float64))
    return float(hits.mean()), n_moves


def _output_row(product: str, horizon: int, y: np.ndarray, p: np.ndarray, deadband: float) -> MetricRow:
    keep = np.isfinite(y)  # NaN predictions are NOT dropped: they must show up as NaN metrics
    y, p = y[keep].astype(np.float64), p[keep].astype(np.float64)
    n = int(y.shape[0])
    nan = float("nan")
    if n == 0:
        return MetricRow(product, horizon, 0, nan, nan, nan, nan, nan, nan, 0, degenerate=True)
    err = p - y
    mse, mae = float(np.mean(err * err)), float(np.mean(np.abs(err)))
    mse0, mae0 = float(np.mean(y * y)), float(np.mean(np.abs(y)))
    degenerate = mse0 == 0.0
    skill = 1.0 - mse / mse0 if not degenerate else nan
    mae_ratio = mae / mae0 if not degenerate else nan
    ic = spearman(p, y) if np.all(np.isfinite(p)) else nan
    hit, n_moves = _hit_rate(y, p, deadband)
    return MetricRow(
        product, horizon, n, mae, math.sqrt(mse), skill, mae_ratio, ic, hit, n_moves, degenerate=degenerate
    )


def _aggregate(product: str, horizon: int | None, rows: Sequence[MetricRow]) -> MetricRow:
    # Products are weighted equally: pooling squared errors would let the most volatile product decide.
    use = [r for r in rows if not r.degenerate]
    nan = float("nan")

    def mean(attr: str) -> float:
        return float(np.mean([getattr(r, attr) for r in use])) if use else nan

    n_moves = sum(r.n_moves for r in use)
    hits = sum(r.hit_rate * r.n_moves for r in use if r.n_moves)
    return MetricRow(
        product,
        horizon,
        sum(r.n for r in rows),
        mean("mae"),
        mean("rmse"),
        mean("skill"),
        mean("mae_ratio"),
        mean("ic"),
        hits / n_moves if n_moves else nan,
        n_moves,
        degenerate=not use,
    )


def output_keys(products: Sequence[str], horizons: Sequence[int] = HORIZONS_S) -> list[tuple[str, int]]:
    """(product, horizon) of each output column, product-major as in `WindowSet.labels`."""
    return [(p, int(h)) for p in products for h in horizons]


def evaluate(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    products: Sequence[str],
    *,
    horizons: Sequence[int] = HORIZONS_S,
    deadband: float | Sequence[float] = 1e-4,
    mask: np.ndarray | None = None,
) -> EvaluationReport:
    """Metrics of raw log-return forecasts `y_pred` against `y_true`, both (n_windows, n_outputs).

    `mask` (e.g. `WindowSet.valid`) selects the windows to score. `deadband` is in log-return units
    (1e-4 = 1 basis point), one value or one per horizon.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 2:
        raise ValueError(f"shapes differ or are not 2-D: {y_true.shape} vs {y_pred.shape}")
    keys = output_keys(products, horizons)
    if y_true.shape[1] != len(keys):
        raise ValueError(
            f"{y_true.shape[1]} outputs, but {len(products)} products x {len(horizons)} horizons"
        )
    if mask is not None:
        y_true, y_pred = y_true[np.asarray(mask, bool)], y_pred[np.asarray(mask, bool)]
    bands = [float(deadband)] * len(horizons) if np.ndim(deadband) == 0 else [float(d) for d in deadband]  # type: ignore[arg-type]
    if len(bands) != len(horizons):
        raise ValueError("one deadband per horizon, or a single one")
    band_of = dict(zip((int(h) for h in horizons), bands, strict=True))

    rows = tuple(_output_row(p, h, y_true[:, j], y_pred[:, j], band_of[h]) for j, (p, h) in enumerate(keys))
    aggregates = [_aggregate(ALL, int(h), [r for r in rows if r.horizon_s == int(h)]) for h in horizons]
    aggregates.append(_aggregate(ALL, None, rows))
    return EvaluationReport(
        rows=rows,
        aggregates=tuple(aggregates),
        score=aggregates[-1].skill,
        n_windows=int(y_true.shape[0]),
        n_nonfinite_predictions=int((~np.isfinite(y_pred)).sum()),
    )


def compare(
    challenger: EvaluationReport, champion: EvaluationReport | None, *, tolerance: float = 0.0
) -> tuple[bool, str]:
    """Whether to promote the challenger, and why. Both reports must come from the same held-out windows.

    Promote only when nothing is NaN and the challenger's score (mean skill) is not worse than the
    champion's by more than `tolerance` (0 by default: ties promote, which keeps the newer model).
    """
    if challenger.has_nan():
        return False, "challenger has NaN forecasts or metrics"
    if champion is None:
        return True, f"no champion yet; challenger score {challenger.score:.4f}"
    if champion.has_nan():
        return False, "champion has NaN forecasts or metrics: not comparable, investigate before promoting"
    same_keys = [(r.product, r.horizon_s, r.n) for r in challenger.rows] == [
        (r.product, r.horizon_s, r.n) for r in champion.rows
    ]
    if challenger.n_windows != champion.n_windows or not same_keys:
        return False, "reports were not computed on the same windows and outputs"
    delta = challenger.score - champion.score
    verdict = f"challenger score {challenger.score:.4f} vs champion {champion.score:.4f} (delta {delta:+.4f})"
    if delta >= -tolerance:
        return True, f"promote: {verdict}"
    return False, f"keep champion: {verdict}"


def _fmt(v: float, scale: float = 1.0, spec: str = ".3f") -> str:
    return "n/a" if not math.isfinite(v) else format(v * scale, spec)


def metrics_markdown(report: EvaluationReport, *, per_output: bool = True) -> str:
    """A markdown table of the report (errors in basis points of log return: 1 bp = 1e-4)."""
    head = "| product | horizon | n | MAE (bp) | RMSE (bp) | skill | MAE ratio | IC (Spearman) | hit rate |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows = (*report.rows, *report.aggregates) if per_output else report.aggregates
    for r in rows:
        horizon = "all" if r.horizon_s is None else f"{r.horizon_s} s"
        product = f"**{r.product}**" if r.product == ALL else r.product
        lines.append(
            f"| {product} | {horizon} | {r.n} | {_fmt(r.mae, 1e4, '.2f')} | {_fmt(r.rmse, 1e4, '.2f')} | "
            f"{_fmt(r.skill)} | {_fmt(r.mae_ratio)} | {_fmt(r.ic)} | {_fmt(r.hit_rate)} |"
        )
    lines.append("")
    lines.append(
        f"score (mean skill vs persistence) **{_fmt(report.score, spec='.4f')}** over {report.n_windows} "
        f"windows; non-finite forecasts: {report.n_nonfinite_predictions}"
    )
    return "\n".join(lines)


def loss_curve_png(
    step_losses: Sequence[float], *, epoch_steps: Sequence[int] = (), title: str = "training loss"
) -> bytes:
    """A small PNG (a few KB) of the per-step loss with a moving average and epoch boundaries."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    losses = np.asarray(step_losses, dtype=np.float64)
    fig = Figure(figsize=(4.0, 2.4), dpi=80)
    FigureCanvasAgg(fig)  # a Figure without pyplot: no global state, safe in a Dagster worker thread
    ax = fig.add_subplot(1, 1, 1)
    steps = np.arange(1, losses.shape[0] + 1)
    if losses.size:
        ax.plot(steps, losses, color="0.75", linewidth=0.6)
        k = max(1, losses.shape[0] // 20)
        if losses.shape[0] >= k:
            smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1 :], smooth, color="tab:blue", linewidth=1.2)
        finite = losses[np.isfinite(losses)]
        if finite.size:
            # Cap the axis so the first, large steps do not flatten the rest of the curve.
            ax.set_ylim(min(0.0, float(finite.min())), float(np.quantile(finite, 0.98)) * 1.1 or 1.0)
    for s in epoch_steps:
        ax.axvline(s, color="tab:red", linewidth=0.5, linestyle=":")
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("step", fontsize=7)
    ax.set_ylabel("loss (standardised)", fontsize=7)
    ax.tick_params(labelsize=6)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()
