"""A local WebSocket server speaking the Coinbase Advanced Trade market-data protocol, for tests.

Each connection follows a script of actions, so a test can stage exactly the situations the live client
must survive (clean 1001 closes, silence, sequence gaps, error frames, frames without client_id). Frames
are written here with the standard `json` module, independently of `cb_assets.feed.protocol`, so the
client is checked against the documented wire format rather than against its own builders.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

Action = tuple[Any, ...]


def _ts(second: int, nanos: int = 0) -> str:
    return f"2023-02-09T20:30:{second:02d}.{nanos:09d}Z"


def ticker(product_id: str, price: str) -> dict[str, str]:
    return {
        "type": "ticker",
        "product_id": product_id,
        "price": price,
        "volume_24_h": "1234.5",
        "low_24_h": "100",
        "high_24_h": "200",
        "low_52_w": "50",
        "high_52_w": "250",
        "price_percent_chg_24_h": "-1.28755472366768",
    }


def ticker_frame(
    seq: int, second: int, event_type: str, tickers: list[dict[str, str]], *, client_id: bool = True
) -> str:
    obj: dict[str, Any] = {"channel": "ticker_batch"}
    if client_id:
        obj["client_id"] = ""
    obj.update(
        {
            "timestamp": _ts(second, 167359596),
            "sequence_num": seq,
            "events": [{"type": event_type, "tickers": tickers}],
        }
    )
    return json.dumps(obj)


def heartbeat_frame(seq: int, second: int, counter: int, *, as_string: bool = False) -> str:
    return json.dumps(
        {
            "channel": "heartbeats",
            "client_id": "",
            "timestamp": _ts(second, 5000),
            "sequence_num": seq,
            "events": [
                {
                    "current_time": f"2023-02-09 20:30:{second:02d}.004731437 +0000 UTC m=+91717.525857101",
                    "heartbeat_counter": str(counter) if as_string else counter,
                }
            ],
        }
    )


def subscriptions_frame(seq: int, second: int, products: list[str]) -> str:
    return json.dumps(
        {
            "channel": "subscriptions",
            "client_id": "",
            "timestamp": _ts(second),
            "sequence_num": seq,
            "events": [{"subscriptions": {"ticker_batch": products, "heartbeats": ["heartbeats"]}}],
        }
    )


def error_frame(message: str) -> str:
    return json.dumps({"type": "error", "message": message})


@dataclass
class ConnectionLog:
    index: int
    started: float
    subscribes: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    other_messages: list[str] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    sent_tickers: list[str] = field(default_factory=list)
    client_closed: bool = False


class FakeCoinbase:
    """`async with FakeCoinbase(scripts) as fake:` then connect to `fake.url`.

    Connection i runs `scripts[i]` (the last script for any later connection). Actions:
    ("wait_subscribes", n) wait for n subscribe messages (closes with 1008 after 5 s, like the server);
    ("ack",) a subscriptions frame for the ticker products received; ("send", text); ("sleep", s);
    ("close", code, reason); ("silence",) send nothing until the client leaves;
    ("heartbeats", first_seq, interval_s) a heartbeat every interval until the client leaves.
    """

    def __init__(self, scripts: list[list[Action]], *, acked_products: list[str] | None = None) -> None:
        self.scripts = scripts
        self.acked_products = acked_products
        self.connections: list[ConnectionLog] = []
        self.url = ""
        self._server: Server | None = None

    async def __aenter__(self) -> FakeCoinbase:
        self._server = await serve(self._handler, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1] if self._server.sockets else 0
        self.url = f"ws://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _read(self, ws: ServerConnection, log: ConnectionLog) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for message in ws:
                text = message if isinstance(message, str) else message.decode()
                obj = json.loads(text)
                if obj.get("type") == "subscribe":
                    log.subscribes.append((loop.time() - log.started, obj))
                else:
                    log.other_messages.append(text)
        except ConnectionClosed:
            pass
        log.client_closed = True

    async def _send(self, ws: ServerConnection, log: ConnectionLog, text: str) -> None:
        await ws.send(text)
        log.sent.append(text)
        if text.startswith('{"channel": "ticker_batch"'):
            log.sent_tickers.append(text)

    async def _handler(self, ws: ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        log = ConnectionLog(index=len(self.connections), started=loop.time())
        self.connections.append(log)
        script = self.scripts[min(log.index, len(self.scripts) - 1)]
        reader = asyncio.create_task(self._read(ws, log))
        try:
            for action in script:
                kind = action[0]
                if kind == "wait_subscribes":
                    deadline = loop.time() + 5.0
                    while len(log.subscribes) < action[1]:
                        if loop.time() > deadline:
                            await ws.close(1008, "subscribe timeout")
                            return
                        await asyncio.sleep(0.005)
                elif kind == "ack":
                    requested = [
                        p
                        for _, s in log.subscribes
                        if s.get("channel") == "ticker_batch"
                        for p in s["product_ids"]
                    ]
                    products = [
                        p for p in requested if self.acked_products is None or p in self.acked_products
                    ]
                    await self._send(ws, log, subscriptions_frame(0, 0, products))
                elif kind == "send":
                    await self._send(ws, log, action[1])
                elif kind == "sleep":
                    await asyncio.sleep(action[1])
                elif kind == "close":
                    await ws.close(action[1], action[2])
                    return
                elif kind == "silence":
                    await ws.wait_closed()
                    return
                elif kind == "heartbeats":
                    seq, interval = action[1], action[2]
                    while True:
                        await self._send(ws, log, heartbeat_frame(seq, seq % 60, seq))
                        seq += 1
                        await asyncio.sleep(interval)
                else:
                    raise ValueError(f"unknown action {action!r}")
        except ConnectionClosed:
            pass
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
