"""The `cb-assets predict` command."""

from __future__ import annotations

import argparse

from cb_assets.config import Settings


def _cmd_predict(args: argparse.Namespace, settings: Settings) -> int:
    from cb_assets.model.predict import NoForecast, champion_forecast, render

    try:
        fc = champion_forecast(settings.database_url, list(settings.products))
    except NoForecast as exc:
        print(f"no forecast: {exc}")
        return 1
    print(render(fc))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="print the champion model's forecasts for the newest complete window",
        description="Load the champion from the model registry and forecast log returns and prices of every "
        "product at 10/20/100/200 s from the newest 1000 s window with warm indicators for all products.",
    )
    p.set_defaults(handler=_cmd_predict)
