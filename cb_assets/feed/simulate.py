"""A seeded, deterministic simulated market for all configured products (see `market.py` for the model).

Two ways in:
- `SimulatedSource`: a frame source like the live client (async iterator of frame texts in the real
  envelope: a subscriptions ack, a snapshot, then 5-second updates with only the products that traded,
  heartbeats each second if asked), paced live (`speed=1`), accelerated (`speed=N`) or as fast as
  possible (`speed=0`), from a configurable start time;
- `simulate_ticks`: the fast path, a whole time range as arrays (24 h x 12 products in about a second),
  for benchmarks and tests that need many hours.
Both draw from the same engine, so for the same seed and start they show the same market.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cb_assets.feed.market import HOUR_S, HourBlock, LeadLag, MarketEngine, OracleSkill, oracle_skill
from cb_assets.feed.protocol import build_envelope
from cb_assets.feed.source import FrameSource, GapCallback
from cb_assets.feed.timestamps import format_rfc3339_ns, go_time_string
from cb_assets.series.schema import SECOND_NS

_HEARTBEAT_OFFSET_NS = 4_731_437  # heartbeats land a few ms after each whole second, as observed live


def ticker_dicts(
    products: Sequence[str], values: np.ndarray, decimals: np.ndarray, mask: np.ndarray | None = None
) -> list[dict[str, str]]:
    """Wire-format tickers (all numbers as strings, prices to the product's decimals) for one frame."""
    out = []
    for p in range(len(products)) if mask is None else np.flatnonzero(mask).tolist():
        d = int(decimals[p])
        v = values[p]
        out.append(
            {
                "type": "ticker",
                "product_id": products[p],
                "price": f"{v[0]:.{d}f}",
                "volume_24_h": f"{v[1]:.8f}",
                "low_24_h": f"{v[2]:.{d}f}",
                "high_24_h": f"{v[3]:.{d}f}",
                "low_52_w": f"{v[4]:.{d}f}",
                "high_52_w": f"{v[5]:.{d}f}",
                "price_percent_chg_24_h": f"{v[6]:.8f}",
            }
        )
    return out


@dataclass
class SimulatedTicks:
    """A simulated time range as arrays. Frame 0 is the snapshot (every product), the rest are updates."""

    products: tuple[str, ...]
    frame_times_ns: np.ndarray  # (F,) int64
    emitted: np.ndarray  # (F, P) bool
    values: np.ndarray  # (F, P, 7) float64, in SERIES_COLUMNS order
    decimals: np.ndarray  # (P,) price decimals per product
    latent_times_ns: np.ndarray  # (S,) int64: start + 0, 1, ... S-1 seconds
    latent_log_prices: np.ndarray  # (S, P): the log price of each product at each of those seconds
    lead_lag: LeadLag | None

    def product_ticks(self, product_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(times_ns (n,), values (n, 7)) of the frames that carried `product_id`: `to_grid`'s input."""
        p = self.products.index(product_id)
        m = self.emitted[:, p]
        return self.frame_times_ns[m], self.values[m, p, :]

    def latent(self, product_id: str) -> np.ndarray:
        return self.latent_log_prices[:, self.products.index(product_id)]

    def frame_texts(self, *, client_id: str | None = "") -> Iterator[str]:
        """The ticker_batch frames as wire texts, sequence numbers 0, 1, ... (no heartbeats)."""
        for k in range(len(self.frame_times_ns)):
            tick = ticker_dicts(self.products, self.values[k], self.decimals, self.emitted[k])
            event = {"type": "snapshot" if k == 0 else "update", "tickers": tick}
            ts = format_rfc3339_ns(int(self.frame_times_ns[k]))
            yield build_envelope("ticker_batch", ts, k, [event], client_id=client_id)

    def messages(self, *, connection_id: str = "simulated") -> Iterator[dict[str, Any]]:
        """Kafka message dicts (docs/contracts.md) of every ticker, in time order."""
        for k in range(len(self.frame_times_ns)):
            ts = format_rfc3339_ns(int(self.frame_times_ns[k]))
            for t in ticker_dicts(self.products, self.values[k], self.decimals, self.emitted[k]):
                del t["type"]
                yield {
                    **t,
                    "best_bid": None,
                    "best_ask": None,
                    "time": ts,
                    "sequence_num": k,
                    "source": "simulated",
                    "connection_id": connection_id,
                }

    def oracle_skill(self, *, every: int | None = None) -> OracleSkill:
        """The planted relation's skill on the latent 1-s prices (the ceiling any model can reach)."""
        if self.lead_lag is None:
            raise ValueError("no lead-lag relation was planted")
        ll = self.lead_lag
        return oracle_skill(self.latent(ll.leader), self.latent(ll.follower), ll, every=every or ll.horizon_s)


def simulate_ticks(
    products: Sequence[str],
    start_ns: int,
    duration_s: int,
    *,
    seed: int = 0,
    lead_lag: LeadLag | None = None,
    **engine_options: Any,
) -> SimulatedTicks:
    """Simulate [start, start + duration) directly as arrays (the snapshot at the start included).

    `engine_options` go to `MarketEngine` (vol_scale, jumps_per_day, garch_alpha, garch_beta).
    """
    if duration_s <= 0:
        raise ValueError("duration_s must be positive")
    engine = MarketEngine(tuple(products), seed=seed, start_ns=start_ns, lead_lag=lead_lag, **engine_options)
    t0, snap = engine.snapshot()
    blocks = [engine.step_hour() for _ in range(math.ceil(duration_s / HOUR_S))]
    end_ns = start_ns + duration_s * SECOND_NS
    times = np.concatenate([[t0], *[b.frame_times_ns for b in blocks]]).astype(np.int64)
    keep = times < end_ns
    emitted = np.concatenate([np.ones((1, len(products)), dtype=bool), *[b.emitted for b in blocks]])
    values = np.concatenate([snap[None], *[b.values for b in blocks]])
    latent = np.concatenate([engine.initial_latent[None], *[b.latent_log_prices for b in blocks]])[
        :duration_s
    ]
    return SimulatedTicks(
        products=tuple(products),
        frame_times_ns=times[keep],
        emitted=emitted[keep],
        values=values[keep],
        decimals=engine.decimals.copy(),
        latent_times_ns=start_ns + np.arange(duration_s, dtype=np.int64) * SECOND_NS,
        latent_log_prices=latent,
        lead_lag=lead_lag,
    )


class SimulatedSource(FrameSource):
    """The simulated market as a frame source (texts exactly as the live client would yield them).

    `start_ns` defaults to now (whole second); `duration_s` None runs for ever. `gap_prob` drops that
    fraction of frames after numbering them, so consumers see real sequence gaps.
    """

    source = "simulated"

    def __init__(
        self,
        products: Sequence[str],
        *,
        seed: int = 0,
        start_ns: int | None = None,
        duration_s: float | None = None,
        speed: float = 1.0,
        heartbeats: bool = True,
        lead_lag: LeadLag | None = None,
        gap_prob: float = 0.0,
        on_gap: GapCallback | None = None,
        connection_id: str | None = None,
        not_ahead_of_wall_clock: bool = False,
        **engine_options: Any,
    ) -> None:
        super().__init__(on_gap)
        if speed < 0:
            raise ValueError("speed must be >= 0 (0 = as fast as possible)")
        self.products = tuple(products)
        self.seed = seed
        self.start_ns = start_ns if start_ns is not None else time.time_ns() // SECOND_NS * SECOND_NS
        self.duration_s = duration_s
        self.speed = speed
        self.heartbeats = heartbeats
        self.lead_lag = lead_lag
        self.gap_prob = gap_prob
        self.sim_connection_id = connection_id or f"simulated-{seed}"
        # A demo starts in the past and runs fast until it reaches the present, then follows the wall clock:
        # ticks from the future would be refused by the sink.
        self.not_ahead_of_wall_clock = not_ahead_of_wall_clock
        self.dropped_frames = 0
        self.engine = MarketEngine(
            self.products, seed=seed, start_ns=self.start_ns, lead_lag=lead_lag, **engine_options
        )
        self._gen: AsyncIterator[str] | None = None

    async def __anext__(self) -> str:
        if self._gen is None:
            self._gen = self._frames()
        return await self._gen.__anext__()

    def _events(self, block: HourBlock, hour: int) -> Iterator[tuple[int, int]]:
        """(time_ns, k) in time order: k >= 0 is ticker frame k of the block, k < 0 a heartbeat."""
        times = block.frame_times_ns
        kinds = np.arange(len(times))
        if self.heartbeats:
            secs = np.arange(1, HOUR_S + 1, dtype=np.int64) + hour * HOUR_S
            hb = self.start_ns + secs * SECOND_NS + _HEARTBEAT_OFFSET_NS
            times = np.concatenate([times, hb])
            kinds = np.concatenate([kinds, -secs])
        order = np.argsort(times, kind="stable")
        return zip(times[order].tolist(), kinds[order].tolist(), strict=True)

    async def _frames(self) -> AsyncIterator[str]:
        rng = np.random.default_rng([self.seed, 3])
        end_ns = None if self.duration_s is None else self.start_ns + int(self.duration_s * SECOND_NS)
        wall0 = time.monotonic()
        seq = 0
        emitted = 0

        async def pace(t_ns: int) -> None:
            nonlocal emitted
            emitted += 1
            delay = 0.0
            if self.speed > 0:
                delay = wall0 + (t_ns - self.start_ns) / SECOND_NS / self.speed - time.monotonic()
            if self.not_ahead_of_wall_clock:
                delay = max(delay, (t_ns - time.time_ns()) / SECOND_NS)
            if delay > 0:
                await asyncio.sleep(delay)
            elif emitted % 256 == 0:
                await asyncio.sleep(0)  # as fast as possible, but let the rest of the loop run

        subs = {"subscriptions": {"ticker_batch": list(self.products), "heartbeats": ["heartbeats"]}}
        yield self._out(build_envelope("subscriptions", format_rfc3339_ns(self.start_ns), seq, [subs]))
        t0, snap = self.engine.snapshot()
        seq += 1
        tick = ticker_dicts(self.products, snap, self.engine.decimals)
        await pace(t0)
        yield self._out(self._ticker_frame(t0, seq, "snapshot", tick))
        hour = 0
        while True:
            block = self.engine.step_hour()
            for t_ns, k in self._events(block, hour):
                if end_ns is not None and t_ns >= end_ns:
                    return
                if k >= 0 and not block.emitted[k].any():
                    continue  # nobody traded in these 5 s: the channel sends nothing (and numbers nothing)
                seq += 1
                if self.gap_prob and rng.random() < self.gap_prob:
                    self.dropped_frames += 1
                    continue
                await pace(t_ns)
                if k >= 0:
                    tick = ticker_dicts(
                        self.products, block.values[k], self.engine.decimals, block.emitted[k]
                    )
                    yield self._out(self._ticker_frame(t_ns, seq, "update", tick))
                else:
                    hb = {
                        "current_time": go_time_string(t_ns, (t_ns - self.start_ns) / SECOND_NS),
                        "heartbeat_counter": -k,
                    }
                    yield self._out(build_envelope("heartbeats", format_rfc3339_ns(t_ns), seq, [hb]))
            hour += 1

    def _ticker_frame(self, t_ns: int, seq: int, kind: str, tick: list[dict[str, str]]) -> str:
        return build_envelope("ticker_batch", format_rfc3339_ns(t_ns), seq, [{"type": kind, "tickers": tick}])

    def _out(self, text: str) -> str:
        self._account(text, self.sim_connection_id)
        return text
