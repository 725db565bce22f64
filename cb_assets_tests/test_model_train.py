"""The input pipeline (only valid windows, stride, exact batch contents), determinism, fine-tuning, the
adaptive stride, and calibration (its slice, its factors, and that training never steps on its windows)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np
import pytest

from cb_assets.model.baselines import merged_stats, select_windows
from cb_assets.model.batches import WindowBatcher
from cb_assets.model.calibration import calibration_factors, split_calibration
from cb_assets.model.network import (
    calibration_of,
    feature_stats_of,
    label_stats_of,
    load_model,
    predict_returns,
    save_model,
    set_calibration,
)
from cb_assets.model.settings import DEFAULT_STRIDE, WINDOWS_PER_EPOCH, auto_stride
from cb_assets.model.train import fine_tune, new_model, train_model
from cb_assets.series.schema import SECOND_NS
from cb_assets.series.windows import WindowSet
from cb_assets_tests.test_model_synthetic import synthetic_set, tiny_config


def _shifted(ws: WindowSet, scale: float) -> WindowSet:
    """The same windows with features on another scale: its statistics differ from the original's."""
    return WindowSet(
        features=ws.features * scale + 7.0,
        labels=ws.labels * scale,
        anchors=ws.anchors,
        anchor_times_ns=ws.anchor_times_ns,
        valid=ws.valid,
        feature_names=ws.feature_names,
        output_names=ws.output_names,
        window=ws.window,
    )


def test_batcher_copies_exactly_the_indexed_windows_and_standardised_labels() -> None:
    a = synthetic_set(60, seed=1, window=16)
    b = synthetic_set(40, seed=2, window=16)
    mean, std = np.full(12, 1e-5), np.full(12, 2e-4)
    batcher = WindowBatcher([a.ws, b.ws], mean, std)
    pairs = np.array([[1, 5], [0, 59], [1, 0], [0, 3]])
    x, y = batcher.gather(pairs)
    sets = [a.ws, b.ws]
    for row, (s, i) in enumerate(pairs):
        np.testing.assert_array_equal(x[row], sets[s].window_at(int(i)))
        np.testing.assert_allclose(y[row], (sets[s].labels[i] - mean) / std, rtol=1e-6)
    batches = list(batcher.dataset(np.tile(pairs, (3, 1)), batch_size=5))
    assert [int(bx.shape[0]) for bx, _ in batches] == [5, 5, 2]
    np.testing.assert_array_equal(batches[0][0].numpy()[:4], x)


def test_batcher_handles_non_consecutive_anchors() -> None:
    s = synthetic_set(50, seed=3, window=16).ws
    keep = np.arange(0, 50, 2)
    sparse = WindowSet(
        s.features, s.labels[keep], s.anchors[keep], s.anchor_times_ns[keep], s.valid[keep],
        s.feature_names, s.output_names, window=16,
    )  # fmt: skip
    x, _ = WindowBatcher([sparse], np.zeros(12), np.ones(12)).gather(np.array([[0, 3]]))
    np.testing.assert_array_equal(x[0], s.window_at(6))


def test_training_sees_only_every_kth_valid_window_and_is_deterministic() -> None:
    s = synthetic_set(300, seed=4, window=16, invalid_every=3, nan_every=13)
    cfg = tiny_config(window=16)
    n_valid = int(s.ws.valid.sum())

    def run(seed: int) -> tuple[list[float], list[np.ndarray], int]:
        model = new_model(cfg, [s.ws], seed=seed)
        r = train_model(model, [s.ws], epochs=2, batch_size=16, stride=2, seed=seed, learning_rate=3e-3)
        return r.step_losses, model.get_weights(), r.windows_seen

    losses1, w1, seen = run(0)
    losses2, w2, _ = run(0)
    # Stride 2 over the valid windows, one offset per epoch: each epoch sees half of them.
    assert seen in range(2 * (n_valid // 2), 2 * (n_valid // 2 + 1) + 1)
    assert len(losses1) == 2 * int(np.ceil(len(select_windows(s.ws, 2)) / 16))
    assert all(np.isfinite(losses1))  # invalid windows (NaN labels) and NaN features never reach the loss
    assert losses1 == losses2
    assert all(np.array_equal(p, q) for p, q in zip(w1, w2, strict=True))


def test_initial_statistics_come_from_the_training_sets_only() -> None:
    train = synthetic_set(200, seed=5, window=16)
    held_out = _shifted(synthetic_set(200, seed=6, window=16).ws, 50.0)
    model = new_model(tiny_config(window=16), [train.ws])
    fs, ls = merged_stats([train.ws])
    np.testing.assert_allclose(feature_stats_of(model)[0], fs.mean, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(label_stats_of(model)[1], ls.std, rtol=1e-6)
    fs_all, _ = merged_stats([train.ws, held_out])
    assert not np.allclose(feature_stats_of(model)[0], fs_all.mean, rtol=1e-3)


def test_fine_tune_warm_starts_keeps_statistics_and_mixes_replay(tmp_path: Path) -> None:
    old = synthetic_set(400, seed=7, window=16)
    cfg = tiny_config(window=16)
    champion = new_model(cfg, [old.ws], seed=0)
    path = save_model(champion, tmp_path / "champion.keras")
    before = [w.copy() for w in champion.get_weights()]
    champion_stats = feature_stats_of(champion)

    new = _shifted(synthetic_set(300, seed=8, window=16).ws, 3.0)  # other statistics on purpose
    tuned, result = fine_tune(path, [new], [old.ws], replay_fraction=0.25, stride=2, seed=0)

    n_new = len(select_windows(new, 2))
    assert result.windows_seen == n_new + result.replay_windows
    assert result.replay_windows == round(n_new / 3)  # 25% of the mix
    # The champion's statistics, not the new data's: the weights were learned against them.
    np.testing.assert_array_equal(feature_stats_of(tuned)[0], champion_stats[0])
    np.testing.assert_array_equal(feature_stats_of(tuned)[1], champion_stats[1])
    np.testing.assert_array_equal(label_stats_of(tuned)[1], label_stats_of(champion)[1])
    # Warm start: the tuned weights moved, but stayed near the champion's (a low learning rate).
    moved = [
        np.abs(a - b).max() for a, b in zip(tuned.trainable_weights, champion.trainable_weights, strict=True)
    ]
    assert max(moved) > 0
    w_t = np.concatenate([np.ravel(w) for w in tuned.trainable_weights])
    w_c = np.concatenate([np.ravel(w) for w in champion.trainable_weights])
    fresh = new_model(cfg, [old.ws], seed=99)
    w_f = np.concatenate([np.ravel(w) for w in fresh.trainable_weights])
    assert np.linalg.norm(w_t - w_c) < 0.2 * np.linalg.norm(w_f - w_c)

    # Passing the model object leaves it untouched; the file-loaded champion predicts like the original.
    tuned2, _ = fine_tune(champion, [new], [old.ws], stride=2, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(champion.get_weights(), before, strict=True))
    np.testing.assert_allclose(
        predict_returns(tuned2, new), predict_returns(tuned, new), rtol=1e-5, atol=1e-9
    )
    np.testing.assert_array_equal(
        predict_returns(load_model(path), old.ws), predict_returns(champion, old.ws)
    )


def test_fine_tune_without_replay_and_bad_arguments() -> None:
    s = synthetic_set(120, seed=9, window=16)
    model = new_model(tiny_config(window=16), [s.ws])
    _, result = fine_tune(model, [s.ws], (), stride=4, seed=1)
    assert result.replay_windows == 0 and result.windows_seen == len(select_windows(s.ws, 4))
    with pytest.raises(ValueError, match="replay_fraction"):
        fine_tune(model, [s.ws], (), replay_fraction=1.0)


def test_mismatched_columns_are_refused() -> None:
    s = synthetic_set(60, seed=10, window=16)
    model = new_model(tiny_config(window=16), [s.ws])
    renamed = WindowSet(
        s.ws.features, s.ws.labels, s.ws.anchors, s.ws.anchor_times_ns, s.ws.valid,
        tuple(reversed(s.ws.feature_names)), s.ws.output_names, window=16,
    )  # fmt: skip
    with pytest.raises(ValueError, match="feature columns"):
        train_model(model, [renamed])
    with pytest.raises(ValueError, match="feature columns"):  # refused before any training
        train_model(model, [s.ws], calibration_sets=[renamed])
    longer = synthetic_set(60, seed=10, window=20)
    with pytest.raises(ValueError, match="window"):
        train_model(model, [longer.ws])
    keras.backend.clear_session()


def _later(ws: WindowSet, seconds: int) -> WindowSet:
    """The same windows `seconds` later: the next stretch of a market, as the next hour's set would be."""
    return dataclasses.replace(ws, anchor_times_ns=ws.anchor_times_ns + seconds * SECOND_NS)


def test_auto_stride_keeps_an_hour_and_thins_a_day() -> None:
    assert auto_stride(2_000) == DEFAULT_STRIDE  # an hour's fine-tune trains as before
    assert auto_stride(0) == DEFAULT_STRIDE
    day = 24 * 2_900
    stride = auto_stride(day)
    assert stride > DEFAULT_STRIDE and day / stride <= WINDOWS_PER_EPOCH < day / (stride - 1)
    assert auto_stride(10_000, windows_per_epoch=1_000, min_stride=1) == 10


def test_calibration_factors_are_clipped_least_squares_scales() -> None:
    rng = np.random.default_rng(0)
    f = rng.normal(size=(500, 5))
    y = np.column_stack([0.5 * f[:, 0], -f[:, 1], 3.0 * f[:, 2], rng.normal(size=500), f[:, 4]])
    f[:, 4] = 0.0  # a forecast that never moves
    c = calibration_factors(f, y)
    assert c[0] == pytest.approx(0.5)
    assert c[1] == 0.0  # anti-correlated: shrunk to persistence, never flipped
    assert c[2] == 1.0  # under-confident: kept, never amplified
    assert 0.0 <= c[3] < 0.15  # noise: about 0 (clipped from either side)
    assert c[4] == 0.0
    # The same as fitting the least-squares scale and clipping it.
    assert c[3] == pytest.approx(np.clip(f[:, 3] @ y[:, 3] / (f[:, 3] @ f[:, 3]), 0, 1))


def test_calibration_slice_is_the_newest_windows_behind_an_embargo() -> None:
    a = synthetic_set(1500, seed=11, window=16, invalid_every=7).ws
    b = _later(synthetic_set(1500, seed=12, window=16).ws, 1500)
    fit, cal = split_calibration([a, b], fraction=0.2, embargo_s=200)
    valid_t = np.concatenate([s.anchor_times_ns[s.valid] for s in (a, b)])
    fit_t = np.concatenate([s.anchor_times_ns[s.valid] for s in fit])
    cal_t = np.concatenate([s.anchor_times_ns[s.valid] for s in cal])
    assert len(cal_t) == len(valid_t) - int(np.floor(len(valid_t) * 0.8))  # the newest 20% of valid windows
    assert cal_t.min() > valid_t.max() - 0.25 * (valid_t.max() - valid_t.min())
    assert fit_t.max() < cal_t.min() - 200 * SECOND_NS  # every training label ends before the slice starts
    # Valid windows only, and nothing lost but the 200 s in front of the slice.
    assert set(fit_t) | set(cal_t) <= set(valid_t)
    in_embargo = (valid_t >= cal_t.min() - 200 * SECOND_NS) & (valid_t < cal_t.min())
    assert len(fit_t) + len(cal_t) + int(in_embargo.sum()) == len(valid_t)
    # Nothing to set aside: all for training, no calibration.
    assert split_calibration([a, b], fraction=0.0) == ([a, b], [])
    small = synthetic_set(100, seed=13, window=16).ws
    assert split_calibration([small], fraction=0.2) == ([small], [])
    with pytest.raises(ValueError, match="fraction"):
        split_calibration([a], fraction=1.0)


def test_training_calibrates_on_windows_it_took_no_step_on() -> None:
    s = synthetic_set(1200, seed=14, window=16)
    fit, cal = split_calibration([s.ws], fraction=0.25)
    cfg = tiny_config(window=16)

    def run() -> tuple[object, object]:
        model = new_model(cfg, fit, seed=0)
        return model, train_model(model, fit, epochs=1, stride=2, seed=0, calibration_sets=cal)

    model, result = run()
    # Only the training part was stepped on: stride 2 over its valid windows.
    assert result.windows_seen == len(select_windows(fit[0], 2))
    factors = calibration_of(model)
    assert result.extra["calibration"] == pytest.approx(list(factors))
    assert result.extra["calibration_windows"] == int(cal[0].valid.sum())
    assert np.all((factors >= 0) & (factors <= 1)) and np.any(factors < 1)
    # The factors are the clipped least-squares scales of the UNcalibrated forecasts on the slice.
    idx = np.flatnonzero(cal[0].valid)
    calibrated = predict_returns(model, s.ws)[idx]
    set_calibration(model, np.ones_like(factors))
    raw = predict_returns(model, s.ws)[idx]
    np.testing.assert_allclose(factors, calibration_factors(raw, s.ws.labels[idx]), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(calibrated, raw * factors.astype(np.float32), rtol=1e-5, atol=1e-12)
    # Deterministic, calibration included.
    again, _ = run()
    np.testing.assert_array_equal(calibration_of(again), factors)
    # Without a slice the model stays uncalibrated (factor 1).
    plain = new_model(cfg, fit, seed=0)
    r = train_model(plain, fit, epochs=1, stride=2, seed=0)
    assert r.extra["calibration_windows"] == 0
    np.testing.assert_array_equal(calibration_of(plain), np.ones_like(factors))


def test_fine_tune_recalibrates_on_its_own_slice_or_keeps_the_champions_factors() -> None:
    old = synthetic_set(600, seed=15, window=16)
    cfg = tiny_config(window=16)
    champion = new_model(cfg, [old.ws], seed=0)
    champion_factors = np.full(cfg.n_outputs, 0.5)
    set_calibration(champion, champion_factors)
    new = _later(synthetic_set(900, seed=16, window=16).ws, 600)
    fit, cal = split_calibration([new], fraction=0.25)

    tuned, result = fine_tune(champion, fit, [old.ws], stride=2, seed=0, calibration_sets=cal)
    np.testing.assert_array_equal(calibration_of(champion), champion_factors)  # the champion is untouched
    factors = calibration_of(tuned)
    idx = np.flatnonzero(cal[0].valid)
    set_calibration(tuned, np.ones_like(factors))
    raw = predict_returns(tuned, new)[idx]
    # Fitted to the tuned copy's own uncalibrated forecasts: the champion's 0.5 is not compounded into them.
    np.testing.assert_allclose(factors, calibration_factors(raw, new.labels[idx]), rtol=1e-6, atol=1e-7)
    assert result.extra["calibration_windows"] == len(idx)

    kept, r = fine_tune(champion, [new], [old.ws], stride=2, seed=0)
    assert r.extra["calibration_windows"] == 0
    np.testing.assert_array_equal(calibration_of(kept), champion_factors)


def test_pipeline_calibrates_on_training_windows_never_on_the_gates(monkeypatch: pytest.MonkeyPatch) -> None:
    """train_initial and fine_tune_champion: the calibration slice is the newest part of the training
    windows, 200 s clear of them, and no training or calibration window comes within 200 s of any of the
    gate's held-out tails (the newest `gate_hours` hours'), the replayed ones included."""
    import cb_assets.model.train as train
    from cb_assets.model.pipeline import fine_tune_champion, split_gate, thin, train_initial
    from cb_assets.model.settings import TrainSettings

    seen: dict[str, tuple[list[WindowSet], list[WindowSet]]] = {}

    def spy(name: str, fn: object) -> object:
        def wrapped(model: object, sets: list[WindowSet], *args: object, **kw: object) -> object:
            replay = list(args[0]) if args else []
            seen[name] = ([*sets, *replay], list(kw["calibration_sets"]))
            return fn(model, sets, *args, **kw)

        return wrapped

    monkeypatch.setattr(train, "train_model", spy("initial", train.train_model))
    monkeypatch.setattr(train, "fine_tune", spy("fine_tune", train.fine_tune))
    hours = [_later(synthetic_set(1200, seed=20 + k, window=16).ws, 1200 * k) for k in range(5)]
    net = {"conv_filters": (16,), "conv_kernels": (4,), "conv_strides": (4,), "d_model": 16, "heads": 2}
    settings = TrainSettings(network={**net, "ff_dim": 32, "head_units": 32}, seed=0)

    initial = train_initial(hours[:2], hours[2], settings)
    tuned = fine_tune_champion(
        initial.model, [("h4", hours[4])], hours[:3], settings, gate_history=hours[2:4]
    )
    for name, outcome, judged in (("initial", initial, hours[:3]), ("fine_tune", tuned, hours[2:5])):
        fit, cal = seen[name]
        fit_t = np.concatenate([s.anchor_times_ns[s.valid] for s in fit])
        cal_t = np.concatenate([s.anchor_times_ns[s.valid] for s in cal])
        _, tails = split_gate(judged, settings.gate_hours)
        assert len(tails) == 3
        assert outcome.n_calibration_windows == len(cal_t) > 0
        assert fit_t.max() < cal_t.min() - 200 * SECOND_NS
        for tail in tails:
            lo, hi = tail.anchor_times_ns[tail.valid].min(), tail.anchor_times_ns[tail.valid].max()
            for t in (fit_t, cal_t):
                assert not ((t >= lo - 200 * SECOND_NS) & (t <= hi + 200 * SECOND_NS)).any()
        # The gate judges every tail, thinned to one window every `score_stride` seconds.
        assert (
            sum(int(thin(t, settings.score_stride).valid.sum()) for t in tails) == outcome.n_holdout_windows
        )
        assert outcome.train_result.extra["calibration_windows"] > 0
    # A fine-tune's slice comes from its new hour only (the replay hours were the champion's training data).
    assert cal_t.min() >= hours[4].anchor_times_ns[0]


def test_holdout_split_keeps_the_tail_out_of_the_normalisation_statistics() -> None:
    from cb_assets.model.pipeline import split_holdout
    from cb_assets_tests.test_model_synthetic import synthetic_set

    ws = synthetic_set(600, seed=3).ws
    head, tail = split_holdout(ws)
    # The head's statistics count exactly its own valid anchor rows: none from the tail, none from the embargo.
    assert head.feature_stats is not None and head.label_stats is not None
    assert int(head.feature_stats.count.max()) == int(head.valid.sum())
    assert int(head.label_stats.count.max()) == int(head.valid.sum())
    assert head.valid.sum() + tail.valid.sum() < ws.valid.sum()  # the embargo lies between them
    assert not (head.valid & tail.valid).any()
