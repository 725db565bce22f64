"""A run whose worker dies mid-run is failed by Dagster's run monitoring with the platform's launcher (and a
run whose worker still runs is left alone), on an instance built from the checkout's dagster.yaml."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.launcher.base import WorkerStatus
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import EmptyWorkspaceTarget
from dagster._daemon.monitoring.run_monitoring import execute_run_monitoring_iteration

from cb_assets.stack.dagster_home import REPO_ROOT
from cb_assets.stack.procs import alive_since
from cb_assets.stack.run_launcher import LocalRunLauncher
from cb_assets_tests.ticks_support import wait_until

# A run worker in miniature: executes one run on the instance, whose only step sleeps until it is killed.
_WORKER = """
import sys, time
import dagster as dg

@dg.asset
def sleeper() -> None:
    time.sleep(300)

with dg.DagsterInstance.from_config(sys.argv[1]) as instance:
    dg.materialize([sleeper], instance=instance)
"""


def test_alive_since_tells_a_running_process_from_a_dead_or_reused_pid() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = time.time()
        assert alive_since(proc.pid, started)
        # A pid whose process began after the run it is asked about is a reuse, not that run's worker.
        assert not alive_since(proc.pid, started - 3600)
    finally:
        proc.kill()
        proc.wait()
    assert not alive_since(proc.pid, started)


@pytest.mark.skipif(not sys.platform.startswith(("linux", "darwin")), reason="kills a worker with SIGKILL")
def test_monitoring_fails_a_run_whose_worker_was_killed(tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        (REPO_ROOT / "dagster.yaml").read_text()
    )  # sqlite storage, our settings
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    workers = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(home)], env=env, start_new_session=True)
        for _ in range(2)
    ]
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert isinstance(instance.run_launcher, LocalRunLauncher) and instance.run_monitoring_enabled

            def started() -> list[dg.DagsterRun]:
                runs = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
                return runs if len(runs) == 2 else []

            runs = wait_until(started, 120, "both runs started")
            pids = {
                r.run_id: instance.all_logs(r.run_id, of_type=dg.DagsterEventType.RUN_START)[
                    -1
                ].dagster_event.pid
                for r in runs
            }
            victim = next(r for r in runs if pids[r.run_id] == workers[0].pid)
            survivor = next(r for r in runs if pids[r.run_id] == workers[1].pid)
            assert instance.run_launcher.check_run_worker_health(victim).status == WorkerStatus.RUNNING

            os.killpg(workers[0].pid, signal.SIGKILL)  # as the OOM killer or a stopped `dagster dev` would
            workers[0].wait()
            assert (
                instance.get_run_by_id(victim.run_id).status == dg.DagsterRunStatus.STARTED
            )  # nobody noticed

            with WorkspaceProcessContext(instance, EmptyWorkspaceTarget()) as context:
                list(execute_run_monitoring_iteration(context, logging.getLogger("run_monitoring")))

            failed = instance.get_run_by_id(victim.run_id)
            assert failed.status == dg.DagsterRunStatus.FAILURE
            assert failed.tags.get("dagster/will_retry") == "true"  # run_retries starts it again
            message = instance.all_logs(victim.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)[-1].message
            assert f"pid {workers[0].pid}" in message and "is gone" in message
            assert instance.get_run_by_id(survivor.run_id).status == dg.DagsterRunStatus.STARTED
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
