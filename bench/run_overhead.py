"""Per-run overhead of the live loop: an hourly chain run of 12 products launched in a real `dagster dev`.

Run: `python bench/run_overhead.py [--runs 3]`. Goal on 2 cores: a sensor-style hourly chain run (raw_ticks ->
training_windows, one hour, 12 products) <= 30 s of wall time (before: 80-100 s, every step a fresh process).

It starts `dagster dev` on an instance with PostgreSQL storage (as `cb-assets up` does), seeds three simulated
hours, launches `hourly_assets_job` for one hour at a time over GraphQL as the sensor's run requests do, and
prints per run: the wall time from launch to success (queueing, the run worker's start and imports, the
steps) beside the sum of its steps' work (STEP_START -> STEP_SUCCESS), and their ratio. It prints figures,
never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench_services import postgres_server

from cb_assets.config import DEFAULT_PRODUCTS, load_settings
from cb_assets.feed.seed import simulate_rows, write_rows
from cb_assets.series.clock import partition_key
from cb_assets.stack.dagster_home import dagster_env, write_instance_yaml
from cb_assets.stack.procs import default_signals_preexec, free_port

REPO = Path(__file__).resolve().parents[1]
START = datetime(2024, 3, 1, tzinfo=UTC)
TARGET_S = 30.0


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        body = json.loads(resp.read())
    if body.get("errors"):
        raise RuntimeError(body["errors"])
    return body["data"]


def launch(port: int, key: str) -> str:
    data = graphql(
        port,
        """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
             ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }""",
        {
            "p": {
                "selector": {
                    "repositoryLocationName": "cb_assets.definitions",
                    "repositoryName": "__repository__",
                    "jobName": "hourly_assets_job",
                },
                "executionMetadata": {"tags": [{"key": "dagster/partition", "value": key}]},
            }
        },
    )
    result = data["launchRun"]
    if "run" not in result:
        raise RuntimeError(result)
    return result["run"]["runId"]


def wait_run(port: int, run_id: str, timeout_s: float = 900) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        data = graphql(
            port,
            """query($id: ID!) { runOrError(runId: $id) { ... on Run { status startTime endTime creationTime
                 stepStats { stepKey startTime endTime } } } }""",
            {"id": run_id},
        )
        run = data["runOrError"]
        if run["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
            return run
        time.sleep(0.5)
    raise TimeoutError(run_id)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    products = DEFAULT_PRODUCTS
    with postgres_server() as pg, tempfile.TemporaryDirectory() as tmp:
        url = pg.fresh_database()
        _, rows = simulate_rows(products, START, args.runs + 2, seed=3)
        write_rows(url, rows)
        home = Path(tmp) / "dagster"
        write_instance_yaml(home)
        env = dict(os.environ, CB_DATABASE_URL=url, CB_HOME=tmp, CB_PRODUCTS=",".join(products),
                   CB_PARTITIONS_START="2024-03-01-00:00")  # fmt: skip
        env.update(dagster_env(load_settings(env)))
        env["DAGSTER_HOME"] = str(home)
        port = free_port()
        log = (Path(tmp) / "dagster.log").open("wb")
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("dagster")), "dev", "-w", str(REPO / "workspace.yaml"),
             "-h", "127.0.0.1", "-p", str(port)],
            cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=default_signals_preexec,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                try:
                    graphql(port, "{ version }")
                    break
                except Exception:
                    time.sleep(1)
            print(f"hourly chain runs of {len(products)} products in dagster dev (PostgreSQL storage):")
            for i in range(args.runs + 1):
                key = partition_key(START + timedelta(hours=i))
                launched = time.time()
                run = wait_run(port, launch(port, key))
                wall = run["endTime"] - launched
                work = sum(s["endTime"] - s["startTime"] for s in run["stepStats"] if s["endTime"])
                note = "  (warm-up hour: its look-back is empty)" if i == 0 else ""
                print(
                    f"  {key}: {run['status']:<8} wall {wall:6.1f} s (launch -> start {run['startTime'] - launched:5.1f} s), "
                    f"steps' work {work:5.1f} s, wall/work {wall / max(work, 1e-9):4.1f}x, target {TARGET_S:.0f} s{note}"
                )
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            log.close()
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
