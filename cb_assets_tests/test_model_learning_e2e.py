"""End to end: the real chain must find a lead-lag planted in a simulated market, and nothing without it.

Chain, all in memory (no database): `simulate_ticks` -> `fill_product_hour` (Kalman) -> `indicators_of_hour`
-> `training_windows` partitions -> `train_initial` of the real network with the platform's default settings
(seeded, deterministic) -> forecasts on held-out windows. `cb_assets.model.experiment` runs the chain with
the shared per-hour core the assets call (test_defs_assets checks the materialised assets against it).

The market: BTC-USD, ETH-USD, SOL-USD; ETH-USD's log return over the next 20 s = 1.0 x BTC-USD's over the
last 20 s + ETH's own moves (`LeadLag`). The second market is the same seed without the relation: BTC-USD and
SOL-USD tick identically in both, so their filled series and indicators are computed once.

Hours: 0 is the cold start (its filter is fitted on itself, so nothing in it is warm), 1..24 are training
hours (24 is the newest: `train_initial` holds out its last third behind a 200 s embargo), 25 is a later
hour nothing was trained on. The held-out windows are 24's tail plus all of 25 (~4,600 windows, ~230
independent 20 s returns); scoring on the tail alone (~55 independent returns) made the ratio much noisier.

Why a whole day of training hours: with 5 training hours the network alone memorised them (every held-out
output negative, ETH-USD 20 s skill -0.19 against an oracle 0.39); with 24 hours and a large stride it
learned the relation, but its skill depended on the seed (0.23, 0.01, 0.20, 0.28 for seeds 0..3) and it
trailed the anchor-row ridge (0.30).

The champion is now the composite (pipeline.py): a linear model on lagged window values (it rebuilds the
leader's 20 s return from 1 s and 5 s returns, reaching the oracle), a network on its residuals, and a
per-output gate that serves persistence wherever neither beats it significantly on the tails of the newest
three hours. Measured here: planted output 0.39 against an oracle ~0.38, every other output 0 (persistence);
without the relation every output 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from cb_assets.feed.market import LeadLag, oracle_skill
from cb_assets.feed.simulate import SimulatedTicks, simulate_ticks
from cb_assets.model.evaluate import ALL
from cb_assets.model.experiment import (
    HOUR_NS,
    ExperimentResult,
    ProductSeries,
    lead_lag_forecast,
    run_initial,
    series_for,
    skill_table,
    window_sets,
)
from cb_assets.model.settings import TrainSettings
from cb_assets.series.schema import HORIZONS_S, SECOND_NS

PRODUCTS = ("BTC-USD", "ETH-USD", "SOL-USD")
START_NS = int(pd.Timestamp("2024-03-04", tz="UTC").value)
N_HOURS = 26
SEED = 7
LEAD_LAG = LeadLag(leader="BTC-USD", follower="ETH-USD", horizon_s=20, beta=1.0)
PLANTED = (LEAD_LAG.follower, LEAD_LAG.horizon_s)
# The platform's defaults (network, adaptive stride, epochs, calibration): what price_model trains with.
SETTINGS = TrainSettings()

HOURS_NS = [START_NS + k * HOUR_NS for k in range(N_HOURS)]
TRAIN_HOURS = HOURS_NS[1:-1]
LATER_HOURS = HOURS_NS[-1:]


@dataclass
class Market:
    sim: SimulatedTicks
    series: dict[str, ProductSeries]
    result: ExperimentResult


def _ticks(sim: SimulatedTicks) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {p: sim.product_ticks(p) for p in PRODUCTS}


@pytest.fixture(scope="module")
def series_cache() -> dict[str, ProductSeries]:
    return {}


def _market(lead_lag: LeadLag | None, cache: dict[str, ProductSeries]) -> Market:
    sim = simulate_ticks(PRODUCTS, START_NS, N_HOURS * 3600, seed=SEED, lead_lag=lead_lag)
    series = series_for(_ticks(sim), PRODUCTS, HOURS_NS, cache)
    sets = window_sets(series, PRODUCTS, HOURS_NS[1:])
    result = run_initial(sets[: len(TRAIN_HOURS)], sets[len(TRAIN_HOURS) :], SETTINGS)
    return Market(sim, series, result)


@pytest.fixture(scope="module")
def with_signal(series_cache: dict[str, ProductSeries]) -> Market:
    return _market(LEAD_LAG, series_cache)


@pytest.fixture(scope="module")
def without_signal(series_cache: dict[str, ProductSeries], with_signal: Market) -> Market:
    # Requesting `with_signal` first fills the cache, so only ETH-USD is filled again here.
    market = _market(None, series_cache)
    assert len(series_cache) == len(PRODUCTS) + 1, "BTC-USD and SOL-USD should tick the same in both markets"
    return market


def _observed_oracle_skill(market: Market) -> float:
    """Skill of beta x the leader's observed past return on the same held-out windows and labels."""
    held = market.result.heldout
    y = held.labels[:, held.products.index(PLANTED[0]) * len(HORIZONS_S) + HORIZONS_S.index(PLANTED[1])]
    forecast = lead_lag_forecast(
        market.series[LEAD_LAG.leader].observed_price,
        held.anchor_times_ns,
        LEAD_LAG.horizon_s,
        LEAD_LAG.beta,
    )
    return float(1.0 - np.mean((y - forecast) ** 2) / np.mean(y**2))


def _latent_oracle_skill(market: Market) -> float:
    """The planted rule on the simulator's latent 1-s prices over the held-out period (every second)."""
    t = market.result.heldout.anchor_times_ns
    first, last = (int(t.min()) - START_NS) // SECOND_NS, (int(t.max()) - START_NS) // SECOND_NS
    h = LEAD_LAG.horizon_s
    lo, hi = first - h, last + h + 1  # the rule needs h seconds before the first anchor and after the last
    x, z = market.sim.latent(LEAD_LAG.leader)[lo:hi], market.sim.latent(LEAD_LAG.follower)[lo:hi]
    return oracle_skill(x, z, LEAD_LAG, every=1).skill


@pytest.mark.slow(expected_s=210)  # most of it the module fixture's training
def test_network_learns_the_planted_lead_lag(with_signal: Market) -> None:
    result = with_signal.result
    reports = result.reports
    skill = reports["challenger"].row(*PLANTED).skill
    # The ceiling the assertion uses: the planted rule applied to what the model sees (the leader's last
    # observed prices, 5 s frames) and scored on exactly the held-out windows and labels the model is
    # scored on. The latent-price oracle is printed for reference: it scores the rule on the hidden 1-s path,
    # which no model sees, over every second of the same period. The two are close because both products
    # tick on the same 5 s frames, so sampling delays both ends of both returns alike.
    observed_oracle = _observed_oracle_skill(with_signal)
    latent_oracle = _latent_oracle_skill(with_signal)
    print(
        f"\n[planted {PLANTED[0]} {PLANTED[1]} s] network skill {skill:.4f}, ridge "
        f"{reports['ridge'].row(*PLANTED).skill:.4f}, oracle on the same labels {observed_oracle:.4f} "
        f"(latent-price oracle {latent_oracle:.4f}); ratio {skill / observed_oracle:.2f}; "
        f"{result.outcome.train_result.windows_seen} windows seen in training (of {result.n_train_windows}), "
        f"{result.n_heldout_windows} held out; training {result.outcome.train_result.seconds:.1f} s"
    )
    print(skill_table(reports))
    assert result.n_heldout_windows > 4000
    assert observed_oracle > 0.25, "the planted relation should be clearly predictable from the ticks"
    assert reports["challenger"].n_nonfinite_predictions == 0
    assert skill >= 0.8 * observed_oracle, (skill, observed_oracle)
    assert skill >= reports["ridge"].row(*PLANTED).skill - 0.01
    # The leader's and the bystander's own futures are unpredictable: the gate serves persistence there.
    bystanders = [r.skill for r in reports["challenger"].rows if r.product != LEAD_LAG.follower]
    assert min(bystanders) >= -0.005, bystanders


@pytest.mark.slow(expected_s=195)
def test_network_finds_nothing_without_the_signal(without_signal: Market) -> None:
    """Same market without the relation: every output of the champion within 0.005 of persistence (the
    network alone, calibrated, scored -0.46 to 0.00 here over the versions of the time; the gate serves
    persistence unless a candidate beats it significantly on the newest hours' tails)."""
    reports = without_signal.result.reports
    skill = reports["challenger"].row(*PLANTED).skill
    print(
        f"\n[no signal, {PLANTED[0]} {PLANTED[1]} s] network skill {skill:.4f}, ridge "
        f"{reports['ridge'].row(*PLANTED).skill:.4f}; mean network skill over all outputs "
        f"{reports['challenger'].row(ALL, None).skill:.4f}"
    )
    print(skill_table(reports))
    assert reports["challenger"].n_nonfinite_predictions == 0
    assert abs(skill) <= 0.005, skill
    assert min(r.skill for r in reports["challenger"].rows) >= -0.005
