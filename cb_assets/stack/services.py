"""`cb-assets services up|down|status`: the local PostgreSQL and broker, only where none is configured.

When CB_DATABASE_URL / CB_KAFKA_BOOTSTRAP are set, those servers are someone else's: we only check that they
answer, and never start or stop them.
"""

from __future__ import annotations

from dataclasses import dataclass

from cb_assets.config import Settings, redact_url
from cb_assets.db.connection import ensure_database, wait_for_postgres
from cb_assets.stack.broker import BundledBroker
from cb_assets.stack.dagster_home import prepare_dagster_home, write_dotenv
from cb_assets.stack.postgres import EmbeddedPostgres
from cb_assets.stack.procs import port_open


@dataclass(frozen=True)
class ServiceLine:
    name: str
    state: str  # "running", "stopped", "external", "unreachable"
    where: str
    note: str = ""

    def render(self) -> str:
        note = f"  ({self.note})" if self.note else ""
        return f"{self.name:<11} {self.state:<11} {self.where}{note}"


def embedded_postgres(settings: Settings) -> EmbeddedPostgres:
    return EmbeddedPostgres(settings.pg_data_dir, settings.pg_port, settings.log_dir / "postgres.log")


def bundled_broker(settings: Settings) -> BundledBroker:
    return BundledBroker(
        settings.broker_port, settings.run_dir / "broker.pid", settings.log_dir / "broker.log"
    )


_BROKER_NOTE = "bundled Tansu broker, MEMORY storage: its topics vanish when it stops"


def services_up(settings: Settings) -> list[ServiceLine]:
    lines: list[ServiceLine] = []
    if settings.database_embedded:
        pg = embedded_postgres(settings)
        pg.start()
        wait_for_postgres(pg.url_base + "/postgres", timeout_s=30)
        created = ensure_database(settings.database_url)
        if settings.dagster_database_url != settings.database_url:
            ensure_database(settings.dagster_database_url)
        st = pg.status()
        lines.append(
            ServiceLine(
                "postgres",
                "running",
                redact_url(settings.database_url),
                f"embedded, pid {st.pid}, data in {pg.data_dir}" + (", database created" if created else ""),
            )
        )
    else:
        lines.append(_external_postgres(settings))
    prepare_dagster_home(settings)
    write_dotenv(settings)
    if settings.kafka_embedded:
        broker = bundled_broker(settings)
        pid = broker.start()
        lines.append(ServiceLine("kafka", "running", broker.bootstrap, f"pid {pid}; {_BROKER_NOTE}"))
    else:
        lines.append(_external_kafka(settings))
    return lines


def services_down(settings: Settings) -> list[ServiceLine]:
    lines: list[ServiceLine] = []
    if settings.kafka_embedded:
        stopped = bundled_broker(settings).stop()
        lines.append(
            ServiceLine("kafka", "stopped", settings.kafka_bootstrap, "" if stopped else "was not running")
        )
    else:
        lines.append(ServiceLine("kafka", "external", settings.kafka_bootstrap, "not ours to stop"))
    if settings.database_embedded:
        stopped = embedded_postgres(settings).stop()
        lines.append(
            ServiceLine(
                "postgres",
                "stopped",
                redact_url(settings.database_url),
                "data kept" if stopped else "was not running",
            )
        )
    else:
        lines.append(
            ServiceLine("postgres", "external", redact_url(settings.database_url), "not ours to stop")
        )
    return lines


def services_status(settings: Settings) -> list[ServiceLine]:
    lines: list[ServiceLine] = []
    if settings.database_embedded:
        st = embedded_postgres(settings).status()
        lines.append(
            ServiceLine(
                "postgres",
                "running" if st.running else "stopped",
                redact_url(settings.database_url),
                f"embedded, pid {st.pid}" if st.running else f"embedded, data in {st.data_dir}",
            )
        )
    else:
        lines.append(_external_postgres(settings))
    if settings.kafka_embedded:
        bst = bundled_broker(settings).status()
        lines.append(
            ServiceLine(
                "kafka",
                "running" if bst.running else "stopped",
                bst.bootstrap,
                f"pid {bst.pid}; {_BROKER_NOTE}" if bst.running else _BROKER_NOTE,
            )
        )
    else:
        lines.append(_external_kafka(settings))
    return lines


def _external_postgres(settings: Settings) -> ServiceLine:
    try:
        wait_for_postgres(settings.database_url, timeout_s=3)
        return ServiceLine("postgres", "external", redact_url(settings.database_url), "answers")
    except TimeoutError as exc:
        return ServiceLine("postgres", "unreachable", redact_url(settings.database_url), str(exc))


def _external_kafka(settings: Settings) -> ServiceLine:
    host, _, port = settings.kafka_bootstrap.split(",")[0].rpartition(":")
    ok = port_open(host, int(port), timeout_s=2)
    return ServiceLine("kafka", "external" if ok else "unreachable", settings.kafka_bootstrap)
