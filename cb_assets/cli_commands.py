"""Registrars for the commands that belong to other packages (feed, sink, forecast, up, predict, models,
recordings).

Each registrar adds one sub-command to the parser; the handlers import their package lazily.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from cb_assets.feed.cli import register as _register_feed
from cb_assets.forecast.cli import register as _register_forecast
from cb_assets.model.cli import register as _register_predict
from cb_assets.model.cli import register_models as _register_models
from cb_assets.stack.cli import register as _register_up
from cb_assets.stream.cli import register as _register_sink

REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = [
    _register_up,
    _register_feed,
    _register_sink,
    _register_forecast,
    _register_predict,
    _register_models,
]
