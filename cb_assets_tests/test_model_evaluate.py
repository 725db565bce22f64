"""Metrics against hand-computed values, the promotion rule, and the renderings (no TensorFlow)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from cb_assets.model.evaluate import (
    ALL,
    compare,
    evaluate,
    loss_curve_png,
    metrics_markdown,
    output_keys,
    rankdata,
    spearman,
)

PRODUCTS = ("BTC-USD", "ETH-USD")
HORIZONS = (10, 100)


def _data(seed: int = 0, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.normal(0.0, 1e-4, size=(n, 4))
    pred = 0.5 * y + rng.normal(0.0, 5e-5, size=y.shape)
    return y, pred


def test_evaluate_module_does_not_import_tensorflow() -> None:
    # Cheap callers rely on this; checked in a fresh interpreter so other tests' imports do not count.
    import subprocess

    code = (
        "import sys, cb_assets.model.evaluate, cb_assets.model.baselines; print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_metrics_match_hand_computed_values() -> None:
    y = np.array([[2e-4], [-1e-4], [0.5e-4], [-3e-4]])
    p = np.array([[1e-4], [1e-4], [0.0], [-1e-4]])
    rep = evaluate(y, p, ["X"], horizons=(10,), deadband=0.6e-4)
    r = rep.row("X", 10)
    err = p[:, 0] - y[:, 0]
    assert r.n == 4
    assert r.mae == pytest.approx(np.mean(np.abs(err)))
    assert r.rmse == pytest.approx(np.sqrt(np.mean(err**2)))
    assert r.skill == pytest.approx(1 - np.mean(err**2) / np.mean(y[:, 0] ** 2))
    assert r.mae_ratio == pytest.approx(np.mean(np.abs(err)) / np.mean(np.abs(y[:, 0])))
    # Moves above 0.6 bp: rows 0, 1, 3 (row 2 is inside the deadband); signs right on 0 and 3.
    assert r.n_moves == 3
    assert r.hit_rate == pytest.approx(2 / 3)


def test_persistence_and_perfect_forecasts_score_as_defined() -> None:
    y, _ = _data()
    zero = evaluate(y, np.zeros_like(y), PRODUCTS, horizons=HORIZONS)
    for r in zero.rows:
        assert r.skill == pytest.approx(0.0)
        assert r.mae_ratio == pytest.approx(1.0)
        assert r.ic == 0.0  # constant forecast: no information, not NaN
        assert r.hit_rate == 0.5  # no call counts a coin flip
    assert not zero.has_nan()
    perfect = evaluate(y, y, PRODUCTS, horizons=HORIZONS)
    assert perfect.score == pytest.approx(1.0)
    assert all(r.ic == pytest.approx(1.0) and r.hit_rate == 1.0 for r in perfect.rows)


def test_rows_are_product_major_and_aggregates_average_products() -> None:
    y, p = _data(1)
    p[:, 3] = 0.0  # ETH 100 s: persistence
    rep = evaluate(y, p, PRODUCTS, horizons=HORIZONS)
    assert [(r.product, r.horizon_s) for r in rep.rows] == output_keys(PRODUCTS, HORIZONS)
    assert rep.row("ETH-USD", 100).skill == pytest.approx(0.0)
    agg = rep.row(ALL, 100)
    assert agg.skill == pytest.approx((rep.row("BTC-USD", 100).skill + 0.0) / 2)
    assert agg.n == 2 * y.shape[0]
    assert rep.score == pytest.approx(np.mean([r.skill for r in rep.rows]))
    assert rep.row(ALL, None).skill == rep.score


def test_mask_and_nan_labels_are_left_out_but_nan_forecasts_are_not() -> None:
    y, p = _data(2)
    mask = np.ones(len(y), bool)
    mask[:50] = False
    y_nan = y.copy()
    y_nan[:50] = np.nan
    masked = evaluate(y, p, PRODUCTS, horizons=HORIZONS, mask=mask)
    dropped = evaluate(y_nan, p, PRODUCTS, horizons=HORIZONS)
    assert masked.row("BTC-USD", 10).skill == pytest.approx(dropped.row("BTC-USD", 10).skill)
    assert masked.row("BTC-USD", 10).n == len(y) - 50
    p_bad = p.copy()
    p_bad[7, 2] = np.nan
    bad = evaluate(y, p_bad, PRODUCTS, horizons=HORIZONS)
    assert bad.n_nonfinite_predictions == 1
    assert np.isnan(bad.row("ETH-USD", 10).skill)
    assert bad.has_nan()


def test_an_output_that_never_moves_is_degenerate_not_a_failure() -> None:
    y, p = _data(3)
    y[:, 1] = 0.0
    rep = evaluate(y, p, PRODUCTS, horizons=HORIZONS)
    assert rep.row("BTC-USD", 100).degenerate
    assert not rep.has_nan()
    others = [r.skill for r in rep.rows if not r.degenerate]
    assert rep.score == pytest.approx(np.mean(others))


def test_spearman_matches_scipy_including_ties() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(4)
    x = rng.integers(0, 8, size=200).astype(float)  # many ties
    y = x + rng.normal(size=200)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, rel=1e-12)
    np.testing.assert_allclose(rankdata(x), stats.rankdata(x))


def test_compare_promotes_only_a_finite_not_worse_challenger() -> None:
    y, p = _data(5)
    good = evaluate(y, p, PRODUCTS, horizons=HORIZONS)
    worse = evaluate(y, 0.2 * p, PRODUCTS, horizons=HORIZONS)
    assert good.score > worse.score

    assert compare(good, worse)[0]
    promote, reason = compare(worse, good)
    assert not promote and "keep champion" in reason
    assert compare(worse, good, tolerance=1.0)[0]
    assert compare(good, good)[0]  # a tie keeps the newer model
    assert compare(good, None)[0]

    p_nan = p.copy()
    p_nan[0, 0] = np.nan
    nan_report = evaluate(y, p_nan, PRODUCTS, horizons=HORIZONS)
    assert compare(nan_report, worse) == (False, "challenger has NaN forecasts or metrics")
    assert not compare(nan_report, None)[0]
    assert not compare(good, nan_report)[0]

    fewer = evaluate(y[:-10], p[:-10], PRODUCTS, horizons=HORIZONS)
    promote, reason = compare(fewer, worse)
    assert not promote and "same windows" in reason


def test_markdown_table_lists_every_row() -> None:
    y, p = _data(6)
    rep = evaluate(y, p, PRODUCTS, horizons=HORIZONS)
    md = metrics_markdown(rep)
    lines = md.splitlines()
    assert lines[0].startswith("| product | horizon |")
    table = [line for line in lines[2:] if line.startswith("|")]
    assert len(table) == len(rep.rows) + len(rep.aggregates)
    btc10 = rep.row("BTC-USD", 10)
    assert f"| BTC-USD | 10 s | {btc10.n} | {btc10.mae * 1e4:.2f} |" in md
    assert f"{rep.score:.4f}" in md
    assert len(metrics_markdown(rep, per_output=False).splitlines()) == 2 + len(rep.aggregates) + 2


def test_loss_curve_png_is_a_small_png() -> None:
    losses = list(1.0 / np.sqrt(np.arange(1, 300)) + 0.05 * np.random.default_rng(7).random(299))
    png = loss_curve_png(losses, epoch_steps=[100, 200])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert 1_000 < len(png) < 40_000
    assert loss_curve_png([])[:8] == b"\x89PNG\r\n\x1a\n"
