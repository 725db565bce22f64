"""Registrars for the commands that belong to other rooms (feed, sink, up, predict, recordings).

Each registrar adds one sub-command to the parser; the handlers import their room lazily.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = []
