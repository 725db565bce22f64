"""The `cb-assets predict` and `cb-assets models ...` commands (model control for operators)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

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


def _fmt(v: object) -> str:
    return "-" if not isinstance(v, int | float) else f"{v:.4f}"


def _hours(hours: list[str]) -> str:
    if not hours:
        return "-"
    return hours[0] if len(hours) == 1 else f"{hours[0]}..{hours[-1]} ({len(hours)})"


def render_versions(
    rows: list,
    champion_id: int | None,
    paused: tuple[bool, str],
    history: list,
    live: dict[int, tuple[float, int]] | None = None,
) -> str:
    """The `models list` table: one line per version (held-out and live skill side by side, live = pooled over
    the forecast_scores hours of the version's forecasts), then the fine-tuning switch and the alias history."""
    live = live or {}
    lines = [
        f"{'':1} {'id':>4} {'kind':9} {'family':9} {'status':8} {'trained on':34} {'held-out':>8} "
        f"{'ridge':>8} {'live':>8} {'scored':>7} {'gate (network/linear/persistence)':>34}  created"
    ]
    for v in rows:
        m = v.metrics or {}
        gate = (v.gate or {}).get("summary", {})
        counts = (
            "/".join(str(len(gate.get(k, []))) for k in ("network", "linear", "persistence")) if gate else "-"
        )
        lines.append(
            f"{'*' if v.id == champion_id else ' ':1} {v.id:>4} {v.kind:9} {v.family:9} {v.status:8} "
            f"{_hours(list(v.partitions)):34} {_fmt(m.get('challenger', {}).get('score')):>8} "
            f"{_fmt(m.get('ridge', {}).get('score')):>8} {_fmt(live.get(v.id, (None,))[0]):>8} "
            f"{live.get(v.id, (0, 0))[1]:>7} {counts:>34}  {v.created_at:%Y-%m-%d %H:%M}"
        )
    lines.append("")
    lines.append(f"champion: {champion_id if champion_id is not None else 'none'} (* above)")
    lines.append(f"fine-tuning: {'PAUSED (' + paused[1] + ')' if paused[0] else 'running'}")
    for h in history[:5]:
        lines.append(
            f"  {h.changed_at:%Y-%m-%d %H:%M} {h.action:8} -> v{h.version_id} (was "
            f"{h.previous_version_id if h.previous_version_id is not None else '-'}): {h.reason}"
        )
    return "\n".join(lines)


def _with_registry(fn: Callable) -> Callable[[argparse.Namespace, Settings], int]:
    def handler(args: argparse.Namespace, settings: Settings) -> int:
        from cb_assets.db.connection import connect

        with connect(settings.database_url) as conn:
            try:
                with conn.transaction():
                    return int(fn(conn, args) or 0)
            except (LookupError, ValueError) as exc:
                print(f"cb-assets models {args.action}: {exc}")
                return 1

    return handler


def _list(conn: object, args: argparse.Namespace) -> int:
    from cb_assets.db import model_registry as registry
    from cb_assets.db.forecast_store import live_skill_by_version

    champion = registry.alias(conn)  # type: ignore[arg-type]
    print(
        render_versions(
            registry.versions(conn, limit=args.limit),  # type: ignore[arg-type]
            champion.id if champion else None,
            registry.fine_tuning_paused(conn),  # type: ignore[arg-type]
            registry.alias_history(conn),  # type: ignore[arg-type]
            live_skill_by_version(conn),  # type: ignore[arg-type]
        )
    )
    if args.gate and champion is not None:
        print(f"\nchampion v{champion.id} per output:")
        for d in (champion.gate or {}).get("outputs", []):
            skill = d.get("skill", {})
            print(
                f"  {d['output']:18} {d['choice']:12} linear {_fmt(skill.get('linear'))} network "
                f"{_fmt(skill.get('network'))} (t {_fmt(d.get('t_linear'))} / {_fmt(d.get('t_network'))})"
            )
    return 0


def _promote(conn: object, args: argparse.Namespace) -> int:
    from cb_assets.db import model_registry as registry

    v = registry.promote(conn, args.version, args.reason)  # type: ignore[arg-type]
    print(f"champion is now v{v.id} ({v.kind}, {v.family}, trained on {_hours(list(v.partitions))})")
    return 0


def _rollback(conn: object, args: argparse.Namespace) -> int:
    from cb_assets.db import model_registry as registry

    v = registry.rollback(conn, args.reason)  # type: ignore[arg-type]
    print(f"champion rolled back to v{v.id} ({v.kind}, {v.family})")
    return 0


def _pause(conn: object, args: argparse.Namespace) -> int:
    from cb_assets.db import model_registry as registry

    if not args.reason.strip():
        raise ValueError("pausing needs a reason")
    registry.set_fine_tuning_paused(conn, True, args.reason)  # type: ignore[arg-type]
    print(f"fine-tuning paused: {args.reason}")
    return 0


def _resume(conn: object, args: argparse.Namespace) -> int:
    from cb_assets.db import model_registry as registry

    registry.set_fine_tuning_paused(conn, False, args.reason)  # type: ignore[arg-type]
    print("fine-tuning resumed")
    return 0


def register_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="model versions: list, promote, rollback, pause/resume fine-tuning",
        description="Operate the model registry: list versions with their held-out and gate figures, move the "
        "champion by hand (with a reason, recorded in the alias history), and pause or resume the fine-tunes "
        "the sensor requests.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("list", help="versions, kind, family, trained-on hours, held-out and gate figures")
    a.add_argument("--limit", type=int, default=20)
    a.add_argument("--gate", action="store_true", help="also the champion's decision per output")
    a.set_defaults(handler=_with_registry(_list))
    a = actions.add_parser("promote", help="make VERSION the champion")
    a.add_argument("version", type=int)
    a.add_argument("--reason", required=True)
    a.set_defaults(handler=_with_registry(_promote))
    a = actions.add_parser("rollback", help="return the champion to the one before it")
    a.add_argument("--reason", required=True)
    a.set_defaults(handler=_with_registry(_rollback))
    a = actions.add_parser("pause", help="stop sensor-triggered fine-tuning")
    a.add_argument("--reason", required=True)
    a.set_defaults(handler=_with_registry(_pause))
    a = actions.add_parser("resume", help="let the sensor request fine-tunes again")
    a.add_argument("--reason", default="")
    a.set_defaults(handler=_with_registry(_resume))
