"""`cb-assets up`: the whole platform in one foreground command.

Starts the local services (where none are configured), migrates, then runs its children (the feed, the sink and
`dagster dev`) each in its own process group with default signal handling. Ctrl-C or SIGTERM stops every child
(SIGTERM to the group, SIGKILL after a grace period) and the services this command started; nothing is left
behind. A feed or sink that dies is restarted with backoff; if `dagster dev` dies the platform stops, since
the UI is what the user is looking at.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cb_assets.config import Settings
from cb_assets.db.migrate import migrate
from cb_assets.stack.dagster_home import REPO_ROOT, dagster_env
from cb_assets.stack.procs import default_signals_preexec
from cb_assets.stack.services import (
    bundled_broker,
    embedded_postgres,
    services_down,
    services_up,
)

log = logging.getLogger(__name__)


@dataclass
class Child:
    name: str
    argv: list[str]
    essential: bool  # if it dies, the platform stops
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    log_path: Path | None = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class UpOptions:
    feed_source: str = "auto"  # auto | live | simulated | replay | none
    replay_file: str | None = None
    with_sink: bool = True
    with_forecaster: bool = True
    with_dagster: bool = True
    status_interval_s: float = 15.0
    stop_grace_s: float = 20.0
    extra_children: list[Child] = field(default_factory=list)


def _cb_assets_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "cb_assets.cli", *args]


def plan_children(settings: Settings, opts: UpOptions) -> list[Child]:
    children: list[Child] = []
    if opts.with_sink:
        children.append(Child("sink", _cb_assets_argv("sink"), essential=False))
    if opts.with_forecaster:
        children.append(Child("forecast", _cb_assets_argv("forecast"), essential=False))
    if opts.feed_source != "none":
        feed = ["feed", "--source", opts.feed_source]
        if opts.replay_file:
            feed += ["--file", opts.replay_file]
        children.append(Child("feed", _cb_assets_argv(*feed), essential=False))
    if opts.with_dagster:
        dagster_bin = str(Path(sys.executable).with_name("dagster"))
        children.append(
            Child(
                "dagster",
                [
                    dagster_bin,
                    "dev",
                    "-w",
                    str(REPO_ROOT / "workspace.yaml"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(settings.dagster_port),
                ],
                essential=True,
            )
        )
    children.extend(opts.extra_children)
    return children


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        opts: UpOptions,
        status_line: Callable[[Settings], str] | None = None,
        out=sys.stdout,
    ) -> None:
        self.settings = settings
        self.opts = opts
        self.children = plan_children(settings, opts)
        self.status_line = status_line
        self.out = out
        self._stop = threading.Event()
        self._started_services: list[str] = []
        self.exit_code = 0

    def say(self, text: str) -> None:
        print(f"[cb-assets up] {text}", file=self.out, flush=True)

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(dagster_env(self.settings))
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _start_services(self) -> None:
        was_running = {
            "postgres": self.settings.database_embedded and embedded_postgres(self.settings).status().running,
            "kafka": self.settings.kafka_embedded and bundled_broker(self.settings).status().running,
        }
        for line in services_up(self.settings):
            self.say(line.render())
            if line.state == "unreachable":
                raise RuntimeError(f"{line.name} is unreachable: {line.note}")
        self._started_services = [
            name
            for name, embedded in (
                ("postgres", self.settings.database_embedded),
                ("kafka", self.settings.kafka_embedded),
            )
            if embedded and not was_running[name]
        ]
        applied = migrate(self.settings.database_url)
        self.say(f"database migrated ({len(applied)} migrations applied now)")

    def _spawn(self, child: Child) -> None:
        self.settings.log_dir.mkdir(parents=True, exist_ok=True)
        child.log_path = self.settings.log_dir / f"{child.name}.log"
        out = child.log_path.open("ab")
        try:
            child.proc = subprocess.Popen(
                child.argv,
                env=self._env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=Path.cwd(),
                # Default SIGINT/SIGTERM in the child and a process group of its own: we decide when it stops.
                preexec_fn=default_signals_preexec,
            )
        finally:
            out.close()
        self.say(f"started {child.name} (pid {child.proc.pid}, log {child.log_path})")

    def _stop_children(self) -> None:
        alive = [c for c in self.children if c.running()]
        for child in alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + self.opts.stop_grace_s
        for child in alive:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.proc.wait(timeout=remaining)  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                self.say(f"{child.name} did not stop in {self.opts.stop_grace_s:.0f} s; killing it")
            # Whatever is left in the group (grandchildren of dagster dev, say) goes too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=5)  # type: ignore[union-attr]
            self.say(f"stopped {child.name}")

    def _stop_services(self) -> None:
        if not self._started_services:
            return
        for line in services_down(self.settings):
            if line.name in self._started_services:
                self.say(line.render())

    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._start_services()
            for child in self.children:
                if self._stop.is_set():
                    break
                self._spawn(child)
            if self.opts.with_dagster:
                self.say(f"Dagster UI: http://127.0.0.1:{self.settings.dagster_port} (ready in ~10 s)")
            self._loop()
        finally:
            self._stop_children()
            summary = self._summary()  # while the database still answers
            self._stop_services()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.say(summary)
        return self.exit_code

    def _loop(self) -> None:
        next_status = time.monotonic() + self.opts.status_interval_s
        while not self._stop.wait(0.5):
            now = time.monotonic()
            for child in self.children:
                if child.proc is None or child.running():
                    continue
                code = child.proc.returncode
                if child.essential:
                    self.say(
                        f"{child.name} exited with code {code}; stopping the platform (log {child.log_path})"
                    )
                    self.exit_code = 1
                    return
                if child.next_start == 0.0:
                    delay = min(60.0, 2.0 ** min(child.restarts, 6))
                    child.next_start = now + delay
                    self.say(
                        f"{child.name} exited with code {code}; restarting in {delay:.0f} s (log {child.log_path})"
                    )
                elif now >= child.next_start:
                    child.restarts += 1
                    child.next_start = 0.0
                    self._spawn(child)
            if now >= next_status and self.status_line is not None:
                next_status = now + self.opts.status_interval_s
                try:
                    self.say(self.status_line(self.settings))
                except Exception as exc:  # a status line must never take the platform down
                    self.say(f"status unavailable: {exc}")

    def _summary(self) -> str:
        restarts = ", ".join(f"{c.name} x{c.restarts}" for c in self.children if c.restarts) or "none"
        base = f"stopped; child restarts: {restarts}"
        if self.status_line is not None:
            with contextlib.suppress(Exception):
                base += "; " + self.status_line(self.settings)
        return base


def run_up(settings: Settings, opts: UpOptions, status_line: Callable[[Settings], str] | None = None) -> int:
    return Supervisor(settings, opts, status_line=status_line).run()
