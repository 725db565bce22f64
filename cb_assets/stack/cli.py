"""The `cb-assets up` command."""

from __future__ import annotations

import argparse

from cb_assets.config import Settings


def _cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from cb_assets.stack.status import status_line
    from cb_assets.stack.supervisor import UpOptions, run_up

    opts = UpOptions(
        feed_source="none" if args.no_feed else args.source,
        replay_file=args.file,
        with_sink=not args.no_sink,
        with_forecaster=not args.no_forecast,
        with_dagster=not args.no_dagster,
        status_interval_s=args.status_interval,
    )
    return run_up(settings, opts, status_line=status_line)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "up",
        help="run the whole platform in the foreground (services, migrations, feed, sink, forecaster, dagster dev)",
        description="Start the local services where none are configured, apply migrations, then run the feed, the "
        "sink, the live forecaster and `dagster dev -w workspace.yaml` until Ctrl-C or SIGTERM, which stops every child. With "
        "--source auto the live Coinbase feed is used when it answers within a few seconds, else the simulated "
        "market (paced by CB_DEMO_SPEED).",
    )
    p.add_argument("--source", choices=["auto", "live", "simulated", "replay"], default="auto")
    p.add_argument("--file", help="recording to replay with --source replay")
    p.add_argument("--no-feed", action="store_true", help="do not run a feed")
    p.add_argument("--no-sink", action="store_true", help="do not run the Kafka -> PostgreSQL sink")
    p.add_argument("--no-forecast", action="store_true", help="do not run the live forecaster")
    p.add_argument("--no-dagster", action="store_true", help="do not run dagster dev")
    p.add_argument("--status-interval", type=float, default=15.0, help="seconds between status lines")
    p.set_defaults(handler=_cmd_up)
