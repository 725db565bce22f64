"""The `cb-assets forecast` command."""

from __future__ import annotations

import argparse
import signal
import threading

from cb_assets.config import Settings


def _cmd_forecast(args: argparse.Namespace, settings: Settings) -> int:
    from cb_assets.forecast.service import Forecaster

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    Forecaster(settings, group_id=args.group, serve_http=not args.no_http).run(stop)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "forecast",
        help="forecast live with the champion model, keep every forecast in the ledger and serve HTTP/SSE",
        description="Load the current state from PostgreSQL, consume the ticker topic in an own consumer group, "
        "step the features second by second with the code the assets use, forecast every product at "
        "10/20/100/200 s with the champion whenever new ticks land, write the `forecasts` ledger (scored as "
        "outcomes arrive) and serve GET /forecasts/latest and /forecasts/stream on CB_FORECAST_PORT.",
    )
    p.add_argument("--group", default="cb-assets-forecaster", help="consumer group id")
    p.add_argument("--no-http", action="store_true", help="do not serve HTTP")
    p.set_defaults(handler=_cmd_forecast)
