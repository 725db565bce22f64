"""The simulated market: determinism, consistent fields, quiet products, crosses, the planted lead-lag."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from cb_assets.config import DEFAULT_PRODUCTS
from cb_assets.feed.market import LeadLag, oracle_skill
from cb_assets.feed.protocol import HeartbeatFrame, SubscriptionsFrame, TickerBatchFrame, parse_frame
from cb_assets.feed.sequence import GapRecord
from cb_assets.feed.simulate import SimulatedSource, SimulatedTicks, simulate_ticks
from cb_assets.feed.timestamps import parse_rfc3339_ns
from cb_assets.series.schema import SERIES_COLUMNS

START = parse_rfc3339_ns("2024-05-01T00:00:00Z")
PRODUCTS = tuple(DEFAULT_PRODUCTS)


@pytest.fixture(scope="module")
def day() -> SimulatedTicks:
    return simulate_ticks(PRODUCTS, START, 86_400, seed=11)


def _grid_prices(sim: SimulatedTicks, product: str, step_s: int = 5) -> np.ndarray:
    """Displayed price on a 5-s grid (last frame at or before each grid time): what a client could see."""
    times, values = sim.product_ticks(product)
    grid = START + np.arange(0, sim.latent_times_ns.size, step_s, dtype=np.int64) * 1_000_000_000
    idx = np.searchsorted(times, grid, side="right") - 1
    out = np.where(idx >= 0, values[np.maximum(idx, 0), 0], np.nan)
    return np.log(out)


def _lagged_corr(a: np.ndarray, b: np.ndarray, lag: int) -> float:
    """corr(a's return over the last `lag` steps, b's return over the next `lag` steps), non-overlapping."""
    t = np.arange(lag, a.size - lag, lag)
    past, future = a[t] - a[t - lag], b[t + lag] - b[t]
    ok = np.isfinite(past) & np.isfinite(future)
    return float(np.corrcoef(past[ok], future[ok])[0, 1])


def test_same_seed_same_market_other_seed_other_market() -> None:
    a = simulate_ticks(PRODUCTS, START, 1800, seed=3)
    b = simulate_ticks(PRODUCTS, START, 1800, seed=3)
    c = simulate_ticks(PRODUCTS, START, 1800, seed=4)
    for name in ("frame_times_ns", "emitted", "values", "latent_log_prices"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert list(a.frame_texts()) == list(b.frame_texts())
    assert not np.array_equal(a.values, c.values)


def test_fields_are_consistent_over_a_day(day: SimulatedTicks) -> None:
    v = day.values
    price, vol, low24, high24, low52, high52, pct = (v[..., i] for i in range(7))
    assert v.shape == (17_280, len(PRODUCTS), 7)
    assert np.isfinite(v).all()
    assert (low24 <= price).all() and (price <= high24).all()
    assert (low52 <= low24).all() and (high52 >= high24).all()
    assert (vol > 0).all() and (price > 0).all()
    assert (np.abs(pct) < 50).all()
    # 52-week extremes only ever widen.
    assert (np.diff(low52, axis=0) <= 0).all() and (np.diff(high52, axis=0) >= 0).all()
    # The 24 h change is against one reference price (the close 24 h before) per minute bucket.
    minutes = (v.shape[0] - 1) // 12
    implied_ref = (price / (1 + pct / 100))[1 : 1 + minutes * 12].reshape(minutes, 12, -1)
    spread = implied_ref.max(axis=1) / implied_ref.min(axis=1) - 1
    assert spread.max() < 1e-9
    # Frames are 5 s apart (plus sub-second jitter), snapshot first at the start.
    gaps = np.diff(day.frame_times_ns[1:]) / 1e9
    assert np.all(np.abs(gaps - 5) < 0.3)
    assert START <= day.frame_times_ns[0] < START + 1_000_000_000


def test_volatility_clusters(day: SimulatedTicks) -> None:
    r = np.diff(day.latent("BTC-USD"))
    # Realised variance of 10-minute spells: persistent when volatility clusters, ~0 autocorrelation
    # (and a max/min ratio near 1.3) for returns of constant variance.
    rv = np.log((r[:85_800].reshape(-1, 600) ** 2).sum(axis=1))
    assert np.corrcoef(rv[:-1], rv[1:])[0, 1] > 0.4
    assert np.exp(rv.max() - rv.min()) > 3


def test_quiet_products_skip_frames(day: SimulatedTicks) -> None:
    share = day.emitted[1:].mean(axis=0)
    busy, quiet = share[PRODUCTS.index("BTC-USD")], share[PRODUCTS.index("SOL-ETH")]
    assert busy > 0.95 and quiet < 0.5
    assert day.emitted[0].all()  # the snapshot carries every product
    # A product missing from a frame really did not change in between: same displayed price as before.
    p = PRODUCTS.index("ETH-DAI")
    shown = np.flatnonzero(day.emitted[:, p])
    hidden = np.flatnonzero(~day.emitted[:, p])
    prev_shown = shown[np.searchsorted(shown, hidden) - 1]
    np.testing.assert_array_equal(day.values[hidden, p, 0], day.values[prev_shown, p, 0])


def test_cross_pairs_follow_their_legs(day: SimulatedTicks) -> None:
    eth, btc, ethbtc = (PRODUCTS.index(p) for p in ("ETH-USD", "BTC-USD", "ETH-BTC"))
    both = day.emitted[:, eth] & day.emitted[:, btc] & day.emitted[:, ethbtc]
    implied = day.values[both, eth, 0] / day.values[both, btc, 0]
    rel = np.abs(day.values[both, ethbtc, 0] / implied - 1)
    assert both.sum() > 5000 and rel.max() < 2e-4  # equal up to rounding to the quote increment


def test_frames_parse_and_match_the_fast_path() -> None:
    async def collect() -> list[str]:
        src = SimulatedSource(PRODUCTS, seed=5, start_ns=START, duration_s=600, speed=0)
        return [t async for t in src]

    texts = asyncio.run(collect())
    frames = [parse_frame(t) for t in texts]
    assert isinstance(frames[0], SubscriptionsFrame)
    assert (
        isinstance(frames[1], TickerBatchFrame)
        and frames[1].is_snapshot
        and len(frames[1].tickers) == len(PRODUCTS)
    )
    assert [f.sequence_num for f in frames] == list(range(len(frames)))  # type: ignore[union-attr]
    assert frames[0].time_ns == START  # type: ignore[union-attr]
    heartbeats = [f for f in frames if isinstance(f, HeartbeatFrame)]
    assert [h.counter for h in heartbeats] == list(range(1, 600))
    batches = [f for f in frames if isinstance(f, TickerBatchFrame)]
    assert not any(f.rejected for f in batches)
    assert all(f.time_ns < START + 600 * 10**9 for f in batches)  # type: ignore[union-attr]
    # The streaming source and the fast path show the same market.
    fast = simulate_ticks(PRODUCTS, START, 600, seed=5)
    fast_batches = [parse_frame(t) for t in fast.frame_texts()]
    assert [(f.time_ns, f.tickers) for f in batches] == [(f.time_ns, f.tickers) for f in fast_batches]  # type: ignore[union-attr]
    assert len(list(fast.messages())) == int(fast.emitted.sum())
    # The arrays hold exactly the numbers the frames carry (so rows written from arrays match the sink's).
    for k, frame in enumerate(fast_batches):
        for t in frame.tickers:  # type: ignore[union-attr]
            sent = [float(getattr(t, c)) for c in SERIES_COLUMNS]
            assert sent == fast.values[k, PRODUCTS.index(t.product_id)].tolist()


def test_planted_gaps_are_reported() -> None:
    gaps: list[GapRecord] = []

    async def collect() -> SimulatedSource:
        src = SimulatedSource(
            PRODUCTS[:3], seed=2, start_ns=START, duration_s=900, speed=0, gap_prob=0.02, on_gap=gaps.append
        )
        async for _ in src:
            pass
        return src

    src = asyncio.run(collect())
    assert src.dropped_frames > 0
    assert src.counters.missed_frames == src.dropped_frames
    assert sum(g.missed for g in gaps) == src.dropped_frames


def test_lead_lag_switch() -> None:
    ll = LeadLag(leader="BTC-USD", follower="SOL-USD", horizon_s=20, beta=1.5)
    on = simulate_ticks(PRODUCTS, START, 7200, seed=8, lead_lag=ll)
    off = simulate_ticks(PRODUCTS, START, 7200, seed=8)
    lag = ll.horizon_s // 5  # in 5-s grid steps
    corr_on = _lagged_corr(_grid_prices(on, "BTC-USD"), _grid_prices(on, "SOL-USD"), lag)
    corr_off = _lagged_corr(_grid_prices(off, "BTC-USD"), _grid_prices(off, "SOL-USD"), lag)
    assert corr_on > 0.4
    assert abs(corr_off) < 0.15
    # The reverse direction carries nothing: the relation is a lead, not a contemporaneous link.
    corr_reverse = _lagged_corr(_grid_prices(on, "SOL-USD"), _grid_prices(on, "BTC-USD"), lag)
    assert abs(corr_reverse) < 0.15
    # The oracle's skill on the latent 1-s prices: clearly positive when planted, none when not.
    skill_on = on.oracle_skill()
    skill_off = oracle_skill(off.latent("BTC-USD"), off.latent("SOL-USD"), ll, every=ll.horizon_s)
    assert skill_on.skill > 0.15 and skill_on.correlation > 0.4
    assert skill_off.skill < 0.0 and abs(skill_off.correlation) < 0.15


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError):
        simulate_ticks(["BTC-USD", "BTC-USD"], START, 60)
    with pytest.raises(ValueError):
        simulate_ticks(["BTCUSD"], START, 60)
    with pytest.raises(ValueError):
        simulate_ticks(PRODUCTS, START, 60, lead_lag=LeadLag(leader="BTC-USD", follower="DAI-USD"))
    with pytest.raises(ValueError):
        simulate_ticks(PRODUCTS, START, 60, lead_lag=LeadLag(leader="BTC-USD", follower="ETH-BTC"))
