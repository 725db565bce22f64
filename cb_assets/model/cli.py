"""The `cb-assets predict` command."""

from __future__ import annotations

import argparse

from cb_assets.config import Settings


def _cmd_predict(args: argparse.Namespace, settings: Settings) -> int:
    from cb_assets.model.predict import NoForecast, newest_forecast, render

    try:
        fc = newest_forecast(settings.database_url)
    except NoForecast as exc:
        print(f"no forecast: {exc}")
        return 1
    print(render(fc))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="print the newest live forecasts from the ledger, with their age",
        description="Print the newest forecasts the live forecaster recorded (log returns and prices of every "
        "product at 10/20/100/200 s, the model version and the data second they were made at), and how long "
        "ago they were made.",
    )
    p.set_defaults(handler=_cmd_predict)
