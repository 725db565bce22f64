"""The `cb-assets` command: parses arguments and calls into the packages; no logic of its own.

Heavy imports (Dagster, TensorFlow, Kafka) happen inside the command that needs them so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from cb_assets.config import ConfigError, Settings, load_settings

Handler = Callable[[argparse.Namespace, Settings], int]


def _cmd_db_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from cb_assets.db.migrate import applied_versions, migrate

    applied = migrate(settings.database_url)
    for mig in applied:
        print(f"applied {mig.version:03d}_{mig.name}")
    versions = applied_versions(settings.database_url)
    print(f"schema at version {max(versions) if versions else 0} ({len(applied)} applied now)")
    return 0


def _cmd_services(args: argparse.Namespace, settings: Settings) -> int:
    from cb_assets.stack.services import services_down, services_status, services_up

    action = {"up": services_up, "down": services_down, "status": services_status}[args.action]
    lines = action(settings)
    for line in lines:
        print(line.render())
    return 1 if any(line.state == "unreachable" for line in lines) else 0


def _add_services(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "services",
        help="start, stop or show the local PostgreSQL and Kafka broker",
        description="Manage the local services. When CB_DATABASE_URL is unset an embedded PostgreSQL runs under "
        "CB_HOME (data kept across restarts); when CB_KAFKA_BOOTSTRAP is unset the bundled Tansu broker runs on "
        "127.0.0.1:CB_BROKER_PORT with MEMORY storage (its topics vanish when it stops).",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("up", "start whatever is not configured externally"),
        ("down", "stop what `up` started (by pid); leaves no process behind"),
        ("status", "print what runs where"),
    ):
        a = actions.add_parser(name, help=text, description=text)
        a.set_defaults(handler=_cmd_services)


def _add_db(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("db", help="database schema", description="Database schema management.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    m = actions.add_parser(
        "migrate",
        help="apply sql/NNN_*.sql in order (idempotent, safe to run concurrently)",
        description="Apply pending migrations from sql/ in order, each in its own transaction, recording versions "
        "in schema_migrations under an advisory lock.",
    )
    m.set_defaults(handler=_cmd_db_migrate)


# Commands of other packages register themselves here (kept in their own modules to keep this file small).
_EXTENSIONS: list[Callable[[argparse._SubParsersAction], None]] = []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cb-assets",
        description="Coinbase market data -> Kafka -> PostgreSQL -> Dagster assets -> a continuously fine-tuned "
        "forecaster. Configuration comes from CB_* environment variables (see README).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_db(sub)
    _add_services(sub)
    from cb_assets import cli_commands

    for register in (*cli_commands.REGISTRARS, *_EXTENSIONS):
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"cb-assets: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args.handler(args, settings) or 0)
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"cb-assets {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
