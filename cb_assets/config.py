"""Settings from environment variables, read and validated in one place.

Every other module receives a `Settings` object (or a Dagster resource built from the same variables) instead of
reading `os.environ` itself, so a wrong value fails once, at start, with the variable's name in the message.
Defaults are safe for a laptop: an embedded PostgreSQL and the bundled broker on 127.0.0.1, state under
`./.cb_assets`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from cb_assets.series.clock import hour_start

DEFAULT_PRODUCTS: tuple[str, ...] = (
    "BTC-USD",
    "ETH-USD",
    "SOL-USD",
    "DOGE-USD",
    "DAI-USD",
    "POL-USD",  # MATIC was converted to POL on 2025-10-14; MATIC-* products are gone
    "ETH-BTC",
    "SOL-BTC",
    "DOGE-BTC",
    "SOL-ETH",
    "ETH-DAI",
    "LTC-USD",
)
DEFAULT_TOPIC = "crypto_ticker_batch"
DEFAULT_PARTITIONS_START = "2023-09-01-00:00"
DEFAULT_PG_PORT = 55432
DEFAULT_BROKER_PORT = 9092
DEFAULT_DAGSTER_PORT = 3000
DEFAULT_COINBASE_WS_URL = "wss://advanced-trade-ws.coinbase.com"
EMBEDDED_DB_NAME = "cb_assets"
# The simulated market hides a lead-lag relation by default, so a demo shows the model finding something.
DEFAULT_DEMO_LEAD_LAG = "BTC-USD:ETH-USD:20:1.0"

_PRODUCT_RE = re.compile(r"^[A-Z0-9]{2,10}-[A-Z0-9]{2,10}$")
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_PARTITION_START_RE = re.compile(r"^\d{4}-\d{2}-\d{2}-\d{2}:00$")


class ConfigError(ValueError):
    """A setting is invalid; the message names the environment variable and what is expected."""


@dataclass(frozen=True)
class ForecastSettings:
    """The live forecaster (`cb-assets forecast`)."""

    port: int = 8765  # HTTP: GET /forecasts/latest and /forecasts/stream (server-sent events)
    max_staleness_s: int = 30  # no forecast for a product whose newest tick is older (data seconds)
    every_s: int = 1  # at most one forecast per this many data seconds (each time new ticks land)
    linger_ms: int = 50  # wait this long for the rest of a frame's ticks before closing its second
    retention_days: int = 30  # scored ledger rows older than this go once forecast_scores has their hour
    threads: int = 1  # TensorFlow threads: the sink and Dagster keep their share of the cores


@dataclass(frozen=True)
class Settings:
    database_url: str
    database_embedded: bool
    kafka_bootstrap: str
    kafka_embedded: bool
    topic: str
    products: tuple[str, ...]
    partitions_start: str
    home: Path
    pg_port: int
    broker_port: int
    dagster_port: int
    hour_grace_s: int
    demo_speed: float
    coinbase_ws_url: str
    dagster_database_url: str
    artifacts_dir: Path
    windows_dir: Path
    demo_lead_lag: str = ""
    # How often raw_ticks_sensor looks at the raw table (Dagster's minimum interval between evaluations).
    sensor_interval_s: int = 30
    forecast: ForecastSettings = field(default_factory=lambda: ForecastSettings())
    # Retraining that heals itself (automation/planner.py): how far back hours are caught up after downtime,
    # and the waits before a failed hour's chain is requested again (then it is skipped).
    catchup_hours: int = 48
    hour_retry_delays_s: tuple[int, ...] = (60, 240, 960)
    alert_webhook_url: str = ""
    retention_days: int = 30  # filled_series, indicators and training windows; raw_ticks is kept
    # librdkafka settings for a managed cluster (TLS, SASL...), from CB_KAFKA_OPT_<NAME> variables.
    kafka_options: tuple[tuple[str, str], ...] = ()

    @property
    def kafka_config(self) -> dict[str, str]:
        return dict(self.kafka_options)

    @property
    def run_dir(self) -> Path:
        """Pid files of the services this machine runs for the platform."""
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def pg_data_dir(self) -> Path:
        return self.home / "postgres"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    def describe(self) -> dict[str, str]:
        """What a status line or the UI may show: no passwords."""
        return {
            "CB_DATABASE_URL": redact_url(self.database_url)
            + (" (embedded)" if self.database_embedded else ""),
            "CB_KAFKA_BOOTSTRAP": self.kafka_bootstrap + (" (bundled broker)" if self.kafka_embedded else ""),
            "CB_TOPIC": self.topic,
            "CB_PRODUCTS": ",".join(self.products),
            "CB_PARTITIONS_START": self.partitions_start,
            "CB_HOME": str(self.home),
        }


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value} is out of range [{lo}, {hi}]")
    return value


def _float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value} is out of range [{lo}, {hi}]")
    return value


def _postgres_url(name: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("postgresql", "postgres") or not (parts.hostname or "host=" in parts.query):
        raise ConfigError(
            f"{name} must look like postgresql://user[:password]@host[:port]/dbname, got {raw!r}"
        )
    if not parts.path.strip("/"):
        raise ConfigError(f"{name} must name a database (…/dbname), got {redact_url(raw)!r}")
    return raw


def _products(raw: str) -> tuple[str, ...]:
    items = [p.strip().upper() for p in raw.split(",") if p.strip()]
    if not items:
        raise ConfigError("CB_PRODUCTS is empty: give a comma-separated list such as BTC-USD,ETH-USD")
    bad = [p for p in items if not _PRODUCT_RE.match(p)]
    if bad:
        raise ConfigError(f"CB_PRODUCTS has invalid product ids {bad}: expected BASE-QUOTE such as BTC-USD")
    if len(set(items)) != len(items):
        raise ConfigError(f"CB_PRODUCTS lists a product twice: {items}")
    return tuple(items)


def _partitions_start(raw: str) -> str:
    if not _PARTITION_START_RE.match(raw):
        raise ConfigError(f"CB_PARTITIONS_START={raw!r} must be an hour in UTC written YYYY-MM-DD-HH:00")
    try:
        start = hour_start(raw)  # the partition key format's one home
    except ValueError as exc:
        raise ConfigError(f"CB_PARTITIONS_START={raw!r} is not a valid date: {exc}") from None
    if start > datetime.now(UTC):
        raise ConfigError(f"CB_PARTITIONS_START={raw!r} is in the future")
    return raw


def _delays(raw: str) -> tuple[int, ...]:
    if not raw.strip():
        return (60, 240, 960)
    try:
        delays = tuple(int(x) for x in raw.split(","))
    except ValueError:
        raise ConfigError(
            f"CB_HOUR_RETRY_DELAYS_S={raw!r} must be comma-separated seconds, e.g. 60,240,960"
        ) from None
    if any(d < 0 for d in delays):
        raise ConfigError(f"CB_HOUR_RETRY_DELAYS_S={raw!r} must not be negative")
    return delays


def _webhook(raw: str) -> str:
    raw = raw.strip()
    if raw and not raw.startswith(("http://", "https://")):
        raise ConfigError(f"CB_ALERT_WEBHOOK_URL must be an http(s) URL, got {redact_url(raw)!r}")
    return raw


def _kafka_options(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """CB_KAFKA_OPT_SECURITY_PROTOCOL=SASL_SSL -> ("security.protocol", "SASL_SSL"): any librdkafka setting a
    managed cluster needs, kept in the environment (secrets included) rather than in files."""
    prefix = "CB_KAFKA_OPT_"
    options = []
    for key, value in env.items():
        if key.startswith(prefix) and value.strip():
            name = key[len(prefix) :].lower().replace("_", ".")
            if not re.match(r"^[a-z][a-z0-9.]*$", name):
                raise ConfigError(f"{key} does not name a librdkafka setting")
            options.append((name, value.strip()))
    return tuple(sorted(options))


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read every CB_* variable once; raise ConfigError naming the first bad one."""
    env = os.environ if env is None else env
    home = Path(env.get("CB_HOME", "").strip() or "./.cb_assets").expanduser().resolve()
    pg_port = _int(env, "CB_PG_PORT", DEFAULT_PG_PORT, 1024, 65535)
    broker_port = _int(env, "CB_BROKER_PORT", DEFAULT_BROKER_PORT, 1024, 65535)
    dagster_port = _int(env, "CB_DAGSTER_PORT", DEFAULT_DAGSTER_PORT, 1024, 65535)

    raw_db = env.get("CB_DATABASE_URL", "").strip()
    database_url = (
        _postgres_url("CB_DATABASE_URL", raw_db)
        if raw_db
        else f"postgresql://postgres@127.0.0.1:{pg_port}/{EMBEDDED_DB_NAME}"
    )
    raw_dagster_db = env.get("CB_DAGSTER_DATABASE_URL", "").strip()
    dagster_database_url = (
        _postgres_url("CB_DAGSTER_DATABASE_URL", raw_dagster_db) if raw_dagster_db else database_url
    )

    raw_kafka = env.get("CB_KAFKA_BOOTSTRAP", "").strip()
    if raw_kafka and not all(re.match(r"^[\w.\-]+:\d{1,5}$", s.strip()) for s in raw_kafka.split(",")):
        raise ConfigError(f"CB_KAFKA_BOOTSTRAP={raw_kafka!r} must be host:port[,host:port...]")
    kafka_bootstrap = raw_kafka or f"127.0.0.1:{broker_port}"

    topic = env.get("CB_TOPIC", "").strip() or DEFAULT_TOPIC
    if not _TOPIC_RE.match(topic):
        raise ConfigError(
            f"CB_TOPIC={topic!r} is not a valid Kafka topic name ([A-Za-z0-9._-], <= 249 chars)"
        )

    ws_url = env.get("CB_COINBASE_WS_URL", "").strip() or DEFAULT_COINBASE_WS_URL
    if not ws_url.startswith(("ws://", "wss://")):
        raise ConfigError(f"CB_COINBASE_WS_URL={ws_url!r} must start with ws:// or wss://")

    lead_lag = env.get("CB_DEMO_LEAD_LAG", DEFAULT_DEMO_LEAD_LAG).strip()
    if lead_lag:
        parts = lead_lag.split(":")
        try:
            ok = len(parts) == 4 and int(parts[2]) > 0 and float(parts[3]) == float(parts[3])
        except ValueError:
            ok = False
        if not ok or not all(_PRODUCT_RE.match(p) for p in parts[:2]):
            raise ConfigError(
                f"CB_DEMO_LEAD_LAG={lead_lag!r} must be LEADER:FOLLOWER:HORIZON_S:BETA (e.g. BTC-USD:ETH-USD:20:1.0), "
                "or empty to simulate a market without a planted signal"
            )
    artifacts = env.get("CB_ARTIFACTS_DIR", "").strip()
    windows = env.get("CB_WINDOWS_DIR", "").strip()
    return Settings(
        database_url=database_url,
        database_embedded=not raw_db,
        kafka_bootstrap=kafka_bootstrap,
        kafka_embedded=not raw_kafka,
        topic=topic,
        products=_products(env.get("CB_PRODUCTS", "").strip() or ",".join(DEFAULT_PRODUCTS)),
        partitions_start=_partitions_start(
            env.get("CB_PARTITIONS_START", "").strip() or DEFAULT_PARTITIONS_START
        ),
        home=home,
        pg_port=pg_port,
        broker_port=broker_port,
        dagster_port=dagster_port,
        hour_grace_s=_int(env, "CB_HOUR_GRACE_S", 120, 0, 86_400),
        demo_speed=_float(env, "CB_DEMO_SPEED", 1.0, 0.0, 10_000.0),
        coinbase_ws_url=ws_url,
        dagster_database_url=dagster_database_url,
        artifacts_dir=Path(artifacts).expanduser().resolve() if artifacts else home / "artifacts",
        windows_dir=Path(windows).expanduser().resolve() if windows else home / "training_windows",
        demo_lead_lag=lead_lag,
        sensor_interval_s=_int(env, "CB_SENSOR_INTERVAL_S", 30, 1, 3600),
        catchup_hours=_int(env, "CB_CATCHUP_HOURS", 48, 1, 24 * 365),
        hour_retry_delays_s=_delays(env.get("CB_HOUR_RETRY_DELAYS_S", "")),
        alert_webhook_url=_webhook(env.get("CB_ALERT_WEBHOOK_URL", "")),
        retention_days=_int(env, "CB_RETENTION_DAYS", 30, 1, 36_500),
        forecast=ForecastSettings(
            port=_int(env, "CB_FORECAST_PORT", 8765, 1024, 65535),
            max_staleness_s=_int(env, "CB_FORECAST_MAX_STALENESS_S", 30, 1, 86_400),
            every_s=_int(env, "CB_FORECAST_EVERY_S", 1, 1, 3600),
            linger_ms=_int(env, "CB_FORECAST_LINGER_MS", 50, 0, 10_000),
            retention_days=_int(env, "CB_FORECAST_RETENTION_DAYS", 30, 1, 3650),
            threads=_int(env, "CB_FORECAST_THREADS", 1, 1, 64),
        ),
        kafka_options=_kafka_options(env),
    )


def export_env(settings: Settings, env: dict[str, str] | None = None) -> dict[str, str]:
    """Write the resolved settings back as CB_* variables (only where unset).

    Dagster resources read `dg.EnvVar("CB_DATABASE_URL")` and friends so the UI shows variable names, never values;
    filling in the computed local defaults lets a plain `dagster dev` (or a child process) resolve them.
    """
    env = os.environ if env is None else env
    values = {
        "CB_DATABASE_URL": settings.database_url,
        "CB_DAGSTER_DATABASE_URL": settings.dagster_database_url,
        "CB_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CB_TOPIC": settings.topic,
        "CB_PRODUCTS": ",".join(settings.products),
        "CB_PARTITIONS_START": settings.partitions_start,
        "CB_HOME": str(settings.home),
        "CB_ARTIFACTS_DIR": str(settings.artifacts_dir),
        "CB_WINDOWS_DIR": str(settings.windows_dir),
        "CB_HOUR_GRACE_S": str(settings.hour_grace_s),
        "CB_SENSOR_INTERVAL_S": str(settings.sensor_interval_s),
        "CB_CATCHUP_HOURS": str(settings.catchup_hours),
        "CB_HOUR_RETRY_DELAYS_S": ",".join(map(str, settings.hour_retry_delays_s)),
    }
    for key, value in values.items():
        if not env.get(key):
            env[key] = value
    return env
