"""The forecaster's HTTP face: the newest forecasts as JSON and as a server-sent-events stream.

`GET /forecasts/latest` answers the newest anchor's forecasts with their age; `GET /forecasts/stream` sends
every new set as an SSE `forecast` event (and a comment every 15 s so proxies keep the connection open).
Starlette and uvicorn come with dagster-webserver; the server runs in its own thread with its own event loop,
and the forecasting thread hands it payloads through `ForecastHub.publish`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cb_assets.db.forecast_store import LedgerRow

log = logging.getLogger(__name__)
_KEEPALIVE_S = 15.0


def forecast_payload(version_id: int, anchor: datetime, rows: Sequence[LedgerRow]) -> dict[str, Any]:
    """One anchor's forecasts as the endpoints send them: per product its last price and, per horizon, the
    forecast log return and price."""
    by_product: dict[str, dict[str, Any]] = {}
    for r in rows:
        entry = by_product.setdefault(
            r.product_id, {"product": r.product_id, "last_price": r.last_price, "horizons": {}}
        )
        entry["horizons"][str(r.horizon_s)] = {"log_return": r.forecast_return, "price": r.forecast_price}
    return {
        "version_id": version_id,
        "anchor": anchor.isoformat(),
        "made_at_unix": time.time(),
        "forecasts": list(by_product.values()),
    }


class ForecastHub:
    """The newest payload, and one bounded queue per stream subscriber (a slow client loses old events)."""

    def __init__(self) -> None:
        self.latest: dict[str, Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: set[asyncio.Queue[dict[str, Any]]] = set()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def publish(self, payload: dict[str, Any]) -> None:
        """Called from the forecasting thread."""
        self.latest = payload
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._fan_out, payload)

    def _fan_out(self, payload: dict[str, Any]) -> None:
        for q in self._queues:
            if q.full():
                q.get_nowait()
            q.put_nowait(payload)

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=64)
        self._queues.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        self._queues.discard(q)

    @property
    def subscribers(self) -> int:
        return len(self._queues)


def _with_age(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "age_s": round(time.time() - payload["made_at_unix"], 3)}


def build_app(hub: ForecastHub) -> Starlette:
    async def latest(_: Request) -> Response:
        if hub.latest is None:
            return JSONResponse({"error": "no forecast yet"}, status_code=503)
        return Response(orjson.dumps(_with_age(hub.latest)), media_type="application/json")

    async def stream(request: Request) -> Response:
        q = hub.subscribe()

        async def events() -> AsyncIterator[bytes]:
            try:
                if hub.latest is not None:
                    yield b"event: forecast\ndata: " + orjson.dumps(_with_age(hub.latest)) + b"\n\n"
                while not await request.is_disconnected():
                    try:
                        payload = await asyncio.wait_for(q.get(), _KEEPALIVE_S)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    yield b"event: forecast\ndata: " + orjson.dumps(_with_age(payload)) + b"\n\n"
            finally:
                hub.unsubscribe(q)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    async def health(_: Request) -> Response:
        return JSONResponse({"ok": True, "has_forecast": hub.latest is not None})

    return Starlette(
        routes=[
            Route("/forecasts/latest", latest),
            Route("/forecasts/stream", stream),
            Route("/health", health),
        ]
    )


class HttpServer:
    """uvicorn in a daemon thread; `stop` shuts it down gracefully."""

    def __init__(self, hub: ForecastHub, host: str, port: int) -> None:
        self.hub = hub
        # log_config=None: uvicorn's own dictConfig would replace the process's logging set-up (and close
        # every handler other components installed); its loggers propagate to ours instead.
        config = uvicorn.Config(
            build_app(hub), host=host, port=port, log_level="warning", lifespan="off", log_config=None
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="forecast-http", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self.hub.bind(asyncio.get_running_loop())
            await self.server.serve()

        try:
            asyncio.run(main())
        except OSError as exc:  # the port is taken: forecasting goes on without the HTTP face
            log.error("forecast HTTP server could not start: %s", exc)

    def start(self, wait_s: float = 10.0) -> HttpServer:
        self._thread.start()
        deadline = time.monotonic() + wait_s
        while not self.server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(RuntimeError):
            self._thread.join(5)
