"""The network: stored statistics, NaN handling, the newest row reaching the output, .keras round trip,
calibration factors (and loading a model saved before they existed)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from cb_assets.model.layers import Standardize, TransformerBlock
from cb_assets.model.network import (
    NetworkConfig,
    build_model,
    calibration_of,
    column_names_of,
    feature_stats_of,
    label_stats_of,
    load_model,
    predict_returns,
    save_model,
    set_calibration,
    standardised_head,
)
from cb_assets.series.windows import ColumnStats
from cb_assets_tests.test_model_synthetic import synthetic_set, tiny_config


def _stats(rng: np.random.Generator, n: int, loc: float, scale: float) -> ColumnStats:
    return ColumnStats.of(rng.normal(loc, scale, size=(500, n)))


def test_standardize_uses_stored_stats_and_zeroes_missing_values() -> None:
    layer = Standardize(3, clip=4.0)
    layer.set_stats(np.array([1.0, 10.0, -2.0]), np.array([2.0, 5.0, 0.5]))
    x = np.array([[[3.0, np.nan, -2.5], [1.0, 100.0, np.inf]]], dtype=np.float32)
    z = np.asarray(layer(x))
    np.testing.assert_allclose(z, [[[1.0, 0.0, -1.0], [0.0, 4.0, 0.0]]], atol=1e-6)  # 18 clipped to 4


def test_standardize_rejects_bad_stats() -> None:
    layer = Standardize(2)
    with pytest.raises(ValueError, match="columns"):
        layer.set_stats(np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="positive"):
        layer.set_stats(np.zeros(2), np.array([1.0, 0.0]))


def test_config_validation_and_dict_round_trip() -> None:
    with pytest.raises(ValueError, match="divisible"):
        NetworkConfig(d_model=30, heads=4)
    with pytest.raises(ValueError, match="same length"):
        NetworkConfig(conv_filters=(8,), conv_kernels=(4, 4), conv_strides=(4, 4))
    with pytest.raises(ValueError, match="no time steps"):
        NetworkConfig(window=8, conv_kernels=(10, 4))
    cfg = tiny_config(window=48, conv_filters=(8, 8), conv_kernels=(5, 3), conv_strides=(3, 2))
    assert NetworkConfig.from_dict(cfg.to_dict()) == cfg


def test_custom_layer_configs_are_complete() -> None:
    block = TransformerBlock(16, 2, 24, 0.2, name="b")
    clone = TransformerBlock.from_config(block.get_config())
    assert (clone.d_model, clone.heads, clone.ff_dim, clone.dropout_rate, clone.name) == (16, 2, 24, 0.2, "b")
    std = Standardize(2, clip=3.0, column_names=("a", "b"))
    again = Standardize.from_config(std.get_config())
    assert (again.n_columns, again.clip, again.column_names) == (2, 3.0, ("a", "b"))


@pytest.mark.parametrize("anchor_skip", [True, False])
def test_newest_row_reaches_the_output(anchor_skip: bool) -> None:
    # Window 50 with kernel 4 / stride 3 leaves (50 - 4) % 3 = 1 step over: the crop must drop the
    # OLDEST step, so changing the newest row changes the forecast and changing the dropped one does not.
    cfg = tiny_config(window=50, conv_kernels=(4,), conv_strides=(3,), anchor_skip=anchor_skip, dropout=0.0)
    keras.utils.set_random_seed(0)
    model = build_model(cfg)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, cfg.window, cfg.n_features)).astype(np.float32)
    base = predict_returns(model, x)
    newest, oldest = x.copy(), x.copy()
    newest[0, -1] += 3.0
    oldest[0, 0] += 3.0
    assert np.abs(predict_returns(model, newest) - base).max() > 1e-4
    np.testing.assert_array_equal(predict_returns(model, oldest), base)


def test_returns_are_the_destandardised_head() -> None:
    cfg = tiny_config(dropout=0.0)
    rng = np.random.default_rng(1)
    ls = _stats(rng, cfg.n_outputs, 2e-5, 1e-4)
    model = build_model(cfg, _stats(rng, cfg.n_features, 5.0, 2.0), ls)
    x = rng.normal(5.0, 2.0, size=(4, cfg.window, cfg.n_features)).astype(np.float32)
    z = np.asarray(standardised_head(model)(x, training=False))
    raw = predict_returns(model, x)
    np.testing.assert_allclose(raw, z * ls.std + ls.mean, rtol=1e-5, atol=1e-10)
    mean, std = label_stats_of(model)
    np.testing.assert_allclose(mean, ls.mean, rtol=1e-6)
    np.testing.assert_allclose(std, ls.std, rtol=1e-6)


def test_keras_round_trip_gives_identical_predictions(tmp_path: Path) -> None:
    s = synthetic_set(40, seed=5, nan_every=7)
    cfg = tiny_config()
    rng = np.random.default_rng(2)
    fs = ColumnStats.of(s.ws.features)
    ls = _stats(rng, cfg.n_outputs, 0.0, 1e-4)
    keras.utils.set_random_seed(0)
    model = build_model(cfg, fs, ls, feature_names=s.ws.feature_names, output_names=s.ws.output_names)
    before = predict_returns(model, s.ws)
    assert np.all(np.isfinite(before))  # NaN inputs do not leak through

    path = save_model(model, tmp_path / "champion.keras")
    loaded = load_model(path)
    after = predict_returns(loaded, s.ws)
    np.testing.assert_array_equal(after, before)
    np.testing.assert_array_equal(feature_stats_of(loaded)[0], feature_stats_of(model)[0])
    np.testing.assert_array_equal(label_stats_of(loaded)[1], label_stats_of(model)[1])
    assert column_names_of(loaded) == (s.ws.feature_names, s.ws.output_names)
    with pytest.raises(ValueError, match=r"\.keras"):
        save_model(model, tmp_path / "champion.h5")


def test_predict_on_a_window_set_matches_its_views() -> None:
    s = synthetic_set(70, seed=6)
    keras.utils.set_random_seed(0)
    model = build_model(tiny_config())
    by_set = predict_returns(model, s.ws, batch_size=16)
    by_array = predict_returns(model, np.asarray(s.ws.views()[[3, 69]]))
    assert by_set.shape == (70, s.ws.labels.shape[1])
    np.testing.assert_allclose(by_array, by_set[[3, 69]], rtol=1e-5, atol=1e-7)
    single = predict_returns(model, s.ws.window_at(10))
    np.testing.assert_allclose(single[0], by_set[10], rtol=1e-5, atol=1e-7)


def _calibrated_model() -> tuple[keras.Model, np.ndarray]:
    cfg = tiny_config(dropout=0.0)
    rng = np.random.default_rng(3)
    keras.utils.set_random_seed(0)
    model = build_model(cfg, _stats(rng, cfg.n_features, 5.0, 2.0), _stats(rng, cfg.n_outputs, 2e-5, 1e-4))
    factors = np.linspace(0.0, 1.0, cfg.n_outputs)
    return model, factors


def test_calibration_scales_each_raw_forecast_and_travels_in_the_keras_file(tmp_path: Path) -> None:
    model, factors = _calibrated_model()
    s = synthetic_set(30, seed=4)
    np.testing.assert_array_equal(calibration_of(model), np.ones_like(factors))  # a new model: factor 1
    before = predict_returns(model, s.ws)
    set_calibration(model, factors)
    after = predict_returns(model, s.ws)
    # The raw forecast (label mean included) is scaled: factor 0 is persistence's 0, not the label mean.
    np.testing.assert_allclose(after, before * factors.astype(np.float32), rtol=1e-5, atol=1e-12)
    assert np.all(after[:, 0] == 0.0)

    loaded = load_model(save_model(model, tmp_path / "calibrated.keras"))
    np.testing.assert_array_equal(calibration_of(loaded), calibration_of(model))
    np.testing.assert_array_equal(predict_returns(loaded, s.ws), after)
    with pytest.raises(ValueError, match=">= 0"):
        set_calibration(model, -factors)
    with pytest.raises(ValueError, match="columns"):
        set_calibration(model, factors[:-1])


def test_a_model_saved_before_calibration_loads_uncalibrated(tmp_path: Path) -> None:
    """A champion saved before the factors existed (its output layer holds mean and std only) still loads
    and forecasts as it was saved: factor 1 everywhere."""
    model, factors = _calibrated_model()
    s = synthetic_set(30, seed=5)
    expected = predict_returns(model, s.ws)
    set_calibration(model, factors)  # stored in the file, then dropped from it below
    path = save_model(model, tmp_path / "new.keras")
    old = tmp_path / "old.keras"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(old, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "model.weights.h5":
                buf = io.BytesIO(data)
                with h5py.File(buf, "a") as f:
                    del f["layers/destandardize/vars/2"]  # the scale: the old layout had vars 0 and 1
                data = buf.getvalue()
            dst.writestr(name, data)
    loaded = load_model(old)
    np.testing.assert_array_equal(calibration_of(loaded), np.ones_like(factors))
    np.testing.assert_array_equal(predict_returns(loaded, s.ws), expected)
    np.testing.assert_array_equal(label_stats_of(loaded)[1], label_stats_of(model)[1])
