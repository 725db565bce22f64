"""The `cb-assets sink` command."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from cb_assets.config import Settings

log = logging.getLogger(__name__)


def _cmd_sink(args: argparse.Namespace, settings: Settings) -> int:
    from cb_assets.stream.sink import Sink, SinkConfig
    from cb_assets.stream.topics import ensure_topic

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    delay = 1.0
    while not stop.is_set():
        try:
            # Subscribing to a missing topic only yields errors until a producer creates it: create it now.
            ensure_topic(settings.kafka_bootstrap, settings.topic, extra_config=settings.kafka_config)
            break
        except Exception as exc:  # the broker may still be starting
            log.warning(
                "cannot reach Kafka at %s (%s); retrying in %.0f s", settings.kafka_bootstrap, exc, delay
            )
            stop.wait(delay)
            delay = min(30.0, delay * 2)
    cfg = SinkConfig(
        bootstrap=settings.kafka_bootstrap,
        topic=settings.topic,
        database_url=settings.database_url,
        products=settings.products,
        group_id=args.group,
        batch_size=args.batch_size,
        stats_interval_s=args.stats_interval,
        consumer_overrides=dict(settings.kafka_config),
    )
    Sink(cfg).run(stop)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sink",
        help="consume the ticker topic into PostgreSQL raw_ticks (idempotent; offsets committed after the DB commit)",
        description="Consume CB_TOPIC in batches, validate each message (bad ones go to raw_ticks_rejected with the "
        "reason and the original payload), COPY into staging and upsert into raw_ticks, then commit offsets. "
        "SIGTERM finishes the current batch, commits and exits.",
    )
    p.add_argument("--group", default="cb-assets-sink", help="consumer group id")
    p.add_argument(
        "--batch-size", type=int, default=10_000, help="messages per consume() call and transaction"
    )
    p.add_argument("--stats-interval", type=float, default=30.0, help="seconds between counter log lines")
    p.set_defaults(handler=_cmd_sink)
