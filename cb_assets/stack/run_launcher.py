"""`LocalRunLauncher`: Dagster's default launcher that can also tell when a run's worker has died.

The default launcher cannot, so Dagster's run monitoring leaves a run whose worker is gone (`dagster dev`
stopped mid-run, the machine restarted, the worker killed by the OOM killer) STARTED for ever. Such a run
holds its chain's concurrency slot, and a fine-tune in that state is the sensor's fine-tune in flight:
sensor-triggered retraining stopped after a restart that caught a fine-tune between registering its version
and ending (seen in the retraining drill). With this launcher and `run_monitoring` in dagster.yaml, the
monitoring daemon marks such a run failed within a poll interval, gives back the pool slot it held
(`free_slots_after_run_end_seconds`) and `run_retries` starts it again.

The worker's pid and start come from the run's RUN_START event, written by the worker itself; the check is
only meaningful where the runs execute on the daemon's machine, which is how cb-assets runs Dagster.
"""

from __future__ import annotations

import dagster as dg
from dagster._core.launcher import DefaultRunLauncher
from dagster._core.launcher.base import CheckRunHealthResult, WorkerStatus

from cb_assets.stack.procs import alive_since


class LocalRunLauncher(DefaultRunLauncher):
    """Launches runs as the default launcher does; reports a run worker that no longer runs as failed."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        starts = self._instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_START)
        event = starts[-1].dagster_event if starts else None
        if event is None or event.pid is None:
            # Not started by a worker we can see: never fail a run on missing evidence.
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no worker pid recorded")
        if alive_since(event.pid, starts[-1].timestamp):
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"worker pid {event.pid} runs")
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"the run worker (pid {event.pid}) is gone: it stopped without ending the run "
            "(Dagster stopped or the process was killed mid-run)",
        )
