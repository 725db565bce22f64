"""The per-output gate, the linear model and the composite that carries both.

A model worse on an output than a simpler candidate (persistence, the linear model) is not used for it;
a prior choice stands unless the evidence is significant; the linear model finds an anchor-row signal and
shrinks the rest; inside the Keras model it forecasts exactly what the numpy model does, also after a
save and load; the pipeline serves the gate's choice per output.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from cb_assets.model import gate, linear
from cb_assets.model.evaluate import evaluate
from cb_assets.series.schema import HORIZONS_S, SECOND_NS
from cb_assets.series.windows import WindowSet
from cb_assets_tests.test_model_synthetic import PRODUCTS, output_col, synthetic_set, tiny_config

SIMPLER = {
    gate.PERSISTENCE: (),
    gate.LINEAR: (gate.PERSISTENCE,),
    gate.NETWORK: (gate.PERSISTENCE, gate.LINEAR),
}


def _later(ws: WindowSet, seconds: int) -> WindowSet:
    return dataclasses.replace(ws, anchor_times_ns=ws.anchor_times_ns + seconds * SECOND_NS)


def _candidates(seed: int = 0, n: int = 8000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and two candidates' forecasts for 12 outputs, each output a different case."""
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(n, len(PRODUCTS) * len(HORIZONS_S)))
    lin = np.zeros_like(y)
    net = np.zeros_like(y)
    a10, a20, a100, b10 = output_col("A", 10), output_col("A", 20), output_col("A", 100), output_col("B", 10)
    signal = y[:, a10] * 0.7
    lin[:, a10] = signal  # linear good, network = linear + noise: worse than linear
    net[:, a10] = signal + rng.normal(scale=0.8, size=n)
    lin[:, a20] = rng.normal(scale=0.5, size=n)  # linear useless, network good
    net[:, a20] = y[:, a20] * 0.5
    lin[:, a100] = rng.normal(scale=0.3, size=n)  # both useless: persistence
    net[:, a100] = rng.normal(scale=0.3, size=n)
    lin[:, b10] = y[:, b10] * 0.3  # linear good, network clearly better
    net[:, b10] = y[:, b10] * 0.8
    return y, lin, net


def test_gate_uses_a_candidate_only_where_it_beats_the_simpler_ones() -> None:
    y, lin, net = _candidates()
    decisions = gate.decide(y, lin, net, list(PRODUCTS))
    choice = {d.output: d.choice for d in decisions}
    assert choice["A:10"] == gate.LINEAR
    assert choice["A:20"] == gate.NETWORK
    assert choice["A:100"] == gate.PERSISTENCE
    assert choice["B:10"] == gate.NETWORK
    assert all(c == gate.PERSISTENCE for k, c in choice.items() if k not in {"A:10", "A:20", "B:10"})
    served = gate.combine(decisions, lin, net)
    report = evaluate(y, served, list(PRODUCTS))
    for d, row in zip(decisions, report.rows, strict=True):
        # Never worse than a simpler candidate on the windows it was judged on.
        for simpler in SIMPLER[d.choice]:
            assert d.skill[d.choice] >= d.skill[simpler], d
        assert row.skill >= 0.0 or row.degenerate
    lin_gate, res_gate = gate.gates_of(decisions)
    assert lin_gate[output_col("A", 100)] == 0 and res_gate[output_col("A", 10)] == 0
    assert lin_gate[output_col("A", 20)] == 1 and res_gate[output_col("A", 20)] == 1


def test_holm_steps_down_until_a_p_value_misses_its_threshold() -> None:
    p = np.array([0.03, 0.001, 0.04, 0.01])  # thresholds 0.05/4, 0.05/3, 0.05/2, 0.05/1 in sorted order
    np.testing.assert_array_equal(gate.holm(p, 0.05), [False, True, False, True])
    assert not gate.holm(np.array([0.03, 0.03]), 0.05).any()  # each would pass alone at 0.05
    assert gate.one_sided_p(0.0, gate.MIN_BLOCKS) == pytest.approx(0.5)
    assert gate.one_sided_p(5.0, gate.MIN_BLOCKS - 1) == 1.0  # too few blocks: no evidence


def test_network_needs_more_than_one_lucky_output_among_many() -> None:
    """A network gain with t between 2 and 2.5 on one output of 12 (what chance gives one output in
    ~40 under a plain t > 2 rule) is not admitted; a clear gain is."""
    rng = np.random.default_rng(5)
    n = 4000
    y = rng.normal(size=(n, len(PRODUCTS) * len(HORIZONS_S)))
    lin = np.zeros_like(y)
    noise = rng.normal(size=n)
    j = output_col("A", 10)
    weak = None
    for c in np.linspace(0.15, 0.19, 41):  # the gain of c * (y + 3 noise) falls to 0 near c = 0.19
        net = np.zeros_like(y)
        net[:, j] = c * (y[:, j] + 3.0 * noise)
        t = dm_t(y[:, j] ** 2, (y[:, j] - net[:, j]) ** 2, gate.block_size(10))
        if 2.05 < t < 2.5:
            weak = net
            break
    assert weak is not None, "no borderline network gain constructed"
    choice = {d.output: d.choice for d in gate.decide(y, lin, weak, list(PRODUCTS))}
    assert choice["A:10"] == gate.PERSISTENCE
    strong = np.zeros_like(y)
    strong[:, j] = 0.5 * y[:, j]
    choice = {d.output: d.choice for d in gate.decide(y, lin, strong, list(PRODUCTS))}
    assert choice["A:10"] == gate.NETWORK


def test_dm_statistic_needs_blocks_and_sees_overlap() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=100) ** 2, rng.normal(size=100) ** 2 * 0.5
    assert dm_t(a, b, 20) == 0.0  # 5 blocks of 20: too few to judge
    # A constant advantage is significant; the same differential in longer blocks has fewer of them.
    d = np.abs(rng.normal(size=4000))
    assert dm_t(d + 0.1, d, 20) > 10
    assert gate.dm_statistic(d + 0.1, d, 400)[1] == 10


def dm_t(a: np.ndarray, b: np.ndarray, block: int) -> float:
    return gate.dm_statistic(a, b, block)[0]


def test_a_prior_choice_stands_unless_the_evidence_is_significant() -> None:
    rng = np.random.default_rng(2)
    n = 4000
    y = rng.normal(size=(n, 12))
    lin = np.zeros_like(y)
    lin[:, 0] = rng.normal(scale=0.02, size=n)  # a small forecast, neither significantly good nor bad
    lin[:, 1] = rng.normal(scale=1.0, size=n)  # significantly worse than persistence
    fresh = {d.output: d.choice for d in gate.decide(y, lin, None, list(PRODUCTS))}
    assert fresh["A:10"] == gate.PERSISTENCE
    prior = {"A:10": gate.LINEAR, "A:20": gate.LINEAR}
    kept = {d.output: d.choice for d in gate.decide(y, lin, None, list(PRODUCTS), prior=prior)}
    assert kept["A:10"] == gate.LINEAR  # not rejected: it stays
    assert kept["A:20"] == gate.PERSISTENCE  # rejected with significance: dropped


def _hours(n: int, size: int = 1200, window: int = 32) -> list[WindowSet]:
    return [_later(synthetic_set(size, seed=40 + k, window=window).ws, size * k) for k in range(n)]


def test_linear_fit_finds_the_planted_output_and_shrinks_the_rest() -> None:
    sets = _hours(4)
    fitted = linear.fit(sets)
    assert fitted.oof is not None
    y = np.concatenate([s.labels[s.valid] for s in sets])
    oof = evaluate(y, np.concatenate(fitted.oof), list(PRODUCTS))
    planted = output_col("B", 10)
    assert oof.rows[planted].skill > 0.35
    others = [r.skill for j, r in enumerate(oof.rows) if j != planted]
    assert min(others) > -0.02
    assert fitted.model.lambdas[planted] <= 1.0 < float(np.median(np.delete(fitted.model.lambdas, planted)))
    # Adding an hour's statistics: what was seen before counts at `decay`, the new hour in full.
    more = linear.update(fitted.model, [sets[0]], decay=0.5)
    assert more.stats.n == 0.5 * fitted.model.stats.n + sets[0].valid.sum()
    one = linear.update(fitted.model, [sets[0]], decay=0.0)
    st = linear.set_stats(sets[0], np.flatnonzero(sets[0].valid), one.taps, one.tap_mean, one.tap_std)
    np.testing.assert_allclose(
        one.weights, linear.solve_per_output(st, one.lambdas)[1:], rtol=1e-6, atol=1e-12
    )


def test_composite_serves_the_linear_model_exactly_and_survives_save_and_load(tmp_path: Path) -> None:
    from cb_assets.model.network import (
        gates_of,
        linear_of,
        load_model,
        predict_returns,
        save_model,
        set_gates,
        set_linear,
    )
    from cb_assets.model.pipeline import residual_sets
    from cb_assets.model.train import new_model

    sets = _hours(2)
    lm = linear.fit(sets).model
    model = new_model(tiny_config(), residual_sets(sets, lm), seed=0, linear=lm)
    set_linear(model, lm)
    n_out = len(PRODUCTS) * len(HORIZONS_S)
    lin_gate = np.ones(n_out, np.float32)
    lin_gate[0] = 0.0  # one output serves persistence
    set_gates(model, lin_gate, np.zeros(n_out, np.float32))
    got = predict_returns(model, sets[1])  # the network serves nowhere: the linear path, in numpy
    want = lm.predict(sets[1])
    want[:, 0] = 0.0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-9)
    # The Keras graph's own linear path (what serves beside a network output) gives the same.
    windows = np.stack([sets[1].window_at(i) for i in range(0, len(sets[1]), 600)])
    keras_path = np.asarray(model(windows, training=False))
    np.testing.assert_allclose(keras_path, want[::600], rtol=1e-4, atol=1e-9)
    loaded = load_model(save_model(model, tmp_path / "composite.keras"))
    np.testing.assert_allclose(predict_returns(loaded, sets[1]), got, rtol=1e-6, atol=1e-12)
    np.testing.assert_array_equal(gates_of(loaded)[0], lin_gate)
    back = linear_of(loaded)
    assert back.taps == lm.taps and back.stats.n == lm.stats.n
    np.testing.assert_allclose(back.weights, lm.weights, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(back.stats.xx, lm.stats.xx)


def test_forecast_skips_the_network_only_when_it_serves_no_output() -> None:
    """With the residual gated off everywhere a forecast is the linear path alone (a network gone
    wild changes nothing); once one output serves the network its forecasts move again. One window (compiled
    with XLA) and batches give the same forecasts."""
    from cb_assets.model.network import predict_returns, set_gates, set_linear
    from cb_assets.model.pipeline import residual_sets
    from cb_assets.model.train import new_model

    sets = _hours(2)
    lm = linear.fit(sets).model
    model = new_model(tiny_config(), residual_sets(sets, lm), seed=0, linear=lm)
    set_linear(model, lm)
    n_out = len(PRODUCTS) * len(HORIZONS_S)
    set_gates(model, np.ones(n_out, np.float32), np.zeros(n_out, np.float32))
    idx = np.arange(5)
    want = lm.predict(sets[1], idx)
    np.testing.assert_allclose(predict_returns(model, sets[1].window_at(0)), want[:1], rtol=1e-4, atol=1e-9)
    head = model.get_layer("head_z")
    head.kernel.assign(np.full(head.kernel.shape, 1e3, np.float32))  # a residual far off any return
    windows = np.stack([sets[1].window_at(int(i)) for i in idx])
    batched = predict_returns(model, windows, batch_size=4)
    np.testing.assert_allclose(batched, want, rtol=1e-4, atol=1e-9)
    one = np.zeros(n_out, np.float32)
    one[0] = 1.0
    set_gates(model, np.ones(n_out, np.float32), one)
    served = predict_returns(model, windows, batch_size=4)
    np.testing.assert_allclose(predict_returns(model, windows[0]), served[:1], rtol=1e-4, atol=1e-8)
    assert (np.abs(served[:, 0] - want[:, 0]) > 1e-2).all()
    np.testing.assert_allclose(served[:, 1:], want[:, 1:], rtol=1e-4, atol=1e-9)


def test_pipeline_serves_the_gates_choice_per_output() -> None:
    """train_initial's composite forecasts, per output, persistence / linear / linear + residual exactly as
    its decisions say, and none of its outputs loses to persistence on the gate's windows."""
    from cb_assets.model.experiment import residual_forecasts
    from cb_assets.model.network import linear_of, predict_returns
    from cb_assets.model.pipeline import split_gate, train_initial
    from cb_assets.model.settings import TrainSettings

    hours = _hours(4)
    net = {"conv_filters": (16,), "conv_kernels": (4,), "conv_strides": (4,), "d_model": 16, "heads": 2}
    outcome = train_initial(
        hours[:-1], hours[-1], TrainSettings(network={**net, "ff_dim": 32, "head_units": 32})
    )
    choice = {d.output: d.choice for d in outcome.decisions}
    assert choice["B:10"] in (gate.LINEAR, gate.NETWORK)
    _, tails = split_gate(hours, 3)
    tail = tails[-1]
    idx = np.flatnonzero(tail.valid)
    served = predict_returns(outcome.model, tail)[idx]
    lin = linear_of(outcome.model).predict(tail, idx)
    res = residual_forecasts(outcome.model, [tail])
    for j, d in enumerate(outcome.decisions):
        want = {
            gate.PERSISTENCE: 0.0 * lin[:, j],
            gate.LINEAR: lin[:, j],
            gate.NETWORK: lin[:, j] + res[:, j],
        }
        np.testing.assert_allclose(served[:, j], want[d.choice], rtol=1e-4, atol=1e-8)
    rows = outcome.holdout["challenger"].rows
    assert min(r.skill for r in rows) >= -0.01
    assert rows[output_col("B", 10)].skill > 0.3
