"""The live features: every product stepped second by second with the shared core's state objects.

Per product the engine keeps the causal filter (`fill.CausalFilter`), the indicator state
(`indicators.IndicatorState`) and the last `WINDOW_S` seconds of features, and steps them once per new
second. What it computes is, second for second, what the assets compute for the same ticks, because it runs
the same code in the same order:

- Hour H's filled series is filtered with parameters fitted by EM on hour H-1 (`fill.fit_hour_params`), by a
  filter that starts at H-1's first second. At the boundary into H the engine fits H-1's grid, re-runs the new
  filter over H-1 (warm-up, in memory) and then advances it through H one second at a time.
- Hour H's indicators are computed from the filtered rows of H-1 (as H-1's own filter produced them) and of H,
  restarting at H-1's first second. At the boundary the engine starts a fresh `IndicatorState`, advances it
  over the H-1 rows it kept, then steps it through H.
- The grid is right-closed (second t holds the last tick in (t-1 s, t]) via `resample.to_grid`; a second is
  stepped only when the caller closes it (`advance_to`). A tick that arrives for a second already closed is
  counted as late and left out (the assets, computed after the hour, would include it).
- A cold-start hour (too few ticks in the hour before to fit on) is never warm, as in the assets; the live
  path cannot fit on the hour itself, so its features can differ there, where nothing is forecast.

Startup (`from_history`) reads the raw ticks of the three hours before the current one and rebuilds the
state with the batch functions (`fill_product_hour`, `indicators_of_hour`), which is the same computation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from cb_assets.series.fill import CausalFilter, fill_product_hour, fit_hour_params
from cb_assets.series.hourly import FILTERED_COLUMNS, Ticks, indicators_of_hour
from cb_assets.series.indicators import FEATURE_NAMES, IndicatorState
from cb_assets.series.model_input import ModelInput, model_input, usable_rows
from cb_assets.series.resample import grid_second_of, to_grid
from cb_assets.series.schema import HOUR_S, SECOND_NS, SERIES_COLUMNS, WINDOW_S

N_FEATURES = len(FEATURE_NAMES)
_K = len(SERIES_COLUMNS)


class FeatureRing:
    """The newest `size` seconds of one product's features (float32) and their usable flags, oldest first."""

    def __init__(self, size: int = WINDOW_S) -> None:
        self.size = size
        # Twice the size, so that the newest `size` rows are always one contiguous slice (copied down when full).
        self._features = np.full((2 * size, N_FEATURES), np.nan, dtype=np.float32)
        self._usable = np.zeros(2 * size, dtype=bool)
        self._end = size

    def push(self, features: np.ndarray, usable: np.ndarray) -> None:
        n = features.shape[0]
        if n >= self.size:
            self._features[: self.size] = features[-self.size :]
            self._usable[: self.size] = usable[-self.size :]
            self._end = self.size
            return
        if self._end + n > 2 * self.size:
            keep = self.size - n
            self._features[:keep] = self._features[self._end - keep : self._end]
            self._usable[:keep] = self._usable[self._end - keep : self._end]
            self._end = keep
        self._features[self._end : self._end + n] = features
        self._usable[self._end : self._end + n] = usable
        self._end += n

    def block(self) -> tuple[np.ndarray, np.ndarray]:
        return self._features[self._end - self.size : self._end], self._usable[
            self._end - self.size : self._end
        ]

    def newest(self) -> np.ndarray:
        return self._features[self._end - 1]


@dataclass
class ProductLive:
    """One product's live state within the current hour."""

    product: str
    hour_s: int = -1  # epoch second of the current hour's start (-1: none yet)
    filter: CausalFilter | None = None
    indicators: IndicatorState | None = None
    causal: bool = False
    # The current hour's grid, filtered rows and tick flags: the next boundary fits and warms up on them.
    y: np.ndarray = field(default_factory=lambda: np.full((HOUR_S, _K), np.nan))
    filtered: np.ndarray = field(default_factory=lambda: np.full((HOUR_S, _K), np.nan))
    observed: np.ndarray = field(default_factory=lambda: np.zeros(HOUR_S, dtype=bool))
    pending_t: list[int] = field(default_factory=list)  # ticks not yet stepped: times (ns) ...
    pending_v: list[np.ndarray] = field(default_factory=list)  # ... and values
    last_tick_ns: int | None = None
    last_price: float = float("nan")
    ring: FeatureRing = field(default_factory=FeatureRing)

    def enter_hour(self, hour_s: int) -> None:
        """Start hour `hour_s`: fit on the hour just finished, warm the new filter and indicators up on it."""
        prev_y, prev_filtered, prev_observed = self.y, self.filtered, self.observed
        params = fit_hour_params(prev_y, None)
        self.filter = CausalFilter(params.q, params.r)
        self.filter.advance(prev_y)
        self.indicators = IndicatorState()
        self.indicators.advance(prev_filtered, prev_observed, np.arange(hour_s - HOUR_S, hour_s))
        self.causal = params.causal
        self.hour_s = hour_s
        self.y = np.full((HOUR_S, _K), np.nan)
        self.filtered = np.full((HOUR_S, _K), np.nan)
        self.observed = np.zeros(HOUR_S, dtype=bool)

    def step(self, first_s: int, last_s: int) -> None:
        """Close the seconds first_s..last_s (inclusive, within the current hour) from the pending ticks."""
        n = last_s - first_s + 1
        t = np.asarray(self.pending_t, dtype=np.int64)
        v = np.asarray(self.pending_v, dtype=np.float64).reshape(-1, _K)
        y, observed = to_grid(t, v, first_s * SECOND_NS, n)
        keep = t > last_s * SECOND_NS
        self.pending_t = t[keep].tolist()
        self.pending_v = list(v[keep])
        assert self.filter is not None and self.indicators is not None
        mean, _ = self.filter.advance(y)
        features, warm = self.indicators.advance(mean, observed, np.arange(first_s, last_s + 1))
        block = features.astype(np.float32)
        self.ring.push(block, usable_rows(block, warm & self.causal))
        i = first_s - self.hour_s
        self.y[i : i + n], self.filtered[i : i + n], self.observed[i : i + n] = y, mean, observed


@dataclass
class Counters:
    ticks: int = 0
    late_ticks: int = 0  # arrived for a second already closed: left out
    unknown_products: int = 0
    seconds_stepped: int = 0


class LiveEngine:
    """All products on one data clock: add ticks, close seconds, read the model input at the newest second."""

    def __init__(self, products: Sequence[str], next_second: int) -> None:
        self.products = tuple(products)
        self.live = {p: ProductLive(p) for p in self.products}
        self.next_second = int(next_second)  # the first second not closed yet
        self.counters = Counters()

    @classmethod
    def from_history(cls, products: Sequence[str], ticks: Mapping[str, Ticks], now_s: int) -> LiveEngine:
        """The state at second `now_s` (closed) from the ticks of [hour(now) - 3 h, now]."""
        hour_s = now_s - now_s % HOUR_S
        engine = cls(products, hour_s - HOUR_S)
        for p in engine.products:
            tk = ticks.get(p) or Ticks(np.zeros(0, np.int64), np.zeros((0, _K)))
            earlier = fill_product_hour(p, tk.times_ns, tk.values, (hour_s - 2 * HOUR_S) * SECOND_NS).frame
            previous = fill_product_hour(p, tk.times_ns, tk.values, (hour_s - HOUR_S) * SECOND_NS).frame
            ind = indicators_of_hour(earlier, previous, (hour_s - HOUR_S) * SECOND_NS)
            live = engine.live[p]
            block = ind[list(FEATURE_NAMES)].to_numpy(dtype=np.float32)
            live.ring.push(block, usable_rows(block, ind["warm"].to_numpy()))
            live.y = previous[list(SERIES_COLUMNS)].to_numpy(dtype=np.float64)
            live.filtered = previous[list(FILTERED_COLUMNS)].to_numpy(dtype=np.float64)
            live.observed = previous["observed"].to_numpy(dtype=bool)
            live.hour_s = hour_s - HOUR_S
            upto = tk.times_ns <= (hour_s - HOUR_S) * SECOND_NS + (HOUR_S - 1) * SECOND_NS
            if upto.any():
                live.last_tick_ns = int(tk.times_ns[upto].max())
                live.last_price = float(tk.values[upto][np.argmax(tk.times_ns[upto]), 0])
        engine.next_second = hour_s
        for p in engine.products:
            tk = ticks.get(p)
            if tk is not None:
                later = tk.times_ns > (hour_s - 1) * SECOND_NS  # second hour_s holds (hour_s - 1 s, hour_s]
                engine.add_ticks([p] * int(later.sum()), tk.times_ns[later], tk.values[later])
        engine.advance_to(now_s)
        return engine

    def add_ticks(self, product_ids: Sequence[str], times_ns: np.ndarray, values: np.ndarray) -> None:
        """Ticks (in any order) for seconds not closed yet; later ones for closed seconds are counted late."""
        closed_ns = (self.next_second - 1) * SECOND_NS
        for p, t, v in zip(
            product_ids, np.asarray(times_ns, np.int64), np.asarray(values, np.float64), strict=True
        ):
            live = self.live.get(p)
            if live is None:
                self.counters.unknown_products += 1
                continue
            self.counters.ticks += 1
            if t <= closed_ns:
                self.counters.late_ticks += 1
                continue
            live.pending_t.append(int(t))
            live.pending_v.append(v)

    def advance_to(self, second: int) -> int:
        """Close every second up to `second` (inclusive); returns how many were closed."""
        n = 0
        while self.next_second <= second:
            hour_s = self.next_second - self.next_second % HOUR_S
            last = min(second, hour_s + HOUR_S - 1)
            for live in self.live.values():
                if live.hour_s != hour_s:
                    live.enter_hour(hour_s)
                live.step(self.next_second, last)
                self._note_last_tick(live, last)
            n += last - self.next_second + 1
            self.next_second = last + 1
        self.counters.seconds_stepped += n
        return n

    @staticmethod
    def _note_last_tick(live: ProductLive, last_s: int) -> None:
        i = last_s - live.hour_s
        seen = np.flatnonzero(live.observed[: i + 1])
        if seen.size:
            # The grid keeps the last tick of each second; its second is all the engine needs to keep.
            live.last_tick_ns = max(live.last_tick_ns or 0, (live.hour_s + int(seen[-1])) * SECOND_NS)
            live.last_price = float(live.y[seen[-1], 0])

    def seconds_with_ticks(self, upto: int) -> list[int]:
        """The seconds up to `upto` (inclusive) not closed yet that hold at least one tick, ascending."""
        found: set[int] = set()
        for live in self.live.values():
            for t in live.pending_t:
                second = grid_second_of(t)
                if second <= upto:
                    found.add(second)
        return sorted(found)

    @property
    def anchor_s(self) -> int:
        """The newest closed second."""
        return self.next_second - 1

    def model_input(self, products: Sequence[str] | None = None) -> ModelInput:
        """The window ending at the newest closed second, in `products` order (the model's)."""
        order = tuple(products) if products is not None else self.products
        return model_input({p: self.live[p].ring.block() for p in order}, self.anchor_s * SECOND_NS, order)

    def staleness_s(self, product: str) -> float:
        """Data seconds from the product's newest tick to the newest closed second (inf: never ticked)."""
        last = self.live[product].last_tick_ns
        return float("inf") if last is None else self.anchor_s - last / SECOND_NS

    def newest_features(self, product: str) -> np.ndarray:
        return self.live[product].ring.newest()
