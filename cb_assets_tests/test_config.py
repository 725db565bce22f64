"""Settings: defaults, validation errors that name the variable, and the env round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from cb_assets.config import DEFAULT_PRODUCTS, ConfigError, export_env, load_settings


def test_defaults_are_local_and_complete(tmp_path: Path) -> None:
    s = load_settings({"CB_HOME": str(tmp_path)})
    assert s.database_embedded and s.kafka_embedded
    assert s.database_url == "postgresql://postgres@127.0.0.1:55432/cb_assets"
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.topic == "crypto_ticker_batch"
    assert s.products == DEFAULT_PRODUCTS and len(s.products) == 12
    assert not any(p.startswith("MATIC") for p in s.products)
    assert s.home == tmp_path.resolve()
    assert s.artifacts_dir == tmp_path.resolve() / "artifacts"


def test_external_services_and_overrides() -> None:
    s = load_settings(
        {
            "CB_DATABASE_URL": "postgresql://u:secret@db.example:5432/ticks",
            "CB_KAFKA_BOOTSTRAP": "k1:9092,k2:9093",
            "CB_PRODUCTS": " btc-usd , ETH-USD ",
            "CB_TOPIC": "ticks.v2",
            "CB_PARTITIONS_START": "2024-01-01-05:00",
        }
    )
    assert not s.database_embedded and not s.kafka_embedded
    assert s.products == ("BTC-USD", "ETH-USD")
    assert s.dagster_database_url == s.database_url
    assert "secret" not in s.describe()["CB_DATABASE_URL"]


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"CB_DATABASE_URL": "mysql://x@h/db"}, "CB_DATABASE_URL"),
        ({"CB_DATABASE_URL": "postgresql://x@h:5432"}, "CB_DATABASE_URL"),
        ({"CB_KAFKA_BOOTSTRAP": "no-port"}, "CB_KAFKA_BOOTSTRAP"),
        ({"CB_TOPIC": "bad topic"}, "CB_TOPIC"),
        ({"CB_PRODUCTS": "BTCUSD"}, "CB_PRODUCTS"),
        ({"CB_PRODUCTS": "BTC-USD,BTC-USD"}, "CB_PRODUCTS"),
        ({"CB_PRODUCTS": " , "}, "CB_PRODUCTS"),
        ({"CB_PARTITIONS_START": "2024-01-01"}, "CB_PARTITIONS_START"),
        ({"CB_PARTITIONS_START": "2024-02-30-00:00"}, "CB_PARTITIONS_START"),
        ({"CB_PARTITIONS_START": "2999-01-01-00:00"}, "CB_PARTITIONS_START"),
        ({"CB_PG_PORT": "abc"}, "CB_PG_PORT"),
        ({"CB_BROKER_PORT": "80"}, "CB_BROKER_PORT"),
        ({"CB_DEMO_SPEED": "-1"}, "CB_DEMO_SPEED"),
        ({"CB_COINBASE_WS_URL": "http://x"}, "CB_COINBASE_WS_URL"),
        ({"CB_DEMO_LEAD_LAG": "BTC-USD:ETH-USD"}, "CB_DEMO_LEAD_LAG"),
        ({"CB_DEMO_LEAD_LAG": "BTC-USD:ETH-USD:x:1"}, "CB_DEMO_LEAD_LAG"),
    ],
)
def test_errors_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        load_settings(env)


def test_export_env_fills_only_unset(tmp_path: Path) -> None:
    s = load_settings({"CB_HOME": str(tmp_path), "CB_TOPIC": "mine"})
    env = {"CB_TOPIC": "already-set"}
    export_env(s, env)
    assert env["CB_TOPIC"] == "already-set"
    assert env["CB_DATABASE_URL"] == s.database_url
    assert load_settings(env).products == s.products


def test_cli_reports_config_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cb_assets.cli import main

    monkeypatch.setenv("CB_PRODUCTS", "nonsense")
    assert main(["services", "status"]) == 2
    assert "CB_PRODUCTS" in capsys.readouterr().err


def test_kafka_options_for_a_managed_cluster() -> None:
    s = load_settings({"CB_KAFKA_OPT_SECURITY_PROTOCOL": "SASL_SSL", "CB_KAFKA_OPT_SASL_USERNAME": "me"})
    assert s.kafka_config == {"security.protocol": "SASL_SSL", "sasl.username": "me"}
    with pytest.raises(ConfigError, match="CB_KAFKA_OPT_"):
        load_settings({"CB_KAFKA_OPT_9X": "1"})
