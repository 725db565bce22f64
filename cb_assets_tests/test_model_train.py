"""The input pipeline (only valid windows, stride, exact batch contents), determinism, and fine-tuning."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from cb_assets.model.network import (
    feature_stats_of,
    label_stats_of,
    load_model,
    predict_returns,
    save_model,
)
from cb_assets.model.train import (
    WindowBatcher,
    fine_tune,
    merged_stats,
    new_model,
    select_windows,
    train_model,
)
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
    longer = synthetic_set(60, seed=10, window=20)
    with pytest.raises(ValueError, match="window"):
        train_model(model, [longer.ws])
    keras.backend.clear_session()
