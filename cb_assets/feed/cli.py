"""`cb-assets feed` and `cb-assets recording from-trades`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time

from cb_assets.config import Settings

log = logging.getLogger(__name__)


def choose_source(settings: Settings, requested: str, timeout_s: float = 5.0) -> tuple[str, str]:
    """('live' | 'simulated', why) for --source auto: live only if Coinbase answers within a few seconds."""
    if requested != "auto":
        return requested, "requested"
    from cb_assets.feed.coinbase import probe

    answer = probe(settings.coinbase_ws_url, timeout_s)
    if answer is True:
        return "live", f"{settings.coinbase_ws_url} answered"
    return "simulated", f"{settings.coinbase_ws_url} did not answer within {timeout_s:.0f} s ({answer})"


def _lead_lag(spec: str | None):
    if not spec:
        return None
    from cb_assets.feed.market import LeadLag

    leader, follower, horizon, beta = spec.split(":")
    return LeadLag(leader=leader, follower=follower, horizon_s=int(horizon), beta=float(beta))


def _demo_lead_lag(settings: Settings) -> str | None:
    spec = settings.demo_lead_lag
    if not spec:
        return None
    leader, follower = spec.split(":")[:2]
    if leader not in settings.products or follower not in settings.products:
        log.info("not planting the demo lead-lag %s: its products are not in CB_PRODUCTS", spec)
        return None
    return spec


def build_source(args: argparse.Namespace, settings: Settings, kind: str, on_gap):
    if kind == "live":
        from cb_assets.feed.coinbase import CoinbaseFeed

        return CoinbaseFeed(settings.products, url=settings.coinbase_ws_url, on_gap=on_gap)
    if kind == "replay":
        from cb_assets.feed.replay import ReplaySource

        if not args.file:
            raise SystemExit("--source replay needs --file RECORDING.jsonl[.gz]")
        return ReplaySource(
            args.file,
            speed=args.speed if args.speed is not None else 0.0,
            rebase_now=args.rebase_now,
            on_gap=on_gap,
        )
    from cb_assets.feed.simulate import SimulatedSource

    speed = args.speed if args.speed is not None else settings.demo_speed
    backlog_h = args.backlog_hours if args.backlog_hours is not None else (6.0 if speed > 1 else 0.0)
    start_ns = (time.time_ns() // 1_000_000_000 - int(backlog_h * 3600)) * 1_000_000_000
    return SimulatedSource(
        settings.products,
        seed=args.seed,
        start_ns=start_ns,
        duration_s=args.duration,
        speed=speed,
        lead_lag=_lead_lag(args.lead_lag if args.lead_lag is not None else _demo_lead_lag(settings)),
        not_ahead_of_wall_clock=True,
    )


async def _run(args: argparse.Namespace, settings: Settings, kind: str) -> int:
    from cb_assets.feed.gaps import GapWriter
    from cb_assets.feed.runner import run_feed
    from cb_assets.stream.producer import TickProducer
    from cb_assets.stream.topics import ensure_topic

    gaps = GapWriter(settings.database_url, kind)
    source = build_source(args, settings, kind, gaps)
    delay = 1.0
    while True:
        try:
            ensure_topic(
                settings.kafka_bootstrap,
                settings.topic,
                partitions=args.partitions,
                extra_config=settings.kafka_config,
            )
            break
        except Exception as exc:  # the broker may still be starting: wait for it, don't crash
            log.warning(
                "cannot reach Kafka at %s (%s); retrying in %.0f s", settings.kafka_bootstrap, exc, delay
            )
            await asyncio.sleep(delay)
            delay = min(30.0, delay * 2)
    producer = TickProducer(settings.kafka_bootstrap, settings.topic, extra_config=settings.kafka_config)
    task = asyncio.ensure_future(
        run_feed(
            source,
            producer,
            record_path=args.record,
            stats_interval_s=args.stats_interval,
            on_gap=gaps,
        )
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        counters = await task
        log.info("feed finished: %s", counters.as_dict())
    except asyncio.CancelledError:
        log.info("feed stopping on signal")
    finally:
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()
        produced = producer.close()
        gaps.flush()
        log.info("producer closed: %s", produced)
    return 0


def _cmd_feed(args: argparse.Namespace, settings: Settings) -> int:
    kind, why = choose_source(settings, args.source)
    print(f"cb-assets feed: source {kind} ({why})", flush=True)
    return asyncio.run(_run(args, settings, kind))


def _cmd_from_trades(args: argparse.Namespace, settings: Settings) -> int:
    from cb_assets.feed.recording import from_trades

    n = from_trades(args.csv, args.out, product_id=args.product, interval_s=args.interval)
    print(f"wrote {n} ticker_batch frames to {args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "feed",
        help="run a market-data feed into Kafka (live Coinbase, a replayed recording, or the simulated market)",
        description="Read ticker_batch frames from a source and produce one Kafka message per ticker (key = "
        "product). --source auto uses the live Coinbase feed when it answers within a few seconds, else the "
        "simulated market. Sequence gaps go to the feed_gaps table.",
    )
    p.add_argument("--source", choices=["auto", "live", "replay", "simulated"], default="auto")
    p.add_argument("--file", help="recording to replay (JSONL of frames, .gz accepted)")
    p.add_argument(
        "--speed",
        type=float,
        help="replay/simulation pace, N x real time; 0 = as fast as possible "
        "(default: 0 for replay, CB_DEMO_SPEED for the simulation)",
    )
    p.add_argument("--rebase-now", action="store_true", help="shift a replay's timestamps so it ends now")
    p.add_argument("--record", help="also write every raw frame to this JSONL recording (.gz accepted)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated market")
    p.add_argument("--duration", type=float, help="stop the simulation after this many simulated seconds")
    p.add_argument(
        "--backlog-hours",
        type=float,
        help="start the simulation this many hours in the past "
        "(default 6 when --speed > 1, so a demo has complete hours within minutes)",
    )
    p.add_argument(
        "--lead-lag", help="plant a lead-lag relation LEADER:FOLLOWER:HORIZON_S:BETA in the simulation"
    )
    p.add_argument(
        "--partitions", type=int, default=6, help="partitions of the topic if it has to be created"
    )
    p.add_argument("--stats-interval", type=float, default=60.0, help="seconds between counter log lines")
    p.set_defaults(handler=_cmd_feed)

    r = sub.add_parser("recording", help="make recordings", description="Make feed recordings.")
    actions = r.add_subparsers(dest="action", required=True, metavar="ACTION")
    ft = actions.add_parser(
        "from-trades",
        help="turn a trades CSV into ticker_batch frames every 5 s",
        description="Turn a trades CSV (symbol,side,price,amount,timestamp) into a JSONL recording of ticker_batch "
        "frames every N seconds (last trade price), so real market data flows through the live path.",
    )
    ft.add_argument("csv")
    ft.add_argument("out")
    ft.add_argument("--product", default="BTC-USD")
    ft.add_argument("--interval", type=int, default=5)
    ft.set_defaults(handler=_cmd_from_trades)
