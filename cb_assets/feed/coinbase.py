"""The live Coinbase Advanced Trade market-data client (asyncio, `websockets`).

Behaviour that the protocol notes make necessary rather than optional:
- both subscribes (`ticker_batch`, then `heartbeats`) go out right after the handshake, well inside the
  server's 5 s limit, one channel per message;
- ANY close, including clean 1000/1001 closes during Coinbase deploys, leads to a reconnect with capped
  exponential backoff and jitter; the backoff resets after a connection that stayed healthy;
- an idle watchdog: no frame of any kind (heartbeats arrive every second) for `idle_timeout_s` means the
  socket is dead even if TCP has not noticed;
- the receive loop only puts texts on a bounded asyncio.Queue (O(1)); parsing, sequence checks and the
  caller's work happen on the consuming side, so a slow consumer never stalls the socket reads directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidURI

from cb_assets.feed.protocol import (
    ErrorFrame,
    HeartbeatFrame,
    SubscriptionsFrame,
    parse_frame,
    subscribe_message,
    subscribe_messages,
)
from cb_assets.feed.source import FrameSource, GapCallback

log = logging.getLogger(__name__)

DEFAULT_URL = "wss://advanced-trade-ws.coinbase.com"


@dataclass(frozen=True)
class ReconnectPolicy:
    initial_s: float = 1.0
    max_s: float = 60.0
    multiplier: float = 2.0
    # Up to this fraction of each delay is random, so many clients cut off by one deploy do not
    # reconnect in lockstep (and stay under the 8 connections/s per IP limit).
    jitter: float = 0.5
    # A connection that delivered frames for this long counts as healthy and resets the backoff.
    healthy_after_s: float = 30.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        base = min(self.max_s, self.initial_s * self.multiplier ** min(attempt, 64))
        return base * (1.0 - self.jitter * rng.random())


class _Stop:
    """Queue sentinel: the receiver ended for good (with `error`, or because the feed was closed)."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class CoinbaseFeed(FrameSource):
    """Async iterator of the raw frame texts of a live connection, reconnecting for ever until closed.

    `connection_id` (a fresh uuid per connection) names the connection of the frame yielded last; the
    sequence tracker restarts with it.
    """

    source = "live"

    def __init__(
        self,
        product_ids: Sequence[str],
        *,
        url: str = DEFAULT_URL,
        idle_timeout_s: float = 10.0,
        reconnect: ReconnectPolicy | None = None,
        on_gap: GapCallback | None = None,
        heartbeats: bool = True,
        queue_size: int = 10_000,
        open_timeout_s: float = 10.0,
        close_timeout_s: float = 2.0,
        max_frame_bytes: int = 8 * 1024 * 1024,
        proxy: str | Literal[True] | None = True,
        seed: int | None = None,
    ) -> None:
        super().__init__(on_gap)
        if not product_ids:
            raise ValueError("at least one product id is needed")
        self.product_ids = tuple(product_ids)
        self.url = url
        self.idle_timeout_s = idle_timeout_s
        self.reconnect = reconnect or ReconnectPolicy()
        self.heartbeats = heartbeats
        self.open_timeout_s = open_timeout_s
        self.close_timeout_s = close_timeout_s
        self.max_frame_bytes = max_frame_bytes
        self.proxy = proxy
        self.rejected_products: set[str] = set()
        self.connections = 0  # handshakes that succeeded
        self._rng = random.Random(seed)
        self._queue: asyncio.Queue[tuple[str, str] | _Stop] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # ------------------------------------------------------------------------------ consuming side

    async def __anext__(self) -> str:
        if self._closed:
            raise StopAsyncIteration
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="coinbase-feed-receiver")
        item = await self._queue.get()
        if isinstance(item, _Stop):
            self._closed = True
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        conn_id, text = item
        self._account(text, conn_id)
        return text

    async def aclose(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            # A receiver that died with an error already handed it to the consumer via the queue.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def __aenter__(self) -> CoinbaseFeed:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _on_subscriptions(self, frame: SubscriptionsFrame) -> None:
        confirmed = set(frame.subscriptions.get("ticker_batch", ()))
        missing = set(self.product_ids) - confirmed
        # The ack may list -USDC ids as -USD and vice versa; only report what is missing in both spellings.
        missing = {p for p in missing if p.replace("-USDC", "-USD") not in confirmed}
        if confirmed and missing:
            self.rejected_products |= missing
            log.warning("server did not confirm ticker_batch for %s", sorted(missing))
        log.info("subscriptions on %s: %s", self.connection_id, dict(frame.subscriptions))

    # ------------------------------------------------------------------------------ receiving side

    async def _run(self) -> None:
        attempt = 0
        first = True
        try:
            while not self._closed:
                if not first:
                    delay = self.reconnect.delay(attempt, self._rng)
                    attempt += 1
                    log.info("reconnecting to %s in %.2fs (attempt %d)", self.url, delay, attempt)
                    await asyncio.sleep(delay)
                    self.counters.reconnects += 1
                first = False
                if await self._connection(uuid.uuid4().hex):
                    attempt = 0
        except InvalidURI as e:
            await self._queue.put(_Stop(ValueError(f"invalid websocket URL {self.url!r}: {e}")))
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # a bug here must surface to the consumer, not hang it
            await self._queue.put(_Stop(e))
            raise

    async def _connection(self, conn_id: str) -> bool:
        """One connection from handshake to close; returns whether it was healthy."""
        loop = asyncio.get_running_loop()
        opened_at: float | None = None
        got_frames = False
        try:
            async with connect(
                self.url,
                open_timeout=self.open_timeout_s,
                close_timeout=self.close_timeout_s,
                max_size=self.max_frame_bytes,
                proxy=self.proxy,
            ) as ws:
                opened_at = loop.time()
                self.connections += 1
                for msg in subscribe_messages(self.product_ids, heartbeats=self.heartbeats):
                    await ws.send(msg)
                log.info(
                    "connected to %s as %s; subscribed to %d products",
                    self.url,
                    conn_id,
                    len(self.product_ids),
                )
                while True:
                    try:
                        async with asyncio.timeout(self.idle_timeout_s):
                            data = await ws.recv()
                    except TimeoutError:
                        self.counters.watchdog_timeouts += 1
                        log.warning(
                            "no frame for %.1fs on %s: treating the socket as dead",
                            self.idle_timeout_s,
                            conn_id,
                        )
                        break
                    text = data if isinstance(data, str) else data.decode("utf-8", errors="replace")
                    got_frames = True
                    if self._queue.full():
                        self.counters.queue_full += 1
                    await self._queue.put((conn_id, text))
        except ConnectionClosed as e:
            rcvd = e.rcvd
            code = rcvd.code if rcvd is not None else None
            reason = rcvd.reason if rcvd is not None else ""
            log.warning("connection %s closed (code %s %s); will reconnect", conn_id, code, reason)
        except InvalidURI:
            raise
        except (OSError, TimeoutError) as e:
            self.counters.connect_failures += opened_at is None
            log.warning("connection %s to %s failed: %s: %s", conn_id, self.url, type(e).__name__, e)
        except Exception as e:  # handshake refusals, protocol errors...: all mean "reconnect"
            self.counters.connect_failures += opened_at is None
            log.warning("connection %s to %s failed: %s: %s", conn_id, self.url, type(e).__name__, e)
        lived = loop.time() - opened_at if opened_at is not None else 0.0
        return got_frames and lived >= self.reconnect.healthy_after_s


async def probe_async(
    url: str = DEFAULT_URL, timeout_s: float = 5.0, *, proxy: str | Literal[True] | None = True
) -> Literal[True] | str:
    """True if the server answers a heartbeats subscription within `timeout_s`, else the reason why not."""
    try:
        async with (
            asyncio.timeout(timeout_s),
            connect(url, open_timeout=timeout_s, close_timeout=1.0, proxy=proxy) as ws,
        ):
            await ws.send(subscribe_message("heartbeats"))
            while True:
                frame = parse_frame(await ws.recv())
                if isinstance(frame, ErrorFrame):
                    return f"server answered with an error: {frame.message}"
                if isinstance(frame, HeartbeatFrame | SubscriptionsFrame):
                    return True
    except TimeoutError:
        return f"no answer from {url} within {timeout_s:.1f}s"
    except Exception as e:
        return f"{type(e).__name__}: {e}"


def probe(url: str = DEFAULT_URL, timeout_s: float = 5.0) -> Literal[True] | str:
    """Blocking `probe_async` for the CLI (`cb-assets up` picks live vs simulated with it).

    Must not be called from inside a running event loop; await `probe_async` there.
    """
    return asyncio.run(probe_async(url, timeout_s))
