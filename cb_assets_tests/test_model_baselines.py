"""Baselines: persistence, and the ridge regression recovering a planted linear signal (no TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest

from cb_assets.model.baselines import (
    RidgeBaseline,
    merged_stats,
    persistence_predictions,
    select_windows,
)
from cb_assets.model.evaluate import evaluate
from cb_assets.series.windows import ColumnStats
from cb_assets_tests.test_model_synthetic import (
    PLANTED,
    PRODUCTS,
    SOURCE,
    feature_col,
    output_col,
    synthetic_set,
)


def test_ridge_recovers_the_planted_coefficient_and_the_oracle_skill() -> None:
    train = synthetic_set(3000, beta=1.5, seed=11)
    test = synthetic_set(1500, beta=1.5, seed=12)
    ridge = RidgeBaseline.fit([train.ws], lam=1e-4)

    # Back to raw units: d(label) / d(raw feature) = weight / feature std.
    j, k = feature_col(*SOURCE), output_col(*PLANTED)
    raw_coef = ridge.weights[j, k] / ridge.feature_std[j]
    assert raw_coef == pytest.approx(1.5, rel=0.1)
    other = np.delete(ridge.weights[:, k], j) / np.delete(ridge.feature_std, j)
    assert np.abs(other).max() < 0.3  # nothing else is picked up in its place

    rep = evaluate(test.ws.labels, ridge.predict(test.ws), PRODUCTS, mask=test.ws.valid)
    oracle = evaluate(test.ws.labels, test.oracle, PRODUCTS, mask=test.ws.valid)
    assert oracle.row(*PLANTED).skill > 0.5  # beta^2 / (1 + beta^2) ~ 0.69
    assert rep.row(*PLANTED).skill > 0.9 * oracle.row(*PLANTED).skill


def test_ridge_penalty_shrinks_towards_the_training_mean() -> None:
    train = synthetic_set(1500, beta=1.0, seed=13)
    loose = RidgeBaseline.fit([train.ws], lam=1e-4)
    tight = RidgeBaseline.fit([train.ws], lam=1e4)
    assert np.abs(tight.weights).max() < 1e-3 * np.abs(loose.weights).max()
    pred = tight.predict(train.ws)
    np.testing.assert_allclose(pred.mean(axis=0), train.ws.labels.mean(axis=0), atol=2e-6)
    with pytest.raises(ValueError, match="lam"):
        RidgeBaseline.fit([train.ws], lam=-1.0)


def test_ridge_fits_on_valid_training_windows_with_training_statistics() -> None:
    # Invalid windows carry NaN labels: if they entered the fit, the weights would be NaN.
    a = synthetic_set(800, seed=14, invalid_every=5, nan_every=11)
    b = synthetic_set(600, seed=15)
    ridge = RidgeBaseline.fit([a.ws, b.ws], lam=0.1, stride=3)
    assert np.all(np.isfinite(ridge.weights))
    assert ridge.n_train == len(select_windows(a.ws, 3)) + len(select_windows(b.ws, 3))
    fs, _ = merged_stats([a.ws, b.ws])
    np.testing.assert_array_equal(ridge.feature_mean, fs.mean)
    assert np.all(np.isfinite(ridge.predict(a.ws)))  # NaN features are read as the training mean


def test_merged_stats_prefer_the_builders_statistics() -> None:
    a = synthetic_set(100, seed=16)
    given = ColumnStats.of(np.ones((5, a.ws.features.shape[1])))
    a.ws.feature_stats = given
    fs, ls = merged_stats([a.ws])
    np.testing.assert_array_equal(fs.count, given.count)
    np.testing.assert_array_equal(ls.count, np.full(a.ws.labels.shape[1], 100.0))


def test_select_windows_takes_every_kth_valid_one() -> None:
    s = synthetic_set(100, seed=17, invalid_every=4)
    valid = np.flatnonzero(s.ws.valid)
    np.testing.assert_array_equal(select_windows(s.ws, 3, offset=1), valid[1::3])
    assert s.ws.valid[select_windows(s.ws, 2)].all()
    with pytest.raises(ValueError):
        select_windows(s.ws, 0)


def test_persistence_is_zero_for_every_window() -> None:
    s = synthetic_set(30, seed=18)
    p = persistence_predictions(s.ws)
    assert p.shape == s.ws.labels.shape and not p.any()
    assert persistence_predictions(5, 3).shape == (5, 3)


def test_ridge_cv_skill_finds_the_planted_output_and_nothing_elsewhere() -> None:
    """The baseline's cross-validated skill over training hours: the planted output's skill is close to
    the oracle's, outputs without a signal get none, and one hour alone has nothing to hold out."""
    from cb_assets.model.experiment import ridge_cv_skill

    sets = [synthetic_set(1200, beta=1.5, seed=20 + k) for k in range(4)]
    cv = ridge_cv_skill([s.ws for s in sets])
    oracle = evaluate(sets[0].ws.labels, sets[0].oracle, PRODUCTS, mask=sets[0].ws.valid)
    planted = output_col(*PLANTED)
    assert cv[planted] > 0.85 * oracle.row(*PLANTED).skill
    elsewhere = np.delete(cv, planted)
    assert np.nanmax(elsewhere) < 0.02
    # Held out, fitting noise costs skill (in-sample it would look like a small gain).
    assert np.nanmean(elsewhere) < 0.0
    assert np.isnan(ridge_cv_skill([sets[0].ws])).all()
