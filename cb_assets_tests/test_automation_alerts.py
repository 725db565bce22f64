"""Alerts reach a webhook as JSON (a local HTTP server here), from a failing freshness check and from the
run-failure sensor; without a webhook they are logged; a webhook that is down costs a warning only."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import dagster as dg
import pytest

from cb_assets.automation.alerts import alert
from cb_assets.db.connection import connect
from cb_assets.defs.freshness import raw_ticks_fresh
from cb_assets.defs.resources import PostgresResource
from cb_assets.stack.procs import free_port


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict]]]:
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()


def test_a_stale_live_feed_fails_its_check_and_posts_an_alert(
    database_url: str, webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, received = webhook
    monkeypatch.setenv("CB_ALERT_WEBHOOK_URL", url)
    old = datetime.now(UTC) - timedelta(minutes=5)
    with connect(database_url) as conn:
        conn.execute(
            "INSERT INTO raw_ticks (product_id, time, price, volume_24_h, low_24_h, high_24_h, low_52_w, high_52_w, "
            "price_percent_chg_24_h, source, received_at) VALUES ('BTC-USD', %s, 1, 1, 1, 1, 1, 1, 0, 'live', now())",
            (old,),
        )
        conn.commit()
    result = raw_ticks_fresh(dg.build_asset_check_context(), PostgresResource(database_url=database_url))
    assert not result.passed and "s old" in result.description
    assert [a["kind"] for a in received] == ["check_failed"] and "raw_ticks_fresh" in received[0]["summary"]


def test_without_a_webhook_alerts_are_logged_and_a_dead_webhook_only_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="cb_assets.automation.alerts")
    assert alert("", "run_failed", "a run failed") is False
    assert alert(f"http://127.0.0.1:{free_port()}/nobody", "run_failed", "a run failed") is False
    messages = [r.getMessage() for r in caplog.records]
    assert any("alert (run_failed): a run failed" in m for m in messages)
    assert any("alert webhook failed" in m for m in messages)


def test_the_run_failure_sensor_posts_failed_runs(webhook, monkeypatch: pytest.MonkeyPatch) -> None:
    from cb_assets.defs.freshness import run_failure_alerts

    url, received = webhook
    monkeypatch.setenv("CB_ALERT_WEBHOOK_URL", url)

    @dg.op
    def boom() -> None:
        raise RuntimeError("boom")

    @dg.job
    def failing() -> None:
        boom()

    with dg.instance_for_test() as instance:
        result = failing.execute_in_process(instance=instance, raise_on_error=False)
        failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
        context = dg.build_run_status_sensor_context(
            sensor_name="run_failure_alerts",
            dagster_instance=instance,
            dagster_run=result.dagster_run,
            dagster_event=failure,
        ).for_run_failure()
        run_failure_alerts(context)
    assert len(received) == 1 and received[0]["kind"] == "run_failed" and received[0]["job"] == "failing"
