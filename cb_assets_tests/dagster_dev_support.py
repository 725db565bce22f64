"""A real `dagster dev` for tests: instance on PostgreSQL, started in its own process group, stopped cleanly,
plus the GraphQL calls the UI itself makes (backfills, sensors)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from cb_assets.config import load_settings
from cb_assets.stack.dagster_home import dagster_env, write_instance_yaml
from cb_assets.stack.procs import default_signals_preexec, free_port

REPO = Path(__file__).resolve().parents[1]
LOCATION = "cb_assets.definitions"
REPOSITORY = "__repository__"


@dataclass
class DagsterDev:
    port: int
    home: Path
    env: dict[str, str]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @contextmanager
    def instance(self) -> Iterator[dg.DagsterInstance]:
        """The same instance, opened in this process (its dagster.yaml reads the storage URL from the env)."""
        old = os.environ.get("CB_DAGSTER_DATABASE_URL")
        os.environ["CB_DAGSTER_DATABASE_URL"] = self.env["CB_DAGSTER_DATABASE_URL"]
        try:
            with dg.DagsterInstance.from_config(str(self.home)) as inst:
                yield inst
        finally:
            if old is None:
                os.environ.pop("CB_DAGSTER_DATABASE_URL", None)
            else:
                os.environ["CB_DAGSTER_DATABASE_URL"] = old

    def graphql(self, query: str, variables: dict | None = None, timeout: float = 60) -> dict:
        req = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = json.loads(resp.read())
        if body.get("errors"):
            raise AssertionError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def wait_until_quiet(self, quiet_s: float, timeout_s: float = 300) -> None:
        """Until no run has been queued or in progress for `quiet_s` (longer than the sensor interval, so a run
        a sensor launches on what it just saw has been launched and has finished)."""
        unfinished = [
            dg.DagsterRunStatus.QUEUED,
            dg.DagsterRunStatus.NOT_STARTED,
            dg.DagsterRunStatus.STARTING,
            dg.DagsterRunStatus.STARTED,
            dg.DagsterRunStatus.CANCELING,
        ]
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        with self.instance() as instance:
            while time.monotonic() < deadline:
                if instance.get_runs_count(dg.RunsFilter(statuses=unfinished)):
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= quiet_s:
                    return
                time.sleep(1)
        raise AssertionError(f"runs still in progress after {timeout_s:.0f} s")

    def stop_sensor(self, name: str) -> str:
        selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": name}
        data = self.graphql(
            "query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { ... on Sensor { id } } }",
            {"s": selector},
        )
        sensor_id = data["sensorOrError"]["id"]
        out = self.graphql(
            "mutation($id: String) { stopSensor(id: $id) { ... on StopSensorMutationResult "
            "{ instigationState { status } } ... on PythonError { message } } }",
            {"id": sensor_id},
        )
        return out["stopSensor"]["instigationState"]["status"]

    def sensor_tick_times(self, name: str) -> list[float]:
        """Timestamps of the sensor's recent evaluations, newest first."""
        selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": name}
        data = self.graphql(
            "query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { ... on Sensor { sensorState "
            "{ ticks(limit: 20) { timestamp status } } } } }",
            {"s": selector},
        )
        ticks = data["sensorOrError"]["sensorState"]["ticks"]
        return [t["timestamp"] for t in ticks if t["status"] in ("SUCCESS", "SKIPPED", "FAILURE")]

    def wait_sensor_evaluations(self, name: str, n: int, after: float, timeout_s: float = 120) -> None:
        """Until the sensor has finished `n` evaluations that started after `after` (a time.time())."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if sum(t > after for t in self.sensor_tick_times(name)) >= n:
                return
            time.sleep(1)
        raise AssertionError(f"{name} did not evaluate {n} times within {timeout_s:.0f} s")

    def launch_asset_backfill(self, assets: list[str], partitions: list[str]) -> str:
        """As the asset graph's Materialize button with a range of partitions selected: an asset backfill, run by
        the backfill daemon (honours backfill policies, tracks failed partitions and their downstream)."""
        params = {
            "assetSelection": [{"path": [a]} for a in assets],
            "partitionNames": partitions,
            "fromFailure": False,
        }
        out = self.graphql(
            "mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) { __typename "
            "... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } "
            "... on InvalidSubsetError { message } } }",
            {"p": params},
        )["launchPartitionBackfill"]
        assert out["__typename"] == "LaunchBackfillSuccess", out
        return out["backfillId"]

    def reexecute_backfill_from_failure(self, backfill_id: str) -> str:
        out = self.graphql(
            "mutation($r: ReexecutionParams!) { reexecutePartitionBackfill(reexecutionParams: $r) { __typename "
            "... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }",
            {"r": {"parentRunId": backfill_id, "strategy": "FROM_FAILURE"}},
        )["reexecutePartitionBackfill"]
        assert out["__typename"] == "LaunchBackfillSuccess", out
        return out["backfillId"]

    def backfill(self, backfill_id: str) -> dict:
        return self.graphql(
            "query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { id status "
            "partitionStatuses { results { partitionName runId runStatus } } } } }",
            {"id": backfill_id},
        )["partitionBackfillOrError"]

    def wait_backfill(self, backfill_id: str, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        done = {"SUCCESS", "FAILURE", "CANCELED"}
        while time.monotonic() < deadline:
            bf = self.backfill(backfill_id)
            results = (bf.get("partitionStatuses") or {}).get("results") or []
            statuses = [r["runStatus"] for r in results]
            if bf["status"] in (
                "COMPLETED",
                "COMPLETED_SUCCESS",
                "COMPLETED_FAILED",
                "FAILED",
                "CANCELED",
            ) and all(s in done for s in statuses):
                return bf
            time.sleep(3)
        raise AssertionError(
            f"backfill {backfill_id} did not finish in {timeout_s:.0f} s: {self.backfill(backfill_id)}"
        )


@contextmanager
def dagster_dev(env: dict[str, str], workdir: Path, ready_timeout_s: float = 180) -> Iterator[DagsterDev]:
    """Start `dagster dev -w workspace.yaml` on a free port with a DAGSTER_HOME on PostgreSQL storage."""
    home = workdir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    write_instance_yaml(home)
    port = free_port()
    full_env = dict(os.environ, **env)
    # What `cb-assets up` gives its children: every CB_* value the resources read, resolved.
    full_env.update(dagster_env(load_settings(full_env)))
    full_env["DAGSTER_HOME"] = str(home)
    log = workdir / "dagster-dev.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("dagster")),
                "dev",
                "-w",
                str(REPO / "workspace.yaml"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            cwd=workdir,  # not the checkout: a developer's .env there must not override this environment
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=default_signals_preexec,
        )
    dev = DagsterDev(port, home, full_env, log)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{dev.url}/server_info", timeout=2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"dagster dev did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        # The code location loads after the webserver answers.
        while time.monotonic() < deadline:
            entries = dev.graphql(
                "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"
            )["workspaceOrError"]["locationEntries"]
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                break
            time.sleep(1)
        yield dev
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # grandchildren (code server, daemon, run workers)
