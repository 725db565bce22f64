"""The numerical engine of the simulated market (pure numpy); `simulate.py` turns it into frames.

Model, per asset priced in USD (products are ratios of two assets, so crosses such as ETH-BTC follow
their legs exactly up to rounding):
- log returns each second from a one-factor model, r_i = s_i (c_i f + sqrt(1 - c_i^2) e_i), where the
  factor f and each idiosyncratic e_i have a GARCH(1,1) variance updated on MINUTE returns (volatility
  clusters; the per-second recursion would be 60x the work for the same visible effect);
- rare jumps (Poisson, market-wide on the factor and per asset);
- stablecoins (DAI, USDC, USDT) mean-revert around 1 (AR(1) on the log price);
- optionally a planted lead-lag: the follower's return each second gets `beta` times the leader's return
  `h` seconds earlier, so follower(t -> t+h) = beta * leader(t-h -> t) + noise, exactly.
Everything is generated one hour at a time from a generator seeded by (seed, hour index), so a run is
reproducible and does not depend on how a caller slices time.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from cb_assets.series.schema import SECOND_NS

FRAME_S = 5  # ticker_batch fires every 5 s
HOUR_S = 3600
FRAMES_PER_HOUR = HOUR_S // FRAME_S
DAY_MIN = 1440
QUOTES_USD = ("USD",)
STABLES = ("DAI", "USDC", "USDT")


@dataclass(frozen=True)
class LeadLag:
    """A planted relation: the follower's log return over the next `horizon_s` seconds equals `beta` times
    the leader's log return over the last `horizon_s` seconds, plus the follower's own (unpredictable)
    moves. Both products must be simulated *-USD products."""

    leader: str = "BTC-USD"
    follower: str = "ETH-USD"
    horizon_s: int = 20
    beta: float = 1.0

    def __post_init__(self) -> None:
        if self.horizon_s < 1:
            raise ValueError("horizon_s must be at least 1 second")

    def oracle(self, leader_log_price: np.ndarray) -> np.ndarray:
        """The best forecast of the follower's log return from t to t + h, for each second t of a 1-s grid
        of the leader's log price: beta * (x[t] - x[t - h]). NaN where t - h is before the grid."""
        x = np.asarray(leader_log_price, dtype=np.float64)
        out = np.full(x.shape, np.nan)
        h = self.horizon_s
        out[h:] = self.beta * (x[h:] - x[:-h])
        return out

    def realised(self, follower_log_price: np.ndarray) -> np.ndarray:
        """What the oracle forecasts, as it happened: z[t + h] - z[t]; NaN where t + h is past the grid."""
        z = np.asarray(follower_log_price, dtype=np.float64)
        out = np.full(z.shape, np.nan)
        h = self.horizon_s
        out[:-h] = z[h:] - z[:-h]
        return out


@dataclass(frozen=True)
class OracleSkill:
    correlation: float  # between the oracle's forecast and the realised return
    skill: float  # 1 - MSE(oracle) / MSE(forecasting zero); 0 = no better than "no move"
    n: int


def oracle_skill(
    leader_log_price: np.ndarray, follower_log_price: np.ndarray, lead_lag: LeadLag, *, every: int = 1
) -> OracleSkill:
    """How well the planted relation predicts on a given 1-s grid (e.g. the resampled ticks), using every
    `every`-th second (pass the horizon for non-overlapping returns)."""
    pred = lead_lag.oracle(leader_log_price)[::every]
    real = lead_lag.realised(follower_log_price)[::every]
    ok = np.isfinite(pred) & np.isfinite(real)
    p, y = pred[ok], real[ok]
    if p.size < 3 or not np.any(y):
        return OracleSkill(float("nan"), float("nan"), int(p.size))
    corr = float(np.corrcoef(p, y)[0, 1])
    skill = float(1.0 - np.mean((y - p) ** 2) / np.mean(y**2))
    return OracleSkill(corr, skill, int(p.size))


@dataclass
class HourBlock:
    """One simulated hour: 720 ticker_batch frames and the latent per-second prices behind them."""

    frame_times_ns: np.ndarray  # (F,) int64 envelope times
    emitted: np.ndarray  # (F, P) bool: the product traded in the frame's 5 s, so its ticker is sent
    values: np.ndarray  # (F, P, 7) float64 displayed fields in SERIES_COLUMNS order (already rounded)
    latent_times_ns: np.ndarray  # (S,) int64, one per second
    latent_log_prices: np.ndarray  # (S, P) float64 log price of each product at each second


@dataclass(frozen=True)
class AssetSpec:
    price: float  # USD at the simulation start
    daily_vol: float  # standard deviation of a day's log return
    factor_corr: float  # correlation with the market factor
    activity: float  # in (0, 1]: how busy its USD market is


_KNOWN_ASSETS: dict[str, AssetSpec] = {
    "BTC": AssetSpec(60_000.0, 0.030, 0.85, 1.00),
    "ETH": AssetSpec(3_000.0, 0.040, 0.85, 0.98),
    "SOL": AssetSpec(150.0, 0.055, 0.75, 0.95),
    "DOGE": AssetSpec(0.15, 0.060, 0.65, 0.90),
    "LTC": AssetSpec(80.0, 0.045, 0.70, 0.80),
    "POL": AssetSpec(0.40, 0.060, 0.65, 0.70),
    "DAI": AssetSpec(1.0, 0.0, 0.0, 0.50),
    "USDC": AssetSpec(1.0, 0.0, 0.0, 0.60),
    "USDT": AssetSpec(1.0, 0.0, 0.0, 0.60),
}
_QUOTE_ACTIVITY = {"USD": 1.0, "USDC": 0.8, "USDT": 0.6, "BTC": 0.6, "ETH": 0.3}


def asset_spec(name: str) -> AssetSpec:
    if name in _KNOWN_ASSETS:
        return _KNOWN_ASSETS[name]
    # Unknown assets get plausible parameters derived from their name, so they are stable across runs.
    u = zlib.crc32(name.encode()) / 2**32
    return AssetSpec(10 ** (4 * u - 1), 0.05, 0.6, 0.6)


def split_product(product_id: str) -> tuple[str, str]:
    base, sep, quote = product_id.partition("-")
    if not sep or not base or not quote:
        raise ValueError(f"product id {product_id!r} is not BASE-QUOTE")
    return base, quote


def _decimals(price: float) -> int:
    # About five significant digits, between 2 and 8 decimals, like Coinbase's quote increments.
    return int(min(8, max(2, math.ceil(-math.log10(price)) + 5)))


def _as_sent(values: np.ndarray) -> np.ndarray:
    # Volume and percent change go on the wire with 8 decimals (prices are rounded already): round the
    # arrays the same way so the fast path holds exactly the numbers a consumer of the frames would see.
    values[..., 1] = np.round(values[..., 1], 8)
    values[..., 6] = np.round(values[..., 6], 8)
    return values


class MarketEngine:
    """Carries the market state from hour to hour; `snapshot()` first, then `step_hour()` repeatedly."""

    def __init__(
        self,
        products: tuple[str, ...],
        *,
        seed: int,
        start_ns: int,
        lead_lag: LeadLag | None = None,
        vol_scale: float = 1.0,
        jumps_per_day: float = 2.0,
        garch_alpha: float = 0.08,
        garch_beta: float = 0.90,
    ) -> None:
        if not products or len(set(products)) != len(products):
            raise ValueError("products must be a non-empty list without repeats")
        self.products = products
        self.seed = seed
        self.start_ns = start_ns
        pairs = [split_product(p) for p in products]
        names = sorted({a for pair in pairs for a in pair if a not in QUOTES_USD})
        self.assets = tuple(names)
        idx = {a: i for i, a in enumerate(names)}
        self._base = np.array([idx[b] for b, _ in pairs])
        self._quote = np.array([idx.get(q, -1) for _, q in pairs])  # -1: priced in USD
        specs = [asset_spec(a) for a in names]
        self._stable = np.array([a in STABLES for a in names])
        self._sigma = np.array([s.daily_vol for s in specs]) / math.sqrt(86_400) * vol_scale
        self._corr = np.array([s.factor_corr for s in specs])
        self._alpha, self._beta = garch_alpha, garch_beta
        self._jump_p = jumps_per_day / 86_400
        self.lead_lag = lead_lag
        if lead_lag is not None:
            lb, lq = split_product(lead_lag.leader)
            fb, fq = split_product(lead_lag.follower)
            if lq not in QUOTES_USD or fq not in QUOTES_USD or lb not in idx or fb not in idx or lb == fb:
                raise ValueError(
                    "lead-lag leader and follower must be two different simulated *-USD products"
                )
            if fb in STABLES or lb in STABLES:
                raise ValueError("a stablecoin cannot take part in a lead-lag relation")
            self._ll = (idx[lb], idx[fb])
        P = len(products)
        self.decimals = np.empty(P, dtype=np.int64)
        log_px = np.log([s.price for s in specs])
        log_px[self._stable] = 0.0
        for p in range(P):
            self.decimals[p] = _decimals(math.exp(self._product_log(log_px[None, :])[0, p]))
        quote_act = np.array([_QUOTE_ACTIVITY.get(q, 0.2) for _, q in pairs])
        act = np.array([specs[self._base[p]].activity for p in range(P)]) * quote_act
        self.trade_prob = np.clip(act, 0.05, 0.99)
        self._notional_usd = 10 ** (2.5 + 2.5 * act)
        self._scale = 10.0**self.decimals
        # State carried from hour to hour.
        self.hour_index = 0
        self._log_px = log_px
        self._h = np.ones(len(names) + 1)  # GARCH variance multipliers: factor, then assets
        self._lag_buf = np.zeros(lead_lag.horizon_s if lead_lag else 0)
        self.initial_latent = self._product_log(log_px[None, :])[0]
        self._prehistory(np.random.default_rng([seed, 0]))

    # -------------------------------------------------------------------------------- helpers

    def _product_log(self, asset_log: np.ndarray) -> np.ndarray:
        base = asset_log[:, self._base]
        quote = np.where(self._quote >= 0, asset_log[:, np.maximum(self._quote, 0)], 0.0)
        return base - quote

    def _round(self, prices: np.ndarray) -> np.ndarray:
        return np.round(prices * self._scale) / self._scale

    def _prehistory(self, rng: np.random.Generator) -> None:
        """A day of minute bars and a year of daily extremes before the start, so 24 h and 52 w fields
        are sensible from the first frame (generated backwards from the starting prices)."""
        A = len(self.assets)
        sig_min = self._sigma * math.sqrt(60) * ~self._stable
        steps = rng.standard_normal((DAY_MIN, A)) * sig_min
        # Minute m's close is the start price minus all later minutes' returns.
        back = np.cumsum(steps[::-1], axis=0)[::-1]
        closes_log = self._log_px[None, :] - np.vstack([back[1:], np.zeros((1, A))])
        close = self._round(np.exp(self._product_log(closes_log)))
        wiggle = np.abs(rng.standard_normal((2, DAY_MIN, len(self.products)))) * 0.3
        prod_sig = np.maximum(sig_min[self._base], 1e-5)
        self._hist_close = close
        self._hist_low = np.minimum(close, self._round(close * np.exp(-wiggle[0] * prod_sig)))
        self._hist_high = np.maximum(close, self._round(close * np.exp(wiggle[1] * prod_sig)))
        usd_base = np.exp(closes_log[:, self._base])
        sizes = np.exp(rng.standard_normal((DAY_MIN, len(self.products))) * 0.5 - 0.125)
        self._hist_vol = self._notional_usd * 12 * self.trade_prob * sizes / usd_base
        # 52 weeks of daily closes (random walk ending today) give the yearly extremes.
        daily = rng.standard_normal((365, A)) * self._sigma * math.sqrt(86_400) * ~self._stable
        days_log = self._log_px[None, :] - np.cumsum(daily[::-1], axis=0)[::-1]
        days = self._round(np.exp(self._product_log(days_log)))
        self._low52 = np.minimum(days.min(axis=0), self._hist_low.min(axis=0))
        self._high52 = np.maximum(days.max(axis=0), self._hist_high.max(axis=0))
        self._last_disp = close[-1]

    # ---------------------------------------------------------------------------------- steps

    def snapshot(self) -> tuple[int, np.ndarray]:
        """The first frame (all products, at the start): its time and values (P, 7)."""
        rng = np.random.default_rng([self.seed, 2])
        t = self.start_ns + int(rng.integers(1_000_000, 250_000_000))
        price = self._last_disp
        low = np.minimum(self._hist_low.min(axis=0), price)
        high = np.maximum(self._hist_high.max(axis=0), price)
        ref = self._hist_close[0]
        values = np.stack(
            [
                price,
                self._hist_vol.sum(axis=0),
                low,
                high,
                self._low52,
                self._high52,
                (price / ref - 1) * 100,
            ],
            axis=1,
        )
        return t, _as_sent(values)

    def step_hour(self) -> HourBlock:
        h_idx = self.hour_index
        rng = np.random.default_rng([self.seed, 1, h_idx])
        A, P, n = len(self.assets), len(self.products), HOUR_S
        z = rng.standard_normal((n, A + 1))
        # GARCH(1,1) on minute returns: a minute's standardised return drives the next minute's variance.
        u2 = (z.reshape(60, 60, A + 1).sum(axis=1) ** 2) / 60
        omega = 1.0 - self._alpha - self._beta
        h = np.empty((60, A + 1))
        cur = self._h
        for m in range(60):
            h[m] = cur
            cur = omega + self._alpha * cur * u2[m] + self._beta * cur
        self._h = cur
        eps = z * np.repeat(np.sqrt(h), 60, axis=0)
        jumps = (rng.random((n, A + 1)) < self._jump_p) * rng.standard_normal((n, A + 1)) * 25.0
        eps = eps + jumps
        r = self._sigma * (self._corr * eps[:, :1] + np.sqrt(1 - self._corr**2) * eps[:, 1:])
        if self.lead_lag is not None:
            lead, follow = self._ll
            ext = np.concatenate([self._lag_buf, r[:, lead]])
            r[:, follow] += self.lead_lag.beta * ext[:n]
            self._lag_buf = ext[n:]
        log_px = self._log_px + np.cumsum(r, axis=0)
        if self._stable.any():
            log_px[:, self._stable] = self._stable_path(rng, n)
        self._log_px = log_px[-1].copy()
        latent = self._product_log(log_px)

        # Frame k of the hour shows the second 5(k+1); only products with a trade in it are sent.
        at = np.arange(FRAME_S - 1, n, FRAME_S)
        rounded = self._round(np.exp(latent[at]))
        traded = rng.random((FRAMES_PER_HOUR, P)) < self.trade_prob
        last = np.where(traded, np.arange(FRAMES_PER_HOUR)[:, None], -1)
        last = np.maximum.accumulate(last, axis=0)
        disp = np.where(last >= 0, rounded[np.maximum(last, 0), np.arange(P)], self._last_disp)
        self._last_disp = disp[-1].copy()
        usd_base = np.exp(log_px[at][:, self._base])
        move = np.abs(np.diff(latent[at], axis=0, prepend=latent[at][:1]))
        size = np.exp(rng.standard_normal((FRAMES_PER_HOUR, P)) * 0.5 - 0.125)
        # Busier when prices move; stablecoins' own noise (~2e-5 a second) sets their scale.
        size *= 1 + move / (np.maximum(self._sigma[self._base], 2e-5) * math.sqrt(FRAME_S))
        vol = traded * self._notional_usd * size / usd_base
        values = self._rolling_fields(disp, vol)
        jitter = rng.integers(1_000_000, 250_000_000, FRAMES_PER_HOUR)
        first_s = h_idx * HOUR_S
        times = self.start_ns + (first_s + (at + 1)) * SECOND_NS + jitter
        self.hour_index += 1
        return HourBlock(
            frame_times_ns=times.astype(np.int64),
            emitted=traded,
            values=values,
            latent_times_ns=(self.start_ns + (first_s + np.arange(1, n + 1)) * SECOND_NS).astype(np.int64),
            latent_log_prices=latent,
        )

    def _stable_path(self, rng: np.random.Generator, n: int) -> np.ndarray:
        # AR(1) around 0 with a ten-minute memory: x_t = phi^t (x_0 + sum_k phi^-k s e_k).
        k = int(self._stable.sum())
        phi = math.exp(-1 / 600)
        s = 3e-4 * math.sqrt(1 - phi * phi)
        e = rng.standard_normal((n, k)) * s
        powers = phi ** np.arange(1, n + 1, dtype=np.float64)[:, None]
        return powers * (self._log_px[self._stable] + np.cumsum(e / powers, axis=0))

    def _rolling_fields(self, disp: np.ndarray, vol: np.ndarray) -> np.ndarray:
        """24 h and 52 w fields per frame from minute buckets: the previous 1439 minutes + this one so far."""
        P = len(self.products)
        per_min = FRAMES_PER_HOUR // 60
        d3, v3 = disp.reshape(60, per_min, P), vol.reshape(60, per_min, P)
        m_low, m_high, m_vol, m_close = d3.min(axis=1), d3.max(axis=1), v3.sum(axis=1), d3[:, -1]
        lows = np.concatenate([self._hist_low, m_low])
        highs = np.concatenate([self._hist_high, m_high])
        vols = np.concatenate([self._hist_vol, m_vol])
        closes = np.concatenate([self._hist_close, m_close])
        win = DAY_MIN - 1
        prior_low = np.lib.stride_tricks.sliding_window_view(lows[1 : DAY_MIN + 59], win, axis=0).min(axis=-1)
        prior_high = np.lib.stride_tricks.sliding_window_view(highs[1 : DAY_MIN + 59], win, axis=0).max(
            axis=-1
        )
        csum = np.concatenate([np.zeros((1, P)), np.cumsum(vols, axis=0)])
        prior_vol = csum[DAY_MIN : DAY_MIN + 60] - csum[1:61]  # minutes m+1 .. m+1439 of `vols`
        ref = closes[:60]  # the close 24 h before each minute
        low24 = np.minimum(prior_low[:, None, :], np.minimum.accumulate(d3, axis=1)).reshape(-1, P)
        high24 = np.maximum(prior_high[:, None, :], np.maximum.accumulate(d3, axis=1)).reshape(-1, P)
        vol24 = (prior_vol[:, None, :] + np.cumsum(v3, axis=1)).reshape(-1, P)
        pct = (disp / np.repeat(ref, per_min, axis=0) - 1) * 100
        low52 = np.minimum.accumulate(np.vstack([self._low52, low24]), axis=0)[1:]
        high52 = np.maximum.accumulate(np.vstack([self._high52, high24]), axis=0)[1:]
        self._hist_low, self._hist_high = lows[60:], highs[60:]
        self._hist_vol, self._hist_close = vols[60:], closes[60:]
        self._low52, self._high52 = low52[-1].copy(), high52[-1].copy()
        return _as_sent(np.stack([disp, vol24, low24, high24, low52, high52, pct], axis=2))
